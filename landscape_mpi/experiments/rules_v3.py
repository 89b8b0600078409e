"""The verdict rules of version 3, fixed before the confirmatory run that will judge by them (issue 31; no run under
them had been made when they were committed). Version 2 (`rules`) stays as it is: the committed docs/findings.md
was judged by it.

What changes against version 2, and why:

- **One primary chaos measure, valid across loss scales**: the non-convex fraction (`measures.nonconvex_fraction`,
  the share of interior grid points whose 2x2 finite-difference Hessian has a negative eigenvalue) depends on the
  signs of curvatures only, so a net whose loss explodes at the grid's edge is measured as one that does not.
  Roughness divides by the grid's loss range (up to 5.4e4 for the depth-56 no-shortcut nets of version 2's run),
  so it fails exactly where the skip claim lives: it is exploratory now, with the roughness of log(loss).
- **Declared claims, two families, Holm's correction in each** (`PRIMARY`, `SECONDARY`, `holm`): the primary
  family is the paper's four headline claims; the secondary family the variants and correlations. Everything
  else (roughness, the Hessian table, the within-map split of the eigenvalue ratio) is exploratory: shown, no
  verdict.
- **Effect sizes with bootstrap intervals over training seeds** (`compare`): the difference of the conditions'
  means (or of their mean logs, a log ratio, where the measure's scale differs between nets), a seeded percentile
  bootstrap interval resampling each condition's seeds, and an exact one-sided permutation p-value over all
  splits of the seeds between the two conditions (assumption-free; its smallest value is 1 / C(2n, n), so
  3 seeds per condition can never pass 0.05: `MIN_SEEDS` is 5).
- **"Not reproduced" needs power** (`power`): a claim that is not significant is "not reproduced" only if the
  test had at least `POWER` probability of detecting the claim's smallest effect of interest (`Claim.sesoi`,
  fixed here) at its Holm level, with the observed spread; otherwise "inconclusive". Correlation claims over 6-8
  conditions have no such power: they are never "not reproduced".
- **At least 5 training seeds for every verdict** (version 2 sat at its threshold with 3 for the `lr` variant's
  sharpness and for width).
- **Trained alike, compared at matched train loss** (`training_gate`): every net of a comparison is trained by
  one recipe (experiments/definitions.py: `RECIPE_V3`), and the conditions' geometric-mean center train losses
  lie within a factor `LOSS_MATCH` of each other; otherwise the comparison is inconclusive (version 2 gated at
  train loss 0.1, a 450x range).

Tested on constructed inputs in tests/test_verdict_rules_v3.py: a planted effect is found, a null is not (the
false-positive rate of the test is at most alpha), too few seeds or too little power is inconclusive.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from landscape_mpi.experiments.rules import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, UNTRAINED_LOSS, Outcome, fmt

RULES_VERSION = "3"
#: When version 3 was fixed: before any run judged by it.
RULES_FIXED = "2026-12-07"

#: The family-wise error rate of each family (Holm).
ALPHA = 0.05
#: Training seeds per condition a verdict needs (the exact permutation test's smallest p is 1 / C(2n, n): 1/252 at
#: n = 5, 1/20 at n = 3).
MIN_SEEDS = 5
#: Bootstrap: resamples, seed and the interval's coverage (percentile interval).
BOOTSTRAP = 10_000
BOOTSTRAP_SEED = 0
COVERAGE = 0.95
#: "Not reproduced" needs at least this power at the claim's smallest effect of interest ...
POWER = 0.8
#: ... estimated from this many seeded simulations of normal data with the observed pooled sd.
POWER_SIMULATIONS = 2000
POWER_SEED = 0
#: Matched train loss: the largest condition's geometric-mean center train loss at most this many times the
#: smallest's.
LOSS_MATCH = 10.0
#: The trajectory claim: seeded walks per path with the run's stored step lengths (a path's p-value is
#: (1 + walks at or above it) / (1 + walks)).
WALKS = 1000

Scale = Literal["difference", "log ratio"]
Family = Literal["primary", "secondary"]


@dataclass(frozen=True)
class Claim:
    """A declared claim: its family, measure, the comparisons that make it and its smallest effect of interest."""

    key: str
    claim: str
    family: Family
    measure: str
    comparisons: str
    """Which conditions a and b are; several comparisons make one claim by the intersection-union rule: its
    p-value is the largest of theirs, its power the smallest."""
    scale: Scale | None
    """The effect's scale: mean(a) - mean(b), or mean(log a) - mean(log b); None for a correlation or a path test."""
    sesoi: float | None
    """The smallest effect of interest on that scale (what "not reproduced" must exclude); None: the claim is never
    "not reproduced" on power (a correlation over a few conditions)."""

    def text(self) -> str:
        size = (f" Effect: {self.scale} of the per-seed values; smallest effect of interest {fmt(self.sesoi)}."
                if self.scale else "")
        return (f"**{self.claim}** (rule `{self.key}`, {self.family}, version {RULES_VERSION}). Measure: "
                f"{self.measure} Comparisons: {self.comparisons}{size}")


