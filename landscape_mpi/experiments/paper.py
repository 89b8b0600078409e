"""The paper's own setting (Li et al. 2018, CIFAR-10), the experiments of scale ``paper``.

What the paper fixes, and this module takes over:

- training (its section on the experimental setup): SGD, momentum 0.9, batch 128, weight decay 5e-4, 300 epochs,
  learning rate 0.1 divided by 10 at epochs 150, 225 and 275 (`PAPER_SCHEDULE`, ``--schedule step3``);
- skip connections: ResNet-20/56/110 with and without shortcuts (`SKIP_DEPTHS`);
- width: Wide-ResNet-56 with k = 1, 2, 4, 8 without shortcuts (`WIDTHS`, `WIDTH_DEPTH`; k = 1 is ResNet-56, the
  skip experiment's own net and training folder); the paper's row with shortcuts is left out (`DEVIATIONS`);
- batch size: VGG-9, batch 128 against 8192, weight decay 0 and 5e-4, and the trajectories of VGG-9.

What the paper does not give, and is fixed here before any run (`DEVIATIONS` lists every difference):

- the hard nets (`is_hard`: no shortcuts, depth 56 or more, every width) train with a linear warm-up over the first
  `HARD_WARMUP_EPOCHS` epochs and the gradient norm clipped at `HARD_CLIP` (they start with gradient norms in the
  thousands; at the small scale they did not train without both);
- the scaled-rate large-batch net (variant ``lr``: 0.1 x 64 = 6.4) warms up over `LR_WARMUP_EPOCHS` epochs
  (Goyal et al. 2017), its rate reached after the warm-up.

The skip, batch and trajectory experiments are the ``paper`` scale's of definitions.py (grids, seeds, samples,
Hessian steps) with this recipe applied to every training; the width experiment is built here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from landscape_mpi.experiments import definitions as d

PAPER_LR = 0.1
PAPER_EPOCHS = 300
#: /10 at epochs 150, 225 and 275 of 300 (landscape_mpi/training/train.py, ``step3``).
PAPER_SCHEDULE = "step3"
PAPER_MILESTONES = (150, 225, 275)
SKIP_DEPTHS = (20, 56, 110)
WIDTH_DEPTH = 56
WIDTHS = (1, 2, 4, 8)
SMALL_BATCH, LARGE_BATCH = 128, 8192
HARD_WARMUP_EPOCHS = 5
HARD_CLIP = 5.0
LR_WARMUP_EPOCHS = 5

#: Every way this setting differs from the paper's, or adds to it (docs/reproducing.md#the-papers-own-setting).
DEVIATIONS = (
    "hard nets (no shortcuts, depth >= 56, any width): 5-epoch linear warm-up and gradient norm clipped at 5 "
    "(the paper trains them as the others)",
    "scaled-rate large-batch VGG-9 (lr 6.4, the `lr` variant, not in the paper): 5-epoch warm-up",
    "the `steps` large-batch variant is left out (64x the epochs: 19,200)",
    "width: the paper's row with shortcuts (WRN-56 k = 1-8 with shortcuts) is left out: the report keys the width "
    "records by width alone, and the claim compares the no-shortcut nets",
    "eigenvalue maps on 5,000 training samples (21x21), ARPACK tolerance 1e-2; loss surfaces on the whole splits",
    "the 1D lines and interpolations: 51 and 41 points; the paper's figures do not state their counts",
    "seeds: the paper reports one run per net; here every net is trained once per training seed of the scale",
    "BatchNorm statistics interpolated with the weights in the interpolations (the paper does not say)",
)


def is_hard(model: str) -> bool:
    """A net that needs the warm-up and clipping: no shortcuts and depth 56 or more (``resnet56_noshort``,
    ``resnet110_noshort``, ``wrn56_K_noshort``)."""
    if not model.endswith("_noshort"):
        return False
    stem = model[:-len("_noshort")]
    depth = stem.split("_")[0].removeprefix("resnet").removeprefix("wrn")
    return depth.isdigit() and int(depth) >= WIDTH_DEPTH


def recipe(cfg: dict[str, Any]) -> dict[str, Any]:
    """A ``paper``-scale TrainConfig dict with the paper's schedule, and the warm-up (and clipping) fixed above."""
    out = {**cfg, "schedule": PAPER_SCHEDULE}
    if is_hard(cfg["model"]):
        out.update(warmup_epochs=HARD_WARMUP_EPOCHS, clip_grad_norm=HARD_CLIP)
    elif cfg["lr"] != PAPER_LR:  # the scaled-rate large-batch net
        out["warmup_epochs"] = LR_WARMUP_EPOCHS
    return out


