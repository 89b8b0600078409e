"""Engine speed: seconds per grid point against a naive loop, GFLOP/s against the measured matmul peak,
and the digits model's points/s with one point per forward against K points per forward.

    .venv/bin/python benchmarks/bench_engine.py [--threads 2] [--rounds 5] [--extra eager,folded] [--k-sweep]

ResNet-20 on 1,000 CIFAR-shaped random images per point (the cost of a point does not depend on pixel
values), a 5x5 grid of two filter-normalized directions; our engine (`make_engine(kind=--kind)`) and the
naive baseline (benchmarks/naive_baseline.py) are run interleaved, the order rotating each round; the table
gives medians over rounds. FLOPs are counted with torch.utils.flop_counter.FlopCounterMode on the forward;
the fp32 matmul peak is measured in the same run (best 2048x2048 torch.mm per round). Digits: digits_cnn on
all 1,437 train + 360 test digits (the embedded dataset), points/s at K=1 (kind=folded) and K (kind=batched).
Prints the machine and versions first, a markdown table last.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time

import numpy as np
import torch
from torch.utils.data import TensorDataset
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from naive_baseline import naive_point  # noqa: E402

from landscape_mpi.data.datasets import EvalSet, load_eval_set  # noqa: E402
from landscape_mpi.directions.base import random_direction, space_keys  # noqa: E402
from landscape_mpi.engine import make_engine, tune_cpu_allocator  # noqa: E402
from landscape_mpi.models import build_model  # noqa: E402

CPU = torch.device("cpu")


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"machine: {platform.node()}, {cpu}, {os.cpu_count()} cores, load average "
            f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}\n"
            f"versions: python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
            f"threads {torch.get_num_threads()}, mkldnn {torch.backends.mkldnn.is_available()}")


def matmul_gflops(n: int = 2048, reps: int = 3) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b))[0] for _ in range(reps))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, kernel (sys) seconds) of fn()."""
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    fn()
    t1 = time.perf_counter()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return t1 - t0, r1.ru_stime - r0.ru_stime


def grid(n: int) -> np.ndarray:
    xs = np.linspace(-1, 1, n)
    return np.array([(a, b) for a in xs for b in xs])


