"""The paper's findings (docs/method.md#the-papers-claims) as experiments: which models to train and which surfaces
to compute.

An experiment is data, not code: training runs (`TrainRun`, shared between experiments by name, so the
depth-56 no-shortcut net of the skip experiment is also the width experiment's x1 net), surface steps
(`SurfaceStep`: `SurfaceConfig` field values, typed) and Hessian steps (`HessianStep`: `HessianConfig` field
values; the batch experiment's curvature at each minimiser). Seeds are data too: every condition is trained once per
training seed (`Scale.train_seeds`) and every random-direction surface is computed once per direction seed
(`Scale.direction_seeds`); names carry them (``resnet1d_20_w1_e60_s11``, ``d20_short_s11_d21``) and roles
carry ``train_seed`` / ``direction_seed``, so that the report groups values by condition and seed and the
verdicts (landscape_mpi/experiments/rules.py) judge the spread over training seeds. The confirmatory scales use
fresh seeds (training 11, 12, 13; directions 21, 22, 23): the first, single-seed findings used training seeds
0 and 1 and direction seed 0. Four scales:

- ``tiny``: one depth, 5x5 grids, one epoch, one training seed and one direction seed: every experiment
  together runs in CI in about 20 s (tests/test_experiments.py builds multi-seed files from it).
- ``quick``: the small set reduced (depths 8 and 20 only, 2,000 training samples, 10 epochs (skip and batch nets
  4), 9x9 grids, 3x3 eigenvalue maps, width and batch at depth 8), 3 training x 3 direction seeds.
- ``small``: MNIST-1D and 1D ResNets of depth 8/20/56 on 2 CPU cores, all 4,000 samples, 21x21 grids, 3 training
  x 3 direction seeds: the confirmatory set (docs/reproducing.md#time-on-this-machine for its time).
- ``paper``: CIFAR-10 from ``--data-root`` with the paper's zoo (ResNet-20/56/110, VGG-9), for SLURM arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from landscape_mpi.config.errors import UserError
from landscape_mpi.config.experiments import SCALES
from landscape_mpi.config.surface import Axis

NAMES = ("skip", "batch", "width", "trajectory")

#: The batch experiment's ways of training the large-batch net (`Scale.batch_variants`):
#: epochs: as many epochs and the same learning rate as the small batch (the paper's setting);
#: steps: as many optimizer steps as the small batch (epochs x large/small batch ratio), same learning rate;
#: lr: as many epochs, learning rate x the batch ratio (linear scaling; TrainConfig has no warm-up).
BATCH_VARIANTS = ("epochs", "steps", "lr")
#: The interpolation between the small-batch (a = 0) and large-batch (a = 1) minimisers spans this range of a
#: (the paper's batch-size figures); the runner shortens either end where BatchNorm running variances,
#: interpolated with the weights, would turn negative (`runner.interpolation_axis`).
INTERP_RANGE = (-0.5, 1.5)


@dataclass(frozen=True)
class TrainRun:
    """One training, saved under ``OUT/runs/<name>/``; `config` is `TrainConfig` minus ``out_dir``."""

    name: str
    config: dict[str, Any]
    label: str
    """What the run is, for tables (e.g. "depth 20, no shortcut")."""
    task: str | None = None
    """Runs with the same task are trained by one array task (`--task`), before the surfaces of any of them:
    a surface that needs two runs (an interpolation) has both in its task. None: a task of its own."""
    prune: bool = False
    """Remove the epoch checkpoints once ``final.pt`` is written (the equal-steps large-batch runs save one per
    epoch: 961 at the small scale); nothing reads them."""

    @property
    def seed(self) -> int:
        return int(self.config["seed"])


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
    """What the report needs to know about the file (e.g. {"kind": "loss2d", "norm": "filter",
    "train_seed": 11, "direction_seed": 21})."""
    target_run: str | None = None
    """A run whose final checkpoint is the x direction's target (``x_target``, not normalized, states space):
    theta(a) = (1 - a) theta_run + a theta_target, so a = 0 is `run`'s model and a = 1 the target's."""


@dataclass(frozen=True)
class HessianStep:
    """One Hessian analysis of a run's final checkpoint, ``OUT/<experiment>/<name>.h5`` (`landscape-mpi hessian`)."""

    name: str
    run: str
    options: dict[str, Any]
    """`HessianConfig` field values beyond model, checkpoint, dataset, data_root and out (which the run and the
    step give), e.g. ``{"top_k": 1, "trace_probes": 30, "seed": 21}``."""
    role: dict[str, Any] = field(default_factory=dict)
    """As `SurfaceStep.role`; ``probe_seed`` (the seed of the probes, ARPACK's start vector and the evaluation
    subset) where a surface has ``direction_seed``."""


