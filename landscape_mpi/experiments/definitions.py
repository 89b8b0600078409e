"""The paper's findings (docs/method.md#the-papers-claims) as experiments: which models to train and which surfaces to compute.

An experiment is data, not code: training runs (`TrainRun`, shared between experiments by name, so the
depth-56 no-shortcut net of the skip experiment is also the width experiment's x1 net) and surface steps
(`SurfaceStep`: `SurfaceConfig` field values, typed). Four scales:

- ``tiny``: one depth, 5x5 grids, one epoch: every experiment together runs in CI in under 3 minutes.
- ``quick``: the small set reduced to fit under an hour on 2 heavily shared CPU cores (depths 8 and 20 only, 2,000
  training samples, 10 epochs (skip and batch nets 4), 9x9 grids, 3x3 eigenvalue maps, width and batch at depth 8).
- ``small``: MNIST-1D and 1D ResNets of depth 8/20/56 on 2 CPU cores, 60 epochs on all 4,000 samples, 21x21 grids:
  39 minutes on an idle 2-core machine; docs/findings.md.
- ``paper``: CIFAR-10 from ``--data-root`` with the paper's zoo (ResNet-20/56/110, VGG-9), for SLURM arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from landscape_mpi.config.errors import UserError
from landscape_mpi.config.experiments import SCALES
from landscape_mpi.config.surface import Axis

NAMES = ("skip", "batch", "width", "trajectory")


@dataclass(frozen=True)
class TrainRun:
    """One training, saved under ``OUT/runs/<name>/``; `config` is `TrainConfig` minus ``out_dir``."""

    name: str
    config: dict[str, Any]
    label: str
    """What the run is, for tables (e.g. "depth 20, no shortcut")."""


@dataclass(frozen=True)
class SurfaceStep:
    """One surface, ``OUT/<experiment>/<name>.h5``, computed from a run's final checkpoint."""

    name: str
    run: str
    options: dict[str, Any]
    """`SurfaceConfig` field values beyond model, checkpoint, dataset and data_root (which the run gives), e.g.
    ``{"x": Axis(-1, 1, 5), "eig": True}``. ``trajectory`` is a glob inside the run's folder."""
    range_from: str | None = None
    """A PCA step first computed on one point: its /trajectory coordinates give this step's grid range R, and
    this step's axes are in units of R (``-1:1:n`` becomes ``-R:R:n``)."""
    role: dict[str, Any] = field(default_factory=dict)
    """What the report needs to know about the file (e.g. {"kind": "loss2d", "norm": "filter"})."""


@dataclass(frozen=True)
class Experiment:
    name: str
    claim: str
    """The paper's claim, as docs/method.md#the-papers-claims states it."""
    scale: str
    runs: tuple[TrainRun, ...]
    surfaces: tuple[SurfaceStep, ...]

    def run(self, name: str) -> TrainRun:
        return next(r for r in self.runs if r.name == name)

    def manifest(self) -> dict[str, Any]:
        """The experiment as JSON-able data (written next to its files; the report reads it)."""
        return {"name": self.name, "claim": self.claim, "scale": self.scale,
                "runs": [{"name": r.name, "config": r.config, "label": r.label} for r in self.runs],
                "surfaces": [{"name": s.name, "run": s.run, "options": {k: _jsonable(v) for k, v in s.options.items()},
                              "range_from": s.range_from, "role": s.role} for s in self.surfaces]}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Axis):
        return value.spec()
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class Scale:
    """The knobs that differ between the scales."""

    dataset: str
    dim_prefix: str
    """Zoo name prefix of the ResNets: resnet1d (MNIST-1D) or the CIFAR zoo."""
    depths: tuple[int, ...]
    epochs: int
    grid2d: str
    grid1d: str
    grid1d_none: str
    """1D range without normalization: a raw Gaussian direction is far longer than the weights."""
    eig_grid: str
    samples: int | None
    """Evaluation subset per split for surfaces (None: all)."""
    eig_samples: int | None
    small_batch: int
    large_batch: int
    lr: float
    wide: int
    train_samples: int | None = None
    """Train on a deterministic subset of this many samples (None: the whole training split)."""
    width_depth: int | None = None
    """Depth of the width experiment's no-shortcut nets (None: the deepest of `depths`)."""
    batch_depth: int | None = None
    """Depth of the batch and trajectory experiments' net (None: 20 if among `depths`, else the first)."""
    skip_epochs: int | None = None
    """Epochs of the skip experiment's nets (None: `epochs`); the width experiment's x1 net keeps `epochs`."""
    batch_epochs: int | None = None
    """Epochs of the batch experiment's nets (None: `epochs`)."""


