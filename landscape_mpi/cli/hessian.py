"""`landscape-mpi hessian`: its options are the fields of `HessianConfig` and `HessianRun`
(landscape_mpi/config/hessian.py); the job is landscape_mpi/hessian/run.py."""

from __future__ import annotations

import argparse

from landscape_mpi.config.hessian import HessianConfig, HessianRun
from landscape_mpi.config.options import add_options, from_args


def add_parser(sub) -> None:
    """Add the `hessian` subcommand to the subparsers `sub` of landscape-mpi."""
    p = sub.add_parser("hessian", help="Hessian eigenvalues, trace, spectral density and average adaptive rise of "
                                       "checkpoints, into an HDF5 file")
    add_options(p, HessianConfig)
    add_options(p, HessianRun)
    p.set_defaults(func=cmd_hessian)


def cmd_hessian(a: argparse.Namespace) -> int:
    from landscape_mpi.hessian.run import run_hessian
    from landscape_mpi.runtime.context import make_context

    cfg, run = from_args(HessianConfig, a), from_args(HessianRun, a)
    # An exception escaping here on one rank of several ends the whole job (lifecycle.run_main, via cli.main).
    return run_hessian(cfg, make_context(run.device, run.threads), run.ranks_per_point, run.group_timeout)
