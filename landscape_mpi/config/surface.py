"""Typed, validated configuration, built once at the entry point and passed down.

`SurfaceConfig` holds everything that determines the *values* of a surface; it is stored as JSON in the
surface file and compared field by field on resume. `RunOptions` holds how a run is executed (device,
I/O mode, threads, ...): those may change between a run and its resume without changing any result.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from landscape_mpi.config.errors import UserError
from landscape_mpi.config.hub import checkpoint_of_model, tokenizer_of_model
from landscape_mpi.config.imports import import_object
from landscape_mpi.config.options import check_choices, comma_join, comma_tuple, literal_values, option

# The choices of the options, each a type (the fields' annotations) and the tuple of its values, read from it.
AXIS_NAMES = ("x", "y", "z")
Norm = Literal["filter", "layer", "weight", "none"]
NORMS: tuple[Norm, ...] = literal_values(Norm)
Ignore = Literal["biasbn", "none"]
IGNORES: tuple[Ignore, ...] = literal_values(Ignore)
DirSpace = Literal["weights", "states"]
DIR_SPACES: tuple[DirSpace, ...] = literal_values(DirSpace)
Loss = Literal["ce", "mse"]
LOSSES: tuple[Loss, ...] = literal_values(Loss)
Split = Literal["train", "test"]
SPLITS: tuple[Split, ...] = literal_values(Split)
Device = Literal["auto", "cuda", "cpu"]
DEVICES: tuple[Device, ...] = literal_values(Device)
IoMode = Literal["single", "collective"]
IO_MODES: tuple[IoMode, ...] = literal_values(IoMode)
Precision = Literal["fp32", "tf32", "bf16"]
PRECISIONS: tuple[Precision, ...] = literal_values(Precision)
BnMode = Literal["eval", "recalibrate"]
BN_MODES: tuple[BnMode, ...] = literal_values(BnMode)
DirectionKind = Literal["random", "pca", "hessian", "file"]
DIRECTION_KINDS: tuple[DirectionKind, ...] = literal_values(DirectionKind)
DirFormat = Literal["native", "reference"]
DIR_FORMATS: tuple[DirFormat, ...] = literal_values(DirFormat)
Order = Literal["coarse", "rows"]
ORDERS: tuple[Order, ...] = literal_values(Order)
#: The built-in tasks (landscape_mpi/tasks) and their metrics; the results are ``<split>_<metric>``.
TASK_METRICS = {"classify": ("loss", "acc"), "lm": ("loss", "ppl", "token_acc"), "regress": ("loss", "r2")}
DEFAULT_TASK = "classify"
#: Evaluation engines (landscape_mpi/engine); auto chooses one.
EngineKind = Literal["auto", "eager", "folded", "channels_last", "compiled", "batched"]
ENGINES: tuple[EngineKind, ...] = literal_values(EngineKind)
#: How a group of ranks shares a point (--ranks-per-point G > 1; landscape_mpi/engine/group.py).
GroupMode = Literal["shard", "data"]
GROUP_MODES: tuple[GroupMode, ...] = literal_values(GroupMode)


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


def coarse_indices(n: int, level: int) -> list[int]:
    """The indices of an axis of `n` points that bisection reaches in `level` steps: both ends, then the middle
    ``(lo + hi) // 2`` of every interval of two or more steps (2^level + 1 indices where the axis has them). The
    coarse grid of an adaptive surface (--adaptive-coarse), and the cells it refines, are made of these."""
    points, intervals = {0, n - 1}, [(0, n - 1)]
    for _ in range(level):
        intervals = [half for lo, hi in intervals if hi - lo >= 2
                     for half in ((lo, (lo + hi) // 2), ((lo + hi) // 2, hi))]
        points.update(lo for lo, _ in intervals)
    return sorted(points)


def parse_metrics(spec: str) -> bool:
    """``--metrics loss`` or ``loss,eig``: returns whether eig is asked for."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts or any(p not in ("loss", "acc", "eig") for p in parts):
        raise UserError(f"--metrics {spec}: choose loss or loss,eig")
    return "eig" in parts


