"""The options of `landscape-mpi path` that say which path: the models, the kind, the t grid, the bend, alignment.

How each point is evaluated (model, data, task, precision, BatchNorm, splits, metrics) is `SurfaceConfig`'s, and
how the job runs is `RunOptions`'; the path command takes both (docs/paths.md).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

from landscape_mpi.config.align import Unsupported
from landscape_mpi.config.errors import UserError
from landscape_mpi.config.options import check_choices, option

PathKind = Literal["linear", "chain", "bezier", "pairs", "layers"]
BlockMap = Literal["module", "tensor", "transformer-block", "permutation-group"]

PATH = "path"

#: Models each kind takes (the bend of ``bezier`` comes by --bend, not --checkpoint).
MODELS = {"linear": "2", "bezier": "2", "layers": "2", "chain": "2 or more", "pairs": "2 or more"}


@dataclass(frozen=True)
class PathConfig:
    """Which path a path file holds. Stored in the file (`path_config`); a resume must match it (checkpoints by
    their sha256, not their names)."""

    checkpoints: tuple[str, ...] = option(help="the models, in order (give it once per model): A and B for linear, "
                                               "bezier and layers; the models to pass through for chain; every "
                                               "model of the barrier matrix for pairs", flag="--checkpoint",
                                          group=PATH)
    kind: PathKind = option("linear", help="linear: (1-t) A + t B; chain: through every --checkpoint in order; "
                                           "bezier: (1-t)^2 A + 2t(1-t) C + t^2 B with C the --bend; pairs: the "
                                           "linear path of every pair (the barrier matrix); layers: one block "
                                           "at a time interpolated, the rest at A (--blocks)", group=PATH)
    points: int = option(21, help="values of t on [0, 1] per curve (per segment of a chain), 0 and 1 included",
                         group=PATH)
    bend: str | None = option(None, help="checkpoint of the bend C of --kind bezier (with --train-bend: where the "
                                         "trained bend is written, default OUT.bend.pt)", group=PATH)
    train_bend: int = option(0, help="train the bend of --kind bezier for this many steps first (Garipov et "
                                     "al.: t ~ U(0,1) per step, A and B fixed, from their midpoint; resumable), "
                                     "then compute the path through it", group=PATH)
    bend_lr: float = option(0.05, help="learning rate of --train-bend (SGD with momentum 0.9)", group=PATH)
    align: bool = option(False, help="permute the hidden units of every model after the first to match the first "
                                     "(weight matching, docs/alignment.md) before the path is made",
                         group=PATH)
    align_unsupported: Unsupported = option("error", help="--align: an operation the aligner does not understand on "
                                                          "a hidden axis is an error, or its units are left "
                                                          "unpermuted (leave)", group=PATH)
    blocks: BlockMap = option("module", help="--kind layers: one curve per module (its own tensors), per tensor, "
                                             "per repeated layer (transformer-block: each block of the model's "
                                             "block list, plus embeddings and head), or per permutation group of "
                                             "--align's tracing (permutation-group; --align-unsupported applies)",
                              group=PATH)

    def __post_init__(self) -> None:
        check_choices(self)
        n = len(self.checkpoints)
        if n < 2 or (MODELS[self.kind] == "2" and n != 2):
            raise UserError(f"--kind {self.kind} takes {MODELS[self.kind]} --checkpoint, got {n}: give "
                            f"--checkpoint A.pt --checkpoint B.pt" + (" ..." if MODELS[self.kind] != "2" else ""))
        if self.points < 2:
            raise UserError(f"--points {self.points}: a path needs at least t = 0 and t = 1 (--points 2 or more)")
        if self.kind == "bezier" and self.bend is None and self.train_bend <= 0:
            raise UserError("--kind bezier needs its bend: --bend C.pt, or --train-bend STEPS to train one")
        if self.kind != "bezier" and (self.bend is not None or self.train_bend > 0):
            raise UserError(f"--bend and --train-bend belong to --kind bezier (--kind {self.kind} has no bend; "
                            f"a chain passes through its --checkpoint models)")
        if self.train_bend < 0 or self.bend_lr <= 0:
            raise UserError("--train-bend STEPS must be >= 0 and --bend-lr positive")

    @property
    def models(self) -> tuple[str, ...]:
        """Every model of the path in the order of its directions: the checkpoints, then the bend."""
        return self.checkpoints + ((self.bend,) if self.bend is not None else ())

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["checkpoints"] = list(self.checkpoints)
        return d


#: Fields compared through the sha256 of the files they name, not their text, on a resume.
LOCATION_FIELDS = ("checkpoints", "bend", "train_bend", "bend_lr")


def path_config_diff(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """``field: file has A, command asks B`` for every field (but the files' names) that differs."""
    return [f"{k}: file has {stored.get(k)!r}, command asks {wanted.get(k)!r}"
            for k in sorted(set(stored) | set(wanted)) if k not in LOCATION_FIELDS and stored.get(k) != wanted.get(k)]
