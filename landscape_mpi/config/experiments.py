"""Options of `landscape-mpi experiments run | report | list` (landscape_mpi/experiments runs them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from landscape_mpi.config.options import check_choices, literal_values, option
from landscape_mpi.config.surface import Device

#: tiny: CI-sized; quick: the small set reduced to about an hour on 2 cores; small: MNIST-1D on a few CPU cores
#: (version 2's confirmatory set); small-v3: the same with version 3's seeds and recipe; paper: CIFAR-10
#: (landscape_mpi/experiments/definitions.py sizes each).
Scale = Literal["tiny", "quick", "small", "small-v3", "paper"]
SCALES: tuple[Scale, ...] = literal_values(Scale)
DEFAULT_OUT_DIR = "experiments-out"


@dataclass(frozen=True)
class ExperimentsRun:
    """`experiments run`: train and compute the surfaces of one experiment or all (resumable)."""

    name: str = option(help="skip, batch, width, trajectory, a comma-separated list, or all; the path "
                                    "findings: path_seeds, path_width, path_parent, or paths (scales tiny and "
                                    "small)", positional=True)
    scale: Scale = option("small", help="tiny: CI-sized; quick: the small set reduced to about an hour on 2 "
                                        "cores; small: MNIST-1D on a few CPU cores; small-v3: the same with the "
                                        "seeds and recipe of the rules of version 3; paper: CIFAR-10 (--data-root)")
    tiny: bool = option(False, help="the same as --scale tiny")
    out_dir: str = option(DEFAULT_OUT_DIR, help="where runs and surface files go")
    device: Device = option("auto", help="auto: a GPU if any, else the CPU")
    launcher: str = option("", help="run each surface under this launcher, e.g. 'mpiexec -n 8' or "
                                    "'srun --kill-on-bad-exit=1 --mpi=pmix' (default: in this process)")
    task: int | None = option(None, help="only array task TASK: its training runs (one, or the batch experiment's "
                                         "small-batch net and its large-batch partners) and their surfaces (a "
                                         "SLURM array index; experiments list shows the tasks)")
    data_root: str | None = option(None, help="folder holding cifar-10-batches-py/ (paper scale)")

    def __post_init__(self) -> None:
        check_choices(self)

    @property
    def scale_name(self) -> str:
        """The scale, --tiny included."""
        return "tiny" if self.tiny else self.scale


@dataclass(frozen=True)
class ExperimentsReport:
    """`experiments report`: the findings report from the experiments' HDF5 files."""

    out_dir: str = option(DEFAULT_OUT_DIR, help="the experiments' folder (as given to run)")
    out: str = option("docs/findings.md", help="the report (markdown)")
    figures: str | None = option(None, help="folder for the figures (default: findings/ beside --out)")


@dataclass(frozen=True)
class ExperimentsList:
    """`experiments list`: the seeds, the experiments, their array tasks, training runs and surfaces."""

    scale: Scale = option("small", help="the scale whose runs are listed")
    count: str | None = option(None, help="print only the number of array tasks of this experiment")

    def __post_init__(self) -> None:
        check_choices(self)
