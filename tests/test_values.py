"""Surface values against an independent computation: a fresh model loaded with theta* + a*dx + b*dy
(computed here in float64 from the stored directions) and evaluated with a plain DataLoader loop."""

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import landscape_toys
from conftest import cli, run

TOY = ["--model", "landscape_toys:make_model", "--dataset", "landscape_toys:make_data"]


def independent_eval(ckpt, directions, coords, split):
    """Loss (sample-weighted mean CE) and accuracy of the toy model at theta* + sum c_i d_i."""
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    point = {}
    for k, v in state.items():
        if not v.is_floating_point():
            point[k] = v
            continue
        t = v.double()
        for c, d in zip(coords, directions):
            if k in d:
                t = t + c * torch.from_numpy(d[k]).double()
        point[k] = t.to(v.dtype)
    model = landscape_toys.make_model()
    model.load_state_dict(point)
    model.eval()
    total, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in DataLoader(landscape_toys.make_data(split), batch_size=7):
            out = model(x)
            total += torch.nn.functional.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            n += len(y)
    return total / n, correct / n


def read(path):
    with h5py.File(path, "r") as f:
        coords = [f["coords"][a][()] for a in ("x", "y") if a in f["coords"]]
        dirs = [{k: g[k][()] for k in g} for a, g in f["directions"].items()]
        res = {k: f["results"][k][()] for k in f["results"]}
    return coords, dirs, res


def test_values_match_independent_computation_3x5(tmp_path, toy_ckpts):
    out = tmp_path / "s.h5"
    run(cli("surface", *TOY, "--checkpoint", toy_ckpts[0], "--x=-1:1:3", "--y=-0.5:1.5:5", "--out", str(out),
            "--batch-size", "16", "--dir-space", "states"))
    (x, y), (dx, dy), res = read(out)
    assert res["train_loss"].shape == (3, 5) and res["done"].all()
    np.testing.assert_allclose(x, [-1, 0, 1])
    np.testing.assert_allclose(y, [-0.5, 0, 0.5, 1.0, 1.5])
    # Every [i, j] holds f(x[i], y[j]) ("ij" indexing, non-square grid).
    for i in range(3):
        for j in range(5):
            for split in ("train", "test"):
                loss, acc = independent_eval(toy_ckpts[0], [dx, dy], (x[i], y[j]), split)
                np.testing.assert_allclose(res[f"{split}_loss"][i, j], loss, rtol=1e-5, atol=1e-7)
                assert res[f"{split}_acc"][i, j] == pytest.approx(acc, abs=1e-12)
    assert (res["rank"] == 0).all()


def test_center_equals_trained_model(tmp_path, toy_ckpts):
    out = tmp_path / "c.h5"
    run(cli("surface", *TOY, "--checkpoint", toy_ckpts[0], "--x=-1:1:5", "--out", str(out)))
    (x,), _, res = read(out)
    loss, acc = independent_eval(toy_ckpts[0], [], (), "train")
    assert x[2] == 0.0
    np.testing.assert_allclose(res["train_loss"][2], loss, rtol=1e-6)
    assert res["train_acc"][2] == acc


def test_interpolation_reaches_target_checkpoint(tmp_path, toy_ckpts):
    out = tmp_path / "i.h5"
    run(cli("surface", *TOY, "--checkpoint", toy_ckpts[0], "--x-target", toy_ckpts[1], "--x=0:1:11",
            "--dir-space", "states", "--out", str(out)))
    (x,), (dx,), res = read(out)
    for split in ("train", "test"):
        end_loss, end_acc = independent_eval(toy_ckpts[1], [], (), split)
        start_loss, _ = independent_eval(toy_ckpts[0], [], (), split)
        np.testing.assert_allclose(res[f"{split}_loss"][-1], end_loss, rtol=1e-5)
        assert res[f"{split}_acc"][-1] == end_acc
        np.testing.assert_allclose(res[f"{split}_loss"][0], start_loss, rtol=1e-6)
    # the direction is exactly theta_2 - theta*, running statistics included
    a = torch.load(toy_ckpts[0], weights_only=True)["state_dict"]
    b = torch.load(toy_ckpts[1], weights_only=True)["state_dict"]
    np.testing.assert_allclose(dx["1.running_var"], (b["1.running_var"] - a["1.running_var"]).numpy(), rtol=1e-6)


def test_two_targets_and_same_dir(tmp_path, toy_ckpts):
    out = tmp_path / "t.h5"
    run(cli("surface", *TOY, "--checkpoint", toy_ckpts[0], "--x-target", toy_ckpts[1], "--y-target", toy_ckpts[2],
            "--x=0:0:1", "--y=0:1:2", "--dir-space", "states", "--out", str(out)))
    _, _, res = read(out)
    loss2, _ = independent_eval(toy_ckpts[2], [], (), "train")
    np.testing.assert_allclose(res["train_loss"][0, 1], loss2, rtol=1e-5)
    out2 = tmp_path / "same.h5"
    run(cli("surface", *TOY, "--checkpoint", toy_ckpts[0], "--same-dir", "--x=-1:1:3", "--y=-1:1:3",
            "--out", str(out2)))
    _, (dx, dy), res = read(out2)
    assert all(np.array_equal(dx[k], dy[k]) for k in dx)
    np.testing.assert_allclose(res["train_loss"][2, 0], res["train_loss"][0, 2], rtol=1e-6)  # 1*dx - 1*dy = 0


def test_mse_loss_and_samples_subset(tmp_path, toy_ckpts):
    out = tmp_path / "m.h5"
    run(cli("surface", *TOY, "--checkpoint", toy_ckpts[0], "--x=0:0:1", "--loss", "mse", "--samples", "50",
            "--splits", "train", "--out", str(out)))
    with h5py.File(out, "r") as f:
        idx = f["data/train_indices"][()]
        loss = f["results/train_loss"][0]
        assert "test_loss" not in f["results"]
    assert len(idx) == 50 and len(set(idx)) == 50
    x, y = landscape_toys.make_data("train").tensors
    model = landscape_toys.make_model()
    model.load_state_dict(torch.load(toy_ckpts[0], weights_only=True)["state_dict"])
    model.eval()
    with torch.no_grad():
        p = torch.softmax(model(x[idx]), 1)
    expected = ((p - torch.nn.functional.one_hot(y[idx], 3)) ** 2).mean(1).mean().item()
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_3d_grid(tmp_path, toy_ckpts):
    out = tmp_path / "v.h5"
    run(cli("surface", *TOY, "--checkpoint", toy_ckpts[0], "--x=-1:1:3", "--y=-1:1:2", "--z=0:1:2", "--out", str(out)))
    with h5py.File(out, "r") as f:
        assert f["results/train_loss"].shape == (3, 2, 2)
        dz = {k: f["directions/z"][k][()] for k in f["directions/z"]}
        dx = {k: f["directions/x"][k][()] for k in f["directions/x"]}
        dy = {k: f["directions/y"][k][()] for k in f["directions/y"]}
        val = f["results/train_loss"][0, 1, 1]
    loss, _ = independent_eval(toy_ckpts[0], [dx, dy, dz], (-1.0, 1.0, 1.0), "train")
    np.testing.assert_allclose(val, loss, rtol=1e-5)