NCF = "non-convex fraction of the 2D train-loss surface (filter-normalized random directions)."
RISE = ("grid max-rise of the 1D train loss along a filter-normalized random direction (the largest L - L(center) "
        "within half the grid's half-width).")
PRIMARY: tuple[Claim, ...] = (
    Claim("skip", "Skip connections keep deep landscapes smooth", "primary", NCF,
          "a = the deepest no-shortcut net, b = the deepest net with shortcuts; and a = the deepest no-shortcut net, "
          "b = the shallowest no-shortcut net.", "difference", 0.2),
    Claim("width", "Wider networks are smoother", "primary", NCF,
          "a = the narrow (x1) no-shortcut net, b = the wide one, at the same depth.", "difference", 0.1),
    Claim("batch/sharper", "Large-batch minima are sharper (filter-normalized)", "primary", RISE,
          "a = the large-batch net trained as many epochs at the same learning rate (the paper's setting), b = the "
          "small-batch net; at each weight decay.", "log ratio", math.log(1.5)),
    Claim("trajectory", "Trajectories lie in a low-dimensional space", "primary",
          "PC1 + PC2 explained variance of the centered PCA of a training path's checkpoints, against seeded random "
          f"walks ({WALKS}) with the run's own step lengths (/trajectory/step_norms).",
          "every path (weight decay x training seed): p = (1 + walks at or above the path) / (1 + walks).", None,
          None),
)
SECONDARY: tuple[Claim, ...] = (
    Claim("batch/sharper/steps", "Large-batch minima are sharper (as many steps)", "secondary", RISE,
          "a = the large-batch net trained as many optimizer steps, b = the small-batch net; at each weight decay.",
          "log ratio", math.log(1.5)),
    Claim("batch/sharper/lr", "Large-batch minima are sharper (learning rate scaled, with warm-up)", "secondary",
          RISE, "a = the large-batch net at the learning rate x the batch ratio, b = the small-batch net; at each "
          "weight decay.", "log ratio", math.log(1.5)),
    Claim("batch/flip", "Without filter normalization, weight decay flips the comparison", "secondary",
          "grid max-rise of the 1D train loss along an unnormalized random direction.",
          "with weight decay, per way of training the large-batch net: a = the small-batch net, b = the large-batch "
          "net.", "log ratio", math.log(1.5)),
    Claim("batch/tracks", "Sharpness tracks test error", "secondary",
          "filter-normalized grid max-rise against test error, per condition the mean over its training seeds.",
          "Spearman rho over the batch experiment's conditions, one-sided exact permutation p (rules.spearman_test).",
          None, None),
    Claim("eig", "|lambda_min/lambda_max| is larger where the landscape is chaotic", "secondary",
          f"{NCF[:-1]}, against the median clipped eigenvalue ratio of the map, per condition the mean over seeds.",
          "Spearman rho over the skip experiment's conditions, one-sided exact permutation p.", None, None),
)
CLAIMS = {c.key: c for c in PRIMARY + SECONDARY}
#: Shown, never judged.
EXPLORATORY = ("roughness of the 2D train-loss surface (mean abs second difference / loss range), and of log(loss)",
               "the Hessian table of the batch experiment (lambda_max, trace, average adaptive rise)",
               "the within-map split of the eigenvalue ratio by local convexity",
               "the weight-decay interpolation between the small- and large-batch minima")


