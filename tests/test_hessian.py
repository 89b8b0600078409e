"""Hessian analyses against independent computations.

The oracle is the exact Hessian of the mean loss, built by `torch.autograd.functional.hessian` over the flat
parameter vector (torch.func.functional_call, the whole data set in one batch, float64) and diagonalized by
`numpy.linalg.eigvalsh`. The code under test uses batched double backprop, ARPACK, Rademacher probes and Lanczos.
Models are tiny user models by import path (tests/hessian_toys.py, 244 parameters, smooth tanh).
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hessian_toys as toys
from conftest import ROOT, cli, env, mpiexec, run
from hessian_toys import exact_hessian
from landscape_mpi.cli import main
from landscape_mpi.config.errors import UserError
from landscape_mpi.curvature import hessian as hs
from landscape_mpi.curvature import krylov
from landscape_mpi.data.datasets import EvalSet
from landscape_mpi.directions.base import PointSetter, random_direction
from landscape_mpi.directions.hessian import hessian_directions
from landscape_mpi.engine.evaluate import evaluate
from landscape_mpi.files.reader import read_hessian_file

TOY = ["--model", "hessian_toys:make_model", "--dataset", "hessian_toys:make_data"]
# Small but complete settings; float64 so that 1 vs 3 ranks and the exact Hessian compare tightly.
SETTINGS = ["--precision", "float64", "--batch-size", "50", "--top-k", "4", "--tol", "1e-9", "--trace-probes", "100",
            "--slq-runs", "8", "--slq-steps", "40", "--adaptive-samples", "8", "--adaptive-rho", "0.05"]


# ------------------------------------------------------------------------------------------- oracles
def toy_set(factory=toys.make_data, split="train", dtype=torch.float64) -> EvalSet:
    x, y = factory(split).tensors
    return EvalSet(split, x.to(dtype), y)




@functools.lru_cache(maxsize=None)
def exact_at(path: str) -> np.ndarray:
    """The exact Hessian of the toy model at a checkpoint, on the train split (cached: tests share it)."""
    return exact_hessian(model_at(path), toy_set())


def model_at(path: str, factory=toys.make_model) -> torch.nn.Module:
    model = factory()
    obj = torch.load(path, weights_only=True)
    model.load_state_dict(obj["state_dict"] if "state_dict" in obj else obj)
    return model.eval()


def close(a, b, rel: float) -> bool:
    return bool(np.all(np.abs(np.asarray(a) - np.asarray(b)) <= rel * np.abs(np.asarray(b))))


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread for the in-process computations: these products are tiny, and on a shared 2-core
    machine two threads per product mostly wait for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    """Two checkpoints of the toy model, part-trained (a saddle-like point: eigenvalues of both signs).

    epoch_005.pt is a plain state_dict (epoch from the file name); epoch_100.pt a dict whose "epoch" (40)
    must win over its file name.
    """
    out = tmp_path_factory.mktemp("hessian_ckpts")
    x, y = toys.make_data("train").tensors
    torch.manual_seed(0)
    model = toys.make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(1, 41):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if step == 5:
            torch.save(model.state_dict(), out / "epoch_005.pt")
    torch.save({"state_dict": model.state_dict(), "epoch": 40}, out / "epoch_100.pt")
    return out


@pytest.fixture(scope="module")
def hfile(ckpt_dir, tmp_path_factory) -> str:
    """The hessian command, one process, on both checkpoints (a glob)."""
    out = str(tmp_path_factory.mktemp("hessian_out") / "H.h5")
    run(cli("hessian", *TOY, "--checkpoint", str(ckpt_dir / "epoch_*.pt"), "--out", out, *SETTINGS), timeout=240)
    return out


# ---------------------------------------------------------------------------------------- products
@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_hvp_equals_exact_hessian_times_vector(ckpt_dir, loss):
    model = model_at(str(ckpt_dir / "epoch_100.pt")).double()
    data = toy_set()
    H = exact_hessian(model, data, loss)
    op = hs.HessianOperator(model, data, loss, batch_size=37)  # 160 samples in 5 uneven batches
    v = np.random.default_rng(1).standard_normal(op.n)
    assert np.allclose(op.product(v), H @ v, rtol=1e-10, atol=1e-12 * np.abs(H @ v).max())
    # float32 model (the default precision): same product to float32 accuracy
    op32 = hs.HessianOperator(model_at(str(ckpt_dir / "epoch_100.pt")), toy_set(dtype=torch.float32), loss, 37)
    assert np.abs(op32.product(v) - H @ v).max() <= 1e-5 * np.abs(H @ v).max()


def test_param_space_round_trip():
    model = toys.make_model()
    space = hs.ParamSpace.of(model)
    assert space.n == 244 and space.names[0] == "0.weight"
    vec = np.arange(space.n, dtype=np.float64)
    parts = space.split(vec)
    assert [tuple(a.shape) for a in parts.values()] == [tuple(p.shape) for p in model.parameters()]
    assert np.array_equal(space.flatten([torch.from_numpy(a) for a in parts.values()]), vec)


# ------------------------------------------------------------------------ the command against the oracle
def test_hessian_file_matches_exact_hessian(hfile, ckpt_dir):
    h = read_hessian_file(hfile)
    paths = list(h["checkpoints/path"])
    assert [p.split("/")[-1] for p in paths] == ["epoch_005.pt", "epoch_100.pt"]
    assert list(h["checkpoints/epoch"]) == [5.0, 40.0]  # file name, then the checkpoint's own "epoch"
    for r, path in enumerate(paths):
        assert h["checkpoints/sha256"][r] == hashlib.sha256(open(path, "rb").read()).hexdigest()
        model = model_at(path)
        ev = np.linalg.eigvalsh(exact_at(path))
        n = ev.size
        # the case that needs the 'SA' solve: lambda_max > 0 > lambda_min
        assert ev[-1] > 0 > ev[0], ev[[0, -1]]
        assert close(h["eigen/values"][r], ev[::-1][:4], 1e-4), (h["eigen/values"][r], ev[::-1][:4])
        assert close(h["eigen/lambda_min"][r], ev[0], 1e-4)
        # Hutchinson: the exact trace within 3 standard errors
        est, se = h["trace/estimate"][r], h["trace/stderr"][r]
        assert se > 0 and abs(est - ev.sum()) <= 3 * se, (est, se, ev.sum())
        # SLQ: a probability density whose mean is tr(H)/n within its own standard error (x3)
        grid, phi = h["density/grid"][r], h["density/values"][r]
        assert abs(np.trapezoid(phi, grid) - 1.0) < 1e-3
        mean = np.trapezoid(grid * phi, grid)
        runs = h["density/run_means"][r]
        se_runs = runs.std(ddof=1) / np.sqrt(runs.size)
        assert abs(mean - ev.sum() / n) <= 3 * se_runs, (mean, ev.sum() / n, se_runs)
        assert h["density/nodes"][r].min() >= ev[0] - 1e-8 and h["density/nodes"][r].max() <= ev[-1] + 1e-8
        # the loss at the checkpoint
        assert np.isclose(h["checkpoints/loss"][r], evaluate(model.double(), toy_set())[0], rtol=1e-6)
        # costs recorded
        for key in ("eigen/products_top", "eigen/products_min", "trace/products", "density/products"):
            assert h[key][r] > 0
    # eigenvectors: unit norm, H v = lambda v
    with h5py.File(hfile, "r") as f:
        names = f.attrs["parameter_names"].split("\n")
        for j in range(2):
            g = f["eigenvectors/row_001"][str(j)]
            v = np.concatenate([g[k][()].ravel() for k in names])
            lam = h["eigen/values"][1, j]
            H = exact_at(paths[1])
            assert abs(np.linalg.norm(v) - 1) < 1e-8
            assert np.linalg.norm(H @ v - lam * v) <= 1e-4 * abs(lam)
    a, c = h["attrs"], h["config"]
    assert a["file_kind"] == "hessian" and a["bn_mode"] == "eval" and a["n_params"] == 244
    assert c["tol"] == 1e-9 and c["trace_probes"] == 100 and c["slq_runs"] == 8 and c["slq_steps"] == 40
    assert c["slq_sigma"] == 0.01 and c["adaptive_rho"] == 0.05 and c["seed"] == 0


def test_average_adaptive_rise_matches_direct_perturbations(hfile, ckpt_dir):
    """The stored values are the loss increases of the documented perturbations, recomputed here by hand:
    per output row i of each weight matrix, rho * ||w_i|| * g_i / ||g_i||, g from the seeded generator."""
    h = read_hessian_file(hfile)
    model = model_at(str(ckpt_dir / "epoch_100.pt")).double()
    data = toy_set()
    base = evaluate(model, data)[0]
    theta = {k: p.detach().clone() for k, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    rho = 0.05
    expected = []
    for _ in range(8):
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.copy_(theta[k])
                if p.dim() >= 2:
                    g = torch.randn(p.shape, generator=gen, dtype=torch.float32).double()
                    scale = rho * theta[k].norm(dim=1) / g.norm(dim=1)
                    p.add_(g * scale[:, None])
        expected.append(evaluate(model, data)[0] - base)
    values = h["adaptive/values"][1]
    assert np.allclose(values, expected, rtol=1e-4, atol=1e-7), (values, expected)
    assert np.isclose(h["adaptive/sharpness"][1], np.mean(expected), rtol=1e-4, atol=1e-7)
    assert h["adaptive/sharpness"][1] > 0  # a perturbation of 5 % per filter raises the loss on average


def test_three_ranks_equal_one_process(hfile, ckpt_dir, tmp_path):
    out = str(tmp_path / "H3.h5")
    run(mpiexec(3) + cli("hessian", *TOY, "--checkpoint", str(ckpt_dir / "epoch_*.pt"), "--out", out, *SETTINGS),
        timeout=300)
    one, three = read_hessian_file(hfile), read_hessian_file(out)
    assert three["attrs"]["ranks"] == 3 and one["attrs"]["ranks"] == 1
    for key in ("eigen/values", "eigen/lambda_min", "trace/estimate", "adaptive/sharpness"):
        assert close(three[key], one[key], 1e-6), key


# ----------------------------------------------------------------------------------- the library calls
def test_both_eigenvalues_negative_at_a_maximum():
    """At W = 0 the concave toy's loss has a strict local maximum: lambda_max < 0 too."""
    model = toys.make_concave_model().double()
    data = toy_set(toys.make_zero_label_data)
    ev = np.linalg.eigvalsh(exact_hessian(model, data))
    assert ev[-1] < 0, ev[-1]
    lmax, lmin, products = hs.eig_extremes(model, data, "ce", tol=1e-10, maxiter=1000)
    assert close(lmax, ev[-1], 1e-6) and close(lmin, ev[0], 1e-6) and products > 0
    op = hs.HessianOperator(model, data, "ce")
    top = krylov.extreme_eigenpairs(op.product, op.n, 3, "LA", 1e-10, 1000)
    assert close(top.values, ev[::-1][:3], 1e-6)


