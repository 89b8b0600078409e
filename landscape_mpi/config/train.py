"""`TrainConfig`: a training (`landscape-mpi train`, the demo, the experiments); each field is its option."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from landscape_mpi.config.errors import UserError
from landscape_mpi.config.options import check_choices, literal_values, option
from landscape_mpi.config.surface import Device

Optimizer = Literal["sgd", "adam"]
OPTIMIZERS: tuple[Optimizer, ...] = literal_values(Optimizer)
Schedule = Literal["none", "step", "cosine", "step3"]
SCHEDULES: tuple[Schedule, ...] = literal_values(Schedule)


@dataclass(frozen=True)
class TrainConfig:
    """What a training computes (stored as JSON in its checkpoints); landscape_mpi/training/train.py runs it."""

    model: str = option(help="zoo name (landscape-mpi models) or package.module:factory")
    out_dir: str = option(help="folder for epoch_NNN.pt, iter_NNNNNNN.pt and final.pt; an unfinished training "
                               "there is resumed")
    dataset: str = option("digits", help="digits, mnist1d, cifar10 or package.module:factory")
    data_root: str | None = option(None, help="folder holding cifar-10-batches-py/ (never downloaded)")
    samples: int | None = option(None, help="train on a deterministic subset of N training samples "
                                            "(default: all)")
    epochs: int = option(10, help="training epochs")
    batch_size: int = option(128, help="samples per optimizer step")
    optimizer: Optimizer = option("sgd", help="sgd (with --momentum) or adam")
    lr: float = option(0.1, help="learning rate")
    momentum: float = option(0.9, help="SGD momentum")
    weight_decay: float = option(5e-4, help="L2 weight decay")
    schedule: Schedule = option("cosine", help="learning-rate schedule: none, step (x0.1 at 50% and 75% of the "
                                               "epochs), step3 (x0.1 at 50%, 75% and 11/12: the paper's 150, 225 "
                                               "and 275 of 300) or cosine (per epoch)")
    warmup_epochs: int = option(0, help="raise the learning rate linearly over the first N epochs, step by step, "
                                        "from lr/steps to the schedule's rate (0: off)")
    clip_grad_norm: float = option(0.0, help="scale each step's gradient down to this global norm where it is "
                                             "larger (0: off); deep nets without shortcuts start with "
                                             "gradient norms in the thousands")
    target_loss: float = option(0.0, help="stop after the first epoch whose train loss is at or below this; that "
                                          "epoch becomes final.pt (nets compared at matched train loss; 0: train "
                                          "all epochs)")
    augment: bool = option(True, help="no random crop (pad 4) and horizontal flip (CIFAR-10)")
    seed: int = option(0, help="seed of the initialization, the sample order and the augmentation")
    save_every_iters: int = option(0, help="also save iter_NNNNNNN.pt every N optimizer steps (trajectories at a "
                                           "finer grain; 0: only per epoch)")

    def __post_init__(self) -> None:
        check_choices(self)
        if self.epochs < 1:
            raise UserError(f"--epochs {self.epochs}: must be at least 1")
        if self.batch_size < 1:
            raise UserError(f"--batch-size {self.batch_size}: must be positive")
        if self.lr <= 0:
            raise UserError(f"--lr {self.lr}: must be positive")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise UserError(f"--warmup-epochs {self.warmup_epochs}: must be between 0 (off) and --epochs")
        if self.clip_grad_norm < 0:
            raise UserError(f"--clip-grad-norm {self.clip_grad_norm}: must be 0 (off) or positive")
        if self.target_loss < 0:
            raise UserError(f"--target-loss {self.target_loss}: must be 0 (off) or positive")
        if self.save_every_iters < 0:
            raise UserError(f"--save-every-iters {self.save_every_iters}: must be 0 (off) or positive")


@dataclass(frozen=True)
class TrainOptions:
    """How `landscape-mpi train` runs (changes no weight)."""

    device: Device = option("auto", help="auto: a GPU if any, else the CPU")

    def __post_init__(self) -> None:
        check_choices(self)