# ------------------------------------------------------------------------------------------ statistics
def _values(per_seed: Mapping[int, float], scale: Scale) -> np.ndarray:
    v = np.array([float(x) for _, x in sorted(per_seed.items()) if x is not None and np.isfinite(float(x))])
    if scale == "log ratio":
        v = np.log(v[v > 0])
    return v


def permutation_p(x: Sequence[float], y: Sequence[float]) -> float:
    """One-sided exact p of mean(x) - mean(y) > 0: the share of all C(n_x + n_y, n_x) splits of the pooled values
    into groups of n_x and n_y whose difference of means is at least the observed one (ties count)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    pooled, nx = np.concatenate([x, y]), x.size
    if nx == 0 or y.size == 0:
        return float("nan")
    observed = x.mean() - y.mean()
    splits = np.array(list(itertools.combinations(range(pooled.size), nx)), dtype=np.intp)
    in_x = np.zeros((len(splits), pooled.size), dtype=bool)
    in_x[np.arange(len(splits))[:, None], splits] = True
    total = pooled.sum()
    sx = in_x.astype(np.float64) @ pooled
    diffs = sx / nx - (total - sx) / y.size
    return float(np.mean(diffs >= observed - 1e-12 * max(1.0, abs(observed))))


def bootstrap_interval(x: Sequence[float], y: Sequence[float], resamples: int = BOOTSTRAP,
                       seed: int = BOOTSTRAP_SEED, coverage: float = COVERAGE) -> tuple[float, float]:
    """Percentile interval of mean(x) - mean(y), each group's seeds resampled with replacement on their own."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2 or y.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    bx = x[rng.integers(0, x.size, (resamples, x.size))].mean(axis=1)
    by = y[rng.integers(0, y.size, (resamples, y.size))].mean(axis=1)
    tail = (1 - coverage) / 2
    lo, hi = np.quantile(bx - by, [tail, 1 - tail])
    return float(lo), float(hi)


def pooled_sd(x: np.ndarray, y: np.ndarray) -> float:
    dof = x.size + y.size - 2
    if dof < 1:
        return float("nan")
    return math.sqrt(float(np.sum((x - x.mean()) ** 2) + np.sum((y - y.mean()) ** 2)) / dof)


def power(effect: float, sd: float, n_x: int, n_y: int, alpha: float, simulations: int = POWER_SIMULATIONS,
          seed: int = POWER_SEED) -> float:
    """The probability that `permutation_p` is at most `alpha` when x ~ N(effect, sd^2) and y ~ N(0, sd^2), from
    seeded simulations (0 when even the smallest possible p, 1 / C(n_x + n_y, n_x), is above `alpha`)."""
    if not (np.isfinite(sd) and n_x and n_y):
        return float("nan")
    if 1 / math.comb(n_x + n_y, n_x) > alpha:
        return 0.0
    if sd == 0:
        return 1.0 if effect > 0 else 0.0
    rng = np.random.default_rng(seed)
    n = n_x + n_y
    splits = np.array(list(itertools.combinations(range(n), n_x)), dtype=np.intp)
    in_x = np.zeros((len(splits), n))
    in_x[np.arange(len(splits))[:, None], splits] = 1.0
    data = rng.standard_normal((simulations, n)) * sd
    data[:, :n_x] += effect
    sx = data @ in_x.T  # simulations x splits
    diffs = sx / n_x - (data.sum(axis=1, keepdims=True) - sx) / n_y
    observed = data[:, :n_x].mean(axis=1) - data[:, n_x:].mean(axis=1)
    p = np.mean(diffs >= observed[:, None] - 1e-12, axis=1)
    return float(np.mean(p <= alpha))


@dataclass(frozen=True)
class Effect:
    """One comparison of two conditions over their training seeds."""

    estimate: float
    """mean(a) - mean(b) on the claim's scale."""
    lo: float
    hi: float
    """The bootstrap interval (`COVERAGE`)."""
    p: float
    """One-sided exact permutation p of estimate > 0."""
    sd: float
    """Pooled sd (ddof 1) of the per-seed values on the claim's scale: the power's spread."""
    n_a: int
    n_b: int

    def text(self, names: tuple[str, str], scale: Scale) -> str:
        what = "difference" if scale == "difference" else "log ratio"
        return (f"{names[0]} vs {names[1]}: {what} {fmt(self.estimate)} [{fmt(self.lo)}, {fmt(self.hi)}] "
                f"({COVERAGE:.0%} bootstrap over seeds; n = {self.n_a}, {self.n_b}), permutation p {fmt(self.p)}")


