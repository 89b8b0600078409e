"""Seconds per grid point for a zoo model: setting the weights (theta* + a dx + b dy) and evaluating N samples.

    python benchmarks/bench_evaluate.py --model resnet56 --samples 10000 --device cuda [--batch-size 1024]

Uses random CIFAR-shaped (or digits-shaped) inputs so that no dataset is needed: the cost of a point does not
depend on the pixel values. Prints the time of the weight update, of the evaluation, and points/s; the grid's
wall time is about points / (ranks * points/s) with the MPI pipeline's dynamic scheduling.
"""

from __future__ import annotations

import argparse
import time

import torch

from landscape_mpi.data.datasets import EvalSet
from landscape_mpi.directions.base import PointSetter, random_direction, space_keys
from landscape_mpi.engine.evaluate import evaluate
from landscape_mpi.models import ZOO, build_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="resnet20", choices=list(ZOO))
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--points", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    device = torch.device(a.device)
    model = build_model(a.model).to(device).eval()
    shape = (1, 8, 8) if ZOO[a.model][1] == "digits" else (3, 32, 32)
    g = torch.Generator().manual_seed(0)
    data = EvalSet("train", torch.randn(a.samples, *shape, generator=g),
                   torch.randint(0, 10, (a.samples,), generator=g))
    data = data.to(device)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    keys = space_keys(model, "weights")
    dirs = [random_direction(state, keys, g, "filter", "biasbn") for _ in range(2)]
    setter = PointSetter(model, [{k: v.to(device) for k, v in d.items()} for d in dirs])

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    setter.set([0.1, 0.1])
    evaluate(model, data, "ce", a.batch_size)  # warm-up
    t_set = t_eval = 0.0
    for i in range(a.points):
        sync()
        t0 = time.perf_counter()
        setter.set([0.1 * i, -0.1 * i])
        sync()
        t1 = time.perf_counter()
        evaluate(model, data, "ce", a.batch_size)
        sync()
        t2 = time.perf_counter()
        t_set += t1 - t0
        t_eval += t2 - t1
    n = a.points
    print(f"{a.model} on {device}, {a.samples} samples, batch {a.batch_size}: set weights {1e3 * t_set / n:.2f} ms, "
          f"evaluate {1e3 * t_eval / n:.1f} ms per point = {n / (t_set + t_eval):.2f} points/s "
          f"({a.samples * n / t_eval:,.0f} samples/s)")


if __name__ == "__main__":
    main()
