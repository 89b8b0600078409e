"""Options of `landscape-mpi experiments pilot` (landscape_mpi/experiments/pilot.py runs it)."""

from __future__ import annotations

from dataclasses import dataclass

from landscape_mpi.config.errors import UserError
from landscape_mpi.config.options import check_choices, option
from landscape_mpi.config.surface import Device


@dataclass(frozen=True)
class ExperimentsPilot:
    """`experiments pilot`: each training configuration of the paper set for a few epochs (one seed), timed per
    epoch, per surface point, per Hessian-vector product and per Hessian step on this device; the record and the
    device-hours of the whole set estimated from it (OUT/pilot.json, OUT/pilot.md)."""

    out_dir: str = option("paper-pilot", help="where the pilot's trainings, files and record go (rerun: units "
                                              "already in its pilot.json are kept)")
    device: Device = option("auto", help="auto: a GPU if any, else the CPU")
    data_root: str | None = option(None, help="folder holding cifar-10-batches-py/ (not with --reduced)")
    epochs: int = option(3, help="epochs per training configuration (hard nets: their warm-up shortened to fit)")
    train_samples: int | None = option(5000, help="train on a deterministic subset of N samples (the rate is per "
                                                  "sample; default 5000)")
    samples: int = option(1000, help="samples per split of the surface line's points")
    eig_samples: int = option(500, help="training samples of the eigenvalue line's points")
    points: int = option(5, help="points of the surface line")
    eig_points: int = option(3, help="points of the eigenvalue line")
    hessian_samples: int = option(500, help="samples of the Hessian step (models with Hessian steps: VGG-9)")
    models: str | None = option(None, help="only these paper models, comma-separated (default: every one)")
    reduced: bool = option(False, help="stand-ins (depth-8 CIFAR ResNets, a small CNN for VGG-9) on random "
                                       "8x8 images: the pilot's path on a CPU, not the paper's cost")

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("epochs", "samples", "eig_samples", "points", "eig_points", "hessian_samples"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        if self.train_samples is not None and self.train_samples < 1:
            raise UserError(f"--train-samples {self.train_samples}: must be at least 1")
        if self.reduced and self.data_root:
            raise UserError("--data-root with --reduced: the reduced pilot reads random data; leave one out")
