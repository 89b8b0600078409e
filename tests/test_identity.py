"""Resume identity, pre-flight, --overwrite safety and the defaults of issue 8, through the CLI as a user runs it.

Expected values come from independent computations (a plain evaluation loop on a model loaded on its own) or
from the files of other runs, never from the package's own formulas.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import cli, one_line_error, read_results, run

DIGITS = ["--model", "digits_cnn", "--dataset", "digits"]
TOY = ["--model", "landscape_toys:make_model", "--dataset", "identity_toys:shifted_data"]


def plain_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean cross-entropy in float64 over single-sample forwards: no batching, no shared code."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(len(y)):
            total += float(torch.nn.functional.cross_entropy(model(x[i:i + 1]).double(), y[i:i + 1]))
    return total / len(y)


# ------------------------------------------------------------------------------------- pre-flight
@pytest.fixture(scope="module")
def resnet20_ckpt(tmp_path_factory) -> str:
    from landscape_mpi.models import build_model

    path = tmp_path_factory.mktemp("r20") / "resnet20.pt"
    torch.save(build_model("resnet20").state_dict(), path)
    return str(path)


def test_cifar_model_with_digits_data_is_one_line_and_no_file(tmp_path, resnet20_ckpt):
    out = tmp_path / "s.h5"
    p = run(cli("surface", "--model", "resnet20", "--checkpoint", resnet20_ckpt, "--x=-1:1:3", "--out", str(out)),
            check_rc=None)
    one_line_error(p, "--model resnet20 with --dataset digits", "the forward fails")
    assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())  # no file, no lock, no temporary


def test_too_few_outputs_for_the_labels(tmp_path):
    import identity_toys

    ckpt = tmp_path / "two.pt"
    torch.save(identity_toys.two_class_model().state_dict(), ckpt)
    p = run(cli("surface", "--model", "identity_toys:two_class_model", "--checkpoint", str(ckpt),
                "--dataset", "landscape_toys:make_data", "--x=-1:1:3", "--out", str(tmp_path / "s.h5")),
            check_rc=None)
    one_line_error(p, "labels go up to 2 but the model has 2 outputs")
    assert not (tmp_path / "s.h5").exists()


def test_overwrite_with_a_wrong_model_leaves_the_old_file_byte_identical(tmp_path, digits_ckpt, resnet20_ckpt):
    out = tmp_path / "s.h5"
    run(cli("surface", *DIGITS, "--checkpoint", digits_ckpt, "--x=-1:1:3", "--samples", "60", "--out", str(out)))
    before = out.read_bytes()
    p = run(cli("surface", "--model", "resnet20", "--checkpoint", resnet20_ckpt, "--x=-1:1:3", "--overwrite",
                "--out", str(out)), check_rc=None)
    one_line_error(p, "--model resnet20")
    assert out.read_bytes() == before


def test_overwrite_builds_beside_and_swaps_only_when_complete(tmp_path, digits_ckpt):
    base = [*DIGITS, "--checkpoint", digits_ckpt, "--x=-1:1:4", "--y=-1:1:3", "--samples", "60"]
    out, direct = tmp_path / "s.h5", tmp_path / "direct.h5"
    run(cli("surface", *base, "--out", str(out)))
    before = out.read_bytes()
    # the replacement fails half way: the old surface is untouched, the new one waits beside it
    p = run(cli("surface", *base, "--seed", "1", "--overwrite", "--out", str(out)), check_rc=1,
            LANDSCAPE_MPI_TEST_FAIL="0:5")
    assert "test hook" in p.stderr
    assert out.read_bytes() == before
    pending = Path(str(out) + ".new")
    assert read_results(pending)["done"].sum() == 5
    # the same command resumes the replacement, then swaps it in
    p = run(cli("surface", *base, "--seed", "1", "--overwrite", "--out", str(out)))
    assert "resuming" in p.stderr and not pending.exists()
    run(cli("surface", *base, "--seed", "1", "--out", str(direct)))
    a, b = read_results(out), read_results(direct)
    for k in ("done", "train_loss", "test_acc"):
        assert np.array_equal(a[k], b[k], equal_nan=True), k
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["config"])["seed"] == 1


# ------------------------------------------------------------------------------------ resume identity
def test_changed_dataset_content_is_refused_naming_the_split(tmp_path, toy_ckpts):
    out = tmp_path / "s.h5"
    args = [*TOY, "--checkpoint", toy_ckpts[0], "--x=-1:1:3", "--out", str(out)]
    run(cli("surface", *args), LANDSCAPE_MPI_TEST_FAIL="0:1", check_rc=1)
    before = out.read_bytes()
    p = run(cli("surface", *args), check_rc=None, TOY_DATA_SHIFT="0.5")
    one_line_error(p, "train data", "test data", "another configuration")
    assert out.read_bytes() == before
    run(cli("surface", *args))  # the same data resumes


def test_dropped_target_is_refused(tmp_path, toy_ckpts):
    out = tmp_path / "s.h5"
    base = ["--model", "landscape_toys:make_model", "--dataset", "landscape_toys:make_data",
            "--checkpoint", toy_ckpts[0], "--x=0:1:3", "--dir-space", "weights", "--out", str(out)]
    run(cli("surface", *base, "--x-target", toy_ckpts[1]))
    p = run(cli("surface", *base), check_rc=None)
    one_line_error(p, "x_target")


def test_grid_differing_in_the_eighth_digit_is_refused(tmp_path, toy_ckpts):
    out = tmp_path / "s.h5"
    base = ["--model", "landscape_toys:make_model", "--dataset", "landscape_toys:make_data",
            "--checkpoint", toy_ckpts[0], "--out", str(out)]
    run(cli("surface", *base, "--x=-1:1:5"), LANDSCAPE_MPI_TEST_FAIL="0:2", check_rc=1)
    p = run(cli("surface", *base, "--x=-1:1.00000001:5"), check_rc=None)
    one_line_error(p, "x: file has -1.0:1.0:5, command asks -1.0:1.00000001:5")


def test_batch_size_may_change_on_resume(tmp_path, digits_ckpt):
    base = [*DIGITS, "--checkpoint", digits_ckpt, "--x=-1:1:4", "--y=-1:1:3", "--samples", "150"]
    full, part = tmp_path / "full.h5", tmp_path / "part.h5"
    run(cli("surface", *base, "--out", str(full)))
    run(cli("surface", *base, "--batch-size", "7", "--out", str(part)), LANDSCAPE_MPI_TEST_FAIL="0:5", check_rc=1)
    run(cli("surface", *base, "--batch-size", "64", "--out", str(part)))
    a, b = read_results(full), read_results(part)
    assert a["done"].all() and b["done"].all()
    for k in ("train_loss", "test_loss"):
        np.testing.assert_allclose(b[k], a[k], rtol=1e-6)
    for k in ("train_acc", "test_acc"):
        assert np.array_equal(a[k], b[k]), k


def test_file_of_an_older_version_resumes(tmp_path, digits_ckpt):
    """A schema-1 file written before precision/bn/directions existed (and with batch_size in its config)."""
    out = tmp_path / "old.h5"
    base = [*DIGITS, "--checkpoint", digits_ckpt, "--x=-1:1:3", "--samples", "60"]
    run(cli("surface", *base, "--out", str(out)))
    with h5py.File(out, "r+") as f:
        config = json.loads(f.attrs["config"])
        for new in ("precision", "bn", "bn_samples", "directions", "trajectory", "hessian_file", "dir_file",
                    "dir_format", "eig", "eig_tol"):
            config.pop(new)
        config.update(batch_size=1024, x="-1:1:3")
        f.attrs["config"] = json.dumps(config)
        for k in ("train_data_sha256", "test_data_sha256"):
            del f.attrs[k]
        f["results/done"][1] = 0
    p = run(cli("surface", *base, "--out", str(out)))
    assert "resuming" in p.stderr and "2/3 points done" in p.stderr
    assert read_results(out)["done"].all()


# ------------------------------------------------------------------------------------------ defaults
def test_interpolation_of_a_batchnorm_net_reaches_the_target(tmp_path, digits_ckpt):
    """With --x-target and no --dir-space, a = 1 is the target model, running statistics included."""
    from landscape_mpi.data.datasets import load_eval_set
    from landscape_mpi.models import build_model, load_checkpoint

    folder = os.path.dirname(digits_ckpt)
    start = os.path.join(folder, "epoch_000.pt")
    out = tmp_path / "interp.h5"
    run(cli("surface", *DIGITS, "--checkpoint", start, "--x-target", digits_ckpt, "--x=0:1:3", "--samples", "100",
            "--splits", "train", "--out", str(out)))
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["config"])["dir_space"] == "states"
        loss_at_1 = f["results/train_loss"][2]
    model = build_model("digits_cnn")
    load_checkpoint(model, digits_ckpt)
    data = load_eval_set("digits", "train", None, 100, 0)
    assert loss_at_1 == pytest.approx(plain_loss(model, data.inputs, data.labels), rel=1e-5)


def test_tied_tensors_get_one_direction(tmp_path):
    import identity_toys
    import landscape_toys

    torch.manual_seed(0)
    model = identity_toys.tied_model()
    ckpt = tmp_path / "tied.pt"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "tied.h5"
    run(cli("surface", "--model", "identity_toys:tied_model", "--checkpoint", str(ckpt), "--dataset",
            "landscape_toys:make_data", "--dir-space", "states", "--x=-1:1:3", "--splits", "train", "--out", str(out)))
    with h5py.File(out, "r") as f:
        keys = set(f["directions/x"])
        dirs = {k: torch.from_numpy(f["directions/x"][k][()]) for k in keys}
        loss = f["results/train_loss"][()]
    assert "a.weight" in keys and "b.weight" not in keys  # one storage, one direction
    x, y = landscape_toys.make_data("train").tensors
    for t, expected in zip((-1.0, 1.0), (loss[0], loss[2])):
        m = identity_toys.tied_model()
        m.load_state_dict(torch.load(ckpt))
        params = dict(m.named_parameters())  # a.weight once: b.weight is the same tensor
        with torch.no_grad():
            for k, d in dirs.items():
                params[k].add_(d, alpha=t)
        assert expected == pytest.approx(plain_loss(m, x, y), rel=1e-5)


def test_stored_directions_have_the_checkpoints_filter_norms(tmp_path, digits_ckpt):
    from landscape_mpi.models import read_state_dict

    out = tmp_path / "s.h5"
    run(cli("surface", *DIGITS, "--checkpoint", digits_ckpt, "--x=-1:1:3", "--y=-1:1:3", "--samples", "30",
            "--out", str(out)))
    state = read_state_dict(digits_ckpt)
    with h5py.File(out, "r") as f:
        for axis in ("x", "y"):
            g = f["directions"][axis]
            assert set(g) == {k for k, v in state.items() if v.is_floating_point() and "running" not in k}
            for key in g:
                d, w = g[key][()], state[key].numpy()
                if w.ndim <= 1:
                    assert not d.any(), key  # biases and BatchNorm: zero (--ignore biasbn)
                    continue
                dn = np.linalg.norm(d.reshape(d.shape[0], -1), axis=1)
                wn = np.linalg.norm(w.reshape(w.shape[0], -1), axis=1)
                np.testing.assert_allclose(dn, wn, rtol=1e-5, err_msg=f"{axis} {key}")


# ------------------------------------------------------------------------------------- durability
def test_write_protocol_order_values_fsync_done_fsync(tmp_path, monkeypatch):
    """The calls the writer makes, recorded: every value dataset, flush+fsync, then done, flush+fsync."""
    from landscape_mpi.config.surface import Axis, SurfaceConfig
    from landscape_mpi.files import store

    config = SurfaceConfig(model="m", checkpoint="c", x=Axis(-1, 1, 4))
    path = str(tmp_path / "f.h5")
    store.create_surface_file(path, config, {"x": {"w": np.zeros((2, 2), np.float32)}}, {}, {})
    calls: list[str] = []
    writer = store.ResultWriter(path, store.result_columns(config), "single")
    real_write, real_flush = store.ResultWriter._write_points, writer.file.flush
    monkeypatch.setattr(store.ResultWriter, "_write_points",
                        lambda self, dset, c, v: (calls.append(f"write {dset.name}"), real_write(self, dset, c, v)))
    monkeypatch.setattr(writer.file, "flush", lambda: (calls.append("flush"), real_flush()))
    real_fsync = os.fsync
    monkeypatch.setattr(store.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd)))
    writer.write(np.array([1, 3]), np.ones((2, 4)), np.zeros(2, np.int32), np.ones(2))
    writer.close()
    values = [f"write /results/{m}" for m in config.metrics] + ["write /results/rank", "write /results/seconds"]
    assert calls == values + ["flush", "fsync", "write /results/done", "flush", "fsync"]
    assert read_results(path)["done"].tolist() == [0, 1, 0, 1]


def test_precision_is_recorded_and_part_of_the_identity(tmp_path, toy_ckpts):
    out = tmp_path / "p.h5"
    base = ["--model", "landscape_toys:make_model", "--dataset", "landscape_toys:make_data",
            "--checkpoint", toy_ckpts[0], "--x=-1:1:3", "--out", str(out)]
    run(cli("surface", *base, "--precision", "bf16"), LANDSCAPE_MPI_TEST_FAIL="0:1", check_rc=1)
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["config"])["precision"] == "bf16"
        assert list(f["ranks/device"].asstr()[()]) == ["cpu"]
    p = run(cli("surface", *base), check_rc=None)
    one_line_error(p, "precision: file has 'bf16', command asks 'fp32'")
