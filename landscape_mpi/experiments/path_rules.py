"""The verdict rules of the path experiments (issue 27 item 6; landscape_mpi/experiments/path_definitions.py),
fixed before their first run: the measure, the unit, the statistic over pairs and the thresholds, versioned
(`PATH_RULES_VERSION`) apart from the surface experiments' rules (`rules.RULES_VERSION`), and printed in the
report.

The measure is the interpolation barrier of the train loss along a path (docs/barriers.md#definitions:
max_t [L(t) - ((1 - t) L(0) + t L(1))] over the path's t grid, in nats; `numbers.barriers.barrier_of`). The unit
is a pair of nets: the two ends of a path. The pairs of a condition share no net (6 nets make 3 pairs), so
they are independent draws; a condition's number is the mean over its pairs, shown with the sd (ddof 1), the
range and n. Every statistic below is a function of per-pair numbers and is tested on constructed inputs in
tests/test_path_findings.py. A change after results are seen makes a new version.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from landscape_mpi.experiments.rules import Outcome, Rule

#: The version of the rules below; the report prints it.
PATH_RULES_VERSION = "1"
#: When version 1 was fixed: before the path experiments' first run.
PATH_RULES_FIXED = "2026-12-07"

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive at this scale"

#: Pairs a condition needs for a verdict other than inconclusive.
MIN_PAIRS = 3
#: A barrier is "positive" above this many nats of train loss (a perplexity factor of e^0.05 = 1.05 at the worst
#: point, over the straight line between the ends' losses).
POSITIVE = 0.05
#: A barrier is "near zero" at or below this many nats (a perplexity factor of 1.02): linearly connected.
NEAR_ZERO = 0.02
#: "Clearly": the mean over pairs must clear a threshold by this many standard errors (sd / sqrt(n), ddof 1) ...
SE_FACTOR = 2.0
#: ... and every pair must be on the same side. Width: the difference of two conditions' means must exceed this
#: many pooled standard deviations (the surface rules' SPREAD).
SPREAD = 2.0
#: A net whose train loss is above half the loss of a uniform guess did not train; any verdict involving it is
#: inconclusive: ln 10 / 2 for the 10 digit classes, ln 97 / 2 = 2.29 for the lm task's 97 tokens. Corrected after
#: version 1's first commit (e0b6003), before any path was computed: that commit applied ln 10 / 2 to the lm task
#: too, which no gpt_tiny of the recipe reaches. (The gpt_tiny nets of path_parent's small scale ended at train loss
#: 2.26-2.49 after 2 epochs on 2026-12-07, most of them above the gate.)
UNTRAINED_LOSS = {"classify": float(np.log(10) / 2), "lm": float(np.log(97) / 2)}


@dataclass(frozen=True)
class PathRule(Rule):
    """One claim's verdict rule (the findings' `Rule`), printed with the path rules' version."""

    def text(self) -> str:
        return (f"**{self.claim}** (rule `{self.key}`, paths version {PATH_RULES_VERSION}). Measure: {self.measure} "
                f"Statistic: {self.statistic} Threshold: {self.threshold}")


BARRIER = ("the interpolation barrier of the train loss along the path, in nats (the largest height of the loss "
           "above the straight line between the two ends' losses, over the path's t grid).")
CLEARLY = (f"\"clearly above c\": n >= {MIN_PAIRS} pairs, every pair above c and mean - {SE_FACTOR:g} x se > c; "
           f"\"clearly at or below c\": n >= {MIN_PAIRS}, every pair at or below c and mean + {SE_FACTOR:g} x se <= c "
           "(se = sd / sqrt(n), sd with ddof 1, over the condition's pairs; its pairs share no net).")

