"""The verdicts of the findings report: each claim judged from the numbers per seed by the rules of
`landscape_mpi.experiments.rules` (fixed before the confirmatory run, versioned, printed in the report) as
reproduced, not reproduced, or inconclusive at this scale. Claims: docs/method.md#the-papers-claims.

A verdict function takes the report's section (anything with ``verdict(claim, verdict, reason)``) and the numbers
per condition and training seed (each the mean over that model's direction seeds, computed by the report from the
files), and records one line per claim. Numbers added after the results were seen get no verdict: the report
shows them under the `EXPLORATORY` label with their commit.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from landscape_mpi.experiments import rules
from landscape_mpi.experiments.rules import INCONCLUSIVE, REPRODUCED, Outcome, fmt

#: The label of a number added after the results were seen: shown, never judged (followed by its commit).
EXPLORATORY = "Exploratory (added after the results were seen; no verdict)"

#: condition -> training seed -> value (the mean over the model's direction seeds)
PerSeed = Mapping[object, Mapping[int, float]]


def _rule_tag(key: str) -> str:
    return f" [rule `{key}`, version {rules.RULES_VERSION}]"


def _say(s, claim: str, key: str, outcome: Outcome, gate: str | None = None) -> None:
    if gate:
        s.verdict(claim, INCONCLUSIVE, f"{gate}. (The statistic: {outcome.reason})" + _rule_tag(key))
    else:
        s.verdict(claim, outcome.verdict, outcome.reason + _rule_tag(key))


def _models(loss: PerSeed, conds: list[object], label) -> dict[str, float]:
    """label -> center train loss of every model (condition x training seed) of `conds`."""
    return {f"{label(c)} seed {t}": v for c in conds for t, v in loss.get(c, {}).items()}


def skip_verdict(s, measure: str, m: PerSeed, loss: PerSeed) -> None:
    """The skip claim judged by one chaos measure `m` ((depth, shortcut) -> seed -> value, larger = more
    chaotic); `loss`: the models' center train losses, keyed alike."""
    claim = f"Skip connections keep deep landscapes smooth ({measure})"
    key = f"skip/{measure}"
    depths = sorted({k[0] for k in m})
    if not depths:
        s.verdict(claim, INCONCLUSIVE, "the surfaces are missing." + _rule_tag(key))
        return
    deep, shallow = depths[-1], depths[0]
    name = lambda k: f"depth {k[0]} {'short' if k[1] else 'no short'}"  # noqa: E731
    first = rules.two_conditions(m.get((deep, False), {}), m.get((deep, True), {}), rules.ROUGHER,
                                 (name((deep, False)), name((deep, True))))
    outcomes = [first]
    if len(depths) > 1:
        outcomes.append(rules.two_conditions(m.get((deep, False), {}), m.get((shallow, False), {}), rules.ROUGHER,
                                             (name((deep, False)), name((shallow, False)))))
    verdict = rules.combine(outcomes)
    if len(depths) == 1 and verdict == REPRODUCED:
        verdict = INCONCLUSIVE
    against = ["against the deepest net with shortcuts", "against the shallowest no-shortcut net"]
    reason = " ".join(f"{what.capitalize()}: {o.verdict}; {o.reason}" for what, o in zip(against, outcomes))
    if len(depths) == 1:
        reason += " One depth only: no depth trend to test."
    conds = [(deep, False), (deep, True)] + ([(shallow, False)] if len(depths) > 1 else [])
    _say(s, claim, key, Outcome(verdict, reason), rules.training_gate(_models(loss, conds, name), target=True))