def format_metrics(eig: bool) -> str:
    return "loss,eig" if eig else "loss"


def check_task(task: str, loss: str) -> None:
    """--task is a built-in or package.module:factory; --loss (ce|mse) is classify's only."""
    if task not in TASK_METRICS and ":" not in task:
        raise UserError(f"--task {task}: choose {', '.join(TASK_METRICS)} or package.module:factory")
    if task != DEFAULT_TASK and loss != "ce":
        raise UserError(f"--loss {loss} is an option of --task classify; --task {task} defines its own loss: "
                        f"drop --loss")


@functools.lru_cache(maxsize=None)
def task_metrics(task: str) -> tuple[str, ...]:
    """The metric names of a task (a user task's factory is imported and called once per process)."""
    if task in TASK_METRICS:
        return TASK_METRICS[task]
    return tuple(import_object(task, "--task")().metrics)


def _axis(name: str):
    return lambda spec: Axis.parse(spec, name)


def _space_for_targets(values: dict[str, Any]) -> str:
    # A target direction implies the states space unless --dir-space says otherwise (docs/method.md#directions:
    # with BatchNorm, interpolating the running statistics too is what gives the target's loss at a = 1).
    return "states" if (values.get("x_target") or values.get("y_target")) else "weights"


DATA, GRID, RUN = "model and data", "grid and directions", "run"
#: The defaults of --min-samples and --tolerance-block (sequential estimates, --tolerance).
SEQUENTIAL_MIN_SAMPLES, SEQUENTIAL_BLOCK = 256, 32
#: The fields of the sequential rule: stored only in a file computed with --tolerance (an exact file's config is
#: what it was before the rule existed).
SEQUENTIAL_FIELDS = {"tolerance": None, "min_samples": SEQUENTIAL_MIN_SAMPLES, "tolerance_block": SEQUENTIAL_BLOCK}
#: The fields of an adaptive grid (--adaptive): stored only in a file computed with --adaptive.
ADAPTIVE_FIELDS = {"adaptive": None, "adaptive_coarse": 2, "adaptive_round": 0, "adaptive_tolerance": 0.0}


