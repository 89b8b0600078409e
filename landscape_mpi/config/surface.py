"""Typed, validated configuration, built once at the entry point and passed down.

`SurfaceConfig` holds everything that determines the *values* of a surface; it is stored as JSON in the
surface file and compared field by field on resume. `RunOptions` holds how a run is executed (device,
I/O mode, threads, ...): those may change between a run and its resume without changing any result.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from landscape_mpi.config.errors import UserError

AXIS_NAMES = ("x", "y", "z")
NORMS = ("filter", "layer", "weight", "none")
IGNORES = ("biasbn", "none")
DIR_SPACES = ("weights", "states")
LOSSES = ("ce", "mse")
SPLITS = ("train", "test")
DEVICES = ("auto", "cuda", "cpu")
IO_MODES = ("single", "collective")
PRECISIONS = ("fp32", "tf32", "bf16")
BN_MODES = ("eval", "recalibrate")
DIRECTION_KINDS = ("random", "pca", "hessian", "file")
DIR_FORMATS = ("native", "reference")
ORDERS = ("coarse", "rows")


@dataclass(frozen=True)
class Axis:
    """One grid axis: `num` evenly spaced coordinates from `start` to `stop`, both included."""

    start: float
    stop: float
    num: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start) and math.isfinite(self.stop)):
            raise UserError(f"grid axis {self.spec()}: endpoints must be finite numbers, e.g. -1:1:51")
        if self.num < 1:
            raise UserError(f"grid axis {self.spec()}: the number of points must be at least 1, e.g. -1:1:51")
        if self.num > 1 and self.start >= self.stop:
            raise UserError(f"grid axis {self.spec()}: min must be smaller than max, e.g. -1:1:51")

    @classmethod
    def parse(cls, spec: str, name: str = "x") -> "Axis":
        """Parse ``min:max:num`` (inclusive linspace), e.g. ``-1:1:51`` or ``0:1:11``."""
        parts = str(spec).split(":")
        if len(parts) != 3:
            raise UserError(f"--{name}={spec}: expected min:max:num, e.g. --{name}=-1:1:51")
        try:
            start, stop = float(parts[0]), float(parts[1])
            num = int(parts[2])
        except ValueError:
            raise UserError(f"--{name}={spec}: expected numbers min:max:num with an integer num, "
                            f"e.g. --{name}=-1:1:51") from None
        try:
            return cls(start, stop, num)
        except UserError as exc:
            raise UserError(f"--{name}: {exc}") from None

    def spec(self) -> str:
        """``min:max:num`` with the shortest text that gives back the same floats (repr), e.g. ``-1.0:1.0:51``."""
        return f"{self.start!r}:{self.stop!r}:{self.num}"

    def values(self) -> np.ndarray:
        """The coordinates, float64."""
        return np.linspace(self.start, self.stop, self.num, dtype=np.float64)


@dataclass(frozen=True)
class SurfaceConfig:
    """What determines the values of a surface. Stored in the file; a resume must match it."""

    model: str
    """Zoo model name (see `landscape-mpi models`) or ``package.module:factory``."""
    checkpoint: str
    """Path of the trained model theta* (a state_dict, or a dict holding one)."""
    x: Axis
    """Coordinates along the first direction."""
    y: Axis | None = None
    """Coordinates along the second direction (2D surfaces)."""
    z: Axis | None = None
    """Coordinates along the third direction (3D volumes)."""
    dataset: str = "digits"
    """``digits`` (embedded), ``cifar10`` (from --data-root) or ``package.module:factory``."""
    data_root: str | None = None
    """Folder holding the dataset files (CIFAR-10)."""
    samples: int | None = None
    """Evaluate on a deterministic subset of this many samples per split (None: all)."""
    splits: tuple[str, ...] = SPLITS
    """Which sets to evaluate: train, test or both."""
    loss: str = "ce"
    """``ce``: cross-entropy on logits; ``mse``: mean squared error of softmax against one-hot."""
    norm: str = "filter"
    """Normalization of random directions: filter (the paper's), layer, weight or none."""
    ignore: str = "biasbn"
    """``biasbn``: zero direction on tensors of dim <= 1; ``none``: the reference code's d = w there."""
    dir_space: str = "weights"
    """``weights``: trainable parameters; ``states``: the whole state_dict (BatchNorm running stats too).
    The command line resolves its default: ``states`` with a target direction (docs/method.md#directions: the
    space whose interpolation gives correct losses with BatchNorm), ``weights`` otherwise."""
    directions: str = "random"
    """Where dx, dy come from when no target is given: ``random`` (filter-normalized Gaussians), ``pca``
    (of a training trajectory), ``hessian`` (top eigenvectors of a Hessian file), ``file`` (a direction file)."""
    trajectory: str | None = None
    """With ``directions='pca'``: glob of the saved checkpoints of the training run (final = --checkpoint)."""
    hessian_file: str | None = None
    """With ``directions='hessian'``: a file written by ``landscape-mpi hessian``."""
    dir_file: str | None = None
    """With ``directions='file'``: an HDF5 direction file."""
    dir_format: str = "native"
    """``native`` (``/directions/<axis>/<key>``, e.g. another surface file) or ``reference`` (the paper's code)."""
    x_target: str | None = None
    """Checkpoint theta_2: the x direction is theta_2 - theta* (not normalized)."""
    y_target: str | None = None
    """Checkpoint theta_3: the y direction is theta_3 - theta* (not normalized)."""
    same_dir: bool = False
    """Use dy = dx."""
    seed: int = 0
    """Seed of the random directions and of the --samples subset."""
    precision: str = "fp32"
    """``fp32`` (TF32 off), ``tf32`` (TensorFloat-32 matmul/convolutions on GPUs) or ``bf16`` (autocast)."""
    bn: str = "eval"
    """``eval``: BatchNorm uses the (possibly interpolated) running statistics; ``recalibrate``: re-estimated at
    every point from ``bn_samples`` training samples before evaluating."""
    bn_samples: int | None = None
    """Training samples used by ``bn='recalibrate'`` (the first N of the training split)."""
    eig: bool = False
    """Also compute the Hessian's largest and smallest eigenvalues at every point (``--metrics loss,eig``)."""
    eig_tol: float = 1e-3
    """Relative tolerance of the eigenvalues of ``eig`` (ARPACK)."""

    def __post_init__(self) -> None:
        if self.z is not None and self.y is None:
            raise UserError("--z needs --y as well: a 3D grid has x, y and z axes")
        if self.norm not in NORMS:
            raise UserError(f"--norm {self.norm}: choose one of {', '.join(NORMS)}")
        if self.ignore not in IGNORES:
            raise UserError(f"--ignore {self.ignore}: choose one of {', '.join(IGNORES)}")
        if self.dir_space not in DIR_SPACES:
            raise UserError(f"--dir-space {self.dir_space}: choose one of {', '.join(DIR_SPACES)}")
        if self.loss not in LOSSES:
            raise UserError(f"--loss {self.loss}: choose one of {', '.join(LOSSES)}")
        if not self.splits or any(s not in SPLITS for s in self.splits) or len(set(self.splits)) != len(self.splits):
            raise UserError(f"--splits {','.join(self.splits)}: choose train, test or train,test")
        if self.samples is not None and self.samples < 1:
            raise UserError(f"--samples {self.samples}: must be a positive number of samples")
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision {self.precision}: choose one of {', '.join(PRECISIONS)}")
        if self.bn not in BN_MODES:
            raise UserError(f"--bn {self.bn}: choose one of {', '.join(BN_MODES)}")
        if self.bn == "recalibrate" and (self.bn_samples is None or self.bn_samples < 1):
            raise UserError("--bn recalibrate needs --bn-samples N (training samples that re-estimate the statistics)")
        if self.directions not in DIRECTION_KINDS:
            raise UserError(f"--directions {self.directions}: choose one of {', '.join(DIRECTION_KINDS)}")
        needs = {"pca": ("trajectory", "--trajectory 'DIR/epoch_*.pt'"),
                 "hessian": ("hessian_file", "--hessian-file H.h5"), "file": ("dir_file", "--dir-file F.h5")}
        if self.directions in needs and getattr(self, needs[self.directions][0]) is None:
            raise UserError(f"--directions {self.directions} needs {needs[self.directions][1]}")
        if self.directions != "random" and self.x_target is not None:
            raise UserError(f"--directions {self.directions} and --x-target contradict each other: keep one")
        if self.dir_format not in DIR_FORMATS:
            raise UserError(f"--dir-format {self.dir_format}: choose one of {', '.join(DIR_FORMATS)}")
        if not (0 < self.eig_tol < 1):
            raise UserError(f"--eig-tol {self.eig_tol}: must be between 0 and 1, e.g. 1e-3")
        if self.y_target is not None and self.y is None:
            raise UserError("--y-target needs a y axis: add --y=min:max:num")
        if self.same_dir and self.y is None:
            raise UserError("--same-dir needs a y axis: add --y=min:max:num")
        if self.same_dir and self.y_target is not None:
            raise UserError("--same-dir and --y-target contradict each other: keep one")

    # ----------------------------------------------------------------------------------------- grid
    @property
    def axes(self) -> dict[str, Axis]:
        """The grid's axes in order, by name (x, then y, then z)."""
        return {n: a for n, a in zip(AXIS_NAMES, (self.x, self.y, self.z)) if a is not None}

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(a.num for a in self.axes.values())

    @property
    def metrics(self) -> list[str]:
        """Result dataset names, e.g. train_loss, train_acc, test_loss, test_acc (and eig_max, eig_min)."""
        names = [f"{s}_{m}" for s in self.splits for m in ("loss", "acc")]
        return names + (["eig_max", "eig_min"] if self.eig else [])

    def target(self, axis: str) -> str | None:
        return {"x": self.x_target, "y": self.y_target}.get(axis)

    # ------------------------------------------------------------------------------- serialization
    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in AXIS_NAMES:
            d[name] = getattr(self, name).spec() if getattr(self, name) is not None else None
        d["splits"] = list(self.splits)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SurfaceConfig":
        d = dict(d)
        for name in AXIS_NAMES:
            if d.get(name) is not None:
                d[name] = Axis.parse(d[name], name)
        d["splits"] = tuple(d.get("splits", SPLITS))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


#: Fields that name where inputs live rather than what they are. A resume compares the files' sha256
#: instead (and whether the option is given at all), so that a moved checkpoint or data folder does not
#: block a resume.
LOCATION_FIELDS = ("checkpoint", "x_target", "y_target", "data_root", "trajectory", "hessian_file", "dir_file")
#: Compared through the file's exact /coords instead of their text.
AXIS_FIELDS = AXIS_NAMES


def config_diff(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Fields whose values differ, as ``field: file has A, command asks B`` lines.

    `stored` may come from a file written by an older version with fewer fields: it is completed with the
    defaults those fields had (`SurfaceConfig.from_dict`), so such a file still resumes. Fields an older
    version stored but that no longer determine values (``batch_size``) are ignored. Location fields are
    compared only as given / not given (their content is compared by sha256); axes by their coordinates.
    """
    stored = SurfaceConfig.from_dict(stored).to_dict()
    lines = []
    for key in sorted(set(stored) | set(wanted)):
        if key in AXIS_FIELDS:
            continue
        a, b = stored.get(key), wanted.get(key)
        if key in LOCATION_FIELDS:
            if (a is None) != (b is None):
                lines.append(f"{key}: file has {a!r}, command asks {b!r}")
            continue
        if a != b:
            lines.append(f"{key}: file has {a!r}, command asks {b!r}")
    return lines


@dataclass(frozen=True)
class RunOptions:
    """How a run is executed; none of these change a computed value."""

    out: str
    """The surface file (HDF5)."""
    overwrite: bool = False
    """Start over even if `out` holds results."""
    device: str = "auto"
    """auto (a GPU if this rank has one, else the CPU), cuda or cpu."""
    io: str = "single"
    """single: one rank writes; collective: every rank writes its points through parallel HDF5."""
    threads: int | None = None
    """torch CPU threads per rank (None: the rank's CPU set, or the node's cores divided among its ranks)."""
    batch_size: int | None = None
    """Evaluation batch size (None: chosen for the device). Changes no value beyond float rounding: the loss
    is a sample-weighted mean."""
    engine: str = "auto"
    """Evaluation engine: auto, or one engine forced by name (benchmarks, tests)."""
    order: str = "coarse"
    """Order in which points are handed out: ``coarse`` (center and corners first, then finer sub-grids) or
    ``rows`` (flat index order)."""
    chunk_size: int = 0
    """Points per work assignment (0: automatic, shrinking towards the end of the grid)."""
    flush_seconds: float = 1.0
    """Write finished points to the file at least this often."""
    progress_seconds: float = 30.0
    """In a batch log (not a terminal), one progress line this often."""

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise UserError(f"--device {self.device}: choose one of {', '.join(DEVICES)}")
        if self.io not in IO_MODES:
            raise UserError(f"--io {self.io}: choose one of {', '.join(IO_MODES)}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads {self.threads}: must be at least 1")
        if self.batch_size is not None and self.batch_size < 1:
            raise UserError(f"--batch-size {self.batch_size}: must be positive")
        if self.order not in ORDERS:
            raise UserError(f"--order {self.order}: choose one of {', '.join(ORDERS)}")
        if self.chunk_size < 0:
            raise UserError(f"--chunk-size {self.chunk_size}: must be 0 (automatic) or positive")
        if self.flush_seconds <= 0 or self.progress_seconds <= 0:
            raise UserError("--flush-seconds and --progress-seconds must be positive")
