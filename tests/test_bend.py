"""Training the bend of a curve between two models (landscape_mpi/training/bend.py; Garipov et al. 2018).

The two minima: a small trained MLP A and the same net with its hidden units permuted, B. They compute the same
function (equal loss), but the straight line between them averages mismatched units: a barrier. The values
along each curve are computed here by a plain loop (rebuild the weights at t, load them, cross-entropy by
torch.nn.functional), not by the code under test.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape_mpi.config.errors import UserError
from landscape_mpi.data.items import EvalSet
from landscape_mpi.directions.paths import path_table
from landscape_mpi.runtime.faults import Faults, InjectedFault
from landscape_mpi.runtime.lifecycle import STOP
from landscape_mpi.tasks import ClassifyTask, LanguageModelTask
from landscape_mpi.training.bend import BendStopped, curve_loss, curve_weights, load_bend, state_sha256, train_bend

HIDDEN = 16
TS = [i / 20 for i in range(21)]


def mlp(dtype=torch.float32, bn=False) -> nn.Module:
    layers = [nn.Linear(2, HIDDEN)] + ([nn.BatchNorm1d(HIDDEN)] if bn else []) + [nn.ReLU(), nn.Linear(HIDDEN, 3)]
    return nn.Sequential(*layers).to(dtype)


def blobs(n=384, seed=0) -> EvalSet:
    """Three classes on a ring (angle sectors), noisy: a net with a few hidden units separates them."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    angle = y * (2 * torch.pi / 3) + 0.6 * torch.randn(n, generator=g)
    x = torch.stack([angle.cos(), angle.sin()], 1) * (1 + 0.2 * torch.randn(n, 1, generator=g))
    return EvalSet("train", x, y)


def permuted(state: dict, perm: torch.Tensor) -> dict:
    """The same function with hidden units reordered by `perm`."""
    out = dict(state)
    out["0.weight"], out["0.bias"] = state["0.weight"][perm], state["0.bias"][perm]
    out["2.weight"] = state["2.weight"][:, perm]
    return out