RULES: tuple[PathRule, ...] = (
    PathRule("seeds/linear", "Independently trained nets have a positive linear barrier",
             f"{BARRIER} Linear path between two nets of the same recipe and different seeds.", CLEARLY,
             f"reproduced iff the barriers are clearly above {POSITIVE:g}; not reproduced iff clearly at or below "
             f"{POSITIVE:g}; otherwise inconclusive."),
    PathRule("seeds/curve", "A trained quadratic Bezier curve lowers the barrier between them to near zero",
             f"{BARRIER} Quadratic Bezier curve whose bend is trained (Garipov et al.: t ~ U(0, 1) per step), same "
             "pairs as seeds/linear.", CLEARLY,
             f"reproduced iff the linear barriers of the same pairs are clearly above {POSITIVE:g} (there is a "
             f"barrier to lower) and the curve's barriers are clearly at or below {NEAR_ZERO:g} (near zero); not "
             f"reproduced iff the curve's barriers are clearly above {NEAR_ZERO:g}; otherwise inconclusive."),
    PathRule("width/lowers", "Weight matching lowers the linear barrier (at each width)",
             f"{BARRIER} Per pair, the linear barrier minus the linear barrier after weight matching (--align).",
             CLEARLY + " One comparison per width.",
             "reproduced iff at every width the differences are clearly above 0; not reproduced iff at some width "
             "they are clearly at or below 0; otherwise inconclusive."),
    PathRule("width/more", "Weight matching lowers the barrier more for wider nets",
             f"{BARRIER} Per pair, the fraction of the linear barrier that weight matching removes, "
             "1 - aligned / linear (a pair whose linear barrier is not above "
             f"{NEAR_ZERO:g} has no barrier to remove and is left out).",
             "two conditions, the widest and the narrowest width: a = the widest's fractions, b = the narrowest's; "
             "the middle width is shown and must lie between them in mean.",
             f"reproduced iff n >= {MIN_PAIRS} pairs at each width, mean(a) - mean(b) > {SPREAD:g} x the pooled sd "
             "(ddof 1), and the mean fractions increase with width (narrowest < middle < widest); not reproduced "
             f"iff n >= {MIN_PAIRS} and mean(a) <= mean(b); otherwise inconclusive."),
    PathRule("parent/classify", "Two fine-tunes of one parent are linearly connected where two nets from scratch are "
             "not (classification)",
             f"{BARRIER} Linear path between two fine-tunes of one parent (different data-order seeds; each pair "
             "its own parent), and between two nets from scratch with as many epochs in all.", CLEARLY,
             f"reproduced iff the fine-tunes' barriers are clearly at or below {NEAR_ZERO:g} and the scratch pairs' "
             f"clearly above {POSITIVE:g}; not reproduced iff the fine-tunes' are clearly above {NEAR_ZERO:g} or "
             f"the scratch pairs' clearly at or below {POSITIVE:g} (no contrast); otherwise inconclusive."),
    PathRule("parent/lm", "Two fine-tunes of one parent are linearly connected where two nets from scratch are "
             "not (language model)", f"{BARRIER} As parent/classify, for gpt_tiny on the shipped text.", CLEARLY,
             "as parent/classify."),
)
RULE = {r.key: r for r in RULES}


def fmt(v: object) -> str:
    """4 significant digits, n/a for None and NaN."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{float(v):.4g}"


def _values(values: Sequence[float]) -> np.ndarray:
    x = np.asarray([v for v in values if v is not None and math.isfinite(float(v))], dtype=np.float64)
    return x


def summary(values: Sequence[float]) -> str:
    """``mean ± sd [min, max], n = N`` of a condition's pairs (sd ddof 1, n/a for one pair)."""
    x = _values(values)
    if x.size == 0:
        return "n/a (n = 0)"
    sd = float(x.std(ddof=1)) if x.size > 1 else float("nan")
    return f"{fmt(float(x.mean()))} ± {fmt(sd)} [{fmt(float(x.min()))}, {fmt(float(x.max()))}], n = {x.size}"


def side(values: Sequence[float], c: float) -> str:
    """Where a condition's pairs lie against the threshold `c`: ``"above"`` (clearly above), ``"below"`` (clearly
    at or below), or ``"unclear"`` (fewer than MIN_PAIRS finite pairs, pairs on both sides, or the mean within
    SE_FACTOR standard errors of `c`)."""
    x = _values(values)
    n = x.size
    if n < MIN_PAIRS:
        return "unclear"
    mean, se = float(x.mean()), float(x.std(ddof=1)) / math.sqrt(n)
    if bool(np.all(x > c)) and mean - SE_FACTOR * se > c:
        return "above"
    if bool(np.all(x <= c)) and mean + SE_FACTOR * se <= c:
        return "below"
    return "unclear"


