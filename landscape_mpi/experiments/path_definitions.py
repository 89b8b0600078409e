"""The path findings (issue 27 item 6) as experiments: which nets to train, which to spawn from a parent, and which
paths to compute between them (`landscape-mpi path`); judged by the rules of `path_rules` (paths version 1).

Three experiments, each a `PathExperiment` (data, as `definitions.Experiment` is):

- ``path_seeds``: pairs of nets of one recipe from different seeds (the 1x perceptron of `path_models` on the
  digits): the linear path and a quadratic Bezier curve whose bend is trained (Garipov et al. 2018);
- ``path_width``: the same recipe at widths 1x, 4x, 16x: the linear path before and after weight matching
  (``--align``; Ainsworth et al. 2023);
- ``path_parent``: two children spawned from one parent at an early epoch, trained on with different data-order
  seeds, against two nets from scratch (Frankle et al. 2020), on the digits (the 1x perceptron) and on the
  shipped text (gpt_tiny, task lm).

The pairs of a condition share no net: net 2i and net 2i + 1 of the seeds `PAIR_SEEDS` make pair i. The linear
paths of a condition are one ``--kind pairs`` job over its nets (the barrier matrix: every pair, one process); the
verdicts read the curves of the disjoint pairs (`PathStep.role` ``units``), the other curves are shown as they are.
A child is the
parent's own training continued (`Spawn`): the parent is the first net of scratch pair i, its checkpoint after
`PathScale.spawn_epoch` epochs (weights, optimizer and schedule state) is copied into the child's folder with the
child's data-order seed, and the training resumes from there to the recipe's last epoch, so that children and
scratch nets have one recipe and as many epochs; they differ in the shared start only.

Two scales: ``tiny`` (CI: one pair, two epochs, three points of t) and ``small`` (3 pairs per condition, the
confirmatory sizes; docs/reproducing.md#path-findings for its time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from landscape_mpi.config.errors import UserError
from landscape_mpi.experiments.definitions import TrainRun
from landscape_mpi.experiments.path_models import WIDTHS, model_name

PATH_NAMES = ("path_seeds", "path_width", "path_parent")
#: ``experiments run paths``: every path experiment.
ALL_PATHS = "paths"
#: Seeds of the nets trained from scratch: pair i is (PAIR_SEEDS[2i], PAIR_SEEDS[2i + 1]).
PAIR_SEEDS = (101, 102, 103, 104, 105, 106)
#: Data-order seeds of the children: pair i is (CHILD_SEEDS[2i], CHILD_SEEDS[2i + 1]), both of parent
#: PAIR_SEEDS[2i].
CHILD_SEEDS = (201, 202, 203, 204, 205, 206)
#: Seed of every path's evaluation subset (`--seed`) and of the bend's training.
EVAL_SEED = 0


@dataclass(frozen=True)
class PathScale:
    pairs: int
    mlp_epochs: int
    mlp_spawn_epoch: int
    lm_epochs: int
    lm_spawn_epoch: int
    widths: tuple[int, ...]
    points: int
    """values of t on [0, 1] per path, 0 and 1 included."""
    bend_steps: int
    lm_train_samples: int | None
    """gpt_tiny trains on a deterministic subset of this many sequences (None: all 6,539). The subset follows the
    training seed, so a child trains on another subset than its parent: only the CI toy (``tiny``) uses one."""
    lm_eval_samples: int | None
    """Evaluation subset per split of the lm paths (None: all)."""
    mlp_eval_samples: int | None = None


PATH_SCALES: dict[str, PathScale] = {
    "tiny": PathScale(pairs=1, mlp_epochs=2, mlp_spawn_epoch=1, lm_epochs=2, lm_spawn_epoch=1, widths=(1, 4),
                      points=3, bend_steps=4, lm_train_samples=64, lm_eval_samples=32, mlp_eval_samples=200),
    # Sized for <= 40 minutes on 2 loaded cores: the perceptrons train 30 epochs (train loss about 0.04), the
    # children spawn after 5 of them; gpt_tiny trains 2 epochs of the shipped recipe (Adam 3e-3, all 6,539
    # sequences), children spawn after 1; its paths are evaluated on 512 sequences per split.
    "small": PathScale(pairs=3, mlp_epochs=30, mlp_spawn_epoch=5, lm_epochs=2, lm_spawn_epoch=1, widths=WIDTHS,
                       points=11, bend_steps=600, lm_train_samples=None, lm_eval_samples=512),
}


@dataclass(frozen=True)
class Spawn:
    """A child: the parent run's checkpoint after `epoch` epochs, trained on to the recipe's end with the data-order
    seed of `config` (`TrainConfig` minus ``out_dir``: the parent's settings with another seed), saved as a run
    under ``OUT/runs/<name>/``."""

    name: str
    parent: str
    epoch: int
    config: dict[str, Any]
    label: str


@dataclass(frozen=True)
class PathStep:
    """One path file, ``OUT/<experiment>/<name>.h5``, between the final checkpoints of runs or spawns (two, or
    every net of a condition for ``--kind pairs``)."""

    name: str
    ends: tuple[str, ...]
    options: dict[str, Any]
    """`landscape-mpi path` options beyond model, dataset, checkpoints and out: kind, points, train_bend, align,
    samples, seed, task."""
    role: dict[str, Any] = field(default_factory=dict)
    """What the report needs: ``kind`` (linear, bezier, aligned, scratch, children), ``width``, ``task``, and
    ``units``: the pairs (indices into `ends`) the verdicts count, with their ``pairs`` index."""


@dataclass(frozen=True)
class PathExperiment:
    name: str
    claim: str
    scale: str
    runs: tuple[TrainRun, ...]
    spawns: tuple[Spawn, ...]
    paths: tuple[PathStep, ...]

    def config(self, name: str) -> dict[str, Any]:
        """The training settings of a run or a spawn."""
        for r in self.runs:
            if r.name == name:
                return r.config
        return next(s.config for s in self.spawns if s.name == name)

    def manifest(self) -> dict[str, Any]:
        """The experiment as JSON-able data (written next to its files; the report reads it)."""
        return {"name": self.name, "claim": self.claim, "scale": self.scale, "kind": "paths",
                "runs": [{"name": r.name, "config": r.config, "label": r.label} for r in self.runs],
                "spawns": [{"name": s.name, "parent": s.parent, "epoch": s.epoch, "config": s.config,
                            "label": s.label} for s in self.spawns],
                "paths": [{"name": p.name, "ends": list(p.ends), "options": p.options, "role": p.role}
                          for p in self.paths]}


def _mlp_config(s: PathScale, width: int, seed: int) -> dict[str, Any]:
    return {"model": model_name(width), "dataset": "digits", "samples": None, "epochs": s.mlp_epochs,
            "batch_size": 64, "lr": 0.05, "weight_decay": 5e-4, "schedule": "cosine", "seed": seed}


def _lm_config(s: PathScale, seed: int) -> dict[str, Any]:
    return {"model": "gpt_tiny", "dataset": "text", "samples": s.lm_train_samples, "epochs": s.lm_epochs,
            "batch_size": 64, "optimizer": "adam", "lr": 3e-3, "weight_decay": 0.0, "schedule": "cosine",
            "seed": seed}


def _run(cfg: dict[str, Any], stem: str, label: str) -> TrainRun:
    return TrainRun(f"{stem}_e{cfg['epochs']}_s{cfg['seed']}", cfg, label)


def _mlp_run(s: PathScale, width: int, seed: int) -> TrainRun:
    return _run(_mlp_config(s, width, seed), f"mlp2_x{width}", f"2-layer perceptron, width x{width}")


def _lm_run(s: PathScale, seed: int) -> TrainRun:
    return _run(_lm_config(s, seed), "gpt_tiny", "gpt_tiny on the text")


def _pairs(s: PathScale, seeds: tuple[int, ...] = PAIR_SEEDS) -> list[tuple[int, int, int]]:
    """(pair index, seed of A, seed of B) of the scale's pairs."""
    return [(i, seeds[2 * i], seeds[2 * i + 1]) for i in range(s.pairs)]


def _eval(samples: int | None, task: str | None = None) -> dict[str, Any]:
    return {"seed": EVAL_SEED, **({"samples": samples} if samples else {}), **({"task": task} if task else {})}


def _all_pairs(name: str, nets: list, points: int, evaluation: dict[str, Any],
               role: dict[str, Any]) -> list[PathStep]:
    """The linear paths of every pair of `nets` (``--kind pairs``); the verdicts count the disjoint pairs (2i, 2i+1).
    """
    units = [[2 * i, 2 * i + 1] for i in range(len(nets) // 2)]
    return [PathStep(name, tuple(n.name for n in nets), {"kind": "pairs" if len(nets) > 2 else "linear",
                                                         "points": points, **evaluation},
                     {**role, "units": units, "seeds": [n.config["seed"] for n in nets]})]


def _each_pair(name: str, nets: list, points: int, evaluation: dict[str, Any], role: dict[str, Any]) -> list[PathStep]:
    """The linear path of each disjoint pair (2i, 2i+1) of `nets`, one file each (where a point costs more than a
    process's start: the lm task)."""
    return [PathStep(f"{name}_p{i}", (nets[2 * i].name, nets[2 * i + 1].name),
                     {"kind": "linear", "points": points, **evaluation},
                     {**role, "pair": i, "units": [[0, 1]],
                      "seeds": [nets[2 * i].config["seed"], nets[2 * i + 1].config["seed"]]})
            for i in range(len(nets) // 2)]


def path_seeds(scale: str) -> PathExperiment:
    s = PATH_SCALES[scale]
    runs, paths = [], []
    for _, a, b in _pairs(s):
        runs += [_mlp_run(s, 1, a), _mlp_run(s, 1, b)]
    paths += _all_pairs("linear", runs, s.points, _eval(s.mlp_eval_samples), {"kind": "linear", "width": 1})
    for i, a, b in _pairs(s):
        ra, rb = _mlp_run(s, 1, a), _mlp_run(s, 1, b)
        role = {"pair": i, "seeds": [a, b], "width": 1, "units": [[0, 1]]}
        paths.append(PathStep(f"bezier_p{i}", (ra.name, rb.name),
                              {"kind": "bezier", "points": s.points, "train_bend": s.bend_steps,
                               **_eval(s.mlp_eval_samples)}, {"kind": "bezier", **role}))
    return PathExperiment("path_seeds", "Nets trained from different seeds (same recipe) have a positive linear "
                          "barrier; a trained quadratic Bezier curve between them lowers it to near zero (Garipov "
                          "et al. 2018).", scale, tuple(runs), (), tuple(paths))


def path_width(scale: str) -> PathExperiment:
    s = PATH_SCALES[scale]
    runs, paths = [], []
    for w in s.widths:
        nets = [r for _, a, b in _pairs(s) for r in (_mlp_run(s, w, a), _mlp_run(s, w, b))]
        runs += nets
        paths += _all_pairs(f"linear_x{w}", nets, s.points, _eval(s.mlp_eval_samples), {"kind": "linear", "width": w})
        for i, a, b in _pairs(s):
            ra, rb = nets[2 * i], nets[2 * i + 1]
            paths.append(PathStep(f"aligned_x{w}_p{i}", (ra.name, rb.name),
                                  {"kind": "linear", "points": s.points, "align": True, **_eval(s.mlp_eval_samples)},
                                  {"kind": "aligned", "pair": i, "seeds": [a, b], "width": w, "units": [[0, 1]]}))
    return PathExperiment("path_width", "Weight matching (aligning the second net's hidden units to the first's) "
                          "lowers the linear barrier, and more for wider nets (Ainsworth et al. 2023).", scale,
                          tuple(runs), (), tuple(paths))


def _parent_task(s: PathScale, task: str, runs: list, spawns: list, paths: list) -> None:
    lm = task == "lm"
    k = s.lm_spawn_epoch if lm else s.mlp_spawn_epoch
    evaluation = _eval(s.lm_eval_samples, "lm") if lm else _eval(s.mlp_eval_samples)
    nets, children = [], []
    for i, a, b in _pairs(s):
        ra, rb = (_lm_run(s, a), _lm_run(s, b)) if lm else (_mlp_run(s, 1, a), _mlp_run(s, 1, b))
        nets += [ra, rb]
        for c in _pairs(s, CHILD_SEEDS)[i][1:]:
            children.append(Spawn(f"{ra.name}_child{k}_s{c}", ra.name, k, {**ra.config, "seed": c},
                                  f"{ra.label}: child of seed {a} after epoch {k}, data-order seed {c}"))
    runs += nets
    spawns += children
    paths_of = _each_pair if lm else _all_pairs
    paths += paths_of(f"{task}_scratch", nets, s.points, evaluation, {"kind": "scratch", "task": task})
    paths += paths_of(f"{task}_children", children, s.points, evaluation,
                      {"kind": "children", "task": task, "spawn_epoch": k,
                       "parent_seeds": [a for _, a, _ in _pairs(s)]})


def path_parent(scale: str) -> PathExperiment:
    s = PATH_SCALES[scale]
    runs: list[TrainRun] = []
    spawns: list[Spawn] = []
    paths: list[PathStep] = []
    for task in ("lm", "classify"):  # lm first: its nets train while another process trains the perceptrons
        _parent_task(s, task, runs, spawns, paths)
    return PathExperiment("path_parent", "Two children of one parent (spawned early, trained on with different "
                          "data-order seeds) are linearly connected where two nets from scratch are not (Frankle "
                          "et al. 2020); on classification and on the lm task.", scale, tuple(runs),
                          tuple(spawns), tuple(paths))


BUILDERS = {"path_seeds": path_seeds, "path_width": path_width, "path_parent": path_parent}


def is_path_name(names: str) -> bool:
    """True if `names` (one name, a comma-separated list, or ``paths``) names path experiments only."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    return bool(wanted) and all(n == ALL_PATHS or n in PATH_NAMES for n in wanted)


def path_experiments(names: str, scale: str) -> list[PathExperiment]:
    """`names`: one path experiment, a comma-separated list, or ``paths`` (all). Raises UserError for a scale
    the path experiments do not have."""
    if scale not in PATH_SCALES:
        raise UserError(f"--scale {scale}: the path experiments have the scales {', '.join(PATH_SCALES)}; choose "
                        "one of them")
    wanted: list[str] = []
    for n in (n.strip() for n in names.split(",") if n.strip()):
        for m in (PATH_NAMES if n == ALL_PATHS else (n,)):
            if m not in wanted:
                wanted.append(m)
    return [BUILDERS[n](scale) for n in wanted]
