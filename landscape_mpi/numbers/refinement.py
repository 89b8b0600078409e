"""Adaptive grids (--adaptive): which points of the grid to evaluate, chosen in rounds from the values so far.

The user's grid is the finest lattice; nothing is evaluated off it. The coarse grid is its level-L sub-grid
(`config.surface.coarse_indices`: 2^L + 1 points per axis where the axis has them). A *cell* is a box of the
lattice between two consecutive indices of a bisection level on every axis; *refining* a cell evaluates its
sub-grid (the middle ``(lo + hi) // 2`` of every axis of two or more steps: 3^d points, 2^d of them the cell's
corners, known already) and splits it into its 2^d (or fewer) halves.

The rule (docs/method.md#adaptive-grids): after a cell is refined, each new point's *hierarchical surplus* is its
value minus the multilinear interpolation of the cell's 2^d corner values there (in 1-D at the middle,
-h^2/8 f'' for a smooth f: the interpolation error, a curvature). A half's *indicator* is the largest |surplus|
among its corners. Each round refines the leaf cells of largest indicator (ties: the lower corner's flat index,
then the upper corner's), taking cells in that order until the round holds `round_size` new points, no cell
of the rest fits in the budget, or none has an indicator above the tolerance. Round 0 is the coarse grid
(the refinement of the level L - 1 cells, so that its cells have indicators too).

Everything here is a function of the values of the points chosen so far and of the rule, never of arrival
order, timing or rank count: `replay` rebuilds the state of any file from its values (resume, `info`), and the
job hands out one round at a time. Pure numpy: `info` replays without torch.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from landscape_mpi.config.surface import SurfaceConfig, coarse_indices

#: A cell: (lower corner, upper corner), lattice indices per axis, both included.
Cell = tuple[tuple[int, ...], tuple[int, ...]]
#: Rounds of refinement after the coarse grid that the automatic round size aims at.
AUTO_ROUNDS = 16
#: Why the refinement ended (`Refinement.finished`).
BUDGET, TOLERANCE, LATTICE = "budget", "tolerance", "lattice"


@dataclass(frozen=True)
class Rule:
    """What the chosen points depend on besides the values: the lattice, the budget and the round rule."""

    coords: tuple[np.ndarray, ...]
    budget: int
    coarse_level: int
    round_size: int
    tolerance: float

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.coords)

    @classmethod
    def of(cls, config: SurfaceConfig) -> Rule:
        """The rule of an adaptive surface's config (`config.adaptive` set)."""
        coords = tuple(a.values() for a in config.axes.values())
        coarse = math.prod(len(coarse_indices(len(c), config.adaptive_coarse)) for c in coords)
        size = config.adaptive_round or max(1, math.ceil((config.adaptive - coarse) / AUTO_ROUNDS))
        return cls(coords, int(config.adaptive), int(config.adaptive_coarse), int(size),
                   float(config.adaptive_tolerance))


def _axis_points(lo: int, hi: int) -> tuple[int, ...]:
    """A cell's sub-grid on one axis: lo, the middle and hi (lo, hi where it cannot be split; lo alone on an
    axis of one point)."""
    if hi - lo >= 2:
        return lo, (lo + hi) // 2, hi
    return (lo,) if lo == hi else (lo, hi)


def _halves(lo: int, hi: int) -> tuple[tuple[int, int], ...]:
    if hi - lo >= 2:
        mid = (lo + hi) // 2
        return (lo, mid), (mid, hi)
    return ((lo, hi),)


def splittable(cell: Cell) -> bool:
    return any(h - lo >= 2 for lo, h in zip(*cell))


