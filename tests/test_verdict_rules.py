"""The verdict rules (landscape_mpi/experiments/rules.py) on constructed inputs: a true effect over 3 training
seeds is found, a null effect is not, a one-seed fluke is not called reproduced, fewer than 3 seeds is
inconclusive; the permutation p-value against an independent enumeration and scipy; the claims' verdict
functions and the report's rules section."""

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.stats

from landscape_mpi.experiments import rules, verdicts
from landscape_mpi.experiments.rules import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED

SEEDS = (11, 12, 13)


def per_seed(values):
    return dict(zip(SEEDS, values))


# ------------------------------------------------------------------------------------------ two conditions
def test_a_true_effect_over_three_seeds_is_found():
    o = rules.two_conditions(per_seed([1.0, 1.1, 0.95]), per_seed([0.30, 0.35, 0.28]))
    assert o.verdict == REPRODUCED
    assert "n = 3" in o.reason and "3 of 3 seeds" in o.reason


def test_a_null_effect_is_not_found():
    same = per_seed([0.5, 0.6, 0.55])
    assert rules.two_conditions(same, dict(same)).verdict == NOT_REPRODUCED  # difference 0: not larger
    # both conditions from one distribution: "reproduced" at most in a few percent of 2,000 draws (the rule's
    # false-positive rate: all three seeds in one direction and a difference over twice the pooled sd)
    rng = np.random.default_rng(0)
    calls = [rules.two_conditions(per_seed(rng.normal(1, 0.1, 3)), per_seed(rng.normal(1, 0.1, 3))).verdict
             for _ in range(2000)]
    assert calls.count(REPRODUCED) / len(calls) < 0.05
    assert calls.count(NOT_REPRODUCED) / len(calls) == pytest.approx(0.5, abs=0.05)  # mean(a) <= mean(b)


def test_a_one_seed_fluke_is_not_called_reproduced():
    """One seed with a huge effect and two with none (equal, or a hair larger): the mean difference is large,
    but not against the spread, and not in every seed."""
    fluke = rules.two_conditions(per_seed([10.0, 1.0, 1.0]), per_seed([1.0, 1.0, 1.0]))
    assert fluke.verdict == INCONCLUSIVE and "1 of 3 seeds" in fluke.reason
    hair = rules.two_conditions(per_seed([10.0, 1.01, 1.02]), per_seed([1.0, 1.0, 1.0]))
    assert hair.verdict == INCONCLUSIVE and "pooled sd" in hair.reason and "3 of 3 seeds" in hair.reason


def test_fewer_than_three_seeds_is_inconclusive():
    for a, b in (({11: 5.0, 12: 5.1}, {11: 1.0, 12: 1.1}), ({11: 0.1}, {11: 5.0})):
        o = rules.two_conditions(a, b)
        assert o.verdict == INCONCLUSIVE and "fewer than 3 training seeds" in o.reason
    # seeds are paired: a seed missing on one side does not count
    o = rules.two_conditions({11: 5.0, 12: 5.1, 13: 5.2}, {11: 1.0, 12: 1.1, 14: 1.0})
    assert o.verdict == INCONCLUSIVE and "n = 2" in o.reason
    o = rules.two_conditions({11: 5.0, 12: np.nan, 13: 5.2}, {11: 1.0, 12: 1.1, 13: 1.0})
    assert "n = 2" in o.reason


def test_ratio_threshold():
    """A clear effect whose means differ by less than the ratio is inconclusive under a ratio rule."""
    a, b = per_seed([1.20, 1.21, 1.22]), per_seed([1.00, 1.01, 1.02])
    assert rules.two_conditions(a, b).verdict == REPRODUCED
    o = rules.two_conditions(a, b, ratio=1.5)
    assert o.verdict == INCONCLUSIVE and "ratio below 1.5" in o.reason


