"""The verdict rules of version 3 (landscape_mpi/experiments/rules_v3.py) on constructed inputs: the exact
permutation p against scipy's, Holm's procedure against the textbook cases, the power against the analytic limit,
a planted effect over 5 seeds is found, a null is not (false-positive rate at most alpha), too few seeds or too
little power is inconclusive, a well-powered null is not reproduced, and nets not at matched train loss make a
comparison inconclusive."""

import math

import numpy as np
import pytest
import scipy.stats

from landscape_mpi.experiments import rules_v3 as v3
from landscape_mpi.experiments.rules import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED

SEEDS = (31, 32, 33, 34, 35)


def per_seed(values):
    return dict(zip(SEEDS, values))


def test_permutation_p_against_scipy():
    rng = np.random.default_rng(1)
    for nx, ny in ((5, 5), (3, 4), (5, 3)):
        x, y = rng.normal(0.5, 1, nx), rng.normal(0, 1, ny)
        ref = scipy.stats.permutation_test((x, y), lambda a, b: np.mean(a) - np.mean(b), permutation_type="independent",
                                           alternative="greater", n_resamples=np.inf).pvalue
        assert v3.permutation_p(x, y) == pytest.approx(ref)
    # separated groups: the observed split is the most extreme of C(10, 5) = 252
    assert v3.permutation_p([5, 6, 7, 8, 9], [0, 1, 2, 3, 4]) == pytest.approx(1 / 252)
    assert v3.permutation_p([5, 6, 7], [0, 1, 2]) == pytest.approx(1 / 20)  # 3 seeds can never pass 0.05 / 2


def test_holm_textbook_cases():
    assert v3.holm_rejected({"a": 0.01, "b": 0.04}) == {"a": True, "b": True}  # 0.01 <= 0.025, 0.04 <= 0.05
    assert v3.holm_rejected({"a": 0.03, "b": 0.04}) == {"a": False, "b": False}  # 0.03 > 0.025: stop
    assert v3.holm_rejected({"a": 0.001, "b": 0.02, "c": 0.02}) == {"a": True, "b": True, "c": True}  # .025, .05
    assert v3.holm_rejected({"a": 0.001, "b": 0.03, "c": 0.03}) == {"a": True, "b": False, "c": False}  # .03 > .025
    out = v3.holm_rejected({"a": 0.001, "b": 0.015, "c": 0.049, "d": float("nan")})
    assert out == {"a": True, "b": True, "c": False, "d": False}  # levels 0.0125, 0.0167, 0.025; NaN last
    assert v3.holm_levels({"a": 0.2, "b": 0.001, "c": 0.03}) == {"b": 0.05 / 3, "c": 0.025, "a": 0.05}


def test_bootstrap_interval_covers_the_difference_and_shrinks_with_seeds():
    rng = np.random.default_rng(2)
    few = v3.bootstrap_interval(rng.normal(1, 1, 5), rng.normal(0, 1, 5))
    many = v3.bootstrap_interval(rng.normal(1, 1, 500), rng.normal(0, 1, 500))
    assert few[0] < few[1] and many[0] < 1 < many[1] and many[1] - many[0] < (few[1] - few[0]) / 3
    # the large-sample interval is the normal one: difference +- 1.96 sqrt(2 / n)
    assert many[1] - many[0] == pytest.approx(2 * 1.96 * math.sqrt(2 / 500), rel=0.1)
    assert v3.bootstrap_interval([1.0, 2.0], [0.0, 1.0]) == v3.bootstrap_interval([1.0, 2.0], [0.0, 1.0])  # seeded


def test_power_against_the_analytic_limits():
    # 3 seeds per condition: the smallest p is 1/20, never below a level of 0.05 / 2
    assert v3.power(10.0, 1.0, 3, 3, 0.025) == 0
    # a huge effect is always found, none is found at most alpha of the time (the exact test's size)
    assert v3.power(20.0, 1.0, 5, 5, 0.05) == 1
    assert v3.power(0.0, 1.0, 5, 5, 0.05) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / v3.POWER_SIMULATIONS)
    # between: close to a one-sided two-sample z-test's power (the permutation test loses a little)
    z = scipy.stats.norm
    analytic = 1 - z.cdf(z.ppf(0.95) - 2.0 / math.sqrt(2 / 5))
    assert v3.power(2.0, 1.0, 5, 5, 0.05) == pytest.approx(analytic, abs=0.1)