SCALE_SETTINGS: dict[str, Scale] = {
    "tiny": Scale("mnist1d", "resnet1d", (8,), 1, "-1:1:5", "-1:1:5", "-0.1:0.1:5", "-1:1:3", 200, 64, 32, 2048,
                  0.05, 4, 1000),
    # Sized for under an hour on 2 cores shared with a load average of 15-30: there one epoch of the depth-56
    # nets took over 7 minutes, one of the depth-20 nets 6, and the width x4 net at depth 56 about 8 s per grid
    # point at 500 samples; hence depths 8 and 20 only, 4 epochs for the skip and batch nets, width and batch at
    # depth 8, 9x9 loss grids on 300 samples, 3x3 eigenvalue maps on 64.
    "quick": Scale("mnist1d", "resnet1d", (8, 20), 10, "-1:1:9", "-1:1:21", "-0.1:0.1:21", "-1:1:3", 300, 64,
                   32, 256, 0.05, 4, 2000, width_depth=8, batch_depth=8, skip_epochs=4, batch_epochs=4),
    # Sized from idle-machine costs (2 cores): one epoch of the depth-56 nets on all 4,000 samples takes 2-3 s, a
    # 21x21 grid on 1,000 samples per split 1-2 minutes, an eigenvalue point on 256 samples 2-8 s. Learning rate
    # 0.02 and 60 epochs: at 0.05 or 20 epochs the depth-56 net without shortcuts stays above train loss 1.2.
    "small": Scale("mnist1d", "resnet1d", (8, 20, 56), 60, "-1:1:21", "-1:1:41", "-0.1:0.1:41", "-1:1:7", 1000, 256,
                   32, 512, 0.02, 4),
    "paper": Scale("cifar10", "cifar", (20, 56, 110), 300, "-1:1:51", "-1:1:51", "-0.1:0.1:51", "-1:1:21", None,
                   5000, 128, 8192, 0.1, 4),
}


def _model(s: Scale, depth: int, shortcut: bool, width: int = 1) -> str:
    if s.dim_prefix == "cifar":  # the paper's zoo names
        base = f"resnet{depth}" if width == 1 else f"wrn{depth}_{width}"
        return base + ("" if shortcut else "_noshort")
    return f"{s.dim_prefix}_{depth}{'' if shortcut else '_noshort'}_w{width}"


def _resnet_run(s: Scale, depth: int, shortcut: bool, width: int = 1, epochs: int | None = None) -> TrainRun:
    model = _model(s, depth, shortcut, width)
    epochs = epochs or s.epochs
    cfg = {"model": model, "dataset": s.dataset, "samples": s.train_samples, "epochs": epochs,
           "batch_size": 128 if s.dataset == "cifar10" else 64, "lr": s.lr, "weight_decay": 5e-4, "schedule": "cosine", "seed": 0}
    label = f"depth {depth}, {'shortcuts' if shortcut else 'no shortcuts'}, width x{width}"
    return TrainRun(f"{model}_e{epochs}", cfg, label)


#: ARPACK's relative tolerance for eigenvalue maps: a colour map needs two digits, not the default three.
EIG_TOL = 1e-2


def _batch_model(s: Scale) -> str:
    if s.dataset == "cifar10":
        return "vgg9"
    return _model(s, s.batch_depth or (20 if 20 in s.depths else s.depths[0]), True)


def _common(s: Scale, samples: int | None) -> dict[str, Any]:
    return {"seed": 0, **({"samples": samples} if samples else {})}


def _plane(spec: str) -> dict[str, Axis]:
    """x and y axes, both ``spec`` (min:max:num)."""
    return {"x": Axis.parse(spec, "x"), "y": Axis.parse(spec, "y")}


def skip(scale: str) -> Experiment:
    s = SCALE_SETTINGS[scale]
    runs, surfaces = [], []
    for depth in s.depths:
        for shortcut in (True, False):
            r = _resnet_run(s, depth, shortcut, epochs=s.skip_epochs)
            runs.append(r)
            role = {"depth": depth, "shortcut": shortcut}
            surfaces.append(SurfaceStep(f"d{depth}_{'short' if shortcut else 'noshort'}", r.name,
                                        {**_plane(s.grid2d), **_common(s, s.samples)},
                                        role={"kind": "loss2d", **role}))
            surfaces.append(SurfaceStep(f"d{depth}_{'short' if shortcut else 'noshort'}_eig", r.name,
                                        {**_plane(s.eig_grid), "eig": True, "eig_tol": EIG_TOL, "splits": ("train",),
                                         **_common(s, s.eig_samples)},
                                        role={"kind": "eig2d", **role}))
    return Experiment("skip", "Without skip connections, deeper ResNets turn from near-convex to chaotic landscapes; "
                      "with skip connections they stay smooth. |lambda_min/lambda_max| is small in convex-looking "
                      "regions and large in chaotic ones.", scale, tuple(runs), tuple(surfaces))