#: What the batch experiment's Hessian steps compute at each minimiser: lambda_max (and lambda_min, which the
#: command always computes) to ARPACK's relative tolerance 1e-3, Hutchinson's trace over 30 Rademacher probes and
#: the average adaptive rise over 20 perturbations (rho 0.05, the command's default); no eigenvectors stored, no
#: spectral density. On the small scale's batch nets (24,050 parameters, 1,000 samples): 122 to 562 Hessian-vector
#: products (median 262), 26 to 135 s on one CPU thread (two such processes side by side on 2 cores).
HESSIAN_OPTIONS: dict[str, Any] = {"top_k": 1, "store_vectors": 0, "tol": 1e-3, "trace_probes": 30, "slq_runs": 0,
                                   "adaptive_samples": 20, "splits": ("train",)}


@dataclass(frozen=True)
class Experiment:
    name: str
    claim: str
    """The paper's claim, as docs/method.md#the-papers-claims states it."""
    scale: str
    runs: tuple[TrainRun, ...]
    surfaces: tuple[SurfaceStep, ...]
    hessians: tuple[HessianStep, ...] = ()

    def run(self, name: str) -> TrainRun:
        return next(r for r in self.runs if r.name == name)

    def tasks(self) -> list[tuple[TrainRun, ...]]:
        """The runs grouped by `TrainRun.task`, in order of first appearance: array task i trains group i."""
        groups: dict[str, list[TrainRun]] = {}
        for r in self.runs:
            groups.setdefault(r.task or r.name, []).append(r)
        return [tuple(g) for g in groups.values()]

    def step_runs(self, step: SurfaceStep) -> tuple[str, ...]:
        """The runs a step needs: its own and its target's."""
        return (step.run,) + ((step.target_run,) if step.target_run else ())

    def manifest(self) -> dict[str, Any]:
        """The experiment as JSON-able data (written next to its files; the report reads it)."""
        return {"name": self.name, "claim": self.claim, "scale": self.scale,
                "runs": [{"name": r.name, "config": r.config, "label": r.label, "task": r.task or r.name}
                         for r in self.runs],
                "surfaces": [{"name": s.name, "run": s.run, "options": {k: _jsonable(v) for k, v in s.options.items()},
                              "range_from": s.range_from, "target_run": s.target_run, "role": s.role}
                             for s in self.surfaces],
                "hessians": [{"name": h.name, "run": h.run,
                              "options": {k: _jsonable(v) for k, v in h.options.items()}, "role": h.role}
                             for h in self.hessians]}


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
    """A multiple of `small_batch` (the equal-steps and scaled-rate variants scale by the ratio)."""
    lr: float
    wide: int
    train_seeds: tuple[int, ...]
    """Every condition is trained once per seed (TrainConfig.seed: initialization, sample order, subset)."""
    direction_seeds: tuple[int, ...]
    """Every random-direction surface is computed once per seed (SurfaceConfig.seed: directions and the
    evaluation subset); PCA and interpolation surfaces take the first (it picks only their subset)."""
    eig_direction_seeds: tuple[int, ...] | None = None
    """Direction seeds of the eigenvalue maps (None: `direction_seeds`)."""
    train_samples: int | None = None
    """Train on a deterministic subset of this many samples (None: the whole training split)."""
    width_depth: int | None = None
    """Depth of the width experiment's no-shortcut nets (None: the deepest of `depths`)."""
    batch_depth: int | None = None
    """Depth of the batch and trajectory experiments' net (None: 20 if among `depths`, else the first)."""
    skip_epochs: int | None = None
    """Epochs of the skip experiment's nets (None: `epochs`); the width experiment's x1 net keeps `epochs`."""
    batch_epochs: int | None = None
    """Epochs of the batch experiment's small-batch nets (None: `epochs`)."""
    batch_variants: tuple[str, ...] = BATCH_VARIANTS
    """How the large-batch nets are trained (`BATCH_VARIANTS`)."""
    interp_points: int = 21
    """Points of the interpolation line over `INTERP_RANGE`: 2n + 1 with n even, so a = 0 and a = 1 are points."""
    hessian_samples: int | None = None
    """Evaluation subset of the batch experiment's Hessian steps (None: `samples`, the 1D lines' subset)."""
    hard: tuple[tuple[str, Any], ...] = ()
    """TrainConfig settings of the no-shortcut nets at the deepest depth (skip, and the width experiment's nets
    when they are at that depth): these train worst, and the verdicts compare models that reach the same
    train-loss target (rules.TRAIN_LOSS_TARGET)."""
    recipe: tuple[tuple[str, Any], ...] = ()
    """TrainConfig settings of every net of the skip and width experiments, whatever its depth, width or shortcuts
    (one recipe for every net of a comparison, version 3 of the rules: `RECIPE_V3`); `hard` then adds nothing."""
    lr_warmup_epochs: int = 0
    """Warm-up epochs of the batch experiment's scaled-rate (`lr`) large-batch nets."""

    def __post_init__(self) -> None:
        n = self.interp_points - 1
        if n < 2 or n % 4:
            raise ValueError(f"interp_points {self.interp_points}: 2n + 1 with n even")
        if self.large_batch % self.small_batch:
            raise ValueError("large_batch must be a multiple of small_batch")


