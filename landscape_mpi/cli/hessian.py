"""`landscape-mpi hessian`: its arguments; the job is landscape_mpi/analysis/hessian_job.py."""

from __future__ import annotations

import argparse

from landscape_mpi.config.hessian import HESSIAN_DTYPES, HessianConfig
from landscape_mpi.config.surface import DEVICES, LOSSES


def add_parser(sub) -> None:
    """Add the `hessian` subcommand to the subparsers `sub` of landscape-mpi."""
    p = sub.add_parser("hessian", help="Hessian eigenvalues, trace, spectral density and adaptive sharpness of "
                                       "checkpoints, into an HDF5 file")
    g = p.add_argument_group("model and data")
    g.add_argument("--model", required=True, help="zoo name (landscape-mpi models) or package.module:factory")
    g.add_argument("--checkpoint", required=True,
                   help="a checkpoint, or a quoted glob 'DIR/epoch_*.pt': one row per file")
    g.add_argument("--dataset", default="digits", help="digits (embedded), cifar10, or package.module:factory")
    g.add_argument("--data-root", help="folder holding cifar-10-batches-py/ (never downloaded)")
    g.add_argument("--samples", type=int, help="a deterministic subset of N samples per split")
    g.add_argument("--splits", default="train", help="train (default), test or train,test (pooled)")
    g.add_argument("--loss", default="ce", choices=LOSSES, help="ce (default) or mse, as in surface")
    g.add_argument("--batch-size", type=int, default=1024, help="samples per double-backprop batch (default 1024)")
    g.add_argument("--precision", default="float32", choices=HESSIAN_DTYPES,
                   help="float32 (default) or float64 (model and data cast: slower, for exact comparisons)")
    g = p.add_argument_group("analyses")
    g.add_argument("--top-k", type=int, default=5, help="largest eigenvalues to compute (default 5)")
    g.add_argument("--store-vectors", type=int, default=2, help="eigenvectors stored per row (default 2, <= top-k)")
    g.add_argument("--tol", type=float, default=1e-6, help="ARPACK relative eigenvalue tolerance (default 1e-6)")
    g.add_argument("--maxiter", type=int, default=1000, help="ARPACK restart limit per eigsh call (default 1000)")
    g.add_argument("--trace-probes", type=int, default=100, help="Hutchinson Rademacher probes (default 100; 0: skip)")
    g.add_argument("--slq-runs", type=int, default=10, help="stochastic Lanczos quadrature runs (default 10; 0: skip)")
    g.add_argument("--slq-steps", type=int, default=80, help="Lanczos steps per SLQ run (default 80)")
    g.add_argument("--slq-sigma", type=float, default=0.01,
                   help="density broadening as a fraction of the spectrum's width (default 0.01)")
    g.add_argument("--slq-grid", type=int, default=2000, help="density grid points (default 2000)")
    g.add_argument("--adaptive-rho", type=float, default=0.05,
                   help="adaptive sharpness: relative perturbation size per filter (default 0.05)")
    g.add_argument("--adaptive-samples", type=int, default=20,
                   help="adaptive sharpness: random perturbations (default 20; 0: skip)")
    g.add_argument("--seed", type=int, default=0, help="seeds the subset, start vectors, probes, perturbations")
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="the Hessian file (.h5)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    g.add_argument("--device", default="auto", choices=DEVICES, help="auto (default): this rank's GPU if any")
    g.add_argument("--threads", type=int, help="torch CPU threads per rank (default: cores / ranks on the node)")
    p.set_defaults(func=cmd_hessian)


def config_from_args(a: argparse.Namespace) -> HessianConfig:
    return HessianConfig(
        model=a.model, checkpoint=a.checkpoint, out=a.out, dataset=a.dataset, data_root=a.data_root,
        samples=a.samples, splits=tuple(s.strip() for s in a.splits.split(",") if s.strip()), loss=a.loss,
        batch_size=a.batch_size, precision=a.precision, top_k=a.top_k, store_vectors=a.store_vectors, tol=a.tol,
        maxiter=a.maxiter, trace_probes=a.trace_probes, slq_runs=a.slq_runs, slq_steps=a.slq_steps,
        slq_sigma=a.slq_sigma, slq_grid=a.slq_grid, adaptive_rho=a.adaptive_rho,
        adaptive_samples=a.adaptive_samples, seed=a.seed, overwrite=a.overwrite)


def cmd_hessian(a: argparse.Namespace) -> int:
    from landscape_mpi.analysis.hessian_job import run_hessian
    from landscape_mpi.runtime.context import make_context

    cfg = config_from_args(a)
    # An exception escaping here on one rank of several ends the whole job (lifecycle.run_main, via cli.main).
    return run_hessian(cfg, make_context(a.device, a.threads))
