"""`landscape-mpi surface`: compute (or resume) a loss surface; its options are the fields of `SurfaceConfig`
and `RunOptions` (landscape_mpi/config/surface.py), the job is landscape_mpi/surface/run.py."""

from __future__ import annotations

import argparse

from landscape_mpi.config.options import add_options, from_args
from landscape_mpi.config.surface import RunOptions, SurfaceConfig


def add_parser(sub) -> None:
    p = sub.add_parser("surface", help="compute (or resume) a 1D/2D/3D loss surface into an HDF5 file")
    add_options(p, SurfaceConfig)
    add_options(p, RunOptions)
    p.set_defaults(func=cmd_surface)


def cmd_surface(a: argparse.Namespace) -> int:
    from landscape_mpi.surface.adaptive import job_of
    from landscape_mpi.surface.run import run_surface

    config = from_args(SurfaceConfig, a)
    return run_surface(config, from_args(RunOptions, a), job=job_of(config))