SEEDS = (11, 12, 13)
DIRECTION_SEEDS = (21, 22, 23)
#: The confirmatory set of the rules of version 3 (experiments/rules_v3.py): fresh seeds, 5 training seeds (the
#: exact permutation test's smallest p is 1/20 with 3).
SEEDS_V3 = (31, 32, 33, 34, 35)
DIRECTION_SEEDS_V3 = (41, 42, 43)
#: Version 3's one recipe for every net of the skip and width experiments: the warm-up and clipping the depth-56
#: no-shortcut nets needed, the same epoch budget at every depth, and training stopped at the first epoch at train
#: loss 0.05 or below, so that the nets are compared at matched train loss (version 2's run ended its nets between
#: 0.0001 and 0.057, and trained the depth-56 no-shortcut nets alone with warm-up, clipping and 150 epochs).
RECIPE_V3 = (("epochs", 150), ("warmup_epochs", 5), ("clip_grad_norm", 5.0), ("target_loss", 0.05))

SCALE_SETTINGS: dict[str, Scale] = {
    "tiny": Scale("mnist1d", "resnet1d", (8,), 1, "-1:1:5", "-1:1:5", "-0.1:0.1:5", "-1:1:3", 200, 64, 32, 256,
                  0.05, 4, train_seeds=(11,), direction_seeds=(21,),
                  train_samples=1000, interp_points=5, hessian_samples=64),
    # Sized for a machine under load: depths 8 and 20 only, 4 epochs for the skip and batch nets, width and batch
    # at depth 8, 9x9 loss grids on 300 samples, 3x3 eigenvalue maps on 64. 3 x 3 seeds: about 13 minutes on 2
    # lightly loaded cores (measured per array task at training seed 11: a depth-20 skip task 27 s, a batch task
    # 44 s (16 s before its 12 Hessian steps), a width task 12 s, a trajectory task 8 s; 30 tasks). Its nets do not
    # reach the train-loss target in 4 epochs, so its comparisons are expected to be inconclusive: it checks the
    # pipeline, not the claims.
    "quick": Scale("mnist1d", "resnet1d", (8, 20), 10, "-1:1:9", "-1:1:21", "-0.1:0.1:21", "-1:1:3", 300, 64,
                   32, 256, 0.05, 4, train_seeds=SEEDS, direction_seeds=DIRECTION_SEEDS, train_samples=2000,
                   width_depth=8, batch_depth=8, skip_epochs=4, batch_epochs=4),
    # Sized from idle-machine costs (2 cores): one epoch of the depth-56 nets on all 4,000 samples takes 2-3 s, a
    # 21x21 grid on 1,000 samples per split 1-2 minutes, an eigenvalue point on 256 samples 2-8 s; the single-seed
    # set took 39 minutes. Learning rate 0.02 and 60 epochs (at 0.05 or 20 epochs the depth-56 net without
    # shortcuts stays above train loss 1.2). The depth-56 no-shortcut nets (skip, and both width nets) train 150
    # epochs with a 5-epoch warm-up and the gradient norm clipped at 5: they start with gradient norms of
    # 1,700-2,500 (BatchNorm in a deep net without shortcuts). Without those two, at 0.02 for 60 epochs the x1 net
    # ended at train loss 0.98 and the x4 at 0.49; at lr 0.005 for 200 epochs the x1 net ended at 0.040 on
    # training seed 11 but 0.35 on seed 12 (test accuracy 72%). With them, seed 12: 0.24 after 60 epochs, 0.050
    # after 150 (test accuracy 93%). The x4 net and the other seeds are checked by the confirmatory run (the
    # report says per model whether it reached the target: all did). Batch 32 vs 512 (ratio 16): the equal-steps
    # large-batch nets train 960 epochs (about 5 minutes each), the scaled-rate ones use lr 0.32 (a probe at seed 11:
    # train loss 0.002, test accuracy 98%, after a loss spike in the first epochs; no warm-up, as fixed before the
    # run). 3 x 3 seeds: about 6 h of wall time on 2 cores, measured over nine sittings
    # (docs/reproducing.md#time-on-this-machine).
    "small": Scale("mnist1d", "resnet1d", (8, 20, 56), 60, "-1:1:21", "-1:1:41", "-0.1:0.1:41", "-1:1:7", 1000, 256,
                   32, 512, 0.02, 4, train_seeds=SEEDS, direction_seeds=DIRECTION_SEEDS,
                   hard=(("epochs", 150), ("warmup_epochs", 5), ("clip_grad_norm", 5.0))),
    # Version 3's confirmatory set: the small scale with fresh seeds (5 training x 3 direction), one recipe for every
    # skip and width net (RECIPE_V3), a 5-epoch warm-up for the scaled-rate large-batch nets (lr 0.32) and 41 points
    # on the weight-decay interpolation (version 2: 21, one or two per basin). Not run
    # when the rules of version 3 were fixed; an estimate from version 2's measured costs: about 10-11 h on 2 cores.
    "small-v3": Scale("mnist1d", "resnet1d", (8, 20, 56), 60, "-1:1:21", "-1:1:41", "-0.1:0.1:41", "-1:1:7", 1000,
                      256, 32, 512, 0.02, 4, train_seeds=SEEDS_V3, direction_seeds=DIRECTION_SEEDS_V3,
                      recipe=RECIPE_V3, lr_warmup_epochs=5, interp_points=41),
    # The equal-steps variant is left out at this scale: batch 8192 vs 128 is 64x the epochs (19,200), and
    # training saves a checkpoint every epoch (56 MB each for VGG-9: about 1 TB per run).
    "paper": Scale("cifar10", "cifar", (20, 56, 110), 300, "-1:1:51", "-1:1:51", "-0.1:0.1:51", "-1:1:21", None,
                   5000, 128, 8192, 0.1, 4, train_seeds=SEEDS, direction_seeds=DIRECTION_SEEDS,
                   batch_variants=("epochs", "lr"), interp_points=41, hessian_samples=5000),
}