def test_pooled_sd_by_hand():
    a, b = [1.0, 2.0, 4.0], [0.0, 1.0, 1.0]
    ss = sum((v - np.mean(a)) ** 2 for v in a) + sum((v - np.mean(b)) ** 2 for v in b)
    assert rules.pooled_sd(a, b) == pytest.approx(np.sqrt(ss / 4))
    # equal sizes: the root mean of the two sample variances
    assert rules.pooled_sd(a, b) == pytest.approx(np.sqrt((np.var(a, ddof=1) + np.var(b, ddof=1)) / 2))


def test_combine():
    r, n, i = (rules.Outcome(v, "") for v in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE))
    assert rules.combine([r, r]) == REPRODUCED
    assert rules.combine([r, n]) == NOT_REPRODUCED and rules.combine([i, n]) == NOT_REPRODUCED
    assert rules.combine([r, i]) == INCONCLUSIVE


# ------------------------------------------------------------------------------------------ permutation test
def spearman_along(a, b, axis):
    """Spearman rho along `axis` (vectorized, for scipy.stats.permutation_test)."""
    ra = scipy.stats.rankdata(a, axis=axis)
    rb = scipy.stats.rankdata(b, axis=axis)
    ra = ra - ra.mean(axis=axis, keepdims=True)
    rb = rb - rb.mean(axis=axis, keepdims=True)
    return (ra * rb).sum(axis=axis) / np.sqrt((ra**2).sum(axis=axis) * (rb**2).sum(axis=axis))


def brute_force_p(x, y):
    """P(rho' >= rho) over every reordering of y, rho from scipy (average ranks for ties)."""
    rho = scipy.stats.spearmanr(x, y)[0]
    stats = [scipy.stats.spearmanr(x, [y[i] for i in p])[0] for p in itertools.permutations(range(len(y)))]
    return rho, np.mean(np.array(stats) >= rho - 1e-12)


@pytest.mark.parametrize("n", [4, 5, 6, 7])
def test_exact_permutation_p_against_enumeration_and_scipy(n):
    rng = np.random.default_rng(n)
    for trial in range(3):
        x = rng.normal(size=n)
        y = x + rng.normal(scale=1.0, size=n)
        if trial == 2:
            y[1] = y[0]  # a tie
            x[3] = x[2]
        rho, p = rules.spearman_test(x, y)
        ref_rho, ref_p = brute_force_p(x, y)
        assert rho == pytest.approx(ref_rho, abs=1e-12) and p == pytest.approx(ref_p, abs=1e-12)
        if n <= 6:  # scipy reorders both samples: (n!)^2 pairings, each of the n! distinct ones n! times
            res = scipy.stats.permutation_test((x, y), spearman_along, permutation_type="pairings",
                                               alternative="greater", n_resamples=np.inf, vectorized=True)
            assert p == pytest.approx(res.pvalue, abs=1e-9)


def test_monte_carlo_permutation_p_beyond_eight():
    x = np.arange(10.0)
    y = x + np.random.default_rng(3).normal(scale=4, size=10)
    rho, p = rules.spearman_test(x, y)
    res = scipy.stats.permutation_test((x, y), spearman_along, permutation_type="pairings", alternative="greater",
                                       n_resamples=20000, random_state=1, vectorized=True)
    assert rho == pytest.approx(scipy.stats.spearmanr(x, y)[0])
    assert p == pytest.approx(res.pvalue, abs=0.015)
    assert rules.spearman_test(x, y) == (rho, p)  # seeded: the report is deterministic
    assert rules.spearman_test(x, x)[1] == pytest.approx(1 / 10001)  # (1 + 0) / (1 + 10,000): never 0
    assert np.isnan(rules.spearman_test([1, 2], [1, 2])[1]) and np.isnan(rules.spearman_test([1, 1, 1], [1, 2, 3])[0])


