"""The paper's analyses through `landscape-mpi surface` (issue 11): curvature maps, PCA trajectory planes,
direction files of the reference code, BatchNorm recalibration, and their bad inputs.

Expected values come from independent computations: torch.autograd.functional.hessian + numpy.linalg.eigvalsh,
projections done in the test, BatchNorm statistics computed directly from the samples.
"""

from __future__ import annotations

import json
import sys

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hessian_toys as toys
from conftest import cli, read_results, run

TOY = ["--model", "hessian_toys:make_model", "--dataset", "hessian_toys:make_data"]


@pytest.fixture(scope="module")
def toy_ckpt(tmp_path_factory) -> str:
    """The Hessian toy, part-trained: eigenvalues of both signs."""
    model = toys.part_trained_model()
    path = tmp_path_factory.mktemp("toy") / "toy.pt"
    torch.save(model.state_dict(), path)
    return str(path)


def exact_eigenvalues(state: dict[str, torch.Tensor]) -> np.ndarray:
    """Eigenvalues of the Hessian of the mean training cross-entropy, float64, eval-mode BatchNorm."""
    model = toys.make_model().double()
    model.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in state.items()})
    model.eval()
    x, y = toys.make_data("train").tensors
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])

    def loss(flat):
        params, i = {}, 0
        for n, s in zip(names, shapes):
            k = int(np.prod(s))
            params[n] = flat[i:i + k].reshape(s)
            i += k
        out = torch.func.functional_call(model, params, (x.double(),))
        return F.cross_entropy(out, y)

    h = torch.autograd.functional.hessian(loss, flat0)
    return np.linalg.eigvalsh(h.numpy())


def test_curvature_map_equals_the_exact_hessian_at_grid_points(tmp_path, toy_ckpt):
    out = tmp_path / "eig.h5"
    run(cli("surface", *TOY, "--checkpoint", toy_ckpt, "--x=-0.6:0.6:3", "--y=-0.4:0.4:3", "--splits", "train",
            "--metrics", "loss,eig", "--eig-tol", "1e-8", "--out", str(out)), timeout=300)
    base = torch.load(toy_ckpt)
    with h5py.File(out, "r") as f:
        dx = {k: torch.from_numpy(f["directions/x"][k][()]) for k in f["directions/x"]}
        dy = {k: torch.from_numpy(f["directions/y"][k][()]) for k in f["directions/y"]}
        eig_max, eig_min = f["results/eig_max"][()], f["results/eig_min"][()]
        iters = f["results/eig_iters"][()]
        xs, ys = f["coords/x"][()], f["coords/y"][()]
    assert (iters > 2).all()
    for i, j in ((1, 1), (0, 2), (2, 0)):
        state = {k: (v.double() + xs[i] * dx[k].double() + ys[j] * dy[k].double() if k in dx else v)
                 for k, v in base.items()}
        ev = exact_eigenvalues(state)
        assert eig_max[i, j] == pytest.approx(ev[-1], rel=1e-4), (i, j)
        assert eig_min[i, j] == pytest.approx(ev[0], rel=1e-4, abs=1e-7), (i, j)
    figs = tmp_path / "figs"
    run([sys.executable, "-m", "plotting", str(out), "--kind", "eig_ratio", "--out", str(figs)])
    assert list(figs.glob("*eig_ratio*"))


def test_eig_on_a_model_without_gradients_is_one_line(tmp_path, toy_ckpt):
    p = run(cli("surface", "--model", "hessian_toys:make_frozen_model", "--dataset", "hessian_toys:make_data",
                "--checkpoint", toy_ckpt, "--x=-1:1:3", "--metrics", "loss,eig", "--out", str(tmp_path / "s.h5")),
            check_rc=2)
    assert len(p.stderr.strip().splitlines()) == 1 and "no trainable parameter" in p.stderr, p.stderr


def test_reference_direction_file_gives_the_same_surface(tmp_path, toy_ckpt):
    native = tmp_path / "native.h5"
    run(cli("surface", *TOY, "--checkpoint", toy_ckpt, "--x=-1:1:4", "--y=-1:1:3", "--out", str(native)))
    model = toys.make_model()
    ref = tmp_path / "ref_dirs.h5"
    with h5py.File(native, "r") as f, h5py.File(ref, "w") as r:  # the paper's code's layout
        for axis, group in (("x", "xdirection"), ("y", "ydirection")):
            g = r.create_group(group)
            for i, (name, _) in enumerate(model.named_parameters()):
                g.create_dataset(str(i), data=f["directions"][axis][name][()])
    for fmt, path in (("reference", ref), ("native", native)):
        out = tmp_path / f"from_{fmt}.h5"
        run(cli("surface", *TOY, "--checkpoint", toy_ckpt, "--x=-1:1:4", "--y=-1:1:3", "--directions", "file",
                "--dir-file", str(path), "--dir-format", fmt, "--out", str(out)))
        a, b = read_results(native), read_results(out)
        for k in ("train_loss", "test_loss", "train_acc"):
            assert np.array_equal(a[k], b[k]), (fmt, k)