def test_eig_extremes_at_grid_points(ckpt_dir):
    """eig_extremes at theta* + a dx + b dy (weights set in place, as the surface sets them), float32 model,
    against the exact Hessian of the same weights."""
    model = model_at(str(ckpt_dir / "epoch_100.pt"))
    state = {k: p.detach() for k, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(3)
    dx = random_direction(state, list(state), gen, "filter", "biasbn")
    dy = random_direction(state, list(state), gen, "filter", "biasbn")
    setter = PointSetter(model, [dx, dy])
    data32 = toy_set(dtype=torch.float32)
    for a, b in ((0.0, 0.0), (0.4, -0.3), (-0.7, 0.5)):
        setter.set([a, b])
        lmax, lmin, products = hs.eig_extremes(model, [data32], "ce", tol=1e-6, maxiter=1000)
        reference = model_at(str(ckpt_dir / "epoch_100.pt"))
        reference.load_state_dict(model.state_dict())
        ev = np.linalg.eigvalsh(exact_hessian(reference, toy_set()))
        assert close(lmax, ev[-1], 1e-4) and close(lmin, ev[0], 1e-4), ((a, b), lmax, lmin, ev[[-1, 0]])
        assert products > 2


def test_second_difference_of_surface_equals_dHd(ckpt_dir):
    """A fine 1D surface theta* + t d, evaluated by landscape_mpi.engine.evaluate, has second derivative d^T H d at
    0."""
    model = model_at(str(ckpt_dir / "epoch_100.pt")).double()
    data = toy_set()
    state = {k: p.detach() for k, p in model.named_parameters()}
    d = random_direction(state, list(state), torch.Generator().manual_seed(5), "filter", "biasbn")
    setter = PointSetter(model, [d])
    ts = np.linspace(-0.2, 0.2, 41)  # step 0.01
    losses = []
    for t in ts:
        setter.set([float(t)])
        losses.append(evaluate(model, data)[0])
    setter.set([0.0])
    f = np.array(losses)
    c, k = 20, 5  # the center and the stencil step h = 0.05 on the fine grid
    h = ts[c + k] - ts[c]
    # five-point central second difference: error O(h^4)
    second = (-f[c + 2 * k] + 16 * f[c + k] - 30 * f[c] + 16 * f[c - k] - f[c - 2 * k]) / (12 * h * h)
    op = hs.HessianOperator(model, data, "ce")
    dv = op.space.flatten([d[name] for name in op.space.names])
    dHd = float(dv @ op.product(dv))
    assert abs(dHd) > 1e-2
    assert close(second, dHd, 1e-3), (second, dHd)


def test_hessian_directions(hfile):
    model = toys.make_model()
    dx, dy, attrs = hessian_directions(hfile, model, row=1)
    names = [k for k, _ in model.named_parameters()]
    assert list(dx) == names and list(dy) == names
    vx = torch.cat([dx[k].reshape(-1) for k in names]).double().numpy()
    vy = torch.cat([dy[k].reshape(-1) for k in names]).double().numpy()
    assert abs(np.linalg.norm(vx) - 1) < 1e-6 and abs(np.linalg.norm(vy) - 1) < 1e-6 and abs(vx @ vy) < 1e-5
    H = exact_at(attrs["checkpoint"])
    ev = np.linalg.eigvalsh(H)
    assert close(attrs["eigenvalues"], ev[::-1][:2], 1e-4)
    assert np.linalg.norm(H @ vx - ev[-1] * vx) < 1e-4 * ev[-1]
    assert "unit L2 norm" in attrs["convention"]


# ------------------------------------------------------------------------------------------- bad input
def one_line_error(argv: list[str], capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err and err.startswith("landscape-mpi: error:"), err
    return err


def test_glob_matching_nothing(tmp_path, capsys):
    err = one_line_error(["hessian", *TOY, "--checkpoint", str(tmp_path / "epoch_*.pt"),
                          "--out", str(tmp_path / "H.h5")], capsys)
    assert "matches no file" in err


def test_model_without_trainable_parameters(ckpt_dir, tmp_path, capsys):
    err = one_line_error(["hessian", "--model", "hessian_toys:make_frozen_model", "--dataset", "hessian_toys:make_data",
                          "--checkpoint", str(ckpt_dir / "epoch_005.pt"), "--out", str(tmp_path / "H.h5")], capsys)
    assert "no trainable parameters" in err


def test_existing_out_and_top_k_too_large(ckpt_dir, hfile, tmp_path, capsys):
    err = one_line_error(["hessian", *TOY, "--checkpoint", str(ckpt_dir / "epoch_005.pt"), "--out", hfile], capsys)
    assert "--overwrite" in err
    err = one_line_error(["hessian", *TOY, "--checkpoint", str(ckpt_dir / "epoch_005.pt"), "--top-k", "244",
                          "--out", str(tmp_path / "H.h5")], capsys)
    assert "--top-k 244" in err


def test_hessian_file_of_another_model(ckpt_dir, hfile, tmp_path, capsys):
    with pytest.raises(UserError) as exc:
        hessian_directions(hfile, toys.make_other_model())
    assert "another model" in str(exc.value) and "\n" not in str(exc.value)
    # and through the surface command that uses it
    other = tmp_path / "other.pt"
    torch.save(toys.make_other_model().state_dict(), other)
    err = one_line_error(["surface", "--model", "hessian_toys:make_other_model", "--dataset", "hessian_toys:make_data",
                          "--checkpoint", str(other), "--directions", "hessian", "--hessian-file", hfile,
                          "--x=-1:1:3", "--y=-1:1:3", "--out", str(tmp_path / "s.h5")], capsys)
    assert "another model" in err


@pytest.mark.parametrize("args, message", [
    (["--top-k", "2", "--store-vectors", "3"], "--store-vectors 3"),
    (["--trace-probes", "-1"], "--trace-probes -1"),
    (["--samples", "0"], "--samples 0"),
    (["--precision", "float16"], "--precision"),
    (["--splits", "val"], "--splits val"),
])
def test_bad_settings(ckpt_dir, tmp_path, capsys, args, message):
    err = one_line_error(["hessian", *TOY, "--checkpoint", str(ckpt_dir / "epoch_005.pt"), "--out",
                          str(tmp_path / "H.h5"), *args], capsys)
    assert message in err


def test_hessian_file_unusable_for_directions(ckpt_dir, hfile, tmp_path, capsys):
    surface_like = tmp_path / "surface.h5"
    with h5py.File(surface_like, "w") as f:
        f.attrs["schema_version"] = 1
    one_vector = str(tmp_path / "H1.h5")
    assert main(["hessian", *TOY, "--checkpoint", str(ckpt_dir / "epoch_005.pt"), "--out", one_vector, "--top-k", "1",
                 "--store-vectors", "1", "--trace-probes", "0", "--slq-runs", "0", "--adaptive-samples", "0"]) == 0
    model = toys.make_model()
    for path, row, message in ((str(surface_like), 0, "not a Hessian file"), (hfile, 2, "rows 0..1"),
                               (one_vector, 0, "stores 1 eigenvector"), (str(tmp_path / "none.h5"), 0, "no such file")):
        with pytest.raises(UserError) as exc:
            hessian_directions(path, model, row)
        assert message in str(exc.value) and "\n" not in str(exc.value), str(exc.value)


def test_each_checkpoint_is_read_once(ckpt_dir, tmp_path, monkeypatch):
    """The job reads a checkpoint's weights and its "epoch" in one torch.load (it read the file twice before); the
    epochs stay as they were: 5 from the plain state_dict's file name, 40 from the other's own "epoch"."""
    reads = []
    real_load = torch.load

    def counting_load(f, *args, **kwargs):
        reads.append(str(f))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    out = str(tmp_path / "H.h5")
    assert main(["hessian", *TOY, "--checkpoint", str(ckpt_dir / "epoch_*.pt"), "--out", out, "--top-k", "1",
                 "--trace-probes", "0", "--slq-runs", "0", "--adaptive-samples", "0"]) == 0
    assert sorted(reads) == sorted(str(ckpt_dir / n) for n in ("epoch_005.pt", "epoch_100.pt")), reads
    with h5py.File(out, "r") as h:
        assert list(h["checkpoints/epoch"]) == [5.0, 40.0]
        assert json.loads(h["checkpoints/epoch"].attrs["epoch_source"]) == ["file name", "checkpoint"]


def test_one_drive_protocol_for_the_sharded_and_the_unsharded_operator():
    """Both operators serve products by the same protocol (`DrivenOperator`): neither writes its own command
    exchange (test_three_ranks_equal_one_process and tests/test_groups_hessian.py run it under MPI)."""
    from landscape_mpi.curvature.sharded_hessian import ShardedHessianOperator

    for cls in (hs.HessianOperator, ShardedHessianOperator):
        assert issubclass(cls, hs.DrivenOperator)
        for name in ("product", "serve", "stop_serving"):
            assert getattr(cls, name) is getattr(hs.DrivenOperator, name), (cls.__name__, name)


def test_no_convergence_ends_every_rank_with_one_line(ckpt_dir, tmp_path):
    """ARPACK fails on rank 0 while the other ranks serve products: every rank must end (exit 2), not hang."""
    p = run(mpiexec(3) + cli("hessian", *TOY, "--checkpoint", str(ckpt_dir / "epoch_005.pt"), "--out",
                             str(tmp_path / "H.h5"), "--maxiter", "1", "--tol", "0", "--trace-probes", "0",
                             "--slq-runs", "0", "--adaptive-samples", "0"), timeout=120, check_rc=2)
    errors = [line for line in p.stderr.splitlines() if line.startswith("landscape-mpi: error:")]
    assert len(errors) == 1 and "did not converge" in errors[0] and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "H.h5").exists()


# ---------------------------------------------------------------------------------------------- plots
def test_plots_of_a_hessian_file(hfile, tmp_path):
    from plotting.hessian import density_figure, draw_hessian, read_hessian, sharpness_figure

    written = draw_hessian(hfile, str(tmp_path), "png", 60)
    assert sorted(p.rsplit("_", 1)[-1] for p in written) == ["density.png", "sharpness.png"]
    h = read_hessian(hfile)
    fig = sharpness_figure(h)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 3 and titles[0] == "extreme eigenvalues", titles  # eigen, trace, adaptive panels
    assert titles[1].startswith("trace (Hutchinson") and titles[2].startswith("average adaptive rise ("), titles
    lmax = fig.axes[0].lines[0]
    assert lmax.get_label() == r"$\lambda_{max}$" and list(lmax.get_xdata()) == [5.0, 40.0]
    assert list(lmax.get_ydata()) == list(h["eigenvalues"][:, 0])
    fig = density_figure(h)
    assert fig.gca().get_yscale() == "log"
    # through landscape-plot, which hands Hessian files to plotting.hessian; neither torch, MPI nor a heavy layer of
    # landscape_mpi imported (only the torch-free packages plotting builds on: the files layer, the option
    # declarations of config and the numbers from files)
    code = ("import sys; from plotting.cli import main; assert main(sys.argv[1:]) == 0; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'mpi4py') or m.startswith('landscape_mpi.') "
            "and m.split('.')[1] not in ('files', 'config', 'numbers')]; assert not bad, bad")
    p = subprocess.run([sys.executable, "-c", code, hfile, "--out", str(tmp_path / "sub"), "--dpi", "50"],
                       env=env(), cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "sub" / "H_density.png").exists() and (tmp_path / "sub" / "H_sharpness.png").exists()


def test_extreme_pair_from_one_krylov_space_matches_separate_runs_and_the_spectrum():
    """`extreme_pair` (what the curvature maps use) against the separate 'LA' and 'SA' runs and numpy's eigvalsh.

    A Hessian-like spectrum (a bulk near zero, a few outliers at both ends) must take the joint path (ARPACK
    which='BE') and cost fewer products than the separate runs; spectra whose ends are dense clusters must fall
    back to the separate runs (more products than they alone take) and still be right."""
    rng = np.random.default_rng(7)
    n = 300
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    hessian_like = np.concatenate([rng.normal(0.0, 0.05, n - 12), -np.geomspace(0.2, 2.0, 4), np.geomspace(5, 60, 8)])
    clustered = (np.concatenate([np.linspace(-3.0, -0.5, 40), np.linspace(0.01, 50.0, n - 40)]),
                 -np.geomspace(0.1, 20.0, n), np.geomspace(1e-3, 5.0, n))
    for spectrum, joint in [(hessian_like, True)] + [(c, False) for c in clustered]:
        a = (q * spectrum) @ q.T
        exact = np.linalg.eigvalsh(a)
        matvec = a.__matmul__
        lmax, lmin, products = krylov.extreme_pair(matvec, n, 1e-8, 100000)
        top = krylov.extreme_eigenpairs(matvec, n, 1, "LA", 1e-8, 100000)
        bottom = krylov.extreme_eigenpairs(matvec, n, 1, "SA", 1e-8, 100000)
        assert close(lmax, exact[-1], 1e-6) and close(lmin, exact[0], 1e-6), (lmax, lmin, exact[[-1, 0]])
        separate = top.products + bottom.products
        assert (products < separate) if joint else (products > separate), (joint, products, separate)
    small = np.diag([-1.0, 2.0, 0.5])  # n <= PAIR_NCV: diagonalized densely
    assert krylov.extreme_pair(lambda v: small @ v, 3, 1e-6, 100)[:2] == (2.0, -1.0)