def directions(model: torch.nn.Module, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    return [random_direction(state, space_keys(model, "weights"), g, "filter", "biasbn") for _ in range(2)]


def interleaved(methods: dict, rounds: int, extra_each_round=None) -> dict[str, list[tuple[float, float]]]:
    """Run every method once per round, the order rotating; returns name -> [(wall, sys) per round]."""
    names = list(methods)
    out: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            out[name].append(_timed(methods[name]))
        if extra_each_round is not None:
            extra_each_round()
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{k} {out[k][-1][0]:.2f}s" for k in names), flush=True)
    return out


def bench_resnet(a) -> list[str]:
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    dirs = directions(model)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(a.samples, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (a.samples,), generator=g)
    data = [EvalSet("train", x, y)]
    coords = grid(5)[: a.points]
    theta = {k: v.clone() for k, v in model.state_dict().items()}
    naive_model = build_model("resnet20")
    dataset = TensorDataset(x, y)

    engines, setup = {}, {}
    for kind in [a.kind] + [k for k in a.extra.split(",") if k]:
        t0 = time.perf_counter()
        e = make_engine(model, dirs, data, loss="ce", device=CPU, kind=kind, batch_size=a.batch_size,
                        log=lambda s: print("  " + s))
        e.evaluate(coords[:1])  # warm-up (oneDNN primitive creation)
        setup[e.name] = time.perf_counter() - t0
        engines[e.name] = e
    main_name = next(iter(engines))
    results: dict[str, np.ndarray] = {}

    def run_engine(name):
        def f():
            results[name] = engines[name].evaluate(coords)
        return f

    def run_naive():
        results["naive"] = np.array([naive_point(naive_model, theta, dirs, c, dataset) for c in coords])

    methods = {"naive": run_naive, **{n: run_engine(n) for n in engines}}
    peaks: list[float] = []
    print(f"ResNet-20, {a.samples} images per point, {len(coords)} points per round, {a.rounds} rounds", flush=True)
    times = interleaved(methods, a.rounds, lambda: peaks.append(matmul_gflops()))
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        build_model("resnet20").eval()(x[:100])
    flops_point = fc.get_total_flops() / 100 * a.samples
    peak = max(peaks)
    rel = np.max(np.abs(results[main_name][:, 0] - results["naive"][:, 0]) / np.abs(results["naive"][:, 0]))
    acc = np.max(np.abs(results[main_name][:, 1] - results["naive"][:, 1]))
    naive_s = statistics.median(t for t, _ in times["naive"]) / len(coords)
    lines = [f"ResNet-20, {a.samples} CIFAR-shaped images per point, 5x5 grid ({len(coords)} points), medians of "
             f"{a.rounds} interleaved rounds; {flops_point / 1e9:.1f} GFLOP per point "
             f"(FlopCounterMode); fp32 matmul peak {peak:.0f} GFLOP/s (best 2048^3 torch.mm); "
             f"{main_name} vs naive: loss max rel diff {rel:.1e}, accuracy max diff {acc:.0e}", "",
             "| method | s/point | points/s | speed-up | sys s/point | GFLOP/s | % of matmul peak | set-up s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, ts in times.items():
        s = statistics.median(t for t, _ in ts) / len(coords)
        sys_s = statistics.median(v for _, v in ts) / len(coords)
        gf = flops_point / s / 1e9
        lines.append(f"| {name} | {s:.3f} | {1 / s:.2f} | {naive_s / s:.2f}x | {sys_s:.3f} | {gf:.1f} | "
                     f"{100 * gf / peak:.0f}% | {setup.get(name, 0):.1f} |")
    return lines


def bench_digits(a) -> list[str]:
    torch.manual_seed(0)
    model = build_model("digits_cnn").eval()
    dirs = directions(model)
    data = [load_eval_set("digits", s, None, None, 0) for s in ("train", "test")]
    coords = grid(7)
    engines = {}
    for kind in ("folded", "batched") + (("eager",) if "eager" in a.extra else ()):
        e = make_engine(model, dirs, data, loss="ce", device=CPU, kind=kind, batch_size=a.batch_size,
                        log=lambda s: print("  " + s))
        e.evaluate(coords[:e.group_size])
        engines[f"{e.name} (K={e.group_size})"] = e
    ref = next(iter(engines.values())).evaluate(coords)
    for name, e in engines.items():
        got = e.evaluate(coords)
        assert np.allclose(got[:, 0::2], ref[:, 0::2], rtol=1e-5) and np.array_equal(got[:, 1::2], ref[:, 1::2]), name
    methods = {n: (lambda e=e: e.evaluate(coords)) for n, e in engines.items()}
    if a.k_sweep:
        batched = engines[next(n for n in engines if n.startswith("batched"))]
        for k in (2, 4, 8, 32):
            def f(k=k):
                batched.group_size = k
                batched.evaluate(coords)
            methods[f"batched (K={k})"] = f
    print(f"digits_cnn, 1,437 + 360 digits per point, {len(coords)} points per round, {a.rounds} rounds", flush=True)
    times = interleaved(methods, a.rounds)
    base = statistics.median(t for t, _ in times[next(iter(times))])
    lines = [f"digits_cnn on all 1,437 train + 360 test digits (both splits per point), 7x7 grid, medians of "
             f"{a.rounds} interleaved rounds", "",
             "| method | points/s | ms/point | vs one point per forward |", "|---|---|---|---|"]
    for name, ts in times.items():
        s = statistics.median(t for t, _ in ts)
        lines.append(f"| {name} | {len(coords) / s:.1f} | {1e3 * s / len(coords):.2f} | {base / s:.2f}x |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--samples", type=int, default=1000, help="ResNet-20 images per point")
    p.add_argument("--points", type=int, default=25, help="ResNet-20 points per round (of the 5x5 grid)")
    p.add_argument("--kind", default="auto", help="the engine to compare with the naive loop")
    p.add_argument("--extra", default="", help="more engine kinds in the ResNet-20 table, comma-separated")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--k-sweep", action="store_true", help="digits: also K = 2, 4, 8, 32 points per forward")
    p.add_argument("--no-malloc-tuning", action="store_true", help="keep glibc's default mmap threshold")
    p.add_argument("--only", choices=["resnet", "digits"], default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    tuned = False if a.no_malloc_tuning else tune_cpu_allocator()
    print(machine())
    print(f"glibc malloc tuned (engine.tune_cpu_allocator): {tuned}; command: {' '.join(sys.argv)}", flush=True)
    tables = []
    if a.only in (None, "resnet"):
        tables += bench_resnet(a) + [""]
    if a.only in (None, "digits"):
        tables += bench_digits(a)
    print("\n" + "\n".join(tables))


if __name__ == "__main__":
    main()