def _claim(a, b, key="width", gate=None):
    claim = v3.CLAIMS[key]
    effect = v3.compare(per_seed(a) if len(a) == 5 else dict(zip(SEEDS, a)),
                        per_seed(b) if len(b) == 5 else dict(zip(SEEDS, b)), claim.scale)
    return v3.two_condition_result([(effect, ("a", "b"))], claim, gate)


def test_a_planted_effect_is_found_and_a_null_is_not():
    planted = _claim([0.70, 0.72, 0.69, 0.75, 0.71], [0.40, 0.45, 0.42, 0.38, 0.41])
    out = v3.decide({"width": planted})
    assert out["width"].verdict == REPRODUCED and "n = 5" in out["width"].reason
    assert "95% bootstrap" in out["width"].reason
    # a null: both conditions from one distribution. The exact test's size is at most alpha (2,000 draws), and
    # through the verdict (100 draws) "reproduced" is as rare (expected at most 5; 12 or more: p < 0.002)
    rng = np.random.default_rng(3)
    p = [v3.permutation_p(rng.normal(0.5, 0.05, 5), rng.normal(0.5, 0.05, 5)) for _ in range(2000)]
    assert np.mean(np.array(p) <= 0.05) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 2000)
    calls = [v3.decide({"width": _claim(rng.normal(0.5, 0.05, 5), rng.normal(0.5, 0.05, 5))})["width"].verdict
             for _ in range(100)]
    assert calls.count(REPRODUCED) < 12 and calls.count(NOT_REPRODUCED) > 50  # sd 0.05 gives power at 0.1
    # a well-powered null (sd 0.02, smallest effect of interest 0.1): not reproduced
    null = _claim([0.50, 0.52, 0.49, 0.51, 0.50], [0.51, 0.50, 0.52, 0.49, 0.50])
    o = v3.decide({"width": null})["width"]
    assert o.verdict == NOT_REPRODUCED and "power 1 at the smallest effect of interest 0.1" in o.reason


def test_underpowered_is_inconclusive():
    # a real-looking effect with 3 seeds: too few seeds
    o = v3.decide({"width": _claim([0.7, 0.72, 0.69], [0.4, 0.45, 0.42])})["width"]
    assert o.verdict == INCONCLUSIVE and "fewer than 5 training seeds" in o.reason
    # 5 seeds, no effect, but a spread (sd 0.3) that could hide one of 0.1: inconclusive, not "not reproduced"
    rng = np.random.default_rng(4)
    o = v3.decide({"width": _claim(list(rng.normal(0.5, 0.3, 5)), list(rng.normal(0.5, 0.3, 5)))})["width"]
    assert o.verdict == INCONCLUSIVE and "too little to say not reproduced" in o.reason
    # a correlation claim has no power analysis: not significant is inconclusive
    r = v3.Result(0.4, 5, True, "Spearman rho 0.2 over 6 conditions")
    assert v3.decide({"eig": r})["eig"].verdict == INCONCLUSIVE


def test_holm_over_the_family_changes_a_verdict():
    """p = 0.03 reproduces alone, not beside a claim with p = 0.04 (Holm's first level is 0.025)."""
    alone = v3.Result(0.03, 5, True, "x", sd=0.01)
    assert v3.decide({"width": alone})["width"].verdict == REPRODUCED
    both = v3.decide({"width": alone, "skip": v3.Result(0.04, 5, True, "y", sd=0.01)})
    assert both["width"].verdict != REPRODUCED and both["skip"].verdict != REPRODUCED


def test_intersection_union_and_log_ratio():
    """A claim of two comparisons takes the larger p; the log-ratio scale compares mean logs."""
    claim = v3.CLAIMS["skip"]
    strong = v3.compare(per_seed([0.7, 0.72, 0.69, 0.75, 0.71]), per_seed([0.3, 0.31, 0.29, 0.33, 0.3]), claim.scale)
    weak = v3.compare(per_seed([0.7, 0.72, 0.69, 0.75, 0.71]), per_seed([0.6, 0.8, 0.5, 0.9, 0.7]), claim.scale)
    r = v3.two_condition_result([(strong, ("a", "b")), (weak, ("a", "c"))], claim)
    assert r.p == weak.p > strong.p and r.n == 5
    sharp = v3.CLAIMS["batch/sharper"]
    e = v3.compare(per_seed([20, 30, 25, 28, 22]), per_seed([10, 12, 11, 9, 13]), sharp.scale)
    assert e.estimate == pytest.approx(np.mean(np.log([20, 30, 25, 28, 22])) - np.mean(np.log([10, 12, 11, 9, 13])))


