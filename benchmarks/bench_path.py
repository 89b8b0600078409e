"""The cost of a path point against a surface point of the same model, and of re-estimating BatchNorm there.

    .venv/bin/python benchmarks/bench_path.py [--threads 2] [--rounds 5] [--points 16]

A path point is theta_0 + sum_k c_k d_k like a surface point, so the path job hands it to the same engine
(`make_engine`): the only differences are the directions (other models minus the first, not filter-normalized
random ones) and, for nets with BatchNorm, the default `--bn recalibrate`, which re-estimates the statistics at
every point with a train-mode pass over `--bn-samples` training samples and therefore runs on the eager engine.
Per model (digits_cnn on the embedded digits, 1,437 train + 360 test; resnet1d_8_w1 on MNIST-1D, 4,000 + 1,000),
the seconds per point of: a surface point (random filter-normalized direction, engine auto), a linear path point
with `--bn eval` (engine auto), a pairs point (4 models, K = 3 directions), and a linear path point with BatchNorm
re-estimated from 2,048 training samples. Interleaved, the order rotating each round; medians over rounds;
machine and versions first, a markdown table last.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_engine import machine  # noqa: E402

from landscape_mpi.data.datasets import load_eval_set  # noqa: E402
from landscape_mpi.directions.base import random_direction, space_keys, target_direction  # noqa: E402
from landscape_mpi.directions.paths import path_table  # noqa: E402
from landscape_mpi.engine import make_engine, tune_cpu_allocator  # noqa: E402
from landscape_mpi.models import build_model  # noqa: E402

CPU = torch.device("cpu")
MODELS = {"digits_cnn": "digits", "resnet1d_8_w1": "mnist1d"}


def engines(name: str, dataset: str, points: int) -> dict:
    """name -> (engine, coefficients) for each kind of point."""
    models = []
    for seed in range(4):
        torch.manual_seed(seed)
        models.append(build_model(name).eval())
    states = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in models]
    data = [load_eval_set(dataset, split, None, None, 0) for split in ("train", "test")]
    keys = space_keys(models[0], "states")
    others = [target_direction(states[0], s, keys, "bench") for s in states[1:]]
    random = random_direction(states[0], space_keys(models[0], "weights"), torch.Generator().manual_seed(0),
                              "filter", "biasbn", {})
    t = np.linspace(0, 1, points)[:, None]
    silent = lambda _m: None  # noqa: E731
    pairs = path_table("pairs", 4, points // 6 + 2).coefficients.reshape(-1, 3)[:points]
    out = {"surface point": (make_engine(models[0], [random], data, loss="ce", device=CPU, log=silent), t - 0.5),
           "linear path point, --bn eval": (make_engine(models[0], others[:1], data, loss="ce", device=CPU,
                                                        log=silent), t),
           "pairs point (K = 3), --bn eval": (make_engine(models[0], others, data, loss="ce", device=CPU,
                                                          log=silent), pairs)}
    train = data[0]
    n = min(2048, len(train))
    out["linear path point, --bn recalibrate"] = (
        make_engine(models[0], others[:1], data, loss="ce", device=CPU, bn="recalibrate",
                    bn_data=train.part(0, n, np.arange(n)), log=silent), t)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--points", type=int, default=16)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    tune_cpu_allocator()
    print(machine())
    rows = []
    for name, dataset in MODELS.items():
        kinds = engines(name, dataset, a.points)
        for _, (engine, coords) in kinds.items():  # warm-up: tracing, first-touch allocations
            engine.evaluate(coords[:2])
        times: dict[str, list[float]] = {k: [] for k in kinds}
        order = list(kinds)
        for r in range(a.rounds):
            for k in order[r % len(order):] + order[:r % len(order)]:
                engine, coords = kinds[k]
                start = time.perf_counter()
                engine.evaluate(coords)
                times[k].append((time.perf_counter() - start) / len(coords))
        base = statistics.median(times["surface point"])
        for k, v in times.items():
            rows.append((name, k, kinds[k][0].name, statistics.median(v), statistics.median(v) / base))
    print("\n| model | point | engine | seconds per point (median) | vs a surface point |")
    print("|---|---|---|---|---|")
    for name, k, engine, s, ratio in rows:
        print(f"| {name} | {k} | {engine} | {s:.4f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
