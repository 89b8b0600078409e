"""Per-point time of the language model (gpt_tiny, --dataset text --task lm) per engine against a naive loop.

Each engine evaluates the same grid points (2 random filter-normalized directions) on N test sequences of 64
tokens; the naive loop (benchmarks/naive_baseline.py, `naive_lm_point`) loads theta* + sum c d with
load_state_dict and runs a plain forward per batch with next-token cross-entropy. Every engine's losses are
checked against the naive values (relative 1e-5) before its time counts. The compiled engine's first call
(the compilation) is timed apart. Prints a table: points/s and the ratio to the naive loop.

    python benchmarks/bench_lm.py --sequences 256 --points 8 [--threads 2] [--checkpoint run/final.pt]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from naive_baseline import naive_lm_point  # noqa: E402

from landscape_mpi.data.datasets import EvalSet, load_eval_set  # noqa: E402
from landscape_mpi.directions.base import random_direction, space_keys  # noqa: E402
from landscape_mpi.engine import make_engine  # noqa: E402
from landscape_mpi.models import build_model  # noqa: E402
from landscape_mpi.tasks import make_task  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=256, help="test sequences (64 tokens each)")
    ap.add_argument("--points", type=int, default=8, help="grid points per engine")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--checkpoint", default=None, help="a gpt_tiny checkpoint (default: the seed-0 initialization)")
    ap.add_argument("--engines", default="eager,folded,batched,compiled")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("gpt_tiny").eval()
    if args.checkpoint:
        model.load_state_dict(torch.load(args.checkpoint, weights_only=True)["state_dict"])
    test = load_eval_set("text", "test", None, args.sequences, 0)
    data = [EvalSet("test", test.inputs, test.labels)]
    g = torch.Generator().manual_seed(1)
    theta = model.state_dict()
    dirs = [random_direction(theta, space_keys(model, "weights"), g, "filter", "biasbn") for _ in range(2)]
    coords = np.random.default_rng(0).uniform(-1, 1, (args.points, 2))

    naive_model = build_model("gpt_tiny").eval()
    naive_lm_point(naive_model, theta, dirs, coords[0], test.inputs, args.batch_size)  # warm-up, as for the engines
    t0 = time.perf_counter()
    naive = np.array([naive_lm_point(naive_model, theta, dirs, c, test.inputs, args.batch_size) for c in coords])
    naive_s = (time.perf_counter() - t0) / len(coords)
    rows = [("naive loop", naive_s, None, "")]
    for kind in args.engines.split(","):
        logs: list[str] = []
        engine = make_engine(model, dirs, data, loss=make_task("lm"), device=torch.device("cpu"), kind=kind,
                             batch_size=args.batch_size, log=logs.append)
        t0 = time.perf_counter()
        engine.evaluate(coords[:1])  # warm-up (the compilation for compiled)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        got = engine.evaluate(coords)
        per_point = (time.perf_counter() - t0) / len(coords)
        np.testing.assert_allclose(got[:, 0], naive[:, 0], rtol=1e-5, err_msg=kind)
        np.testing.assert_allclose(got[:, 2], naive[:, 1], atol=1.5 / (len(test) * 63), err_msg=kind)
        rows.append((engine.name, per_point, first, ""))
    print(f"gpt_tiny, {len(test)} test sequences x 64 tokens, batch {args.batch_size}, {args.points} points, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; values agree with the naive loop (rtol 1e-5)")
    print("| engine | s/point | points/s | vs naive | first call (s) |")
    print("|---|---|---|---|---|")
    for name, s, first, _ in rows:
        print(f"| {name} | {s:.3f} | {1 / s:.2f} | {naive_s / s:.2f}x | {'-' if first is None else f'{first:.1f}'} |")


if __name__ == "__main__":
    main()
