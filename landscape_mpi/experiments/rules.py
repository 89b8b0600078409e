"""The verdict rules, fixed before the confirmatory run: for each claim (docs/method.md#the-papers-claims) the
measure, the statistic over seeds and the threshold, versioned (`RULES_VERSION`) and printed in the report.

A change to a rule after results are seen makes a new version; a measure added after results are seen is shown
under the report's "exploratory" label with the commit that added it, and gets no verdict until a later version
fixes a rule for it and a run on fresh seeds judges it.

The statistics (`two_conditions`, `correlation`, `trajectory_paths`) take numbers per training seed, each the mean
over that model's direction seeds (a direction seed is a second draw of the same model's landscape, not an
independent model), and return an `Outcome`: the verdict and the sentence that states the statistic's value,
the threshold and n. Tested on constructed inputs in tests/test_verdict_rules.py.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: The version of the rules below; the report prints it. Version 1 was the single-seed thresholds of the first
#: findings (one model per condition, ratios of single values, Spearman over single models).
RULES_VERSION = "2"
#: When version 2 was fixed: before the confirmatory run on fresh seeds.
RULES_FIXED = "2026-12-06"

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive at this scale"

#: Training seeds a condition needs for a verdict other than inconclusive.
MIN_SEEDS = 3
#: Two-condition claims: the difference of the means must exceed this many pooled standard deviations.
SPREAD = 2.0
#: skip: the deepest no-shortcut net's mean at least this many times that of each other condition.
ROUGHER = 1.5
#: width: the narrow net's mean at least this many times the wide one's.
WIDER = 1.5
#: Correlation claims: one-sided permutation p-value at most this.
ALPHA = 0.05
#: ... exact over all permutations up to this many conditions, else a seeded Monte-Carlo of `PERMUTATIONS`.
EXACT_MAX = 8
PERMUTATIONS = 10_000
PERMUTATION_SEED = 0
#: ... over at least this many conditions.
MIN_CONDITIONS = 4
#: trajectory: the first two PCA components explain at least this fraction ("most") of the variance ...
EXPLAINED = 0.5
#: ... and more than the 95th percentile of a random walk with as many points (measures.random_walk_explained).
RANDOM_WALK_TRIALS = 200
#: grid max-rise and curvature radius, as a fraction of the grid's half-width (filter norm: 0.5).
RADIUS_FRACTION = 0.5
#: A model whose train loss at the center is above this (half the loss of chance-level guessing on 10 classes,
#: ln 10 / 2) did not train: any verdict involving it is inconclusive.
UNTRAINED_LOSS = float(np.log(10) / 2)
#: Models trained alike: every model of a two-condition comparison reaches this train loss at its center (the
#: mean over its direction seeds); otherwise the comparison is not at equal train loss and is inconclusive.
TRAIN_LOSS_TARGET = 0.1

#: Commits of measures that were added after the first results were seen, pre-registered in version 2.
NONCONVEX_COMMIT = "87d53d8"
MEDIAN_RATIO_COMMIT = "71fb083"


@dataclass(frozen=True)
class Rule:
    """One claim's verdict rule, as the report prints it."""

    key: str
    claim: str
    measure: str
    statistic: str
    threshold: str
    fixed_in: str = RULES_VERSION
    note: str = ""

    def text(self) -> str:
        out = (f"**{self.claim}** (rule `{self.key}`, fixed in version {self.fixed_in}). Measure: {self.measure} "
               f"Statistic: {self.statistic} Threshold: {self.threshold}")
        return out + (f" {self.note}" if self.note else "")


TWO = ("Per training seed, the measure averaged over the model's direction seeds (a_i for the first condition, "
       "b_i for the second); n = training seeds with both values.")
