"""The speed table on a GPU: seconds per grid point of every engine and precision against a naive GPU loop.

    python benchmarks/bench_gpu.py [--device cuda] [--images 10000] [--points 16] [--sequences 1024]

ResNet-20 on N CIFAR-shaped random images (uint8, normalized: the compact path applies) and gpt_tiny on the
text corpus's test sequences (--task lm). The naive loop is the usual shape on the device: theta + sum c d
built in a fresh state_dict, `load_state_dict`, a forward per batch of 128, `.item()` per batch. Every engine's
losses are checked against the naive ones (fp32: rtol 1e-4; tf32 2e-3; bf16 3e-2) before its time counts;
CUDA is synchronized around every timing. Prints the device, the versions and a markdown table. Written for
benchmarks/gpu_check.sh (docs/performance.md); `--device cpu` runs it here as a dry run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from landscape_mpi.data.datasets import load_eval_set
from landscape_mpi.data.items import CompactImages, EvalSet, decode_images
from landscape_mpi.directions.base import random_direction, space_keys
from landscape_mpi.engine import make_engine
from landscape_mpi.models import build_model
from landscape_mpi.tasks import make_task

RTOL = {"fp32": 1e-4, "tf32": 2e-3, "bf16": 3e-2}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def naive(model, theta, dirs, coords, x, y, lm: bool, batch: int = 128) -> float:
    """Mean loss at theta + sum c d: load_state_dict and a plain forward per batch (x, y on the device)."""
    state = {k: v.clone() for k, v in theta.items()}
    for c, d in zip(coords, dirs):
        for k, v in d.items():
            state[k] += c * v
    if lm:  # a tied weight gets the moved value under both names
        state["head.weight"] = state["tok.weight"]
    model.load_state_dict(state)
    total, n = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(x), batch):
            xb = x[s:s + batch]
            if lm:
                logits = model(xb)[:, :-1]
                total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), xb[:, 1:].reshape(-1),
                                         reduction="sum").item()
                n += xb[:, 1:].numel()
            else:
                total += F.cross_entropy(model(xb), y[s:s + batch], reduction="sum").item()
                n += len(xb)
    return total / n


def timed(device, f):
    sync(device)
    t0 = time.perf_counter()
    out = f()
    sync(device)
    return out, time.perf_counter() - t0


def bench(name, model, data, task, lm, device, coords, kinds, precisions, rows):
    g = torch.Generator().manual_seed(1)
    theta = {k: v.detach() for k, v in model.state_dict().items()}
    dirs = [random_direction(theta, space_keys(model, "weights"), g, "filter", "biasbn") for _ in range(2)]
    dev_model = build_model(name).to(device).eval()
    dev_theta = {k: v.to(device) for k, v in theta.items()}
    dev_dirs = [{k: v.to(device) for k, v in d.items()} for d in dirs]
    x = data[0].inputs.to(device)
    y = data[0].labels.to(device) if data[0].labels is not None else None
    naive(dev_model, dev_theta, dev_dirs, coords[0], x, y, lm)  # warm-up
    want, t_naive = timed(device, lambda: np.array([naive(dev_model, dev_theta, dev_dirs, c, x, y, lm)
                                                     for c in coords]))
    rows.append((name, "naive loop", "fp32", t_naive / len(coords), t_naive / len(coords), None))
    for kind in kinds:
        for precision in precisions:
            notes = []
            engine = make_engine(model, dirs, data, loss=task, device=device, kind=kind, precision=precision,
                                 log=notes.append)
            _, first = timed(device, lambda: engine.evaluate(coords[:1]))  # noqa: B023  (timed calls it at once)
            got, t = timed(device, lambda: engine.evaluate(coords))  # noqa: B023  (timed calls it at once)
            np.testing.assert_allclose(got[:, 0], want, rtol=RTOL[precision], err_msg=f"{name} {kind} {precision}")
            rows.append((name, engine.name, precision, t / len(coords), t_naive / len(coords), first))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--sequences", type=int, default=1024)
    ap.add_argument("--points", type=int, default=16)
    ap.add_argument("--kinds", default="eager,folded,channels_last,batched,compiled")
    ap.add_argument("--precisions", default="fp32,tf32,bf16")
    a = ap.parse_args()
    device = torch.device(a.device)
    coords = np.random.default_rng(0).uniform(-1, 1, (a.points, 2))
    kinds, precisions = a.kinds.split(","), a.precisions.split(",")
    rows: list = []

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (a.images, 3, 32, 32), generator=g, dtype=torch.uint8)
    mean, std = torch.tensor([0.49, 0.48, 0.45]).view(1, 3, 1, 1), torch.tensor([0.25, 0.24, 0.26]).view(1, 3, 1, 1)
    images = EvalSet("test", decode_images(raw, mean, std), torch.randint(0, 10, (a.images,), generator=g), None,
                     CompactImages(raw, mean, std))
    bench("resnet20", build_model("resnet20").eval(), [images], make_task("classify"), False, device, coords,
          kinds, precisions, rows)
    text = load_eval_set("text", "test", None, a.sequences, 0)
    bench("gpt_tiny", build_model("gpt_tiny").eval(), [EvalSet("test", text.inputs, None)], make_task("lm"), True,
          device, coords, [k for k in kinds if k != "channels_last"], precisions, rows)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}, torch {torch.__version__}, {a.points} points, ResNet-20 on {a.images} images, gpt_tiny on "
          f"{len(text)} sequences x 64 tokens; losses checked against the naive loop")
    print("| model | engine | precision | s/point | vs naive | first call (s) |")
    print("|---|---|---|---|---|---|")
    for model, engine, precision, s, base, first in rows:
        print(f"| {model} | {engine} | {precision} | {s:.4f} | {base / s:.2f}x | "
              f"{'-' if first is None else f'{first:.1f}'} |")


if __name__ == "__main__":
    main()
