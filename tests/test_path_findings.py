"""The path experiments (issue 27 item 6): the verdict rules of landscape_mpi/experiments/path_rules.py on
constructed inputs (a planted effect is found, a null is not, too few pairs is inconclusive)."""

from __future__ import annotations

import math

import numpy as np

from landscape_mpi.experiments import path_rules as pr
from landscape_mpi.experiments.path_rules import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED


def test_side_needs_every_pair_and_two_standard_errors():
    assert pr.side([0.3, 0.32, 0.31], 0.05) == "above"
    assert pr.side([0.001, 0.002, 0.0], 0.02) == "below"
    assert pr.side([0.3, 0.01, 0.31], 0.05) == "unclear"  # one pair on the other side
    # every pair above, but mean - 2 se = 0.0617 - 2 * 0.0117 < 0.05 (computed by hand): unclear
    x = [0.052, 0.06, 0.073]
    se = np.std(x, ddof=1) / math.sqrt(3)
    assert np.mean(x) - 2 * se < 0.05 and pr.side(x, 0.05) == "unclear"
    assert pr.side([0.3, 0.31], 0.05) == "unclear"  # two pairs only
    assert pr.side([0.3, float("nan"), 0.31, 0.3], 0.05) == "above"  # NaN left out, three remain


def test_positive_barrier_planted_and_null():
    assert pr.positive_barrier([0.4, 0.35, 0.5]).verdict == REPRODUCED
    assert pr.positive_barrier([0.001, 0.004, 0.002]).verdict == NOT_REPRODUCED
    assert pr.positive_barrier([0.4, 0.35]).verdict == INCONCLUSIVE
    assert "n = 3" in pr.positive_barrier([0.4, 0.35, 0.5]).reason


def test_curve_near_zero():
    lin = [0.4, 0.35, 0.5]
    assert pr.curve_near_zero(lin, [0.003, 0.001, 0.004]).verdict == REPRODUCED
    assert pr.curve_near_zero(lin, [0.2, 0.25, 0.18]).verdict == NOT_REPRODUCED  # lowered but not to near zero
    assert pr.curve_near_zero([0.01, 0.0, 0.02], [0.0, 0.001, 0.0]).verdict == INCONCLUSIVE  # nothing to lower
    assert pr.curve_near_zero(lin, [0.003, 0.05, 0.004]).verdict == INCONCLUSIVE  # one pair not near zero
    assert pr.curve_near_zero(lin[:2], [0.003, 0.001]).verdict == INCONCLUSIVE


def test_alignment_lowers_per_width():
    lin = {1: [0.5, 0.6, 0.55], 4: [0.3, 0.35, 0.32]}
    assert pr.alignment_lowers(lin, {1: [0.2, 0.25, 0.22], 4: [0.02, 0.03, 0.01]}).verdict == REPRODUCED
    # a null at one width: aligned equals linear (difference 0 <= 0 in every pair)
    assert pr.alignment_lowers(lin, {1: [0.5, 0.6, 0.55], 4: [0.02, 0.03, 0.01]}).verdict == NOT_REPRODUCED
    assert pr.alignment_lowers(lin, {1: [0.2, 0.7, 0.22], 4: [0.02, 0.03, 0.01]}).verdict == INCONCLUSIVE
    assert pr.alignment_lowers({1: [0.5, 0.6]}, {1: [0.1, 0.1]}).verdict == INCONCLUSIVE


def test_removed_fraction():
    assert pr.removed_fraction(0.5, 0.1) == 0.8
    assert math.isnan(pr.removed_fraction(0.01, 0.0))  # no barrier to remove
    assert math.isnan(pr.removed_fraction(float("nan"), 0.0))


def test_more_for_wider_planted_and_null():
    planted = {1: [0.5, 0.55, 0.45], 4: [0.7, 0.75, 0.72], 16: [0.9, 0.92, 0.88]}
    assert pr.more_for_wider(planted).verdict == REPRODUCED
    assert pr.more_for_wider({1: [0.8, 0.82, 0.78], 4: [0.8, 0.81, 0.79], 16: [0.6, 0.7, 0.65]}).verdict == \
        NOT_REPRODUCED
    # the widest larger but within 2 pooled sd: pooled sd of (0.5, 0.7, 0.6) and (0.55, 0.75, 0.65) is 0.1
    noisy = {1: [0.5, 0.7, 0.6], 4: [0.6, 0.62, 0.61], 16: [0.55, 0.75, 0.65]}
    out = pr.more_for_wider(noisy)
    assert out.verdict == INCONCLUSIVE and "pooled sd 0.2" in out.reason
    # not monotone: the middle width above the widest
    assert pr.more_for_wider({1: [0.5, 0.55, 0.45], 4: [0.95, 0.96, 0.97], 16: [0.9, 0.92, 0.88]}).verdict == \
        INCONCLUSIVE
    # a width with two usable pairs (NaN: no barrier to remove)
    assert pr.more_for_wider({1: [0.5, 0.55, float("nan")], 16: [0.9, 0.92, 0.88]}).verdict == INCONCLUSIVE


def test_shared_parent_planted_and_null():
    assert pr.shared_parent([0.001, 0.002, 0.0], [0.4, 0.3, 0.5]).verdict == REPRODUCED
    assert pr.shared_parent([0.3, 0.4, 0.35], [0.4, 0.3, 0.5]).verdict == NOT_REPRODUCED  # fine-tunes not connected
    assert pr.shared_parent([0.001, 0.002, 0.0], [0.001, 0.002, 0.0]).verdict == NOT_REPRODUCED  # no contrast
    assert pr.shared_parent([0.001, 0.03, 0.0], [0.4, 0.3, 0.5]).verdict == INCONCLUSIVE
    assert pr.shared_parent([0.001, 0.002], [0.4, 0.3, 0.5]).verdict == INCONCLUSIVE


def test_untrained_gate_and_rules_text():
    assert pr.untrained({"a": 0.1, "b": 0.2}) is None
    assert "b (3)" in pr.untrained({"a": 0.1, "b": 3.0})
    text = "\n".join(pr.rules_section("abc1234"))
    assert f"paths version {pr.PATH_RULES_VERSION}" in text and "abc1234" in text
    assert {r.key for r in pr.RULES} == {"seeds/linear", "seeds/curve", "width/lowers", "width/more",
                                         "parent/classify", "parent/lm"}
