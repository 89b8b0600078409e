"""`landscape-mpi demo`: the embedded defaults: train a small model once, then compute its 2D surface.

Two of them: the digits CNN (the default, --task classify) and, with `--task lm`, the zoo's small causal
transformer `gpt_tiny` on the text corpus that ships with Python (landscape_mpi/data/text.py), evaluated on a
deterministic subset of 128 sequences per split unless --samples says otherwise, on a 13 x 13 grid.

Its options: `DemoOptions`, the `SurfaceConfig` fields that do not name the model, the data, the grid or where
directions come from (the demo fixes those), and `RunOptions` (--out defaults to OUT_DIR/surface.h5). The
orchestration lives here because it uses training and surface, independent siblings below the CLI.
"""

from __future__ import annotations

import argparse
import os
import sys

from landscape_mpi.config.errors import EXIT_COMPLETE, EXIT_RESUMABLE, UserError
from landscape_mpi.config.options import add_options, from_args
from landscape_mpi.config.surface import Axis, DemoOptions, RunOptions, SurfaceConfig
from landscape_mpi.config.train import TrainConfig

#: SurfaceConfig fields the demo sets itself (the rest are options of the demo as of surface).
FIXED = ("model", "checkpoint", "dataset", "data_root", "x", "y", "z", "x_target", "y_target", "same_dir",
         "directions", "trajectory", "hessian_file", "dir_file", "dir_format")


#: The embedded defaults by --task: the model and data, the training, the subset evaluated, the file.
EMBEDDED = {
    "classify": {"model": "digits_cnn", "dataset": "digits", "samples": None, "points": 21, "surface": "surface.h5",
                 "train": {"epochs": 10, "batch_size": 64, "lr": 0.05, "weight_decay": 5e-4}},
    "lm": {"model": "gpt_tiny", "dataset": "text", "samples": 128, "points": 13, "surface": "surface-lm.h5",
           "train": {"epochs": 3, "batch_size": 64, "optimizer": "adam", "lr": 3e-3, "weight_decay": 0.0}},
}


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="the embedded defaults: train a small CNN on digits (or, with --task lm, a "
                                    "small transformer on text), compute a 2D surface")
    add_options(p, DemoOptions)
    add_options(p, SurfaceConfig, skip=FIXED)
    add_options(p, RunOptions, optional=("out",))
    p.set_defaults(func=cmd_demo)


def configs(a: argparse.Namespace) -> tuple[DemoOptions, TrainConfig, SurfaceConfig, RunOptions]:
    """The demo's options, its training (once, under --out-dir), its surface (the final checkpoint, an N x N
    grid on [-1, 1]^2, random directions) and how to run it."""
    demo = from_args(DemoOptions, a)
    task = getattr(a, "task", None) or "classify"
    if task not in EMBEDDED:
        raise UserError(f"--task {task}: the demo has embedded defaults for {' and '.join(EMBEDDED)}; "
                        f"use landscape-mpi surface for other tasks")
    embedded = EMBEDDED[task]
    train_options = dict(embedded["train"])
    if demo.epochs is not None:
        train_options["epochs"] = demo.epochs
    model_dir = os.path.join(demo.out_dir, embedded["model"])
    training = TrainConfig(model=embedded["model"], out_dir=model_dir, dataset=embedded["dataset"],
                           schedule="cosine", seed=0, **train_options)
    axis = Axis(-1.0, 1.0, demo.points or embedded["points"])
    fixed = {"model": embedded["model"], "checkpoint": os.path.join(model_dir, "final.pt"),
             "dataset": embedded["dataset"], "x": axis, "y": axis}
    if getattr(a, "samples", None) is None and embedded["samples"] is not None:
        fixed["samples"] = embedded["samples"]
    config = from_args(SurfaceConfig, a, **fixed)
    options = from_args(RunOptions, a, out=a.out or os.path.join(demo.out_dir, embedded["surface"]))
    return demo, training, config, options


def cmd_demo(a: argparse.Namespace) -> int:
    from landscape_mpi.runtime.context import make_context
    from landscape_mpi.runtime.lifecycle import agree, say
    from landscape_mpi.surface.run import run_surface
    from landscape_mpi.training.train import TrainingStopped, train

    demo, training, config, options = configs(a)
    ctx = make_context(options.device, options.threads)
    out_dir, checkpoint = demo.out_dir, config.checkpoint

    def train_once() -> str | None:
        # Rank 0 trains while the others wait inside this agree-or-fail step: if training fails (an unwritable
        # --out-dir, say), every rank ends with its message instead of waiting in a barrier.
        if ctx.is_master and not os.path.isfile(checkpoint):
            print(f"landscape-mpi demo: training {training.model} on the {training.dataset} dataset -> "
                  f"{training.out_dir}/", file=sys.stderr, flush=True)
            try:
                train(training, faults=ctx.faults)
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
              f"  mpiexec -n 3 landscape-mpi demo --out-dir {out_dir} --overwrite"
              + (" --task lm" if config.task == "lm" else "") + "   # the same on 3 MPI ranks",
              file=sys.stderr)
    return code