@dataclass(frozen=True)
class SurfaceConfig:
    """What determines the values of a surface (`landscape-mpi surface`'s options but how to run it). Stored in
    the file; a resume must match it. Each field is its option: flag, default, choices and help."""

    model: str = option(help="zoo name (landscape-mpi models), package.module:factory, or hf:DIR (a "
                             "save_pretrained folder, or a repo id in the local Hugging Face cache)", group=DATA)
    checkpoint: str = option(help="trained model theta*: a state_dict, a dict holding one, or a save_pretrained "
                                  "folder (sharded too); default with --model hf:DIR: DIR", group=DATA,
                             default_from=checkpoint_of_model)
    x: Axis = option(Axis(-1.0, 1.0, 51), help="x axis min:max:num, an inclusive linspace (write --x=-1:1:51)",
                     parse=_axis("x"), format=Axis.spec, group=GRID)
    y: Axis | None = option(None, help="y axis min:max:num for a 2D surface", parse=_axis("y"), format=Axis.spec,
                            group=GRID)
    z: Axis | None = option(None, help="z axis min:max:num for a 3D volume (needs --y)", parse=_axis("z"),
                            format=Axis.spec, group=GRID)
    dataset: str = option("digits", help="digits (embedded), mnist1d (generated offline), cifar10 (from "
                                         "--data-root), text (built in), package.module:factory where "
                                         "factory(split) returns a torch Dataset, or hf:PATH (a datasets "
                                         "save_to_disk folder, a .txt or .jsonl file; {split} in PATH is the "
                                         "split)", group=DATA)
    data_root: str | None = option(None, help="folder holding cifar-10-batches-py/ (never downloaded)", group=DATA)
    tokenizer: str | None = option(None, help="folder of the Hugging Face tokenizer that tokenises --dataset "
                                              "hf:FILE.txt|FILE.jsonl (default with --model hf:DIR: DIR)",
                                   default_from=tokenizer_of_model, group=DATA)
    seq_len: int | None = option(None, help="tokens per sequence of --dataset hf:FILE.txt|FILE.jsonl (default "
                                            "128)", group=DATA)
    samples: int | None = option(None, help="evaluate on a deterministic subset of N samples per split "
                                            "(default: all)", group=DATA)
    splits: tuple[Split, ...] = option(SPLITS, help="which sets to evaluate: train, test or train,test",
                                       parse=comma_tuple, format=comma_join, group=DATA)
    loss: Loss = option("ce", help="ce: cross-entropy on logits; mse: softmax vs one-hot (--task classify)",
                        group=DATA)
    task: str = option(DEFAULT_TASK, help="what a point evaluates: classify (logits vs class labels; metrics "
                                          "loss, acc), lm (next-token prediction; loss, ppl, token_acc), regress "
                                          "(real targets; loss, r2) or package.module:factory (a user Task)",
                       group=DATA)
    norm: Norm = option("filter", help="normalization of random directions: filter (the paper's), layer, weight "
                                       "or none", group=GRID)
    ignore: Ignore = option("biasbn", help="biasbn: no perturbation of biases and BatchNorm (zero direction on "
                                           "tensors of dim <= 1); none: d = w there (the reference code)",
                            group=GRID)
    dir_space: DirSpace = option("weights", help="weights: trainable parameters; states: the whole state_dict "
                                                 "incl. BatchNorm running stats (default on the command line: "
                                                 "states with --x-target/--y-target, where interpolating running "
                                                 "statistics gives correct losses; weights otherwise)",
                                 default_from=_space_for_targets, group=GRID)
    directions: DirectionKind = option("random", help="where dx, dy come from without a target: random "
                                                      "(filter-normalized Gaussians), pca (of --trajectory), "
                                                      "hessian (top eigenvectors of --hessian-file), file "
                                                      "(--dir-file)", group=GRID)
    trajectory: str | None = option(None, help="glob of a training run's checkpoints, e.g. 'run/epoch_*.pt' "
                                               "(--directions pca; the final one is --checkpoint)", group=GRID)
    hessian_file: str | None = option(None, help="a file of landscape-mpi hessian: its top two eigenvectors "
                                                 "(--directions hessian)", group=GRID)
    dir_file: str | None = option(None, help="an HDF5 file holding directions (--directions file)", group=GRID)
    dir_format: DirFormat = option("native", help="native: /directions/<axis>/<key> (e.g. a surface file); "
                                                  "reference: the paper's code's file", group=GRID)
    x_target: str | None = option(None, help="checkpoint theta_2: the x direction is theta_2 - theta* "
                                             "(interpolation, not normalized)", group=GRID)
    y_target: str | None = option(None, help="checkpoint theta_3: the y direction is theta_3 - theta*", group=GRID)
    same_dir: bool = option(False, help="use dy = dx", group=GRID)
    seed: int = option(0, help="seed of the random directions and of the --samples subset", group=GRID)
    precision: Precision = option("fp32", help="fp32 (TF32 off), tf32 (TensorFloat-32 on GPUs) or bf16 "
                                               "(autocast)", group=DATA)
    bn: BnMode = option("eval", help="eval: BatchNorm running statistics (possibly interpolated); recalibrate: "
                                     "re-estimated at every point from --bn-samples training samples",
                        group=DATA)
    bn_samples: int | None = option(None, help="training samples (the first N) that re-estimate BatchNorm "
                                               "(--bn recalibrate)", group=DATA)
    eig: bool = option(False, flag="--metrics", help="loss (loss and accuracy) or loss,eig (also the Hessian's "
                                                     "largest and smallest eigenvalue at every point)",
                       parse=parse_metrics, format=format_metrics, group=DATA)
    eig_tol: float = option(1e-3, help="relative tolerance (ARPACK) of the eigenvalues of --metrics loss,eig",
                            group=DATA)
    tolerance: float | None = option(None, help="sequential estimates (default: exact full passes): read each "
                                                "split in one fixed random order, the same at every point, and "
                                                "stop once the loss's standard error is below REL x |loss|, e.g. "
                                                "0.01 (docs/method.md#sequential-estimates)", group=DATA)
    min_samples: int = option(SEQUENTIAL_MIN_SAMPLES, help="with --tolerance: samples read before the rule may "
                                                           "stop (whole blocks, two at least)", group=DATA)
    tolerance_block: int = option(SEQUENTIAL_BLOCK, help="with --tolerance: samples per block, the unit of the "
                                                         "standard error (not --batch-size: values do not depend "
                                                         "on it)", group=DATA)
    adaptive: int | None = option(None, help="adaptive grid with a budget of POINTS points (default: every grid "
                                             "point): the grid is the finest lattice, its coarse sub-grid is "
                                             "computed first, then rounds refine the cells whose interpolation "
                                             "error is largest (docs/method.md#adaptive-grids)", group=GRID)
    adaptive_coarse: int = option(2, help="with --adaptive: the coarse grid's level, 2^L + 1 points per axis (2: "
                                          "5 per axis)", group=GRID)
    adaptive_round: int = option(0, help="with --adaptive: points per refinement round (0: a 16th of the budget "
                                         "beyond the coarse grid)", group=GRID)
    adaptive_tolerance: float = option(0.0, help="with --adaptive: stop refining cells whose interpolation error of "
                                                 "the first metric is at most this (its units; 0: the budget alone)",
                                       group=GRID)

    def __post_init__(self) -> None:
        if self.checkpoint is None:
            raise UserError("--checkpoint is required: the trained model's state_dict file or save_pretrained "
                            "folder (with --model hf:DIR the folder's own weights are the default)")
        if self.seq_len is not None and self.seq_len < 2:
            raise UserError(f"--seq-len {self.seq_len}: a sequence needs at least 2 tokens (one to predict)")
        if self.z is not None and self.y is None:
            raise UserError("--z needs --y as well: a 3D grid has x, y and z axes")
        check_choices(self)
        check_task(self.task, self.loss)
        if not self.splits or len(set(self.splits)) != len(self.splits):
            raise UserError(f"--splits {','.join(self.splits)}: choose train, test or train,test")
        if self.samples is not None and self.samples < 1:
            raise UserError(f"--samples {self.samples}: must be a positive number of samples")
        if self.bn == "recalibrate" and (self.bn_samples is None or self.bn_samples < 1):
            raise UserError("--bn recalibrate needs --bn-samples N (training samples that re-estimate the statistics)")
        needs = {"pca": ("trajectory", "--trajectory 'DIR/epoch_*.pt'"),
                 "hessian": ("hessian_file", "--hessian-file H.h5"), "file": ("dir_file", "--dir-file F.h5")}
        if self.directions in needs and getattr(self, needs[self.directions][0]) is None:
            raise UserError(f"--directions {self.directions} needs {needs[self.directions][1]}")
        if self.directions != "random" and self.x_target is not None:
            raise UserError(f"--directions {self.directions} and --x-target contradict each other: keep one")
        if not (0 < self.eig_tol < 1):
            raise UserError(f"--eig-tol {self.eig_tol}: must be between 0 and 1, e.g. 1e-3")
        if self.y_target is not None and self.y is None:
            raise UserError("--y-target needs a y axis: add --y=min:max:num")
        if self.same_dir and self.y is None:
            raise UserError("--same-dir needs a y axis: add --y=min:max:num")
        if self.same_dir and self.y_target is not None:
            raise UserError("--same-dir and --y-target contradict each other: keep one")
        self.check_sequential()
        self.check_adaptive()

    def check_adaptive(self) -> None:
        """--adaptive's settings only with --adaptive; its budget at least the coarse grid."""
        if self.adaptive is None:
            for name in ADAPTIVE_FIELDS:
                if getattr(self, name) != ADAPTIVE_FIELDS[name]:
                    flag = "--" + name.replace("_", "-")
                    raise UserError(f"{flag} is a setting of adaptive grids: add --adaptive POINTS or drop {flag}")
            return
        if self.adaptive_coarse < 1:
            raise UserError(f"--adaptive-coarse {self.adaptive_coarse}: must be at least 1 (2^L + 1 points per "
                            f"axis), e.g. 2")
        if self.adaptive_round < 0 or not (math.isfinite(self.adaptive_tolerance) and self.adaptive_tolerance >= 0):
            raise UserError("--adaptive-round and --adaptive-tolerance must be 0 or positive")
        coarse = [len(coarse_indices(n, self.adaptive_coarse)) for n in self.shape]
        if self.adaptive < math.prod(coarse):
            raise UserError(f"--adaptive {self.adaptive}: below the coarse grid's {math.prod(coarse)} points "
                            f"({'x'.join(map(str, coarse))}, --adaptive-coarse {self.adaptive_coarse}); give at "
                            f"least {math.prod(coarse)} or a lower --adaptive-coarse")

    def check_sequential(self) -> None:
        """--tolerance in (0, 1); --min-samples and --tolerance-block positive and only with --tolerance."""
        if self.tolerance is None:
            for name in ("min_samples", "tolerance_block"):
                if getattr(self, name) != SEQUENTIAL_FIELDS[name]:
                    flag = "--" + name.replace("_", "-")
                    raise UserError(f"{flag} is a setting of sequential estimates: add --tolerance REL or drop "
                                    f"{flag}")
            return
        if not (0 < self.tolerance < 1):
            raise UserError(f"--tolerance {self.tolerance}: must be between 0 and 1 (relative standard error of "
                            f"the loss), e.g. 0.01")
        if self.min_samples < 1:
            raise UserError(f"--min-samples {self.min_samples}: must be a positive number of samples, e.g. 256")
        if self.tolerance_block < 1:
            raise UserError(f"--tolerance-block {self.tolerance_block}: must be a positive number of samples, "
                            f"e.g. 32")

    # ----------------------------------------------------------------------------------------- grid
    @property
    def axes(self) -> dict[str, Axis]:
        """The grid's axes in order, by name (x, then y, then z)."""
        return {n: a for n, a in zip(AXIS_NAMES, (self.x, self.y, self.z), strict=True) if a is not None}

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(a.num for a in self.axes.values())

    @property
    def metrics(self) -> list[str]:
        """Result dataset names, e.g. train_loss, train_acc, test_loss, test_acc (and eig_max, eig_min)."""
        names = [f"{s}_{m}" for s in self.splits for m in task_metrics(self.task)]
        return names + (["eig_max", "eig_min"] if self.eig else [])

    @property
    def sequential_columns(self) -> list[str]:
        """With --tolerance, the per-point columns after the metrics: per split the samples read
        (``<split>_samples``) and each metric's standard error (``<split>_<metric>_se``); else none."""
        if self.tolerance is None:
            return []
        return [name for s in self.splits
                for name in (f"{s}_samples", *(f"{s}_{m}_se" for m in task_metrics(self.task)))]

    def target(self, axis: str) -> str | None:
        return {"x": self.x_target, "y": self.y_target}.get(axis)

    # ------------------------------------------------------------------------------- serialization
    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_dict(self, full: bool = False) -> dict[str, Any]:
        """The stored form. `task` only when it is not classify (a classifier's stored config stays what it
        was before tasks existed, byte for byte); `full`: every field."""
        d = dataclasses.asdict(self)
        for name in AXIS_NAMES:
            d[name] = getattr(self, name).spec() if getattr(self, name) is not None else None
        d["splits"] = list(self.splits)
        if not full and d["task"] == DEFAULT_TASK:
            del d["task"]
        for key in ("tokenizer", "seq_len"):  # stored only when given: the files of other data stay as they were
            if not full and d[key] is None:
                del d[key]
        if not full and self.tolerance is None:
            for name in SEQUENTIAL_FIELDS:
                del d[name]
        if not full and self.adaptive is None:
            for name in ADAPTIVE_FIELDS:
                del d[name]
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
LOCATION_FIELDS = ("checkpoint", "x_target", "y_target", "data_root", "trajectory", "hessian_file", "dir_file",
                   "tokenizer")