def compare(a: Mapping[int, float], b: Mapping[int, float], scale: Scale) -> Effect:
    """Condition a against b: training seed -> that model's measure (the mean over its direction seeds); seeds
    with a missing or non-finite value are left out, and (log ratio) values that are not positive."""
    x, y = _values(a, scale), _values(b, scale)
    est = float(x.mean() - y.mean()) if x.size and y.size else float("nan")
    lo, hi = bootstrap_interval(x, y)
    return Effect(est, lo, hi, permutation_p(x, y), pooled_sd(x, y), int(x.size), int(y.size))


def walk_p(explained: float, walks: Sequence[float]) -> float:
    """A path's p against its random walks: (1 + walks explaining at least as much) / (1 + walks)."""
    w = np.asarray(walks, dtype=np.float64)
    return float((1 + np.sum(w >= explained)) / (1 + w.size))


def _holm_order(pvalues: Mapping[str, float]) -> list[str]:
    return sorted(pvalues, key=lambda k: (not np.isfinite(pvalues[k]), pvalues[k], k))


def holm_levels(pvalues: Mapping[str, float], alpha: float = ALPHA) -> dict[str, float]:
    """The level Holm's procedure compares each p-value with: alpha / (m - rank), rank 0 for the smallest p (a
    missing p, NaN, ranks last)."""
    order = _holm_order(pvalues)
    return {k: alpha / (len(order) - rank) for rank, k in enumerate(order)}


def holm_rejected(pvalues: Mapping[str, float], alpha: float = ALPHA) -> dict[str, bool]:
    """Holm's step-down procedure: in increasing order of p, reject while p <= its level (`holm_levels`); stop at
    the first that is not. The family-wise error rate is at most alpha whatever the dependence."""
    levels, out, going = holm_levels(pvalues, alpha), {}, True
    for k in _holm_order(pvalues):
        going = going and bool(np.isfinite(pvalues[k]) and pvalues[k] <= levels[k])
        out[k] = going
    return out


# ------------------------------------------------------------------------------------------ verdicts
@dataclass(frozen=True)
class Result:
    """What one claim's data say before the family's correction."""

    p: float
    """The claim's p-value (several comparisons: the largest)."""
    n: int
    """The fewest training seeds of a condition involved."""
    positive: bool
    """Every comparison's estimate is above 0 (every path above its walks' median, for the trajectory)."""
    text: str
    sd: float = float("nan")
    """The largest pooled sd of its comparisons (the power's spread); NaN where power does not apply."""
    gate: str | None = None
    """Why the comparison is not fair (`training_gate`), or None."""


def two_condition_result(effects: Sequence[tuple[Effect, tuple[str, str]]], claim: Claim,
                         gate: str | None = None) -> Result:
    """A claim made of one or more two-condition comparisons (intersection-union: the largest p)."""
    text = "; ".join(e.text(names, claim.scale or "difference") for e, names in effects)
    ps = [e.p for e, _ in effects]
    return Result(max(ps) if ps and all(np.isfinite(ps)) else float("nan"),
                  min((min(e.n_a, e.n_b) for e, _ in effects), default=0),
                  bool(effects) and all(e.estimate > 0 for e, _ in effects), text,
                  max((e.sd for e, _ in effects), default=float("nan")), gate)


def trajectory_result(paths: Mapping[tuple[float, int], tuple[float, Sequence[float]]]) -> Result:
    """(weight decay, training seed) -> (the path's PC1 + PC2, its walks' PC1 + PC2): the claim's p is the
    largest path p; n the fewest training seeds of a weight decay."""
    if not paths:
        return Result(float("nan"), 0, False, "the PCA surfaces are missing.")
    ps = {k: walk_p(e, w) for k, (e, w) in paths.items()}
    per_wd: dict[float, int] = {}
    for wd, _ in paths:
        per_wd[wd] = per_wd.get(wd, 0) + 1
    above = all(e > float(np.median(w)) for e, w in paths.values())
    text = "; ".join(f"wd {fmt(wd)} seed {t}: {fmt(paths[(wd, t)][0])} (walks' 95th percentile "
                     f"{fmt(float(np.quantile(paths[(wd, t)][1], 0.95)))}, p {fmt(ps[(wd, t)])})"
                     for wd, t in sorted(paths))
    return Result(max(ps.values()), min(per_wd.values()), above, f"PC1+PC2: {text}")