class Refinement:
    """The state of an adaptive surface's refinement: the leaf cells and their indicators, the chosen points and
    the round of each. `start` gives round 0 (the coarse grid); `advance(values)`, once every chosen point has a
    value, settles the round and gives the next one (empty: finished, `finished` says why)."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.shape = rule.shape
        #: per flat grid index, the round that chose the point (-1: not chosen)
        self.round_of = np.full(math.prod(self.shape), -1, dtype=np.int32)
        self.leaves: dict[Cell, float] = {}
        self.pending: list[Cell] = []  # the cells refined in the current round, settled by `advance`
        self.round = -1
        self.finished = ""

    @property
    def chosen(self) -> int:
        return int((self.round_of >= 0).sum())

    def flat(self, point: tuple[int, ...]) -> int:
        return int(np.ravel_multi_index(point, self.shape))

    def subgrid(self, cell: Cell) -> list[tuple[int, ...]]:
        return list(itertools.product(*(_axis_points(lo, hi) for lo, hi in zip(*cell))))

    def start(self) -> np.ndarray:
        """Round 0: the coarse grid, as the refinement of the cells of the level below it."""
        level = self.rule.coarse_level - 1
        cuts = [coarse_indices(n, level) for n in self.shape]
        spans = [list(zip(c[:-1], c[1:])) or [(0, 0)] for c in cuts]
        cells = [tuple(zip(*box)) for box in itertools.product(*spans)]
        return self._choose(sorted(cells, key=self._key_of_cell))

    def _key_of_cell(self, cell: Cell) -> tuple[int, int]:
        return self.flat(cell[0]), self.flat(cell[1])

    def _choose(self, cells: list[Cell]) -> np.ndarray:
        """Refine `cells` in this round: their sub-grids' points not chosen yet, in flat order."""
        self.round += 1
        new: set[int] = set()
        for cell in cells:
            self.leaves.pop(cell, None)
            new.update(f for f in map(self.flat, self.subgrid(cell)) if self.round_of[f] < 0)
        self.pending = cells
        points = np.array(sorted(new), dtype=np.int64)
        self.round_of[points] = self.round
        return points

    def _settle(self, values: np.ndarray) -> None:
        """The pending cells' halves become leaves, each with its indicator (the largest |surplus| of its corners)."""
        coords = self.rule.coords
        for cell in self.pending:
            lo, hi = cell
            corners = list(itertools.product(*zip(lo, hi)))
            corner_values = {c: values[self.flat(c)] for c in corners}
            surplus: dict[tuple[int, ...], float] = {}
            for p in self.subgrid(cell):
                interp = 0.0
                for c in corners:
                    w = 1.0
                    for a, (i, l0, h0, ci) in enumerate(zip(p, lo, hi, c)):
                        if h0 == l0:
                            continue
                        t = (coords[a][i] - coords[a][l0]) / (coords[a][h0] - coords[a][l0])
                        w *= t if ci == h0 else 1.0 - t
                    interp += w * corner_values[c]
                s = abs(float(values[self.flat(p)]) - interp)
                surplus[p] = s if math.isfinite(s) else 0.0  # a non-finite value refines nothing for its sake
            for half in itertools.product(*(_halves(a, b) for a, b in zip(lo, hi))):
                child: Cell = (tuple(h[0] for h in half), tuple(h[1] for h in half))
                self.leaves[child] = max(surplus.get(c, 0.0) for c in itertools.product(*zip(*child)))
        self.pending = []

    def advance(self, values: np.ndarray) -> np.ndarray:
        """Settle the current round with `values` (flat, every chosen point's value) and choose the next one:
        its new points in flat order (empty: the refinement is over, `finished` says why)."""
        while True:
            self._settle(values)
            rule = self.rule
            candidates = [(-v, self._key_of_cell(c), c) for c, v in self.leaves.items()
                          if splittable(c) and v > rule.tolerance]
            if not candidates:
                self.finished = TOLERANCE if any(splittable(c) for c in self.leaves) else LATTICE
                return np.empty(0, dtype=np.int64)
            candidates.sort(key=lambda t: (t[0], t[1]))
            left = rule.budget - self.chosen
            taken: list[Cell] = []
            new: set[int] = set()
            for _, _, cell in candidates:
                extra = {f for f in map(self.flat, self.subgrid(cell)) if self.round_of[f] < 0} - new
                if len(new) + len(extra) > left:
                    break
                taken.append(cell)
                new |= extra
                if len(new) >= rule.round_size:
                    break
            if not taken:
                self.finished = BUDGET
                return np.empty(0, dtype=np.int64)
            points = self._choose(taken)
            if len(points):
                return points
            # every point of these cells was chosen already (by neighbours): split them now, choose again


def replay(rule: Rule, done: np.ndarray, values: np.ndarray) -> tuple[Refinement, np.ndarray]:
    """The refinement of a file: the rounds its values determine, replayed from the coarse grid, and the points
    of the first round not done yet (empty: the refinement is over, or nothing of it is missing).

    `done`, `values`: grid-shaped or flat; the values of the first metric. Points done but never chosen (a
    file is not expected to have any) are ignored."""
    done = np.asarray(done, dtype=bool).ravel()
    values = np.asarray(values, dtype=np.float64).ravel()
    refinement = Refinement(rule)
    points = refinement.start()
    while True:
        missing = points[~done[points]]
        if len(missing) or not len(points):
            return refinement, missing
        points = refinement.advance(values)


def describe_adaptive(path: str) -> dict | None:
    """`info`'s account of an adaptive surface file (None for a regular one): the rule, the points chosen and
    done, the coverage of the lattice, the rounds (points per round), where the refinement stands (replayed from
    the values) and whether /results/round agrees with the replay."""
    from landscape_mpi.files import contract
    from landscape_mpi.files.reader import open_surface

    with open_surface(path) as f:
        if f.config.get("adaptive") is None:
            return None
        config = SurfaceConfig.from_dict(f.config)
        done = f.done()
        values = f.values(config.metrics[0], done)
        stored = f.file[contract.ROUND][()] if f.has(contract.ROUND) else None
    rule = Rule.of(config)
    refinement, todo = replay(rule, done, values)
    rounds = refinement.round_of
    agrees = stored is None or bool(np.array_equal(stored.ravel()[done.ravel()], rounds[done.ravel()]))
    return {"budget": rule.budget, "coarse_level": rule.coarse_level, "round_size": rule.round_size,
            "tolerance": rule.tolerance, "metric": config.metrics[0], "chosen": refinement.chosen,
            "done": int(done.sum()), "lattice": int(done.size), "coverage": float(done.sum() / done.size),
            "round": refinement.round, "finished": refinement.finished if not len(todo) else "",
            "left_in_round": int(len(todo)),
            "points_per_round": np.bincount(rounds[rounds >= 0]).astype(int).tolist(),
            "order_agrees": agrees}


def adaptive_lines(d: dict) -> list[str]:
    """The text form of `describe_adaptive`."""
    state = (f"finished ({d['finished']})" if d["finished"] else
             f"round {d['round']} in progress, {d['left_in_round']} of its points to compute")
    lines = [f"  adaptive   {d['done']} of the lattice's {d['lattice']} points ({100 * d['coverage']:.1f}% coverage), "
             f"budget {d['budget']}, {d['chosen']} chosen; {state}",
             f"             coarse level {d['coarse_level']}, rounds of {d['round_size']} points on {d['metric']}"
             + (f", tolerance {d['tolerance']:g}" if d["tolerance"] else "")
             + f"; points per round {d['points_per_round']}"]
    if not d["order_agrees"]:
        lines.append("             /results/round differs from the replayed rounds (values changed since?)")
    return lines