def _model(s: Scale, depth: int, shortcut: bool, width: int = 1) -> str:
    if s.dim_prefix == "cifar":  # the paper's zoo names
        base = f"resnet{depth}" if width == 1 else f"wrn{depth}_{width}"
        return base + ("" if shortcut else "_noshort")
    return f"{s.dim_prefix}_{depth}{'' if shortcut else '_noshort'}_w{width}"


def _train_config(s: Scale, model: str, seed: int, **settings: Any) -> dict[str, Any]:
    cfg = {"model": model, "dataset": s.dataset, "samples": s.train_samples, "epochs": s.epochs,
           "batch_size": 128 if s.dataset == "cifar10" else 64, "lr": s.lr, "weight_decay": 5e-4,
           "schedule": "cosine", "seed": seed}
    cfg.update(settings)
    return cfg


def _run_name(s: Scale, cfg: dict[str, Any], stem: str = "") -> str:
    """model, what differs from the scale's defaults, epochs, seed: ``resnet1d_56_noshort_w1_e150_wu5_clip5_s11``."""
    lr = f"_lr{cfg['lr']:g}" if cfg["lr"] != s.lr else ""
    opt = f"_{cfg['optimizer']}" if cfg.get("optimizer", "sgd") != "sgd" else ""
    warm = f"_wu{cfg['warmup_epochs']}" if cfg.get("warmup_epochs") else ""
    clip = f"_clip{cfg['clip_grad_norm']:g}" if cfg.get("clip_grad_norm") else ""
    target = f"_to{cfg['target_loss']:g}" if cfg.get("target_loss") else ""
    return f"{cfg['model']}{stem}_e{cfg['epochs']}{lr}{opt}{warm}{clip}{target}_s{cfg['seed']}"


