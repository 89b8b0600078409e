"""`landscape-mpi path`: loss and every task metric along paths between models (docs/paths.md).

Options: `PathConfig` (which path), the `SurfaceConfig` fields that say how a point is evaluated (model, data,
task, precision, BatchNorm, splits, metrics) and `RunOptions`. Two defaults differ from `surface`'s, because a
path joins separately trained models: BatchNorm statistics are re-estimated at every point (``--bn
recalibrate``, from ``--bn-samples`` training samples, DEFAULT_BN_SAMPLES unless given) for a model that has
BatchNorm, since interpolated running statistics are wrong between two minima; and the directions span the whole
state (``--dir-space states``), so that t = 1 is the second model, buffers included. Both choices are recorded
in the file. With --train-bend, rank 0 trains the bend first (the training layer), inside an agree-or-fail step.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from landscape_mpi.config.options import add_options, from_args
from landscape_mpi.config.path import PathConfig
from landscape_mpi.config.surface import RunOptions, SurfaceConfig

#: SurfaceConfig fields a path sets itself (theta* is the first model; the grid and directions are the path's).
FIXED = ("checkpoint", "x", "y", "z", "x_target", "y_target", "same_dir", "directions", "trajectory",
         "hessian_file", "dir_file", "dir_format", "norm", "ignore")
#: Training samples that re-estimate BatchNorm at every point when --bn-samples is not given.
DEFAULT_BN_SAMPLES = 2048


def add_parser(sub) -> None:
    p = sub.add_parser("path", help="loss and metrics along paths between models: linear, chain, Bezier (bend "
                                    "given or trained), every pair (the barrier matrix), layer by layer; "
                                    "optionally after aligning neurons")
    add_options(p, PathConfig)
    add_options(p, SurfaceConfig, skip=FIXED)
    add_options(p, RunOptions)
    p.set_defaults(func=cmd_path, bn=None, dir_space=None)


def has_batchnorm(model_name: str) -> bool:
    from landscape_mpi.engine.eager import batchnorms
    from landscape_mpi.models import build_model

    return bool(batchnorms(build_model(model_name)))


def configs(a: argparse.Namespace) -> tuple[PathConfig, SurfaceConfig, RunOptions]:
    """The path, the evaluation config (with the path's defaults for --bn and --dir-space), the run options."""
    from landscape_mpi.surface.paths import evaluation_config

    path = from_args(PathConfig, a)
    options = from_args(RunOptions, a)
    bn = a.bn or ("recalibrate" if has_batchnorm(a.model) else "eval")
    bn_samples = a.bn_samples if a.bn_samples is not None or bn != "recalibrate" else DEFAULT_BN_SAMPLES
    if path.train_bend > 0 and path.bend is None:
        path = replace(path, bend=options.out + ".bend.pt")
    config = from_args(SurfaceConfig, a, checkpoint=path.checkpoints[0], bn=bn, bn_samples=bn_samples,
                       dir_space=a.dir_space or "states")
    return path, evaluation_config(path, config), options


def cmd_path(a: argparse.Namespace) -> int:
    from landscape_mpi.config.errors import EXIT_RESUMABLE
    from landscape_mpi.runtime.context import make_context
    from landscape_mpi.runtime.lifecycle import agree, say
    from landscape_mpi.surface.paths import run_path

    path, config, options = configs(a)
    ctx = make_context(options.device, options.threads)
    if path.train_bend > 0:
        stopped = ctx.comm.bcast(agree(ctx.comm, lambda: train_the_bend(path, config, ctx) if ctx.is_master
                                       else None, ctx.rank), root=0)
        if stopped is not None:  # a stop signal while rank 0 trained: the bend's checkpoint resumes it
            if ctx.is_master:
                say(f"landscape-mpi path: {stopped} (exit {EXIT_RESUMABLE})")
            return EXIT_RESUMABLE
    return run_path(path, config, options, ctx)


def train_the_bend(path: PathConfig, config: SurfaceConfig, ctx) -> str | None:
    """Train (or resume, or find complete) the bend of the Bezier curve from A to B at `path.bend`; None when it
    is complete, the stop message when a stop signal interrupted it."""
    from landscape_mpi.data.datasets import load_eval_set
    from landscape_mpi.models import build_model, checkpoint_sha256, read_state_dict
    from landscape_mpi.runtime.lifecycle import StopRequested
    from landscape_mpi.tasks import make_task
    from landscape_mpi.training.bend import train_bend

    a, b = path.checkpoints
    print(f"landscape-mpi path: training the bend ({path.train_bend} steps) -> {path.bend}", file=sys.stderr,
          flush=True)
    data = load_eval_set(config.dataset, "train", config.data_root, config.samples, config.seed)
    try:
        train_bend(build_model(config.model), read_state_dict(a, "--checkpoint"), read_state_dict(b, "--checkpoint"),
                   data.to(ctx.device), make_task(config.task, config.loss), "bezier", steps=path.train_bend,
                   lr=path.bend_lr, seed=config.seed, out=path.bend,
                   endpoint_hashes=(checkpoint_sha256(a), checkpoint_sha256(b)),
                   recipe={"model": config.model, "dataset": config.dataset}, faults=ctx.faults)
    except StopRequested as exc:
        return str(exc) or "stopped"
    return None
