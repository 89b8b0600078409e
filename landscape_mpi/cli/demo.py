"""`landscape-mpi demo`: the embedded default: train a small CNN on digits (once), then compute its 2D surface.

Its options: `DemoOptions`, the `SurfaceConfig` fields that do not name the model, the data, the grid or where
directions come from (the demo fixes those), and `RunOptions` (--out defaults to OUT_DIR/surface.h5). The
orchestration lives here because it uses training and surface, independent siblings below the CLI.
"""

from __future__ import annotations

import argparse
import os
import sys

from landscape_mpi.config.errors import EXIT_COMPLETE, EXIT_RESUMABLE
from landscape_mpi.config.options import add_options, from_args
from landscape_mpi.config.surface import Axis, DemoOptions, RunOptions, SurfaceConfig
from landscape_mpi.config.train import TrainConfig

#: SurfaceConfig fields the demo sets itself (the rest are options of the demo as of surface).
FIXED = ("model", "checkpoint", "dataset", "data_root", "x", "y", "z", "x_target", "y_target", "same_dir",
         "directions", "trajectory", "hessian_file", "dir_file", "dir_format")


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="the embedded default: train a small CNN on digits, compute a 2D surface")
    add_options(p, DemoOptions)
    add_options(p, SurfaceConfig, skip=FIXED)
    add_options(p, RunOptions, optional=("out",))
    p.set_defaults(func=cmd_demo)


def configs(a: argparse.Namespace) -> tuple[DemoOptions, SurfaceConfig, RunOptions]:
    """The demo's options, its surface (digits_cnn's final checkpoint under --out-dir, an N x N grid on
    [-1, 1]^2, random directions) and how to run it."""
    demo = from_args(DemoOptions, a)
    checkpoint = os.path.join(demo.out_dir, "digits_cnn", "final.pt")
    axis = Axis(-1.0, 1.0, demo.points)
    config = from_args(SurfaceConfig, a, model="digits_cnn", checkpoint=checkpoint, dataset="digits", x=axis, y=axis)
    options = from_args(RunOptions, a, out=a.out or os.path.join(demo.out_dir, "surface.h5"))
    return demo, config, options


def cmd_demo(a: argparse.Namespace) -> int:
    from landscape_mpi.runtime.context import make_context
    from landscape_mpi.runtime.lifecycle import agree, say
    from landscape_mpi.surface.run import run_surface
    from landscape_mpi.training.train import TrainingStopped, train

    demo, config, options = configs(a)
    ctx = make_context(options.device, options.threads)
    out_dir, checkpoint = demo.out_dir, config.checkpoint

    def train_once() -> str | None:
        # Rank 0 trains while the others wait inside this agree-or-fail step: if training fails (an unwritable
        # --out-dir, say), every rank ends with its message instead of waiting in a barrier.
        if ctx.is_master and not os.path.isfile(checkpoint):
            print(f"landscape-mpi demo: training digits_cnn on the digits dataset -> {os.path.dirname(checkpoint)}/",
                  file=sys.stderr, flush=True)
            try:
                train(TrainConfig(model="digits_cnn", out_dir=os.path.dirname(checkpoint), epochs=demo.epochs,
                                  batch_size=64, lr=0.05, weight_decay=5e-4, schedule="cosine", seed=0),
                      faults=ctx.faults)
            except TrainingStopped as exc:
                return str(exc)
        return None

    stopped = ctx.comm.bcast(agree(ctx.comm, train_once, ctx.rank), root=0)
    if stopped is not None:  # a stop signal during rank 0's training: its checkpoints resume it
        if ctx.is_master:
            say(f"landscape-mpi demo: {stopped} (exit {EXIT_RESUMABLE})")
        return EXIT_RESUMABLE
    code = run_surface(config, options, ctx)
    if ctx.is_master and code == EXIT_COMPLETE:
        print(f"\nThe demo surface is in {options.out}. Next:\n"
              f"  landscape-mpi info {options.out}\n"
              f"  landscape-plot {options.out} --out {os.path.join(out_dir, 'figures')}\n"
              f"  mpiexec -n 3 landscape-mpi demo --out-dir {out_dir} --overwrite   # the same on 3 MPI ranks",
              file=sys.stderr)
    return code