def eig_verdict(s, measure: str, chaos: Mapping[object, float], ratio: Mapping[object, float],
                seeds: Mapping[object, int], unit_rho: float, loss: PerSeed) -> None:
    """The eigenvalue-ratio claim: the correlation rule over the skip experiment's conditions between the mean
    of a chaos measure and the mean of the per-map median clipped ratio (`unit_rho`: the per-model Spearman rho,
    shown without a p-value)."""
    claim = f"|lambda_min/lambda_max| is larger where the landscape is chaotic ({measure})"
    o = rules.correlation(chaos, ratio, seeds, (measure, "median clipped ratio"))
    o = Outcome(o.verdict, o.reason[:-1] + f"; per model (not a test): rho {fmt(unit_rho)}.")
    name = lambda k: f"depth {k[0]} {'short' if k[1] else 'no short'}"  # noqa: E731
    _say(s, claim, f"eig/{measure}", o, rules.training_gate(_models(loss, sorted(chaos), name), target=False))


def width_verdict(s, measure: str, m: PerSeed, loss: PerSeed) -> None:
    """The width claim judged by one chaos measure `m` (width multiplier -> seed -> value)."""
    claim = f"Wider networks are smoother ({measure})"
    key = f"width/{measure}"
    widths = sorted(m)
    if len(widths) < 2:
        s.verdict(claim, INCONCLUSIVE, "a surface is missing." + _rule_tag(key))
        return
    narrow, wide = widths[0], widths[-1]
    o = rules.two_conditions(m[narrow], m[wide], rules.WIDER, (f"x{narrow}", f"x{wide}"))
    _say(s, claim, key, o, rules.training_gate(_models(loss, [narrow, wide], lambda w: f"width x{w}"), target=True))


def _batch_name(k) -> str:
    variant, wd, large = k
    return f"{'large batch, ' + variant if large else 'small batch'}, wd {fmt(wd)}"


def batch_verdicts(s, rise: PerSeed, rise_none: PerSeed, err: Mapping[object, float], seeds: Mapping[object, int],
                   unit_rho: float, loss: PerSeed, variants: list[str], wds: list[float]) -> None:
    """The batch claims. Conditions are (variant, wd, large): the small-batch net is (None, wd, False), a
    large-batch net (variant, wd, True). `rise`, `rise_none`: filter-normalized and unnormalized grid max-rise per
    seed; `err`, `seeds`: per condition, the mean test error and the number of training seeds (the correlation);
    `loss`: center train losses per seed."""
    for v in variants:
        for wd in wds:
            small, large = (None, wd, False), (v, wd, True)
            o = rules.two_conditions(rise.get(large, {}), rise.get(small, {}), None, ("large", "small"))
            _say(s, f"Large-batch minima are sharper (filter-normalized; {v} variant, wd {fmt(wd)})", "batch/sharper",
                 o, rules.training_gate(_models(loss, [small, large], _batch_name), target=True))
    means = {k: float(np.mean(list(vals.values()))) for k, vals in rise.items() if vals}
    o = rules.correlation(means, err, seeds, ("filter-normalized grid max-rise", "test error"))
    o = Outcome(o.verdict, o.reason[:-1] + f"; per model (not a test): rho {fmt(unit_rho)}.")
    _say(s, "Sharpness tracks test error", "batch/tracks", o,
         rules.training_gate(_models(loss, sorted(rise, key=repr), _batch_name), target=False))
    for v in variants:
        wd = max(wds) if wds else 0.0
        claim = f"Without filter normalization, weight decay flips the comparison ({v} variant)"
        if wd == 0:
            s.verdict(claim, INCONCLUSIVE, "no run with weight decay." + _rule_tag("batch/flip"))
            continue
        small, large = (None, wd, False), (v, wd, True)
        o = rules.two_conditions(rise_none.get(small, {}), rise_none.get(large, {}), None, ("small", "large"))
        _say(s, claim, "batch/flip", Outcome(o.verdict, f"with weight decay {fmt(wd)}, unnormalized grid max-rise: "
                                                        + o.reason),
             rules.training_gate(_models(loss, [small, large], _batch_name), target=True))


def trajectory_verdict(s, paths: Mapping[tuple[float, int], tuple[float, float]]) -> None:
    """The trajectory claim from (PC1+PC2, random walk's 95th percentile) per (weight decay, training seed)."""
    _say(s, "Trajectories lie in a low-dimensional space", "trajectory", rules.trajectory_paths(paths))