def _resnet_run(s: Scale, depth: int, shortcut: bool, seed: int, width: int = 1,
                epochs: int | None = None) -> TrainRun:
    model = _model(s, depth, shortcut, width)
    settings: dict[str, Any] = {"epochs": epochs or s.epochs}
    if not shortcut and depth == max(s.depths):
        settings.update(dict(s.hard))
    settings.update(dict(s.recipe))
    cfg = _train_config(s, model, seed, **settings)
    label = f"depth {depth}, {'shortcuts' if shortcut else 'no shortcuts'}, width x{width}"
    return TrainRun(_run_name(s, cfg), cfg, label)


#: ARPACK's relative tolerance for eigenvalue maps: a colour map needs two digits, not the default three.
EIG_TOL = 1e-2


def _batch_model(s: Scale) -> str:
    if s.dataset == "cifar10":
        return "vgg9"
    return _model(s, s.batch_depth or (20 if 20 in s.depths else s.depths[0]), True)


def _common(s: Scale, samples: int | None, seed: int) -> dict[str, Any]:
    return {"seed": seed, **({"samples": samples} if samples else {})}


def _plane(spec: str) -> dict[str, Axis]:
    """x and y axes, both ``spec`` (min:max:num)."""
    return {"x": Axis.parse(spec, "x"), "y": Axis.parse(spec, "y")}


def _seeds(t: int, d: int | None = None) -> str:
    return f"_s{t}" + (f"_d{d}" if d is not None else "")


def skip(scale: str) -> Experiment:
    s = SCALE_SETTINGS[scale]
    runs, surfaces = [], []
    for t in s.train_seeds:
        for depth in s.depths:
            for shortcut in (True, False):
                r = _resnet_run(s, depth, shortcut, t, epochs=s.skip_epochs)
                runs.append(r)
                stem = f"d{depth}_{'short' if shortcut else 'noshort'}"
                for d in s.direction_seeds:
                    role = {"depth": depth, "shortcut": shortcut, "train_seed": t, "direction_seed": d}
                    surfaces.append(SurfaceStep(stem + _seeds(t, d), r.name,
                                                {**_plane(s.grid2d), **_common(s, s.samples, d)},
                                                role={"kind": "loss2d", **role}))
                for d in s.eig_direction_seeds or s.direction_seeds:
                    role = {"depth": depth, "shortcut": shortcut, "train_seed": t, "direction_seed": d}
                    surfaces.append(SurfaceStep(f"{stem}_eig" + _seeds(t, d), r.name,
                                                {**_plane(s.eig_grid), "eig": True, "eig_tol": EIG_TOL,
                                                 "splits": ("train",), **_common(s, s.eig_samples, d)},
                                                role={"kind": "eig2d", **role}))
    return Experiment("skip", "Without skip connections, deeper ResNets turn from near-convex to chaotic landscapes; "
                      "with skip connections they stay smooth. |lambda_min/lambda_max| is small in convex-looking "
                      "regions and large in chaotic ones.", scale, tuple(runs), tuple(surfaces))