#: Compared through the file's exact /coords instead of their text.
AXIS_FIELDS = AXIS_NAMES


def config_diff(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Fields whose values differ, as ``field: file has A, command asks B`` lines.

    `stored` may come from a file written by an older version with fewer fields: it is completed with the
    defaults those fields had (`SurfaceConfig.from_dict`), so such a file still resumes. Fields an older
    version stored but that no longer determine values (``batch_size``) are ignored. Location fields are
    compared only as given / not given (their content is compared by sha256); axes by their coordinates.
    """
    stored = SurfaceConfig.from_dict(stored).to_dict(full=True)
    wanted = {**SEQUENTIAL_FIELDS, **ADAPTIVE_FIELDS, **wanted, "task": wanted.get("task", DEFAULT_TASK)}
    lines = []
    if (stored["tolerance"] is None) != (wanted["tolerance"] is None):  # one phrase naming the option
        lines.append("--tolerance: the file holds exact full passes, the command asks sequential estimates "
                     "(drop --tolerance)" if stored["tolerance"] is None else
                     f"--tolerance: the file holds sequential estimates (--tolerance {stored['tolerance']}), the "
                     f"command asks exact full passes (add --tolerance {stored['tolerance']})")
        stored = {**stored, **{k: wanted[k] for k in SEQUENTIAL_FIELDS}}
    if (stored["adaptive"] is None) != (wanted["adaptive"] is None):  # one phrase naming the option
        lines.append("--adaptive: the file holds a regular grid, the command asks an adaptive one (drop "
                     "--adaptive)" if stored["adaptive"] is None else
                     f"--adaptive: the file holds an adaptive grid (--adaptive {stored['adaptive']}), the command "
                     f"asks a regular one (add --adaptive {stored['adaptive']})")
        stored = {**stored, **{k: wanted[k] for k in ADAPTIVE_FIELDS}}
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


@dataclass(frozen=True, kw_only=True)
class GroupOptions:
    """Groups of ranks per point (landscape_mpi/runtime/groups.py): run options of `surface` and `hessian`,
    declared once here; none changes a computed value."""

    ranks_per_point: int = option(1, help="G ranks of one node evaluate together: each grid point (surface; a "
                                          "model sharded over them, or each batch divided: --group-mode), or "
                                          "the Hessian of a model sharded over all G ranks of the job "
                                          "(hessian); same values, and a surface file resumes with any G",
                                  group=RUN)
    group_mode: GroupMode = option("shard", help="with --ranks-per-point G > 1: shard (FSDP2: each rank holds 1/G "
                                                 "of the parameters and directions) or data (each rank the whole "
                                                 "model, 1/G of each batch)", group=RUN)
    group_timeout: float = option(600.0, help="seconds a collective of a group may wait for a member before "
                                              "the job ends (a member that died)", group=RUN)

    def check_group_options(self) -> None:
        if self.ranks_per_point < 1:
            raise UserError(f"--ranks-per-point {self.ranks_per_point}: must be at least 1")
        if self.group_timeout <= 0:
            raise UserError(f"--group-timeout {self.group_timeout}: must be positive")


@dataclass(frozen=True)
class RunOptions(GroupOptions):
    """How a run is executed; none of these change a computed value (they may change between a run and its
    resume)."""

    out: str = option(help="the surface file (.h5); an existing one is resumed", group=RUN)
    overwrite: bool = option(False, help="start over; the old file stays until the new surface is complete "
                                         "(built in FILE.h5.new)", group=RUN)
    device: Device = option("auto", help="auto: this rank's GPU if any, else the CPU", group=RUN)
    io: IoMode = option("single", help="single: one rank writes; collective: every rank writes its points "
                                       "through parallel HDF5", group=RUN)
    threads: int | None = option(None, help="torch CPU threads per rank (default: the rank's CPU set, or the "
                                            "node's cores divided among its ranks)", group=RUN)
    batch_size: int | None = option(None, help="evaluation batch size (default: chosen for the device); changes "
                                               "no value beyond float rounding (the loss is a sample-weighted "
                                               "mean), may differ on resume", group=RUN)
    stream_data: bool = option(False, help="read a user dataset (--dataset package.module:factory) in batches at "
                                           "every point instead of holding the split: memory per rank bounded by "
                                           "the batch, same values (an iterable dataset is always read so)",
                               group=RUN)
    engine: EngineKind = option("auto", help="evaluation engine: auto, or one forced by name (benchmarks, tests); "
                                             "same values", group=RUN)
    order: Order = option("coarse", help="coarse: center, corners, then finer sub-grids; rows: flat index order",
                          group=RUN)
    chunk_size: int = option(0, help="points per work assignment (0: automatic, shrinking towards the end of the "
                                     "grid)", group=RUN)
    flush_seconds: float = option(1.0, help="write finished points to the file at least this often", group=RUN)
    progress_seconds: float = option(30.0, help="in a batch log (not a terminal), one progress line this often",
                                     group=RUN)

    def __post_init__(self) -> None:
        check_choices(self)
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads {self.threads}: must be at least 1")
        if self.batch_size is not None and self.batch_size < 1:
            raise UserError(f"--batch-size {self.batch_size}: must be positive")
        if self.chunk_size < 0:
            raise UserError(f"--chunk-size {self.chunk_size}: must be 0 (automatic) or positive")
        if self.flush_seconds <= 0 or self.progress_seconds <= 0:
            raise UserError("--flush-seconds and --progress-seconds must be positive")
        self.check_group_options()


def check_groups(config: SurfaceConfig, options: RunOptions) -> None:
    """What a group of ranks per point does not do (yet), and what sequential estimates (--tolerance) cannot read:
    one line each, before anything runs."""
    if config.tolerance is not None and options.stream_data:
        raise UserError("--tolerance reads each split in a fixed random order, which --stream-data (in order, a "
                        "batch at a time) cannot: drop one of them")
    if options.ranks_per_point == 1:
        return
    flag = f"--ranks-per-point {options.ranks_per_point}"
    if config.tolerance is not None:
        raise UserError(f"{flag}: --tolerance evaluates a point on one rank (sequential estimates); drop "
                        f"--ranks-per-point or --tolerance")
    if config.bn == "recalibrate":
        raise UserError(f"{flag}: --bn recalibrate is done by one rank per point; drop --ranks-per-point or use "
                        f"--bn eval")
    if options.engine not in ("auto", "eager"):
        raise UserError(f"{flag}: --engine {options.engine} evaluates a point on one rank; a group uses its own "
                        f"(--group-mode); drop --engine")


@dataclass(frozen=True)
class DemoOptions:
    """`landscape-mpi demo`'s own options (besides the surface and run options it shares)."""

    out_dir: str = option("landscape-demo", help="where the checkpoint and the surface go")
    points: int | None = option(None, help="grid points per axis (default: 21 for the digits CNN, 13 for the "
                                           "language model of --task lm)")
    epochs: int | None = option(None, help="training epochs (default: 10 for the digits CNN, 3 for the language "
                                           "model of --task lm)")

    def __post_init__(self) -> None:
        if self.points is not None and self.points < 1:
            raise UserError(f"--points {self.points}: must be at least 1")
        if self.epochs is not None and self.epochs < 1:
            raise UserError(f"--epochs {self.epochs}: must be at least 1")