def width(scale: str) -> Experiment:
    s = SCALE_SETTINGS[scale]
    depth = s.width_depth or max(s.depths)
    runs = [_resnet_run(s, depth, False, 1), _resnet_run(s, depth, False, s.wide)]
    surfaces = [SurfaceStep(f"d{depth}_noshort_w{w}", r.name, {**_plane(s.grid2d), **_common(s, s.samples)},
                            role={"kind": "loss2d", "depth": depth, "width": w})
                for r, w in zip(runs, (1, s.wide))]
    return Experiment("width", "Wider networks have smoother landscapes (here: width x1 vs x"
                      f"{s.wide} without shortcuts at depth {depth}).", scale, tuple(runs), tuple(surfaces))


def batch(scale: str) -> Experiment:
    s = SCALE_SETTINGS[scale]
    model = _batch_model(s)
    runs, surfaces = [], []
    epochs = s.batch_epochs or s.epochs
    for wd in (0.0, 5e-4):
        for bs in (s.small_batch, s.large_batch):
            cfg = {"model": model, "dataset": s.dataset, "samples": s.train_samples, "epochs": epochs, "batch_size": bs,
                   "lr": s.lr, "weight_decay": wd, "schedule": "cosine", "seed": 0}
            name = f"{model}_bs{bs}_wd{wd:g}_e{epochs}"
            runs.append(TrainRun(name, cfg, f"batch {bs}, weight decay {wd:g}"))
            for norm, grid in (("filter", s.grid1d), ("none", s.grid1d_none)):
                surfaces.append(SurfaceStep(f"bs{bs}_wd{wd:g}_{norm}", name,
                                            {"x": Axis.parse(grid, "x"), "norm": norm, **_common(s, s.samples)},
                                            role={"kind": "loss1d", "batch": bs, "wd": wd, "norm": norm,
                                                  "large": bs == s.large_batch}))
    return Experiment("batch", "Filter-normalized plots make sharpness comparable: small-batch minima look wider than "
                      "large-batch minima and sharpness tracks test error; without filter normalization the "
                      "comparison can flip under weight decay.", scale, tuple(runs), tuple(surfaces))


def trajectory(scale: str) -> Experiment:
    s = SCALE_SETTINGS[scale]
    model = _batch_model(s)
    runs, surfaces = [], []
    # One epoch has too few epoch checkpoints for a PCA: the tiny scale saves every few steps instead.
    pattern = "iter_*.pt" if scale == "tiny" else "epoch_*.pt"
    for wd in (0.0, 5e-4):
        cfg = {"model": model, "dataset": s.dataset, "samples": s.train_samples, "epochs": s.epochs,
               "batch_size": s.small_batch if scale != "paper" else 128,
               "lr": s.lr, "weight_decay": wd, "schedule": "cosine", "seed": 1,
               "save_every_iters": 6 if scale == "tiny" else 0}
        name = f"{model}_traj_wd{wd:g}_e{s.epochs}"
        runs.append(TrainRun(name, cfg, f"SGD, weight decay {wd:g}"))
        pca = {"directions": "pca", "trajectory": pattern}
        probe = f"wd{wd:g}_probe"
        surfaces.append(SurfaceStep(probe, name, {**_plane("0:0:1"), **pca, **_common(s, s.eig_samples)},
                                    role={"kind": "probe"}))
        n = s.grid2d.rsplit(":", 1)[1]
        surfaces.append(SurfaceStep(f"wd{wd:g}_pca", name, {**_plane(f"-1:1:{n}"), **pca, **_common(s, s.samples)},
                                    range_from=probe, role={"kind": "pca2d", "wd": wd}))
    return Experiment("trajectory", "Optimization trajectories lie in a very low-dimensional space: the first two PCA "
                      "components explain most of the variance.", scale, tuple(runs), tuple(surfaces))


BUILDERS = {"skip": skip, "batch": batch, "width": width, "trajectory": trajectory}


def experiment(name: str, scale: str) -> Experiment:
    """The experiment `name` at `scale`. Raises UserError for an unknown name or scale."""
    if scale not in SCALES:
        raise UserError(f"--scale {scale}: choose one of {', '.join(SCALES)}")
    if name not in BUILDERS:
        raise UserError(f"experiment {name}: unknown; choose one of {', '.join(NAMES)} or all")
    return BUILDERS[name](scale)


def experiments(names: str, scale: str) -> list[Experiment]:
    """`names`: one experiment name, a comma-separated list, or ``all``."""
    wanted = list(NAMES) if names == "all" else [n.strip() for n in names.split(",") if n.strip()]
    return [experiment(n, scale) for n in wanted]