TWO_THRESHOLD = (f"reproduced iff n >= {MIN_SEEDS}, mean(a) - mean(b) > {SPREAD:g} x the pooled standard deviation "
                 f"(ddof 1, pooled over both conditions' per-seed values) and a_i > b_i for every seed{{ratio}}; not "
                 f"reproduced iff n >= {MIN_SEEDS} and mean(a) <= mean(b); otherwise inconclusive. Inconclusive as "
                 f"well if a model involved has a center train loss above {TRAIN_LOSS_TARGET:g} (not trained alike) "
                 f"or above ln 10 / 2 (not trained).")
CORR = ("per condition, the mean over training seeds of each seed's direction-seed mean; Spearman rho over the "
        "conditions (average ranks for ties) with a one-sided permutation p-value, P(rho' >= rho) over "
        f"permutations of the pairing (all of them for n <= {EXACT_MAX} conditions, else {PERMUTATIONS:,} seeded "
        "Monte-Carlo permutations, p = (1 + count) / (1 + permutations)).")
CORR_THRESHOLD = (f"reproduced iff p <= {ALPHA:g}, rho > 0, n >= {MIN_CONDITIONS} conditions and every condition has "
                  f">= {MIN_SEEDS} training seeds; not reproduced iff rho <= 0 with the same n and seeds; otherwise "
                  "inconclusive (also if a model involved did not train: center train loss above ln 10 / 2).")
CORR_WHY = ("Why conditions, not models, are the units: the models of one condition (its training seeds) share "
            "the condition's effect on both measures, so a permutation test over models would count one "
            "condition's seeds as independent evidence of the relation (pseudo-replication); the per-model rho is "
            "printed beside it, without a p-value.")
CHAOS = {"roughness": ("roughness of the 2D train-loss surface (filter-normalized random directions): mean "
                       "abs second difference / loss range on the grid.", ""),
         "non-convex fraction": ("non-convex fraction of the 2D train-loss surface: share of interior points whose "
                                 "2x2 finite-difference Hessian has a negative eigenvalue.",
                                 f"The non-convex fraction was added in commit {NONCONVEX_COMMIT}, after the first "
                                 "(single-seed) results were seen; version 2 pre-registers it, and the confirmatory "
                                 "run on fresh seeds confirms it or not.")}
MEASURES_2D = tuple(CHAOS)


def _chaos_rules() -> list[Rule]:
    out = []
    for m, (measure, note) in CHAOS.items():
        out.append(Rule(f"skip/{m}", f"Skip connections keep deep landscapes smooth ({m})", measure,
                        "two conditions, twice: a = the deepest no-shortcut net, b = the deepest net with shortcuts; "
                        "and a = the deepest no-shortcut net, b = the shallowest no-shortcut net. " + TWO,
                        TWO_THRESHOLD.format(ratio=f" and mean(a) >= {ROUGHER:g} x mean(b)") +
                        " The claim is reproduced iff both comparisons are, not reproduced iff either is not.",
                        note=note))
    for m, (measure, note) in CHAOS.items():
        out.append(Rule(f"eig/{m}", f"|lambda_min/lambda_max| is larger where the landscape is chaotic ({m})",
                        f"{measure[:-1]}, against the median over the eigenvalue map's points of abs(eig_min/eig_max) "
                        "clipped to [0, 1], over the skip experiment's conditions.", CORR, CORR_THRESHOLD,
                        note=(note + " " if note else "") + f"The median clipped ratio replaced the unclipped mean in "
                        f"commit {MEDIAN_RATIO_COMMIT}, after the first results; version 2 pre-registers it. "
                        + CORR_WHY))
    for m, (measure, note) in CHAOS.items():
        out.append(Rule(f"width/{m}", f"Wider networks are smoother ({m})", measure,
                        "two conditions: a = the narrow (x1) net, b = the wide net. " + TWO,
                        TWO_THRESHOLD.format(ratio=f" and mean(a) >= {WIDER:g} x mean(b)"), note=note))
    return out