def width(scale: str) -> Experiment:
    s = SCALE_SETTINGS[scale]
    depth = s.width_depth or max(s.depths)
    runs, surfaces = [], []
    for t in s.train_seeds:
        for w in (1, s.wide):
            r = _resnet_run(s, depth, False, t, w)
            runs.append(r)
            for d in s.direction_seeds:
                surfaces.append(SurfaceStep(f"d{depth}_noshort_w{w}" + _seeds(t, d), r.name,
                                            {**_plane(s.grid2d), **_common(s, s.samples, d)},
                                            role={"kind": "loss2d", "depth": depth, "width": w, "train_seed": t,
                                                  "direction_seed": d}))
    return Experiment("width", "Wider networks have smoother landscapes (here: width x1 vs x"
                      f"{s.wide} without shortcuts at depth {depth}).", scale, tuple(runs), tuple(surfaces))


def batch_variant_settings(s: Scale, variant: str, epochs: int) -> dict[str, Any]:
    """Epochs and learning rate of the large-batch net of `variant` (`BATCH_VARIANTS`)."""
    ratio = s.large_batch // s.small_batch
    warm = {"warmup_epochs": s.lr_warmup_epochs} if variant == "lr" and s.lr_warmup_epochs else {}
    return {"epochs": {"steps": epochs * ratio}.get(variant, epochs), "lr": s.lr * ratio if variant == "lr" else s.lr,
            **warm}


def interpolation_axis(s: Scale) -> Axis:
    return Axis(INTERP_RANGE[0], INTERP_RANGE[1], s.interp_points)


def batch(scale: str) -> Experiment:
    s = SCALE_SETTINGS[scale]
    model = _batch_model(s)
    runs, surfaces, hessians = [], [], []
    epochs = s.batch_epochs or s.epochs
    ratio = s.large_batch // s.small_batch
    for t in s.train_seeds:
        for wd in (0.0, 5e-4):
            task = f"batch_wd{wd:g}_s{t}"  # the small-batch net and its large-batch partners: one array task
            cfg = _train_config(s, model, t, epochs=epochs, batch_size=s.small_batch, weight_decay=wd)
            small = TrainRun(_run_name(s, cfg, f"_bs{s.small_batch}_wd{wd:g}"), cfg,
                             f"batch {s.small_batch}, weight decay {wd:g}", task=task)
            runs.append(small)
            models = [(None, small)]
            for v in s.batch_variants:
                cfg = _train_config(s, model, t, batch_size=s.large_batch, weight_decay=wd,
                                    **batch_variant_settings(s, v, epochs))
                what = {"epochs": "as many epochs", "steps": f"as many steps ({cfg['epochs']} epochs)",
                        "lr": f"learning rate x{ratio} ({cfg['lr']:g})"}[v]
                large = TrainRun(_run_name(s, cfg, f"_bs{s.large_batch}_wd{wd:g}"), cfg,
                                 f"batch {s.large_batch}, weight decay {wd:g}, {what}", task=task,
                                 prune=v == "steps")
                runs.append(large)
                models.append((v, large))
            for v, r in models:
                prefix = f"{v}_" if v else ""
                bs = s.large_batch if v else s.small_batch
                for d in s.direction_seeds:
                    for norm, grid in (("filter", s.grid1d), ("none", s.grid1d_none)):
                        surfaces.append(SurfaceStep(f"{prefix}bs{bs}_wd{wd:g}_{norm}" + _seeds(t, d), r.name,
                                                    {"x": Axis.parse(grid, "x"), "norm": norm,
                                                     **_common(s, s.samples, d)},
                                                    role={"kind": "loss1d", "batch": bs, "wd": wd, "norm": norm,
                                                          "large": v is not None, "variant": v, "train_seed": t,
                                                          "direction_seed": d}))
                for p in s.direction_seeds:  # the probe seeds: as many as direction seeds
                    hessians.append(HessianStep(f"hess_{prefix}bs{bs}_wd{wd:g}_s{t}_p{p}", r.name,
                                                {**HESSIAN_OPTIONS, "seed": p,
                                                 **({"samples": n} if (n := s.hessian_samples or s.samples) else {})},
                                                role={"kind": "hessian", "batch": bs, "wd": wd, "large": v is not None,
                                                      "variant": v, "train_seed": t, "probe_seed": p}))
            for v, r in models[1:]:
                # theta(a) = (1 - a) theta_small + a theta_large over the whole state (BatchNorm statistics too)
                surfaces.append(SurfaceStep(f"interp_{v}_wd{wd:g}" + _seeds(t), small.name,
                                            {"x": interpolation_axis(s), "norm": "none", "dir_space": "states",
                                             **_common(s, s.samples, s.direction_seeds[0])},
                                            role={"kind": "interp1d", "wd": wd, "variant": v, "train_seed": t,
                                                  "direction_seed": None, "small_run": small.name, "large_run": r.name},
                                            target_run=r.name))
    return Experiment("batch", "Filter-normalized plots make sharpness comparable: small-batch minima look wider than "
                      "large-batch minima and sharpness tracks test error; without filter normalization the "
                      "comparison can flip under weight decay.", scale, tuple(runs), tuple(surfaces), tuple(hessians))


