"""Directions, exactly as docs/method.md#directions: normalization, excluded tensors, seeding, spaces, targets."""

import numpy as np
import pytest
import torch

from landscape_mpi.config.errors import UserError
from landscape_mpi.directions.base import (
    PointSetter,
    check_running_var,
    normalize,
    random_direction,
    space_keys,
    target_direction,
)
from landscape_mpi.models import build_model


def directions_for(model, seed, norm="filter", ignore="biasbn", space="weights"):
    state = model.state_dict()
    return random_direction(state, space_keys(model, space), torch.Generator().manual_seed(seed), norm, ignore)


@pytest.mark.parametrize("name", ["digits_cnn", "resnet20", "vgg9"])
def test_filter_norms_match_weights_per_filter(name):
    torch.manual_seed(0)
    model = build_model(name)
    d = directions_for(model, seed=3)
    state = model.state_dict()
    checked = 0
    for k, t in d.items():
        w = state[k]
        if w.dim() >= 2:  # conv (out, in, kh, kw) and linear (out, in) weights: one norm per output filter
            dn = t.flatten(1).double().norm(dim=1)
            wn = w.flatten(1).double().norm(dim=1)
            np.testing.assert_allclose(dn.numpy(), wn.numpy(), rtol=1e-5)
            checked += 1
        else:  # biases and BatchNorm gamma/beta: zero with --ignore biasbn
            assert not t.any(), k
    assert checked >= 3


def test_same_seed_bit_identical_other_seed_differs():
    model = build_model("digits_cnn")
    a, b, c = directions_for(model, 7), directions_for(model, 7), directions_for(model, 8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].any())


def test_layer_weight_none_normalizations():
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3)
    d = torch.randn(6, 3, 3, 3)
    assert torch.allclose(normalize(d, w, "layer").norm(), w.norm(), rtol=1e-6)
    assert torch.equal(normalize(d, w, "weight"), d * w)
    assert torch.equal(normalize(d, w, "none"), d)


def test_ignore_none_sets_d_equal_w_on_small_tensors():
    model = build_model("digits_cnn")
    d = directions_for(model, 0, ignore="none")
    state = model.state_dict()
    assert torch.equal(d["bn1.weight"], state["bn1.weight"])
    assert torch.equal(d["conv1.bias"], state["conv1.bias"])


def test_states_space_has_running_stats_but_no_integer_buffers():
    model = build_model("digits_cnn")
    keys = space_keys(model, "states")
    assert "bn1.running_var" in keys and "bn1.running_mean" in keys
    assert not any(k.endswith("num_batches_tracked") for k in keys)
    assert "bn1.running_var" not in space_keys(model, "weights")


def test_negative_running_var_refused():
    model = build_model("digits_cnn")
    d = directions_for(model, 0, ignore="none", space="states")
    with pytest.raises(UserError, match="negative BatchNorm variance"):
        check_running_var(model.state_dict(), [d], [(-2.0,), (2.0,)])
    check_running_var(model.state_dict(), [d], [(-0.5,), (1.0,)])  # 1 + a >= 0: fine


def test_point_setter_recomputes_from_theta_star():
    torch.manual_seed(0)
    model = build_model("digits_mlp")
    base = {k: v.clone() for k, v in model.state_dict().items()}
    dx, dy = directions_for(model, 1), directions_for(model, 2)
    setter = PointSetter(model, [dx, dy])
    for a, b in [(0.3, -0.7), (1.0, 1.0), (-0.2, 0.5)]:
        setter.set([a, b])
    setter.set([0.25, -0.5])
    for k, v in model.state_dict().items():
        expected = base[k] + 0.25 * dx.get(k, torch.zeros_like(v)) - 0.5 * dy.get(k, torch.zeros_like(v))
        assert torch.allclose(v, expected, atol=1e-6), k
    setter.set([0.0, 0.0])
    assert all(torch.equal(model.state_dict()[k], base[k]) for k in base)


def test_target_direction_reaches_target():
    torch.manual_seed(0)
    m1, m2 = build_model("digits_mlp"), build_model("digits_mlp")
    keys = space_keys(m1, "weights")
    d = target_direction(m1.state_dict(), m2.state_dict(), keys, "--x-target")
    PointSetter(m1, [d]).set([1.0])
    for k in keys:
        assert torch.allclose(m1.state_dict()[k], m2.state_dict()[k], atol=1e-6)