def run_name(old: str, cfg: dict[str, Any]) -> str:
    """`old` (definitions' name: ``..._e300[_lrX]_sT``) with the schedule and what `recipe` added before the seed:
    ``resnet56_noshort_e300_step3_wu5_clip5_s11``."""
    head, seed = old.rsplit("_s", 1)
    warm = f"_wu{cfg['warmup_epochs']}" if cfg.get("warmup_epochs") else ""
    clip = f"_clip{cfg['clip_grad_norm']:g}" if cfg.get("clip_grad_norm") else ""
    return f"{head}_{PAPER_SCHEDULE}{warm}{clip}_s{seed}"


def _with_recipe(exp: d.Experiment) -> d.Experiment:
    """`exp` with `recipe` applied to every training, its runs renamed and every step's references too."""
    names, runs = {}, []
    for r in exp.runs:
        cfg = recipe(r.config)
        names[r.name] = run_name(r.name, cfg)
        runs.append(dataclasses.replace(r, name=names[r.name], config=cfg))

    def role(x: dict[str, Any]) -> dict[str, Any]:
        return {k: names.get(v, v) if k in ("small_run", "large_run") else v for k, v in x.items()}

    surfaces = tuple(dataclasses.replace(s, run=names[s.run], role=role(s.role),
                                         target_run=names[s.target_run] if s.target_run else None)
                     for s in exp.surfaces)
    hessians = tuple(dataclasses.replace(h, run=names[h.run], role=role(h.role)) for h in exp.hessians)
    return dataclasses.replace(exp, runs=tuple(runs), surfaces=surfaces, hessians=hessians)


def _model(depth: int, width: int, shortcut: bool) -> str:
    return (f"resnet{depth}" if width == 1 else f"wrn{depth}_{width}") + ("" if shortcut else "_noshort")


def width() -> d.Experiment:
    """WRN-56, k = 1, 2, 4, 8, without shortcuts (the paper's width figure, its lower row): every net trained like
    the skip experiment's ResNet-56 without shortcuts of the same seed (k = 1 is that net), the same 2D loss
    surfaces."""
    skip = skip_experiment()
    runs, surfaces = [], []
    for t in d.SCALE_SETTINGS["paper"].train_seeds:
        for shortcut in (False,):
            base = next(r for r in skip.runs if r.seed == t and r.config["model"] == _model(WIDTH_DEPTH, 1, shortcut))
            steps = [s for s in skip.surfaces if s.run == base.name and s.role["kind"] == "loss2d"]
            for k in WIDTHS:
                model = _model(WIDTH_DEPTH, k, shortcut)
                cfg = recipe({**base.config, "model": model})
                name = model + base.name[len(base.config["model"]):]
                label = f"depth {WIDTH_DEPTH}, {'shortcuts' if shortcut else 'no shortcuts'}, width x{k}"
                runs.append(d.TrainRun(name, cfg, label))
                stem = f"d{WIDTH_DEPTH}_{'short' if shortcut else 'noshort'}_w{k}"
                for s in steps:
                    ds = s.role["direction_seed"]
                    surfaces.append(d.SurfaceStep(f"{stem}_s{t}_d{ds}", name, dict(s.options),
                                                  role={"kind": "loss2d", "depth": WIDTH_DEPTH, "width": k,
                                                        "shortcut": shortcut, "train_seed": t, "direction_seed": ds}))
    return d.Experiment("width", "Wider networks have smoother landscapes (Wide-ResNet-56, k = 1, 2, 4, 8, without "
                        "shortcuts).", "paper", tuple(runs), tuple(surfaces))


def skip_experiment() -> d.Experiment:
    return _with_recipe(d.skip("paper"))


def paper_experiment(name: str) -> d.Experiment:
    """Experiment `name` (skip, batch, width, trajectory) in the paper's setting."""
    if name == "width":
        return width()
    if name == "skip":
        return skip_experiment()
    return _with_recipe(d.BUILDERS[name]("paper"))


d.SCALE_BUILDERS["paper"] = paper_experiment