def test_correlation_rule():
    conds = [f"c{i}" for i in range(6)]
    x = {c: float(i) for i, c in enumerate(conds)}
    three = {c: 3 for c in conds}
    o = rules.correlation(x, {c: 10.0 + i for i, c in enumerate(conds)}, three)
    assert o.verdict == REPRODUCED and "n = 6" in o.reason and "0.001389" in o.reason  # p = 1/720
    assert rules.correlation(x, {c: -float(i) for i, c in enumerate(conds)}, three).verdict == NOT_REPRODUCED
    weak = {c: v for c, v in zip(conds, [2.0, 0.0, 1.0, 4.0, 5.0, 3.0])}  # rho 0.66 > 0, exact p 63/720
    o = rules.correlation(x, weak, three)
    assert o.verdict == INCONCLUSIVE and "p above 0.05" in o.reason and "0.0875" in o.reason
    swaps = {c: v for c, v in zip(conds, [1.0, 0.0, 3.0, 2.0, 5.0, 4.0])}  # rho 0.83: p 21/720, just below 0.05
    assert rules.correlation(x, swaps, three).verdict == REPRODUCED
    one = {c: 1 for c in conds}
    o = rules.correlation(x, {c: 10.0 + i for i, c in enumerate(conds)}, one)
    assert o.verdict == INCONCLUSIVE and "fewer than 3 training seeds" in o.reason
    assert rules.correlation({k: x[k] for k in conds[:3]}, weak, three).verdict == INCONCLUSIVE  # 3 conditions


# ------------------------------------------------------------------------------------------ trajectory
def test_trajectory_rule():
    good = {(wd, t): (0.9, 0.77) for wd in (0.0, 5e-4) for t in SEEDS}
    assert rules.trajectory_paths(good).verdict == REPRODUCED
    assert rules.trajectory_paths({k: (0.7, 0.77) for k in good}).verdict == NOT_REPRODUCED  # below the walk
    assert rules.trajectory_paths({k: (0.45, 0.3) for k in good}).verdict == NOT_REPRODUCED  # below 0.5
    mixed = dict(good)
    mixed[(0.0, 12)] = (0.7, 0.77)
    assert rules.trajectory_paths(mixed).verdict == INCONCLUSIVE
    one = {k: v for k, v in good.items() if k[1] == 11}
    o = rules.trajectory_paths(one)
    assert o.verdict == INCONCLUSIVE and "fewer than 3 training seeds" in o.reason
    assert rules.trajectory_paths({}).verdict == INCONCLUSIVE


# ------------------------------------------------------------------------------------------ claims
def recorder():
    s = SimpleNamespace(lines=[])
    s.verdict = lambda claim, v, reason: s.lines.append((claim, v, reason))
    return s


TRAINED = {c: per_seed([0.01, 0.02, 0.01]) for c in [(8, True), (8, False), (56, True), (56, False)]}


def test_each_chaos_measure_has_its_own_verdict_and_they_may_disagree():
    """The skip claim is judged once per measure: a surface that explodes at the grid's edge (small roughness,
    since roughness is divided by the loss range) but curves down at most interior points gets "not
    reproduced" by roughness and "reproduced" by the non-convex fraction, side by side."""
    s = recorder()
    rough = {(8, True): per_seed([0.010, 0.011, 0.009]), (8, False): per_seed([0.004, 0.005, 0.004]),
             (56, True): per_seed([0.0038, 0.004, 0.0036]), (56, False): per_seed([0.0029, 0.003, 0.0028])}
    nonconvex = {(8, True): per_seed([0.24, 0.26, 0.25]), (8, False): per_seed([0.25, 0.27, 0.24]),
                 (56, True): per_seed([0.32, 0.30, 0.31]), (56, False): per_seed([0.67, 0.70, 0.65])}
    verdicts.skip_verdict(s, "roughness", rough, TRAINED)
    verdicts.skip_verdict(s, "non-convex fraction", nonconvex, TRAINED)
    assert [(c, v) for c, v, _ in s.lines] == [
        ("Skip connections keep deep landscapes smooth (roughness)", NOT_REPRODUCED),
        ("Skip connections keep deep landscapes smooth (non-convex fraction)", REPRODUCED)]
    assert "[rule `skip/non-convex fraction`, version 2]" in s.lines[1][2]
    # one comparison only: against the deepest net with shortcuts yes, against the shallowest no-shortcut net no
    s.lines.clear()
    flat = {**nonconvex, (8, False): per_seed([0.66, 0.69, 0.64])}
    verdicts.skip_verdict(s, "non-convex fraction", flat, TRAINED)
    assert s.lines[0][1] == INCONCLUSIVE