RULES: tuple[Rule, ...] = (
    *_chaos_rules(),
    Rule("batch/sharper", "Large-batch minima are sharper (filter-normalized)",
         f"grid max-rise of the 1D train loss along a filter-normalized random direction: the largest L - L(center) "
         f"within {RADIUS_FRACTION:g} x the grid's half-width.",
         "two conditions, per weight decay and per way of training the large-batch net (equal epochs, equal steps, "
         "scaled learning rate): a = the large-batch net, b = the small-batch net. " + TWO,
         TWO_THRESHOLD.format(ratio="")),
    Rule("batch/flip", "Without filter normalization, weight decay flips the comparison",
         "grid max-rise of the 1D train loss along an unnormalized random direction.",
         "two conditions, with weight decay only, per way of training the large-batch net: a = the small-batch net, "
         "b = the large-batch net (the flip: the small-batch minimum looks sharper unnormalized, while the "
         "filter-normalized rule says it is wider). " + TWO, TWO_THRESHOLD.format(ratio="")),
    Rule("batch/tracks", "Sharpness tracks test error",
         "filter-normalized grid max-rise against test error at the center, over the batch experiment's "
         "conditions (each batch size, weight decay and way of training).", CORR, CORR_THRESHOLD, note=CORR_WHY),
    Rule("trajectory", "Trajectories lie in a low-dimensional space",
         "PC1 + PC2 explained variance of the centered PCA of a training path's checkpoints, and the 95th "
         f"percentile of the same for {RANDOM_WALK_TRIALS} seeded random walks with the run's own step lengths.",
         "per path (each weight decay x training seed): PC1 + PC2 >= the threshold and > the random walk's 95th "
         "percentile; n = the fewest training seeds of a weight decay.",
         f"threshold {EXPLAINED:g}; reproduced iff every path passes and n >= {MIN_SEEDS}; not reproduced iff no path "
         f"passes and n >= {MIN_SEEDS}; otherwise inconclusive."),
)
RULE = {r.key: r for r in RULES}


@dataclass(frozen=True)
class Outcome:
    verdict: str
    reason: str


def fmt(v: object) -> str:
    """Deterministic number format: 4 significant digits, n/a for None and NaN."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "n/a"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.4g}"


def finite(v: object) -> bool:
    return v is not None and bool(np.isfinite(float(v)))


def pooled_sd(a: Sequence[float], b: Sequence[float]) -> float:
    """sqrt(((n_a - 1) var_a + (n_b - 1) var_b) / (n_a + n_b - 2)), variances with ddof 1; NaN without 2 degrees
    of freedom."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    dof = a.size + b.size - 2
    if dof < 1 or a.size < 1 or b.size < 1:
        return float("nan")
    ss = float(np.sum((a - a.mean()) ** 2) + np.sum((b - b.mean()) ** 2))
    return math.sqrt(ss / dof)


def two_conditions(a: Mapping[int, float], b: Mapping[int, float], ratio: float | None = None,
                   names: tuple[str, str] = ("a", "b")) -> Outcome:
    """The two-condition rule: `a` and `b` map a training seed to that model's measure (already averaged over its
    direction seeds); the claim is a > b. Seeds missing from either side or not finite are left out."""
    seeds = sorted(s for s in a if s in b and finite(a[s]) and finite(b[s]))
    n = len(seeds)
    if n == 0:
        return Outcome(INCONCLUSIVE, f"no training seed has both {names[0]} and {names[1]}.")
    x = np.array([a[s] for s in seeds], dtype=np.float64)
    y = np.array([b[s] for s in seeds], dtype=np.float64)
    diff, sp = float(x.mean() - y.mean()), pooled_sd(x, y)
    wins = int(np.sum(x > y))
    detail = (f"{names[0]} {fmt(float(x.mean()))} vs {names[1]} {fmt(float(y.mean()))} (means over n = {n} training "
              f"seeds), difference {fmt(diff)}, {SPREAD:g} x pooled sd {fmt(SPREAD * sp)}, {names[0]} larger in "
              f"{wins} of {n} seeds")
    if ratio is not None:
        mean_ratio = fmt(float(x.mean() / y.mean())) if y.mean() != 0 else "n/a"
        detail += f", ratio of means {mean_ratio} (threshold {ratio:g})"
    if n < MIN_SEEDS:
        return Outcome(INCONCLUSIVE, f"fewer than {MIN_SEEDS} training seeds: {detail}.")
    if diff <= 0:
        return Outcome(NOT_REPRODUCED, f"{detail}.")
    big = diff > SPREAD * sp if np.isfinite(sp) else False
    ratio_ok = ratio is None or float(x.mean()) >= ratio * float(y.mean())
    if big and wins == n and ratio_ok:
        return Outcome(REPRODUCED, f"{detail}.")
    why = [w for w, bad in ((f"difference not above {SPREAD:g} x pooled sd", not big),
                            ("not larger in every seed", wins < n),
                            (f"ratio below {ratio}", not ratio_ok)) if bad]
    return Outcome(INCONCLUSIVE, f"{detail}: {'; '.join(why)}.")