def test_pca_surface_stores_the_projected_path(tmp_path):
    ck = tmp_path / "run"
    run(cli("train", "--model", "digits_mlp", "--out-dir", str(ck), "--epochs", "4", "--batch-size", "64"))
    out = tmp_path / "pca.h5"
    run(cli("surface", "--model", "digits_mlp", "--checkpoint", str(ck / "final.pt"), "--directions", "pca",
            "--trajectory", str(ck / "epoch_*.pt"), "--x=-3:3:5", "--y=-3:3:5", "--samples", "50", "--out", str(out)))
    with h5py.File(out, "r") as f:
        t = f["trajectory"]
        x, y, epochs, residual = t["x"][()], t["y"][()], t["epochs"][()], t["residual"][()]
        ev = list(t.attrs["explained_variance"])
        dx = {k: f["directions/x"][k][()] for k in f["directions/x"]}
        dy = {k: f["directions/y"][k][()] for k in f["directions/y"]}
    final = torch.load(ck / "final.pt")["state_dict"]
    assert 0 < ev[1] <= ev[0] <= 1 and len(epochs) >= 4
    for e, xi, yi, ri in zip(epochs, x, y, residual):
        state = torch.load(ck / f"epoch_{e:03d}.pt")["state_dict"]
        diff = {k: (state[k] - final[k]).numpy() * (state[k].dim() > 1) for k in dx}  # biases zeroed (biasbn)
        px = sum(float((diff[k] * dx[k]).sum()) for k in dx)
        py = sum(float((diff[k] * dy[k]).sum()) for k in dx)
        total = sum(float((diff[k] ** 2).sum()) for k in dx)
        assert (xi, yi) == (pytest.approx(px, rel=1e-4, abs=1e-5), pytest.approx(py, rel=1e-4, abs=1e-5))
        assert ri == pytest.approx(np.sqrt(max(total - px ** 2 - py ** 2, 0)), rel=1e-3, abs=1e-4)
    figs = tmp_path / "figs"
    run([sys.executable, "-m", "plotting", str(out), "--kind", "trajectory", "--out", str(figs)])
    assert list(figs.glob("*trajectory*"))


@pytest.mark.parametrize("pattern,needle", [("nothing_*.pt", "--trajectory"), ("epoch_000.pt", "need at least")])
def test_pca_bad_trajectories(tmp_path, digits_ckpt, pattern, needle):
    import os

    folder = os.path.dirname(digits_ckpt)
    p = run(cli("surface", "--model", "digits_cnn", "--checkpoint", digits_ckpt, "--directions", "pca",
                "--trajectory", os.path.join(folder, pattern), "--x=-1:1:3", "--y=-1:1:3",
                "--out", str(tmp_path / "s.h5")), check_rc=2)
    assert len(p.stderr.strip().splitlines()) == 1 and needle in p.stderr, p.stderr
    assert not (tmp_path / "s.h5").exists()


def test_bn_recalibration_recovers_the_data_statistics(tmp_path, digits_ckpt):
    """Stored running statistics made wrong: recalibrating at the center gives the loss of the model whose
    statistics are computed directly from the same training samples (one train-mode pass over all of them)."""
    from landscape_mpi.data.datasets import load_eval_set
    from landscape_mpi.models import build_model, read_state_dict

    state = read_state_dict(digits_ckpt)
    broken = {k: (v + 5.0 if k.endswith("running_mean") else v * 10.0 if k.endswith("running_var") else v)
              for k, v in state.items()}
    ckpt = tmp_path / "broken.pt"
    torch.save(broken, ckpt)
    out = tmp_path / "recal.h5"
    run(cli("surface", "--model", "digits_cnn", "--checkpoint", str(ckpt), "--x=-1:1:3", "--splits", "train",
            "--samples", "100", "--bn", "recalibrate", "--bn-samples", "200", "--out", str(out)))
    model = build_model("digits_cnn")
    model.load_state_dict(broken)
    train_all = load_eval_set("digits", "train", None, None, 0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(train_all.inputs[:200])  # one batch: the statistics of exactly these 200 samples
    model.eval()
    data = load_eval_set("digits", "train", None, 100, 0)
    with torch.no_grad():
        expected = float(F.cross_entropy(model(data.inputs).double(), data.labels))
    with h5py.File(out, "r") as f:
        assert f["results/train_loss"][1] == pytest.approx(expected, rel=1e-5)
        assert json.loads(f.attrs["config"])["bn"] == "recalibrate"


def test_surface_along_the_top_hessian_eigenvectors(tmp_path, toy_ckpt):
    """--directions hessian: dx, dy are the file's top two eigenvectors (unit norm); along dx the curvature of
    the 1D profile at the center is lambda_1 (second difference of the stored losses, not our formula)."""
    hfile = tmp_path / "H.h5"
    run(cli("hessian", *TOY, "--checkpoint", toy_ckpt, "--splits", "train", "--top-k", "2", "--trace-probes", "0",
            "--slq-runs", "0", "--adaptive-samples", "0", "--tol", "1e-8", "--out", str(hfile)), timeout=300)
    out = tmp_path / "along.h5"
    h = 1e-2
    run(cli("surface", *TOY, "--checkpoint", toy_ckpt, "--directions", "hessian", "--hessian-file", str(hfile),
            f"--x={-h}:{h}:3", f"--y={-h}:{h}:3", "--splits", "train", "--out", str(out)))
    with h5py.File(hfile, "r") as f:
        lam = f["eigen/values"][0]
        v0 = {k: ds[()] for k, ds in f["eigenvectors/row_000/0"].items()}
    with h5py.File(out, "r") as f:
        dx = {k: f["directions/x"][k][()] for k in f["directions/x"]}
        loss = f["results/train_loss"][()]
        assert "hessian_eigenvalues" in f.attrs
    norm = np.sqrt(sum(float((v ** 2).sum()) for v in dx.values()))
    assert norm == pytest.approx(1.0, rel=1e-5)
    assert all(np.allclose(dx[k], v0[k], atol=1e-6) for k in v0)
    second = (loss[0, 1] - 2 * loss[1, 1] + loss[2, 1]) / h ** 2
    assert second == pytest.approx(lam[0], rel=2e-2)
