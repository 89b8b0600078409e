"""The path experiments (issue 27 item 6): the verdict rules of landscape_mpi/experiments/path_rules.py on
constructed inputs (a planted effect is found, a null is not, too few pairs is inconclusive)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from landscape_mpi.cli import main
from landscape_mpi.config.errors import UserError
from landscape_mpi.config.train import TrainConfig
from landscape_mpi.data.datasets import load_eval_set
from landscape_mpi.experiments import path_rules as pr
from landscape_mpi.experiments.path_models import digits_mlp2_x1, model_name
from landscape_mpi.experiments.path_report import BEGIN, END, PathSection
from landscape_mpi.experiments.path_rules import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED
from landscape_mpi.experiments.path_runner import spawn_checkpoint
from landscape_mpi.training.train import train


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
    assert pr.untrained({"a": 1.9}, "lm") is None and "a (1.9)" in pr.untrained({"a": 1.9})  # per task
    text = "\n".join(pr.rules_section("abc1234"))
    assert f"paths version {pr.PATH_RULES_VERSION}" in text and "abc1234" in text
    assert {r.key for r in pr.RULES} == {"seeds/linear", "seeds/curve", "width/lowers", "width/more",
                                         "parent/classify", "parent/lm"}


# ------------------------------------------------------------------------------------------ spawn and end to end
def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_spawned_child_starts_from_the_parent_and_trains_on(tmp_path):
    """A child is the parent's epoch-1 checkpoint with the child's seed, resumed by the training itself: its start
    equals the parent's weights after epoch 1, its end differs from the parent's (another data order), and a parent
    without that epoch is a one-line error."""
    recipe = {"model": model_name(1), "dataset": "digits", "epochs": 2, "batch_size": 64, "lr": 0.05}
    parent = TrainConfig(out_dir=str(tmp_path / "parent"), seed=101, **recipe)
    train(parent, torch.device("cpu"), quiet=True)
    child = TrainConfig(out_dir=str(tmp_path / "child"), seed=201, **recipe)
    start = spawn_checkpoint(parent.out_dir, 1, child)
    for k, v in _state(tmp_path / "parent" / "epoch_001.pt").items():
        assert torch.equal(_state(start)[k], v)
    train(child, torch.device("cpu"), quiet=True)
    assert sorted(os.listdir(child.out_dir)) == ["epoch_001.pt", "epoch_002.pt", "final.pt"]  # resumed, not redone
    a, b = _state(tmp_path / "parent" / "final.pt"), _state(tmp_path / "child" / "final.pt")
    assert any(not torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match="no checkpoint after epoch 5"):
        spawn_checkpoint(parent.out_dir, 5, TrainConfig(out_dir=str(tmp_path / "other"), seed=202, **recipe))


def test_path_seeds_tiny_end_to_end(tmp_path):
    """experiments run path_seeds --tiny (two nets, a linear path and a trained Bezier curve, 3 points of t, as
    landscape-mpi path subprocesses), then the report: the linear barrier it prints equals one computed here by
    rebuilding the midpoint model by hand and evaluating its train loss on the same subset."""
    out = tmp_path / "out"
    assert main(["experiments", "run", "path_seeds", "--tiny", "--out-dir", str(out)]) == 0
    runs = out / "runs"
    a, b = _state(runs / "mlp2_x1_e2_s101" / "final.pt"), _state(runs / "mlp2_x1_e2_s102" / "final.pt")
    data = load_eval_set("digits", "train", None, 200, 0)

    def loss(t):
        model = digits_mlp2_x1()
        model.load_state_dict({k: (1 - t) * a[k] + t * b[k] for k in a})
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(model(data.inputs), data.labels))

    expected = loss(0.5) - (loss(0.0) + loss(1.0)) / 2
    section = PathSection(str(out), "path_seeds", str(tmp_path / "fig"), "fig")
    linear = section.pairs["linear x1"][0]
    assert np.isclose(linear.train, max(expected, 0.0), atol=1e-5)
    assert section.pairs["bezier x1"][0].seeds == (101, 102)
    report = tmp_path / "findings.md"
    report.write_text("# Findings\n\nkept as it is\n")
    assert main(["experiments", "report", "--out-dir", str(out), "--out", str(report)]) == 0
    text = report.read_text()
    assert text.startswith("# Findings\n\nkept as it is\n") and BEGIN in text and END in text
    assert "inconclusive at this scale" in text and "fewer than 3 pairs" in text  # one pair: never a verdict
    assert main(["experiments", "report", "--out-dir", str(out), "--out", str(report)]) == 0
    assert report.read_text() == text  # spliced again in place, not appended twice


def test_path_experiments_refuse_other_scales_and_tasks(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["experiments", "run", "paths", "--scale", "quick", "--out-dir", out]) == 2
    assert "--scale quick: the path experiments have the scales tiny, small" in capsys.readouterr().err
    assert main(["experiments", "run", "path_width", "--tiny", "--task", "0", "--out-dir", out]) == 2
    assert "--task" in capsys.readouterr().err
    assert not os.path.exists(out)  # nothing written
