"""Fidelity and cost of sequential estimates (--tolerance) against the exact full-pass surface.

    .venv/bin/python benchmarks/bench_fidelity.py [--points 51] [--tolerances 0.01,0.02,0.05] [--threads 2]
        [--model digits_cnn --checkpoint tests/data/demo_checkpoint.pt --dataset digits] [--samples N]

For one model (default: the demo's trained digits_cnn on the embedded digits, 1,437 train + 360 test samples), a
2D surface on the grid -1:1 x -1:1 with POINTS per axis along two filter-normalized random directions (seed 0):
first the exact surface (every sample of both splits at every point, engine auto), then one sequential surface
per tolerance (engine.sequential, --min-samples 256, --tolerance-block 32, order seed 0, the same engine
underneath). Per tolerance and split loss, against the exact surface at the same grid points:

- sample-forwards: samples the forwards computed (exact: points x split size; sequential: whole forwards of
  --batch-size, including the blocks after a stop that a forward computed and the estimate did not use), and the
  ratio exact / sequential;
- the max and the median relative error |L_seq - L_exact| / |L_exact| over the grid, and the share of points
  whose error is within 2 reported standard errors (a point that read its whole split has se 0: its
  float32 rounding, relative 1e-6, allowed);
- the basin area: the share of the box where L <= 1.1 x the surface's own minimum, times the box's area, and its
  relative difference to the exact surface's;
- the grid max-rise at r = 0.5 (numbers.sharpness.grid_max_rise) and its relative difference;
- seconds of evaluation (the engine's, not the set-up's).

The goal of issue 29 (5x fewer sample-forwards with the basin area within 2% and the max-rise within 1%) is
printed next to each row. Machine and versions first, a markdown table last. Nothing is written to disk.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_engine import machine  # noqa: E402

from landscape_mpi.data.datasets import load_eval_set  # noqa: E402
from landscape_mpi.directions.base import random_direction, space_keys  # noqa: E402
from landscape_mpi.engine import make_engine, tune_cpu_allocator  # noqa: E402
from landscape_mpi.engine.sequential import SequentialRule  # noqa: E402
from landscape_mpi.models import build_model, read_state_dict  # noqa: E402
from landscape_mpi.numbers.sharpness import grid_max_rise  # noqa: E402

CPU = torch.device("cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RADIUS = 0.5
BASIN = 1.1
#: Issue 29's goal: sample-forwards saved, basin area and max-rise within these relative differences.
GOAL = {"saving": 5.0, "basin": 0.02, "rise": 0.01}


def basin_area(loss: np.ndarray, box: float) -> float:
    """The share of the grid's points with loss <= BASIN x the minimum, times the box's area."""
    finite = np.isfinite(loss)
    return float((finite & (loss <= BASIN * np.nanmin(loss))).sum() / loss.size * box)


def rel(a: float | None, b: float | None) -> float:
    if a is None or b is None or b == 0:
        return float("nan")
    return abs(a - b) / abs(b)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="digits_cnn")
    p.add_argument("--checkpoint", default=os.path.join(ROOT, "tests", "data", "demo_checkpoint.pt"))
    p.add_argument("--dataset", default="digits")
    p.add_argument("--samples", type=int, default=None, help="a subset of each split (default: all)")
    p.add_argument("--points", type=int, default=51)
    p.add_argument("--tolerances", default="0.01,0.02,0.05")
    p.add_argument("--min-samples", type=int, default=256)
    p.add_argument("--block", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    tune_cpu_allocator()
    print(machine(), flush=True)

    model = build_model(a.model)
    model.load_state_dict(read_state_dict(a.checkpoint, "--checkpoint"))
    model.eval()
    state = {k: v.detach() for k, v in model.state_dict().items()}
    keys = space_keys(model, "weights")
    gen = torch.Generator().manual_seed(0)
    dirs = [random_direction(state, keys, gen, "filter", "biasbn", {}) for _ in range(2)]
    data = [load_eval_set(a.dataset, split, None, a.samples, 0) for split in ("train", "test")]
    sizes = [len(d) for d in data]
    axis = np.linspace(-1.0, 1.0, a.points)
    coords = np.stack([g.ravel() for g in np.meshgrid(axis, axis, indexing="ij")], axis=1)
    shape = (a.points, a.points)
    box = 4.0
    silent = lambda _m: None  # noqa: E731
    print(f"{a.model} on {a.dataset}: splits {dict(zip(('train', 'test'), sizes))}, grid {a.points}x{a.points}",
          flush=True)

    exact_engine = make_engine(model, dirs, data, loss="ce", device=CPU, batch_size=a.batch_size, log=silent)
    t0 = time.perf_counter()
    exact = exact_engine.evaluate(coords)
    exact_seconds = time.perf_counter() - t0
    exact_forwards = len(coords) * sum(sizes)
    print(f"exact ({exact_engine.name}): {exact_seconds:.1f} s, {exact_forwards} sample-forwards", flush=True)

    rows = []
    for tol in [float(t) for t in a.tolerances.split(",")]:
        rule = SequentialRule(tol, a.min_samples, a.block, 0)
        engine = make_engine(model, dirs, data, loss="ce", device=CPU, batch_size=a.batch_size, log=silent,
                             rule=rule)
        t0 = time.perf_counter()
        seq = engine.evaluate(coords)
        seconds = time.perf_counter() - t0
        forwards = engine.rows_forwarded
        m = 2  # classify: loss, acc; then per split [samples, se(loss), se(acc)]
        for j, split in enumerate(("train", "test")):
            le = exact[:, m * j].reshape(shape)
            ls = seq[:, m * j].reshape(shape)
            se = seq[:, 2 * m + 3 * j + 1].reshape(shape)
            err = np.abs(ls - le) / np.abs(le)
            rise_e = grid_max_rise(le, [axis, axis], RADIUS).value
            rise_s = grid_max_rise(ls, [axis, axis], RADIUS).value
            basin_e, basin_s = basin_area(le, box), basin_area(ls, box)
            rows.append({"tol": tol, "split": split, "saving": exact_forwards / forwards, "forwards": forwards,
                         "max_err": float(np.nanmax(err)), "median_err": float(np.nanmedian(err)),
                         "within_2se": float(np.mean(np.abs(ls - le) <= 2 * se + 1e-6 * np.abs(le))),
                         "basin_exact": basin_e, "basin_seq": basin_s, "basin_rel": rel(basin_s, basin_e),
                         "rise_exact": rise_e, "rise_seq": rise_s, "rise_rel": rel(rise_s, rise_e),
                         "seconds": seconds, "exact_seconds": exact_seconds})
        print(f"tolerance {tol:g}: {seconds:.1f} s, {forwards} sample-forwards "
              f"({exact_forwards / forwards:.2f}x fewer)", flush=True)

    print()
    print("| tolerance | split loss | sample-forwards, both splits (exact / seq) | max rel. error | "
          "median rel. error | within 2 se | basin area 1.1x min (exact -> seq) | "
          "max-rise r=0.5 (exact -> seq) | seconds (exact, seq) | goal met |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        met = (r["saving"] >= GOAL["saving"] and r["basin_rel"] <= GOAL["basin"] and r["rise_rel"] <= GOAL["rise"])
        print(f"| {r['tol']:g} | {r['split']} | {r['saving']:.2f}x ({r['forwards']}) | {r['max_err']:.2e} | "
              f"{r['median_err']:.2e} | {100 * r['within_2se']:.0f}% | {r['basin_exact']:.4f} -> "
              f"{r['basin_seq']:.4f} ({100 * r['basin_rel']:.1f}%) | {r['rise_exact']:.4g} -> {r['rise_seq']:.4g} "
              f"({100 * r['rise_rel']:.2f}%) | {r['exact_seconds']:.1f}, {r['seconds']:.1f} | "
              f"{'yes' if met else 'no'} |")


if __name__ == "__main__":
    main()