def trajectory(scale: str) -> Experiment:
    s = SCALE_SETTINGS[scale]
    model = _batch_model(s)
    runs, surfaces = [], []
    # One epoch has too few epoch checkpoints for a PCA: the tiny scale saves every few steps instead.
    pattern = "iter_*.pt" if scale == "tiny" else "epoch_*.pt"
    for t in s.train_seeds:
        for wd in (0.0, 5e-4):
            cfg = _train_config(s, model, t, batch_size=s.small_batch if scale != "paper" else 128, weight_decay=wd,
                                save_every_iters=6 if scale == "tiny" else 0)
            name = _run_name(s, cfg, f"_traj_wd{wd:g}")
            runs.append(TrainRun(name, cfg, f"SGD, weight decay {wd:g}"))
            pca = {"directions": "pca", "trajectory": pattern}
            probe = f"wd{wd:g}_probe" + _seeds(t)
            seed = s.direction_seeds[0]  # picks the evaluation subset only: PCA directions are not random
            surfaces.append(SurfaceStep(probe, name, {**_plane("0:0:1"), **pca, **_common(s, s.eig_samples, seed)},
                                        role={"kind": "probe", "wd": wd, "train_seed": t, "direction_seed": None}))
            n = s.grid2d.rsplit(":", 1)[1]
            surfaces.append(SurfaceStep(f"wd{wd:g}_pca" + _seeds(t), name,
                                        {**_plane(f"-1:1:{n}"), **pca, **_common(s, s.samples, seed)},
                                        range_from=probe, role={"kind": "pca2d", "wd": wd, "train_seed": t,
                                                                "direction_seed": None}))
    return Experiment("trajectory", "Optimization trajectories lie in a very low-dimensional space: the first two PCA "
                      "components explain most of the variance.", scale, tuple(runs), tuple(surfaces))


BUILDERS = {"skip": skip, "batch": batch, "width": width, "trajectory": trajectory}
#: Scales whose experiments another module builds, {scale: builder(experiment name)}: ``paper``, the paper's own
#: setting (its recipe, widths and hard nets), registered by landscape_mpi/experiments/paper.py.
SCALE_BUILDERS: dict[str, Callable[[str], Experiment]] = {}


def experiment(name: str, scale: str) -> Experiment:
    """The experiment `name` at `scale`. Raises UserError for an unknown name or scale."""
    if scale not in SCALES:
        raise UserError(f"--scale {scale}: choose one of {', '.join(SCALES)}")
    if name not in BUILDERS:
        raise UserError(f"experiment {name}: unknown; choose one of {', '.join(NAMES)} or all")
    if scale in SCALE_BUILDERS:
        return SCALE_BUILDERS[scale](name)
    return BUILDERS[name](scale)


def experiments(names: str, scale: str) -> list[Experiment]:
    """`names`: one experiment name, a comma-separated list, or ``all``."""
    wanted = list(NAMES) if names == "all" else [n.strip() for n in names.split(",") if n.strip()]
    return [experiment(n, scale) for n in wanted]