def _clearly(name: str, values: Sequence[float], c: float) -> str:
    where = {"above": f"clearly above {fmt(c)}", "below": f"clearly at or below {fmt(c)}",
             "unclear": f"not clearly on either side of {fmt(c)}"}[side(values, c)]
    return f"{name} {summary(values)}: {where}"


def _short(values: Sequence[float]) -> bool:
    return _values(values).size < MIN_PAIRS


def untrained(train_losses: Mapping[str, float], task: str = "classify") -> str | None:
    """The reason a verdict is inconclusive because a net did not train (label -> train loss at its end), or
    None. `task`: classify or lm (`UNTRAINED_LOSS`)."""
    limit = UNTRAINED_LOSS[task]
    bad = [f"{k} ({fmt(v)})" for k, v in sorted(train_losses.items())
           if v is None or not math.isfinite(float(v)) or v > limit]
    return f"not trained: train loss of {', '.join(bad)} above {fmt(limit)} (half a uniform guess's)" if bad else None


def positive_barrier(linear: Sequence[float]) -> Outcome:
    """seeds/linear: the linear barriers of independently trained pairs."""
    detail = _clearly("linear barriers", linear, POSITIVE)
    if _short(linear):
        return Outcome(INCONCLUSIVE, f"fewer than {MIN_PAIRS} pairs: {detail}.")
    s = side(linear, POSITIVE)
    return Outcome({"above": REPRODUCED, "below": NOT_REPRODUCED}.get(s, INCONCLUSIVE), f"{detail}.")


def curve_near_zero(linear: Sequence[float], curve: Sequence[float]) -> Outcome:
    """seeds/curve: the same pairs' linear and trained-curve barriers."""
    detail = f"{_clearly('linear barriers', linear, POSITIVE)}; {_clearly('curve barriers', curve, NEAR_ZERO)}"
    if _short(linear) or _short(curve):
        return Outcome(INCONCLUSIVE, f"fewer than {MIN_PAIRS} pairs: {detail}.")
    if side(curve, NEAR_ZERO) == "above":
        return Outcome(NOT_REPRODUCED, f"{detail}.")
    if side(linear, POSITIVE) != "above":
        return Outcome(INCONCLUSIVE, f"{detail}: no clear linear barrier to lower.")
    if side(curve, NEAR_ZERO) == "below":
        return Outcome(REPRODUCED, f"{detail}.")
    return Outcome(INCONCLUSIVE, f"{detail}.")


def alignment_lowers(linear: Mapping[int, Sequence[float]], aligned: Mapping[int, Sequence[float]]) -> Outcome:
    """width/lowers: per width, the pairs' linear and aligned barriers (same pairs, same order)."""
    parts, sides = [], []
    for w in sorted(linear):
        diff = [a - b for a, b in zip(linear[w], aligned.get(w, ()))]
        sides.append(side(diff, 0.0) if not _short(diff) else "short")
        parts.append(f"x{w}: " + _clearly("linear minus aligned", diff, 0.0))
    detail = "; ".join(parts) or "no width"
    if not sides or "short" in sides:
        return Outcome(INCONCLUSIVE, f"fewer than {MIN_PAIRS} pairs at some width: {detail}.")
    if "below" in sides:
        return Outcome(NOT_REPRODUCED, f"{detail}.")
    if all(s == "above" for s in sides):
        return Outcome(REPRODUCED, f"{detail}.")
    return Outcome(INCONCLUSIVE, f"{detail}.")


def removed_fraction(linear: float, aligned: float) -> float:
    """1 - aligned / linear: the fraction of a pair's linear barrier that alignment removes; NaN where the linear
    barrier is not above NEAR_ZERO (nothing to remove)."""
    if not (math.isfinite(linear) and math.isfinite(aligned)) or linear <= NEAR_ZERO:
        return float("nan")
    return 1.0 - aligned / linear


