"""`landscape-mpi train`: its options are the fields of `TrainConfig` and `TrainOptions`
(landscape_mpi/config/train.py); the training is landscape_mpi/training/train.py."""

from __future__ import annotations

import argparse
import sys

from landscape_mpi.config.errors import EXIT_COMPLETE, EXIT_RESUMABLE
from landscape_mpi.config.options import add_options, from_args
from landscape_mpi.config.train import TrainConfig, TrainOptions


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a zoo model, saving a checkpoint every epoch")
    add_options(p, TrainConfig)
    add_options(p, TrainOptions)
    p.set_defaults(func=cmd_train)


def cmd_train(a: argparse.Namespace) -> int:
    import torch

    from landscape_mpi.runtime.faults import Faults
    from landscape_mpi.runtime.lifecycle import say
    from landscape_mpi.training.train import TrainingStopped, train

    cfg, run = from_args(TrainConfig, a), from_args(TrainOptions, a)
    device = None if run.device == "auto" else torch.device(run.device)
    try:
        final = train(cfg, device, faults=Faults.from_environment(0))  # the test suite's
    except TrainingStopped as exc:
        say(f"landscape-mpi train: {exc} (exit {EXIT_RESUMABLE})")
        return EXIT_RESUMABLE
    print(f"saved checkpoints epoch_000.pt .. epoch_{cfg.epochs:03d}.pt and {final}", file=sys.stderr)
    return EXIT_COMPLETE