@pytest.fixture(scope="module")
def minima():
    torch.manual_seed(0)
    data = blobs()
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(data.inputs), data.labels).backward()
        opt.step()
    a = {k: v.detach().clone() for k, v in model.state_dict().items()}
    b = permuted(a, torch.roll(torch.arange(HIDDEN), HIDDEN // 2))
    return data, a, b


def oracle_losses(a, c, b, kind, data) -> list[float]:
    """Cross-entropy over all of `data` at theta(t) for each t of TS, by a plain loop."""
    out = []
    for t in TS:
        if kind == "bezier":
            theta = {k: (1 - t) ** 2 * a[k] + 2 * t * (1 - t) * c[k] + t ** 2 * b[k] for k in a}
        elif t <= 0.5:
            theta = {k: a[k] + 2 * t * (c[k] - a[k]) for k in a}
        else:
            theta = {k: c[k] + (2 * t - 1) * (b[k] - c[k]) for k in a}
        model = mlp()
        model.load_state_dict(theta)
        with torch.no_grad():
            out.append(float(F.cross_entropy(model(data.inputs), data.labels)))
    return out


def mean(values) -> float:
    return sum(values) / len(values)


@pytest.mark.parametrize("kind", ["bezier", "chain"])
def test_a_trained_bend_lowers_the_loss_along_the_curve(minima, tmp_path, kind):
    data, a, b = minima
    linear = oracle_losses(a, {k: (a[k] + b[k]) / 2 for k in a}, b, "bezier", data)
    ends = (linear[0] + linear[-1]) / 2
    assert max(linear) > ends + 0.3  # the permuted copy sits behind a real barrier
    out = train_bend(mlp(), a, b, data, ClassifyTask(), kind, steps=150, lr=0.1, batch_size=128, seed=1,
                     out=str(tmp_path / "bend.pt"))
    ck = torch.load(out, weights_only=True)
    curve = oracle_losses(a, ck["state_dict"], b, kind, data)
    assert curve[0] == linear[0] and curve[-1] == linear[-1]  # the ends do not move
    # The curve's mean loss falls below the straight line's, most of the way down to the ends' level (measured:
    # ends 0.244, line 0.661, curves after 100 steps 0.27), and its highest point nearly to the ends' level.
    assert mean(curve) < mean(linear) - 0.8 * (mean(linear) - ends), (mean(curve), mean(linear), ends)
    assert max(curve) - ends < 0.2 * (max(linear) - ends), (max(curve), max(linear), ends)


def test_zero_steps_leave_the_midpoint_and_the_linear_path(minima, tmp_path):
    data, a, b = minima
    out = train_bend(mlp(), a, b, data, ClassifyTask(), "bezier", steps=0, out=str(tmp_path / "bend.pt"))
    c = torch.load(out, weights_only=True)["state_dict"]
    for k in a:
        assert torch.equal(c[k], (a[k] + b[k]) / 2)
    linear = oracle_losses(a, c, b, "bezier", data)
    # At the midpoint the Bezier curve is the straight line: (1-t)^2 A + t(1-t)(A+B) + t^2 B = (1-t) A + t B.
    straight = []
    for t in TS:
        model = mlp()
        model.load_state_dict({k: (1 - t) * a[k] + t * b[k] for k in a})
        with torch.no_grad():
            straight.append(float(F.cross_entropy(model(data.inputs), data.labels)))
    assert linear == pytest.approx(straight, abs=1e-5)


def test_the_bend_is_trained_on_the_curve_the_path_job_evaluates():
    # Bernstein weights (w_A, w_C, w_B) at t = 0, 1/4, 1/2, 3/4, 1 (exact in binary), written out by hand
    expected = [(1, 0, 0), (9 / 16, 6 / 16, 1 / 16), (1 / 4, 1 / 2, 1 / 4), (1 / 16, 6 / 16, 9 / 16), (0, 0, 1)]
    assert [curve_weights("bezier", t) for t in (0.0, 0.25, 0.5, 0.75, 1.0)] == expected
    # the path's coefficients of d_1 = B - A and d_2 = C - A are w_B and w_C
    assert path_table("bezier", 3, 5).coefficients[0].tolist() == [[w_b, w_c] for _, w_c, w_b in expected]


@pytest.mark.parametrize("kind", ["bezier", "chain"])
def test_the_gradient_of_the_curve_loss_matches_finite_differences(kind):
    torch.manual_seed(3)
    model = mlp(torch.float64, bn=True).train()
    a = {k: v.detach().clone() for k, v in mlp(torch.float64, bn=True).named_parameters()}
    b = {k: v.detach().clone() for k, v in mlp(torch.float64, bn=True).named_parameters()}
    c = {k: (0.5 * (a[k] + b[k]) + 0.1 * torch.randn_like(a[k])).requires_grad_(True) for k in a}
    fixed = {k: v.clone() for k, v in model.state_dict().items() if k not in a}
    data = blobs(64, seed=5)
    x, y = data.inputs.double(), data.labels
    task, t = ClassifyTask(), 0.3 if kind == "bezier" else 0.7
    loss = curve_loss(model, task, kind, t, a, c, b, fixed, x, y)
    loss.backward()
    eps = 1e-6
    for key in ("0.weight", "1.weight", "3.bias"):
        for idx in [(0,) * c[key].dim(), tuple(s - 1 for s in c[key].shape)]:
            with torch.no_grad():
                c[key][idx] += eps
                up = float(curve_loss(model, task, kind, t, a, c, b, fixed, x, y))
                c[key][idx] -= 2 * eps
                down = float(curve_loss(model, task, kind, t, a, c, b, fixed, x, y))
                c[key][idx] += eps
            assert c[key].grad[idx].item() == pytest.approx((up - down) / (2 * eps), rel=1e-6, abs=1e-9)
    # The chain rule, by a plain model: dL/dC = w_C(t) dL/dtheta at theta(t), BatchNorm in train mode.
    w_c = 2 * t * (1 - t) if kind == "bezier" else (2 - 2 * t if t > 0.5 else 2 * t)
    w_a, w_b = ((1 - t) ** 2, t * t) if kind == "bezier" else ((0.0, 2 * t - 1) if t > 0.5 else (1 - 2 * t, 0.0))
    plain = mlp(torch.float64, bn=True).train()
    with torch.no_grad():
        for k, p in plain.named_parameters():
            p.copy_(w_a * a[k] + w_c * c[k] + w_b * b[k])
    F.cross_entropy(plain(x), y).backward()
    for k, p in plain.named_parameters():
        torch.testing.assert_close(c[k].grad, w_c * p.grad, rtol=1e-10, atol=1e-12)


def test_the_bend_is_a_checkpoint_with_its_recipe_and_endpoints(minima, tmp_path):
    data, a, b = minima
    out = str(tmp_path / "bend.pt")
    train_bend(mlp(), a, b, data, ClassifyTask(), "chain", steps=5, seed=2, out=out, recipe={"model": "mlp"})
    ck = torch.load(out, weights_only=True)
    model = mlp()
    model.load_state_dict(ck["state_dict"])  # strict: every key, every shape
    recipe = json.loads(ck["bend"])
    assert (recipe["kind"], recipe["knot"], recipe["steps"], recipe["seed"]) == ("chain", 0.5, 5, 2)
    assert recipe["model"] == "mlp"
    assert recipe["endpoints"] == [state_sha256(a), state_sha256(b)] and state_sha256(a) != state_sha256(b)
    assert ck["complete"] and "resume" not in ck
    state, got = load_bend(out, (state_sha256(a), state_sha256(b)))
    assert got == recipe and torch.equal(state["0.weight"], ck["state_dict"]["0.weight"])
    with pytest.raises(UserError, match="a bend between other endpoints"):
        load_bend(out, (state_sha256(b), state_sha256(a)))
    with pytest.raises(UserError, match="holds a bend of other settings"):
        train_bend(mlp(), a, b, data, ClassifyTask(), "chain", steps=6, seed=2, out=out, recipe={"model": "mlp"})
    with pytest.raises(UserError, match="endpoint B does not fit the model"):
        train_bend(mlp(), a, {k: v for k, v in b.items() if k != "2.bias"}, data, ClassifyTask(), steps=1,
                   out=str(tmp_path / "other.pt"))
    with pytest.raises(UserError, match="give steps or epochs"):
        train_bend(mlp(), a, b, data, ClassifyTask(), out=str(tmp_path / "other.pt"))
    streamed = EvalSet("train", data.inputs, data.labels)
    streamed.streamed = True
    with pytest.raises(UserError, match="drop --stream-data"):
        train_bend(mlp(), a, b, streamed, ClassifyTask(), steps=1, out=str(tmp_path / "other.pt"))
    before = (tmp_path / "bend.pt").stat().st_mtime_ns
    assert train_bend(mlp(), a, b, data, ClassifyTask(), "chain", steps=5, seed=2, out=out,
                      recipe={"model": "mlp"}) == out
    assert (tmp_path / "bend.pt").stat().st_mtime_ns == before  # complete: returned at once, not retrained


def _bend(path):
    return torch.load(path, weights_only=True)


def test_a_crash_and_a_stop_resume_to_the_same_bend(minima, tmp_path):
    data, a, b = minima
    kw = dict(kind="bezier", steps=30, lr=0.05, batch_size=100, seed=4, save_every=10)  # 4 batches an epoch
    ref = train_bend(mlp(), a, b, data, ClassifyTask(), out=str(tmp_path / "ref.pt"), **kw)
    crashed = str(tmp_path / "crashed.pt")
    with pytest.raises(InjectedFault):
        train_bend(mlp(), a, b, data, ClassifyTask(), out=crashed, faults=Faults(0, {
            "LANDSCAPE_MPI_TEST_FAIL_AT": "bend_step:25:0"}), **kw)
    assert _bend(crashed)["step"] == 20 and not _bend(crashed)["complete"]  # the last save before the crash
    train_bend(mlp(), a, b, data, ClassifyTask(), out=crashed, **kw)
    stopped = str(tmp_path / "stopped.pt")
    STOP.request("SIGTERM")
    try:
        with pytest.raises(BendStopped, match="stopped by SIGTERM at step 0 of 30: rerun"):
            train_bend(mlp(), a, b, data, ClassifyTask(), out=stopped, **kw)
    finally:
        STOP.reset()
    assert _bend(stopped)["step"] == 0
    train_bend(mlp(), a, b, data, ClassifyTask(), out=stopped, **kw)
    for other in (crashed, stopped):
        assert _bend(other)["complete"] and _bend(other)["step"] == 30
        for k, v in _bend(ref)["state_dict"].items():
            assert torch.equal(_bend(other)["state_dict"][k], v), k


def test_tied_weights_and_batchnorm_buffers(tmp_path):
    from landscape_mpi.models import build_model

    torch.manual_seed(0)
    gpt = build_model("gpt_tiny")
    a = {k: v.clone() for k, v in gpt.state_dict().items()}
    b = {k: v.clone() for k, v in build_model("gpt_tiny").state_dict().items()}
    ids = torch.randint(0, 97, (4, 64), generator=torch.Generator().manual_seed(0))
    out = train_bend(gpt, a, b, EvalSet("train", ids, None), LanguageModelTask(), "bezier", steps=2, lr=0.01,
                     batch_size=4, out=str(tmp_path / "gpt.pt"))
    state = _bend(out)["state_dict"]
    assert torch.equal(state["head.weight"], state["tok.weight"])  # one tensor under two names
    assert not torch.equal(state["tok.weight"], (a["tok.weight"] + b["tok.weight"]) / 2)  # and it was trained
    # BatchNorm: the bend's running statistics are the ends' midpoint, its step count A's.
    torch.manual_seed(1)
    data = blobs(64)
    a, b = mlp(bn=True).state_dict(), mlp(bn=True).state_dict()
    a["1.running_mean"], b["1.running_mean"] = torch.ones(HIDDEN), 3 * torch.ones(HIDDEN)
    out = train_bend(mlp(bn=True), a, b, data, ClassifyTask(), steps=3, batch_size=32, out=str(tmp_path / "bn.pt"))
    state = _bend(out)["state_dict"]
    assert torch.equal(state["1.running_mean"], 2 * torch.ones(HIDDEN))
    assert torch.equal(state["1.num_batches_tracked"], a["1.num_batches_tracked"])