def test_trajectory_against_its_walks():
    walks = np.linspace(0.70, 0.80, 999)
    paths = {(wd, t): (0.9, walks) for wd in (0.0, 5e-4) for t in SEEDS}
    r = v3.trajectory_result(paths)
    assert r.p == pytest.approx(1 / 1000) and r.n == 5 and r.positive
    assert v3.decide({"trajectory": r})["trajectory"].verdict == REPRODUCED
    paths[(0.0, 31)] = (0.75, walks)  # one path inside its walks
    r = v3.trajectory_result(paths)
    assert r.p == pytest.approx((1 + np.sum(walks >= 0.75)) / 1000) and not r.positive
    assert v3.decide({"trajectory": r})["trajectory"].verdict == INCONCLUSIVE


def test_not_at_matched_train_loss_is_inconclusive():
    assert v3.training_gate({"x1": 0.04, "x4": 0.005}) is None  # 8x
    gate = v3.training_gate({"depth 56": 0.05, "depth 8": 0.0003})
    assert "not at matched train loss" in gate and "166.7x" in gate
    assert "not trained" in v3.training_gate({"a": 2.0, "b": 0.01})
    o = v3.decide({"width": _claim([0.7, 0.72, 0.69, 0.75, 0.71], [0.4, 0.45, 0.42, 0.38, 0.41], gate=gate)})
    assert o["width"].verdict == INCONCLUSIVE and "matched train loss" in o["width"].reason


def test_rules_section_lists_every_claim():
    text = "\n".join(v3.rules_section())
    assert "version 3" in text and text.count("(rule `") == len(v3.PRIMARY) + len(v3.SECONDARY)
    assert "primary" in text and "secondary" in text and "Exploratory" in text


def test_the_version_3_set_trains_every_net_of_a_comparison_alike():
    """small-v3: fresh seeds (5 training, none of version 2's), one recipe (warm-up, clipping, epoch budget, target
    train loss) for every skip and width net whatever its depth, width or shortcuts, and a warm-up for the
    scaled-rate large-batch nets; version 2's small scale keeps its own definitions."""
    from landscape_mpi.experiments import experiment
    from landscape_mpi.experiments.definitions import RECIPE_V3, SCALE_SETTINGS

    s = SCALE_SETTINGS["small-v3"]
    assert len(s.train_seeds) >= v3.MIN_SEEDS and not set(s.train_seeds) & set(SCALE_SETTINGS["small"].train_seeds)
    assert not set(s.direction_seeds) & set(SCALE_SETTINGS["small"].direction_seeds)
    nets = experiment("skip", "small-v3").runs + experiment("width", "small-v3").runs
    assert len({r.config["model"] for r in nets}) == 7  # 3 depths x shortcuts or not, and the wide net
    for r in nets:
        assert {k: r.config.get(k) for k, _ in RECIPE_V3} == dict(RECIPE_V3), r.name
    lr = [r for r in experiment("batch", "small-v3").runs if r.config["lr"] > s.lr]
    assert lr and all(r.config["warmup_epochs"] == 5 for r in lr)
    interp = [st for st in experiment("batch", "small-v3").surfaces if st.role["kind"] == "interp1d"]
    assert interp and {st.options["x"].num for st in interp} == {41}
    v2 = experiment("skip", "small").runs
    assert {r.config["epochs"] for r in v2} == {60, 150} and not any("target_loss" in r.config for r in v2)


def test_trajectory_p_against_walks_with_the_runs_step_lengths():
    """The walks' values (measures.random_walk_values, the same walks whose mean and 95th percentile version 2
    shows): a path explaining 0.95 beats every equal-step walk of 16 points, and none whose steps decay a
    million-fold (those are nearly lines: about 0.98)."""
    from landscape_mpi.experiments import measures

    equal = measures.random_walk_values(16, dim=500, trials=200, step_norms=np.ones(15))
    decayed = measures.random_walk_values(16, dim=500, trials=200, step_norms=np.geomspace(1, 1e-6, 15))
    assert v3.walk_p(0.95, equal) == pytest.approx(1 / 201) and v3.walk_p(0.95, decayed) == pytest.approx(1)
    assert (np.mean(equal), np.quantile(equal, 0.95)) == measures.random_walk_explained(
        16, dim=500, trials=200, step_norms=np.ones(15))
