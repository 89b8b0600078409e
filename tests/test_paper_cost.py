"""benchmarks/paper_cost.py, the compute estimate of the experiments: a model's forward FLOPs against a count by
hand, and the skip experiment's tiny-scale totals against the runs and grids `experiments list` shows."""

from __future__ import annotations

import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import paper_cost  # noqa: E402


def test_forward_flops_of_a_two_layer_mlp_by_hand():
    # digits_mlp: 64 -> 32 -> 10, two multiply-add layers: 2 x (64 x 32 + 32 x 10) FLOPs per sample
    assert paper_cost.forward_flops("digits_mlp") == 2 * (64 * 32 + 32 * 10)


def test_the_skip_experiments_tiny_totals_by_hand(monkeypatch):
    monkeypatch.setattr(paper_cost, "forward_flops", lambda model: 1.0)  # count forward-samples
    (name, runs, surfaces, train, surf, eig, hess), *_ = paper_cost.costs("tiny")
    assert (name, runs, surfaces) == ("skip", 2, 4)
    # two nets, 1 epoch on 1,000 training samples, 3 forward-equivalents per sample
    assert train == 2 * 1 * 1000 * 3
    # per net: a 5x5 loss grid on 200 samples of train and of test; a 3x3 eigenvalue map on 64 train samples,
    # each point one loss forward and 21 products of 4
    assert surf == 2 * 25 * (200 + 200)
    assert eig == pytest.approx(2 * 9 * 64 * (1 + 21 * 4))
    assert hess == 0  # the skip experiment has no Hessian steps


def test_the_batch_experiments_hessian_steps_by_hand(monkeypatch):
    monkeypatch.setattr(paper_cost, "forward_flops", lambda model: 1.0)  # count forward-samples
    batch = next(c for c in paper_cost.costs("tiny") if c[0] == "batch")
    # 8 nets (batch 32 and its 3 large-batch partners, at 2 weight decays), one probe seed each: 64 train samples,
    # 1 loss forward, 232 + 30 products of 4, 20 adaptive perturbations of 1 forward
    assert batch[6] == pytest.approx(8 * 64 * (1 + (232 + 30) * 4 + 20))