def training_gate(losses: Mapping[str, float]) -> str | None:
    """Condition label -> its geometric-mean center train loss over seeds: why the comparison is not at matched
    train loss (or a net did not train), or None."""
    bad = [f"{k} ({fmt(v)})" for k, v in sorted(losses.items()) if not (np.isfinite(v) and v <= UNTRAINED_LOSS)]
    if bad:
        return f"not trained: center train loss of {', '.join(bad)} above ln 10 / 2"
    positive = [v for v in losses.values() if v > 0]
    if positive and max(positive) > LOSS_MATCH * min(positive):
        return (f"not at matched train loss: {', '.join(f'{k} {fmt(v)}' for k, v in sorted(losses.items()))} span "
                f"{fmt(max(positive) / min(positive))}x, more than {LOSS_MATCH:g}x")
    return None


def decide(results: Mapping[str, Result], alpha: float = ALPHA) -> dict[str, Outcome]:
    """The verdicts of one family (claim key -> `Result`), Holm-corrected over the claims that have a p-value.

    reproduced: Holm rejects the claim's null, every comparison points the claim's way, n >= `MIN_SEEDS` and the
    nets were trained alike. not reproduced: not rejected, n >= `MIN_SEEDS`, trained alike, and the power at the
    claim's smallest effect of interest and its Holm level is at least `POWER` (claims without one: never).
    Otherwise inconclusive, with the reason."""
    pvals = {k: r.p for k, r in results.items()}
    levels, rejected = holm_levels(pvals, alpha), holm_rejected(pvals, alpha)
    out = {}
    for k, r in results.items():
        claim = CLAIMS.get(k)
        head = (f"{r.text}; the claim's p {fmt(r.p)} against Holm's level {fmt(levels[k])} (family {len(pvals)} "
                f"claims, alpha {alpha:g}), n = {r.n} training seeds")
        if r.gate:
            out[k] = Outcome(INCONCLUSIVE, f"{r.gate}. ({head})")
        elif r.n < MIN_SEEDS:
            out[k] = Outcome(INCONCLUSIVE, f"fewer than {MIN_SEEDS} training seeds: {head}.")
        elif rejected[k] and r.positive:
            out[k] = Outcome(REPRODUCED, f"{head}.")
        elif claim is None or claim.sesoi is None:
            out[k] = Outcome(INCONCLUSIVE, f"{head}: not significant, and no power analysis for this claim.")
        else:
            pw = power(claim.sesoi, r.sd, r.n, r.n, levels[k])
            said = f"{head}; power {fmt(pw)} at the smallest effect of interest {fmt(claim.sesoi)}"
            if np.isfinite(pw) and pw >= POWER:
                out[k] = Outcome(NOT_REPRODUCED, f"{said}.")
            else:
                out[k] = Outcome(INCONCLUSIVE, f"{said}: below {POWER:g}, too little to say not reproduced.")
    return out


def rules_section() -> list[str]:
    """The report's section listing version 3's claims and rules."""
    lines = [f"## Verdict rules (version {RULES_VERSION}, fixed before the confirmatory run)", "",
             f"Fixed on {RULES_FIXED} in `landscape_mpi/experiments/rules_v3.py`, before any run judged by them. "
             f"Per claim: the effect with its {COVERAGE:.0%} bootstrap interval over training seeds and an exact "
             f"one-sided permutation p; Holm's correction within each family (alpha {ALPHA:g}); at least "
             f"{MIN_SEEDS} training seeds per condition; \"not reproduced\" only with power >= {POWER:g} at the "
             f"claim's smallest effect of interest, otherwise \"inconclusive\"; nets of a comparison trained by one "
             f"recipe and at matched train loss (within {LOSS_MATCH:g}x).", ""]
    lines += [f"- {c.text()}" for c in PRIMARY + SECONDARY]
    lines += ["", "Exploratory (shown, no verdict): " + "; ".join(EXPLORATORY) + ".", ""]
    return lines
