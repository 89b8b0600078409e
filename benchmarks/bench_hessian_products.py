"""Cheaper Hessian-vector products and warm-started eigenvalue maps (docs/hessian.md#cheaper-products-and-warm-starts).

Part 1, seconds per product: `curvature.hessian.HessianOperator` with ``product="plain"`` (today's forward +
double backward per product), ``"graph"`` (the gradient graph kept across products, as PyHessian does when the
data fit one batch) and ``"forward"`` (forward-over-reverse, ``torch.func.jvp`` of ``torch.func.grad``), on
``resnet1d_20_w1`` with 1,000 MNIST-1D training samples in ONE batch, float32. Every path's product is first
checked against the plain one on the same vector (float32: within 1e-4 of the largest entry); then the median
(and the minimum) of ``--reps`` products, each on its own random vector, after one untimed product (the graph
path builds its graph there: its cost is shown as "first product").

Part 2, products per point, cold vs warm: lambda_max and lambda_min (`curvature.hessian.eig_pair`, ARPACK
tolerance ``--tol``) at ``--points`` points theta* + t d along a filter-normalized random direction d, t in
[-1, 1], in two orders: ``sweep`` (t increasing) and ``coarse`` (the surface scheduler's coarse-to-fine order
of a 1-D axis, `runtime.scheduler.point_order`). Cold: ARPACK's seeded start at every point. Warm: every point
but the first starts from the eigenvectors of the point evaluated just before it. Product counts are
deterministic (they do not depend on the machine's load); the eigenvalues of warm and cold runs are compared.
The weights are theta* of a brief training run (``--train-epochs`` of SGD on the 4,000 training samples,
seeded) or ``--checkpoint``.

Run (prints a markdown table with the command, date and machine):
``.venv/bin/python benchmarks/bench_hessian_products.py [--threads 2] [--reps 20] [--points 11] [--tol 1e-3]``.
A quick check that it works: ``--reps 3 --points 5 --train-epochs 1``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_engine import machine  # noqa: E402

from landscape_mpi.curvature.hessian import HessianOperator, eig_pair  # noqa: E402
from landscape_mpi.data.datasets import load_eval_set  # noqa: E402
from landscape_mpi.directions.base import PointSetter, filter_dims, random_direction  # noqa: E402
from landscape_mpi.models import build_model, load_checkpoint  # noqa: E402
from landscape_mpi.runtime.scheduler import point_order  # noqa: E402

MODEL = "resnet1d_20_w1"
PATHS = ("plain", "graph", "forward")


def trained_model(args: argparse.Namespace) -> torch.nn.Module:
    torch.manual_seed(args.seed)
    model = build_model(MODEL)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint)
        return model.eval()
    train = load_eval_set("mnist1d", "train", None, None, args.seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(args.seed)
    model.train()
    for _ in range(args.train_epochs):
        perm = torch.randperm(len(train), generator=g)
        for i in range(0, len(train), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(model(train.inputs[idx]), train.labels[idx]).backward()
            opt.step()
    return model.eval()


def time_products(model, data, args) -> list[str]:
    rng = np.random.default_rng(args.seed)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    check = rng.standard_normal(n)
    vectors = [rng.standard_normal(n) for _ in range(args.reps)]
    reference = HessianOperator(model, data, "ce", len(data), product="plain").product(check)
    scale = float(np.abs(reference).max())
    rows, plain_median = [], None
    for path in PATHS:
        op = HessianOperator(model, data, "ce", len(data), product=path)
        t0 = time.perf_counter()
        first = op.product(check)  # untimed warm-up (the graph path builds its graph here)
        first_s = time.perf_counter() - t0
        err = float(np.abs(first - reference).max()) / scale
        if op.path != path:
            rows.append(f"| {path} | fell back: {op.fallback} | | | | | |")
            continue
        if err > 1e-4:
            raise SystemExit(f"{path}: product differs from the plain one by {err:.1e} of its largest entry")
        wall, cpu = [], []
        for v in vectors:
            w0, c0 = time.perf_counter(), time.process_time()
            op.product(v)
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
        med = float(np.median(wall))
        plain_median = med if path == "plain" else plain_median
        rows.append(f"| {path} | {med:.4f} | {min(wall):.4f} | {float(np.median(cpu)):.4f} | {first_s:.4f} | "
                    f"{plain_median / med:.2f}x | {err:.1e} |")
    return ["| product | median s | min s | median CPU s | first product s | speed-up vs plain | "
            "max diff / max entry |", "|---|---|---|---|---|---|---|", *rows]


def count_products(model, data, args) -> list[str]:
    state = {k: p.detach() for k, p in model.named_parameters()}
    direction = random_direction(state, list(state), torch.Generator().manual_seed(args.seed + 1), "filter",
                                 "biasbn", filter_dims(model))
    setter = PointSetter(model, [direction])
    ts = np.linspace(-1.0, 1.0, args.points)
    orders = {"sweep": np.arange(args.points),
              "coarse": point_order((args.points,), np.zeros(args.points, dtype=bool), "coarse")}

    def at(t: float, v0=None):
        setter.set([float(t)])
        return eig_pair(model, data, "ce", tol=args.tol, maxiter=1000, batch_size=len(data), v0=v0)

    try:
        cold = [at(t) for t in ts]
        rows = []
        for name, order in orders.items():
            prev, warm = None, {}
            for i in order:
                warm[int(i)] = at(ts[i], None if prev is None else prev.vectors)
                prev = warm[int(i)]
            c = sum(p.products for p in cold)
            w = sum(p.products for p in warm.values())
            dev = max(max(abs(warm[i].lambda_max - cold[i].lambda_max),
                          abs(warm[i].lambda_min - cold[i].lambda_min)) / abs(cold[i].lambda_max)
                      for i in range(args.points))
            rows.append(f"| {name} | {args.points} | {c} | {w} | {c / args.points:.1f} | {w / args.points:.1f} | "
                        f"{1 - w / c:.0%} | {dev:.1e} | {' '.join(str(warm[int(i)].products) for i in order)} |")
        lam = " ".join(f"{p.lambda_max:.3g}/{p.lambda_min:.3g}" for p in cold)
    finally:
        setter.set([0.0])
    return ["| order | points | products cold | products warm | per point cold | per point warm | saved | "
            "max abs(warm - cold) / lambda_max | warm products per point, in order |",
            "|---|---|---|---|---|---|---|---|---|", *rows, "",
            f"cold lambda_max/lambda_min along t = {ts[0]:g}..{ts[-1]:g}: {lam}",
            f"cold products per point (t order): {' '.join(str(p.products) for p in cold)}"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=20, help="timed products per path (median)")
    p.add_argument("--samples", type=int, default=1000, help="MNIST-1D training samples, one batch")
    p.add_argument("--points", type=int, default=11, help="points along the line for the product counts")
    p.add_argument("--tol", type=float, default=1e-3, help="ARPACK tolerance of the eigenvalues (surface's default)")
    p.add_argument("--train-epochs", type=int, default=5)
    p.add_argument("--checkpoint", default=None, help=f"weights of {MODEL} instead of the brief training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-timing", action="store_true")
    p.add_argument("--skip-counts", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = trained_model(args)
    data = load_eval_set("mnist1d", "train", None, args.samples, 0)
    n = sum(q.numel() for q in model.parameters() if q.requires_grad)
    out = ["# Hessian-vector products: plain, kept graph, forward-over-reverse; warm-started eigenvalue maps", "",
           f"command: `{' '.join(shlex.quote(a) for a in [sys.executable, *sys.argv])}`",
           f"date: {datetime.datetime.now().isoformat(timespec='seconds')}", *machine().split("\n"),
           f"model: {MODEL} ({n} parameters, float32, eval mode), {len(data)} MNIST-1D training samples in one "
           f"batch, {args.threads} threads; weights: {args.checkpoint or f'{args.train_epochs} epochs of SGD'}", ""]
    if not args.skip_timing:
        out += [f"## Seconds per product (median of {args.reps})", "", *time_products(model, data, args), ""]
    if not args.skip_counts:
        out += [f"## Products per point, cold vs warm start (ARPACK 'BE', tol {args.tol:g})", "",
                *count_products(model, data, args), ""]
    print("\n".join(out))


if __name__ == "__main__":
    main()