def test_models_not_trained_alike_make_a_comparison_inconclusive():
    s = recorder()
    nonconvex = {(8, False): per_seed([0.25, 0.27, 0.24]), (56, True): per_seed([0.32, 0.30, 0.31]),
                 (56, False): per_seed([0.67, 0.70, 0.65]), (8, True): per_seed([0.2, 0.2, 0.2])}
    above_target = {**TRAINED, (56, False): per_seed([0.01, 0.5, 0.02])}
    verdicts.skip_verdict(s, "non-convex fraction", nonconvex, above_target)
    untrained = {**TRAINED, (56, False): per_seed([0.01, 2.0, 0.02])}
    verdicts.skip_verdict(s, "non-convex fraction", nonconvex, untrained)
    (_, v1, r1), (_, v2, r2) = s.lines
    assert v1 == INCONCLUSIVE and "not trained alike" in r1 and "depth 56 no short seed 12 (0.5)" in r1
    assert v2 == INCONCLUSIVE and "not trained enough" in r2
    assert "The statistic: " in r1  # the numbers are still shown


def test_width_and_batch_claims():
    s = recorder()
    verdicts.width_verdict(s, "non-convex fraction", {1: per_seed([0.67, 0.7, 0.65]), 4: per_seed([0.3, 0.31, 0.29])},
                           {1: per_seed([0.05] * 3), 4: per_seed([0.01] * 3)})
    verdicts.width_verdict(s, "roughness",
                           {1: per_seed([0.0029, 0.003, 0.0031]), 4: per_seed([0.0033, 0.0034, 0.0032])},
                           {1: per_seed([0.05] * 3), 4: per_seed([0.01] * 3)})
    assert [v for _, v, _ in s.lines] == [REPRODUCED, NOT_REPRODUCED]
    s.lines.clear()
    small = {(None, wd, False): per_seed([8.0, 9.0, 10.0]) for wd in (0.0, 5e-4)}
    large = {(v, wd, True): per_seed([60.0, 55.0, 65.0]) for v in ("epochs", "steps") for wd in (0.0, 5e-4)}
    rise = {**small, **large}
    rise_none = {**{k: per_seed([1.5, 1.4, 1.6]) for k in small}, **{k: per_seed([30.0, 33.0, 35.0]) for k in large}}
    err = {k: (0.015 if not k[2] else 0.03) + 0.001 * i for i, k in enumerate(sorted(rise, key=repr))}
    loss = {k: per_seed([0.001] * 3) for k in rise}
    verdicts.batch_verdicts(s, rise, rise_none, err, {k: 3 for k in rise}, 0.5, loss, ["epochs", "steps"], [0.0, 5e-4])
    got = {c: v for c, v, _ in s.lines}
    assert got["Large-batch minima are sharper (filter-normalized; steps variant, wd 0.0005)"] == REPRODUCED
    assert got["Without filter normalization, weight decay flips the comparison (epochs variant)"] == NOT_REPRODUCED
    assert "Sharpness tracks test error" in got and len(got) == 4 + 1 + 2


def test_rules_are_versioned_and_printed():
    text = "\n".join(rules.rules_section())
    assert f"## Verdict rules (version {rules.RULES_VERSION}, fixed before the confirmatory run)" in text
    assert rules.RULES_VERSION == "2" and rules.RULES_FIXED == "2026-12-06"
    for r in rules.RULES:
        assert r.fixed_in == "2" and r.claim and r.measure and r.statistic and r.threshold
        assert r.text() in text
    assert "87d53d8" in rules.RULE["skip/non-convex fraction"].text()
    assert len({r.key for r in rules.RULES}) == len(rules.RULES) == 10