def combine(outcomes: Sequence[Outcome]) -> str:
    """A claim of several comparisons: reproduced iff all are, not reproduced iff any is not."""
    verdicts = [o.verdict for o in outcomes]
    if verdicts and all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    if NOT_REPRODUCED in verdicts:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def ranks(v: Sequence[float]) -> np.ndarray:
    """Ranks 0..n-1, ties sharing their mean rank."""
    v = np.asarray(v, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    r = np.empty(v.size)
    r[order] = np.arange(v.size, dtype=np.float64)
    for value in np.unique(v):
        r[v == value] = r[v == value].mean()
    return r


def spearman_test(x: Sequence[float], y: Sequence[float], permutations: int = PERMUTATIONS,
                  seed: int = PERMUTATION_SEED, exact_max: int = EXACT_MAX) -> tuple[float, float]:
    """(Spearman rho, one-sided p = P(rho' >= rho)) over permutations of y against x: all n! of them for
    n <= `exact_max` (p = count / n!, the observed pairing among them), else `permutations` seeded random ones
    (p = (1 + count) / (1 + permutations)). NaN, NaN for fewer than 3 pairs or a constant side."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = x.size
    if n < 3 or y.size != n or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return float("nan"), float("nan")
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    scale = float(np.sqrt(np.sum(rx**2) * np.sum(ry**2)))
    if scale == 0:
        return float("nan"), float("nan")
    rho = float(np.dot(rx, ry) / scale)
    tol = 1e-12  # equal statistics (ties of the permutation distribution) count as ">="
    if n <= exact_max:
        perms = np.array(list(itertools.permutations(range(n))), dtype=np.intp)
        stats = (ry[perms] @ rx) / scale
        return rho, float(np.mean(stats >= rho - tol))
    rng = np.random.default_rng(seed)
    perms = np.argsort(rng.random((permutations, n)), axis=1)
    stats = (ry[perms] @ rx) / scale
    return rho, float((1 + np.sum(stats >= rho - tol)) / (1 + permutations))


def correlation(x: Mapping[object, float], y: Mapping[object, float], seeds: Mapping[object, int],
                names: tuple[str, str] = ("x", "y")) -> Outcome:
    """The correlation rule over conditions: `x`, `y` map a condition to its mean over training seeds, `seeds` to
    its number of training seeds; the claim is a positive rank correlation."""
    keys = sorted((k for k in x if k in y and finite(x[k]) and finite(y[k])), key=repr)
    n = len(keys)
    rho, p = spearman_test([x[k] for k in keys], [y[k] for k in keys])
    fewest = min((seeds.get(k, 0) for k in keys), default=0)
    method = "exact" if n <= EXACT_MAX else f"{PERMUTATIONS:,} permutations"
    detail = (f"Spearman rho of {names[0]} and {names[1]} over n = {n} conditions {fmt(rho)}, one-sided permutation "
              f"p {fmt(p)} ({method}; threshold {ALPHA:g}); training seeds per condition: at least {fewest}")
    if n < MIN_CONDITIONS or not np.isfinite(rho):
        return Outcome(INCONCLUSIVE, f"{detail}: fewer than {MIN_CONDITIONS} conditions with both numbers, or no "
                                     "rank variation.")
    if fewest < MIN_SEEDS:
        return Outcome(INCONCLUSIVE, f"fewer than {MIN_SEEDS} training seeds: {detail}.")
    if rho <= 0:
        return Outcome(NOT_REPRODUCED, f"{detail}.")
    if p <= ALPHA:
        return Outcome(REPRODUCED, f"{detail}.")
    return Outcome(INCONCLUSIVE, f"{detail}: p above {ALPHA:g}.")


def trajectory_paths(paths: Mapping[tuple[float, int], tuple[float, float]]) -> Outcome:
    """The trajectory rule: `paths` maps (weight decay, training seed) to (PC1 + PC2, random walk's 95th
    percentile)."""
    ok = {k: (finite(e) and e >= EXPLAINED and finite(q) and e > q) for k, (e, q) in paths.items()}
    if not ok:
        return Outcome(INCONCLUSIVE, "the PCA surfaces are missing.")
    per_wd: dict[float, int] = {}
    for wd, _ in ok:
        per_wd[wd] = per_wd.get(wd, 0) + 1
    n = min(per_wd.values())
    passed = sum(ok.values())
    detail = "; ".join(f"wd {fmt(wd)} seed {t}: {fmt(paths[(wd, t)][0])} (random walk 95th percentile "
                       f"{fmt(paths[(wd, t)][1])})" for wd, t in sorted(paths))
    detail = (f"PC1+PC2 explain {detail}; {passed} of {len(ok)} paths above {EXPLAINED:g} and above the random walk, "
              f"n = {n} training seeds per weight decay")
    if n < MIN_SEEDS:
        return Outcome(INCONCLUSIVE, f"fewer than {MIN_SEEDS} training seeds: {detail}.")
    if passed == len(ok):
        return Outcome(REPRODUCED, f"{detail}.")
    if passed == 0:
        return Outcome(NOT_REPRODUCED, f"{detail}.")
    return Outcome(INCONCLUSIVE, f"{detail}.")


def training_gate(models: Mapping[str, float], target: bool) -> str | None:
    """The reason a verdict is inconclusive because of how its models trained (label -> center train loss, the
    mean over direction seeds), or None: a model above ln 10 / 2 did not train; with `target`, a model above
    `TRAIN_LOSS_TARGET` makes the comparison one not at equal train loss."""
    bad = [f"{label} ({fmt(v)})" for label, v in sorted(models.items()) if not finite(v) or v > UNTRAINED_LOSS]
    if bad:
        return (f"not trained enough to compare: train loss at the center of {', '.join(bad)} > "
                f"{fmt(UNTRAINED_LOSS)} (ln 10 / 2)")
    if target:
        bad = [f"{label} ({fmt(v)})" for label, v in sorted(models.items()) if v > TRAIN_LOSS_TARGET]
        if bad:
            return (f"not trained alike: train loss at the center of {', '.join(bad)} above the target "
                    f"{TRAIN_LOSS_TARGET:g}, so the comparison would not be at equal train loss")
    return None


def rules_section() -> list[str]:
    """The report's section listing every rule's text."""
    lines = [f"## Verdict rules (version {RULES_VERSION}, fixed before the confirmatory run)", "",
             f"Fixed on {RULES_FIXED} in `landscape_mpi/experiments/rules.py`, before the confirmatory run on fresh "
             "seeds. A verdict is \"reproduced\", \"not reproduced\" or \"inconclusive at this scale\", never "
             f"stronger than its statistic. Every number is a mean over a model's direction seeds first; a "
             f"condition's spread is over its training seeds. Models trained alike: a two-condition comparison "
             f"needs every model's center train loss <= {TRAIN_LOSS_TARGET:g}. Measures added after results were "
             "seen, and not in these rules, are labelled exploratory with their commit and get no verdict.", ""]
    lines += [f"- {r.text()}" for r in RULES]
    return lines + [""]