def pooled_sd(a: np.ndarray, b: np.ndarray) -> float:
    dof = a.size + b.size - 2
    if dof < 1:
        return float("nan")
    return math.sqrt(float(np.sum((a - a.mean()) ** 2) + np.sum((b - b.mean()) ** 2)) / dof)


def more_for_wider(fractions: Mapping[int, Sequence[float]]) -> Outcome:
    """width/more: per width, the pairs' removed fractions (`removed_fraction`; NaN ones left out)."""
    widths = sorted(fractions)
    if len(widths) < 2:
        return Outcome(INCONCLUSIVE, "fewer than two widths.")
    per = {w: _values(fractions[w]) for w in widths}
    means = {w: float(per[w].mean()) if per[w].size else float("nan") for w in widths}
    narrow, wide = widths[0], widths[-1]
    a, b = per[wide], per[narrow]
    sp = pooled_sd(a, b)
    diff = means[wide] - means[narrow]
    detail = ("removed fraction " + "; ".join(f"x{w} {summary(per[w])}" for w in widths)
              + f"; widest minus narrowest {fmt(diff)}, {SPREAD:g} x pooled sd {fmt(SPREAD * sp)}")
    if any(per[w].size < MIN_PAIRS for w in widths):
        return Outcome(INCONCLUSIVE, f"fewer than {MIN_PAIRS} pairs with a barrier to remove at some width: {detail}.")
    if diff <= 0:
        return Outcome(NOT_REPRODUCED, f"{detail}.")
    ordered = all(means[u] < means[v] for u, v in zip(widths, widths[1:]))
    big = math.isfinite(sp) and diff > SPREAD * sp
    if big and ordered:
        return Outcome(REPRODUCED, f"{detail}.")
    why = [w for w, bad in ((f"difference not above {SPREAD:g} x pooled sd", not big),
                            ("means not increasing with width", not ordered)) if bad]
    return Outcome(INCONCLUSIVE, f"{detail}: {'; '.join(why)}.")


def shared_parent(finetunes: Sequence[float], scratch: Sequence[float]) -> Outcome:
    """parent/classify and parent/lm: linear barriers of fine-tune pairs (one parent each) and of scratch pairs."""
    detail = (f"{_clearly('fine-tune pairs', finetunes, NEAR_ZERO)}; "
              f"{_clearly('scratch pairs', scratch, POSITIVE)}")
    if _short(finetunes) or _short(scratch):
        return Outcome(INCONCLUSIVE, f"fewer than {MIN_PAIRS} pairs: {detail}.")
    ft, sc = side(finetunes, NEAR_ZERO), side(scratch, POSITIVE)
    if ft == "above" or sc == "below":
        return Outcome(NOT_REPRODUCED, f"{detail}.")
    if ft == "below" and sc == "above":
        return Outcome(REPRODUCED, f"{detail}.")
    return Outcome(INCONCLUSIVE, f"{detail}.")


def rules_section(commit: str | None = None) -> list[str]:
    """The report's section listing every path rule's text."""
    where = f" (commit {commit})" if commit else ""
    lines = [f"### Path verdict rules (paths version {PATH_RULES_VERSION}, fixed before the first run)", "",
             f"Fixed on {PATH_RULES_FIXED} in `landscape_mpi/experiments/path_rules.py`{where}, before any path "
             "experiment was run. A verdict is \"reproduced\", \"not reproduced\" or \"inconclusive at this scale\", "
             f"never stronger than its statistic. A verdict involving a net whose train loss is above "
             f"half the loss of a uniform guess ({fmt(UNTRAINED_LOSS['classify'])} for the digits, ln 10 / 2; "
             f"{fmt(UNTRAINED_LOSS['lm'])} for the lm task, ln 97 / 2) is inconclusive.", ""]
    return lines + [f"- {r.text()}" for r in RULES] + [""]

#: The commit that fixed version 1 (this module's rules and their tests), before any path experiment ran.
PATH_RULES_COMMIT = "e0b6003"
