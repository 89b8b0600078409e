"""The GGN, Fisher and empirical Fisher operators (landscape_mpi/curvature/operators.py) against independent
computations.

Oracles: the explicit matrices, J (the Jacobian of the model's output, `torch.func.jacrev` over the flat parameter
vector) and H_out (the exact float64 Hessian of the task's loss sum in output space, `torch.func.hessian`), so
GGN = J^T H_out J / N; the empirical Fisher from per-unit gradients (jacrev of the per-unit losses, written here
with torch's own functions); curvlinops (PyPI curvlinops-for-pytorch), product by product. Tiny models: a tanh MLP
(tests/hessian_toys.py, BatchNorm in eval mode), a CNN with BatchNorm in eval mode, a one-block TinyGPT.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian, jacrev

import hessian_toys as toys
from conftest import cli, mpiexec, run
from landscape_mpi.cli import main
from landscape_mpi.curvature.hessian import HessianOperator
from landscape_mpi.curvature.operators import CurvatureOperator, make_operator
from landscape_mpi.data.datasets import EvalSet
from landscape_mpi.models.gpt import TinyGPT
from landscape_mpi.tasks import ClassifyTask, LanguageModelTask, RegressTask


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------- oracles
def _flat(model):
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    theta = torch.cat([p.detach().reshape(-1) for p in params]).double()

    def unflatten(t):
        out, i = {}, 0
        for k, p in zip(names, params):
            out[k] = t[i:i + p.numel()].reshape(p.shape)
            i += p.numel()
        return out
    return theta, unflatten


def explicit_ggn(model, task, x, y) -> np.ndarray:
    """J^T H_out J / count with J = jacrev of the output and H_out = torch.func.hessian of the loss sum in the
    output (both float64, whole batch)."""
    theta, unflatten = _flat(model)

    def output(t):
        return functional_call(model, unflatten(t), (x,))
    out = output(theta).detach()
    J = jacrev(output)(theta).reshape(out.numel(), -1)
    H = hessian(lambda o: task.loss_sum(o, x, y))(out).reshape(out.numel(), out.numel())
    return (J.T @ H @ J).numpy() / task.count(x, y)


def explicit_empirical_fisher(model, per_unit_losses, x, y, count) -> np.ndarray:
    """sum over units of g g^T / count, g the gradient of one unit's loss (`per_unit_losses(out, y)` -> (U,))."""
    theta, unflatten = _flat(model)
    G = jacrev(lambda t: per_unit_losses(functional_call(model, unflatten(t), (x,)), y))(theta)
    return (G.T @ G).numpy() / count


def dense(op) -> np.ndarray:
    return np.stack([op.product(e) for e in np.eye(op.n)], axis=1)


def toy():
    x, y = toys.make_data("train").tensors
    return toys.part_trained_model().double().eval(), x.double(), y


class BNConvNet(nn.Module):
    """conv (BatchNorm, tanh) -> linear: 3 classes from 1x6x6 images."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.tanh(self.bn(self.conv(x))).flatten(1))


def bn_cnn():
    torch.manual_seed(3)
    model = BNConvNet().double()
    x = torch.randn(24, 1, 6, 6, dtype=torch.float64)
    model.train()
    with torch.no_grad():  # running statistics that are not the defaults
        model(x * 1.3 + 0.2)
    return model.eval(), x, torch.randint(0, 3, (24,), generator=torch.Generator().manual_seed(4))


def tiny_gpt():
    torch.manual_seed(5)
    model = TinyGPT(vocab_size=11, block_size=6, layers=1, heads=1, width=8).double().eval()
    ids = torch.randint(0, 11, (4, 6), generator=torch.Generator().manual_seed(6))
    return model, ids


# -------------------------------------------------------------------------------------- entry by entry
def test_ggn_and_empirical_fisher_of_the_mlp_entry_by_entry():
    """classify ce, BatchNorm in eval mode, two batches: the dense operators (forward-mode J v) equal the explicit
    matrices entry by entry; the double-vjp path (reverse) gives the same products."""
    model, x, y = toy()
    x, y = x[:60], y[:60]
    data = EvalSet("train", x, y)
    task = ClassifyTask("ce")
    op = CurvatureOperator(model, data, task, "ggn", batch_size=32)
    ggn = dense(op)
    assert op.path == "forward" and op.fallback is None
    want = explicit_ggn(model, task, x, y)
    np.testing.assert_allclose(ggn, want, rtol=0, atol=1e-12 * np.abs(want).max())
    ef = dense(CurvatureOperator(model, data, task, "empirical-fisher", batch_size=32))
    want_ef = explicit_empirical_fisher(model, lambda o, yy: F.cross_entropy(o, yy, reduction="none"), x, y, len(y))
    np.testing.assert_allclose(ef, want_ef, rtol=0, atol=1e-12 * np.abs(want_ef).max())
    assert np.abs(ef - ggn).max() > 0.05 * np.abs(ggn).max()  # two different matrices
    v = np.random.default_rng(3).standard_normal(op.n)
    for curvature, matrix in (("ggn", want), ("empirical-fisher", want_ef)):
        rev = CurvatureOperator(model, data, task, curvature, batch_size=32, jvp="reverse")
        np.testing.assert_allclose(rev.product(v), matrix @ v, rtol=0, atol=1e-12 * np.abs(matrix @ v).max())
        assert rev.path == "reverse"


def test_cnn_with_batchnorm_in_eval_mode():
    model, x, y = bn_cnn()
    task = ClassifyTask("ce")
    op = CurvatureOperator(model, EvalSet("train", x, y), task, "ggn", batch_size=16)
    got = dense(op)
    want = explicit_ggn(model, task, x, y)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())
    assert model.bn.running_mean.abs().sum() > 0 and not model.training  # the statistics used were the buffers
    assert np.linalg.eigvalsh(got).min() > -1e-12 * np.abs(want).max()  # the GGN of ce is PSD


def test_classify_mse_ggn_is_the_exact_output_space_hessian():
    """--loss mse has no closed form here: the GGN uses the exact Hessian of the loss in the logits."""
    model, x, y = toy()
    task = ClassifyTask("mse")
    op = CurvatureOperator(model, EvalSet("train", x[:40], y[:40]), task, "ggn", batch_size=16)
    want = explicit_ggn(model, task, x[:40], y[:40])
    assert not op.psd and np.linalg.eigvalsh(want).min() < -1e-6 * np.abs(want).max()  # not PSD here
    rng = np.random.default_rng(4)
    for _ in range(3):
        v = rng.standard_normal(op.n)
        np.testing.assert_allclose(op.product(v), want @ v, rtol=0, atol=1e-12 * np.abs(want @ v).max())


def test_tiny_gpt_ggn_and_empirical_fisher_per_position():
    """lm: softmax cross-entropy per predicted position (the last position predicts nothing), products against
    the explicit matrices on random vectors."""
    model, ids = tiny_gpt()
    task = LanguageModelTask()
    data = EvalSet("train", ids, None)
    want = explicit_ggn(model, task, ids, None)
    count = ids.shape[0] * (ids.shape[1] - 1)

    def per_position(out, _):
        return F.cross_entropy(out[:, :-1].reshape(-1, out.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
    want_ef = explicit_empirical_fisher(model, per_position, ids, None, count)
    rng = np.random.default_rng(0)
    for curvature, matrix in (("ggn", want), ("empirical-fisher", want_ef)):
        op = CurvatureOperator(model, data, task, curvature, batch_size=3)
        for _ in range(3):
            v = rng.standard_normal(op.n)
            np.testing.assert_allclose(op.product(v), matrix @ v, rtol=0, atol=1e-11 * np.abs(matrix @ v).max())
        assert op.path == "forward", op.fallback


def test_ggn_equals_the_hessian_for_a_linear_model_with_squared_loss():
    """regress, y = W x + b: the loss is quadratic, so GGN = Hessian = 2 [x 1]^T [x 1] (kron I) / count."""
    torch.manual_seed(7)
    model = nn.Linear(3, 2).double()
    x = torch.randn(30, 3, dtype=torch.float64)
    y = torch.randn(30, 2, dtype=torch.float64)
    data = EvalSet("train", x, y)
    ggn = dense(CurvatureOperator(model, data, RegressTask(), "ggn", batch_size=7))
    hess = dense(HessianOperator(model, data, RegressTask(), batch_size=7))
    xa = torch.cat([x, torch.ones(30, 1, dtype=torch.float64)], 1)
    gram = 2 * (xa.T @ xa).numpy() / y.numel()
    # parameter order: weight (2 x 3, row-major), bias (2)
    want = np.zeros((8, 8))
    for i in range(2):
        idx = [3 * i, 3 * i + 1, 3 * i + 2, 6 + i]
        want[np.ix_(idx, idx)] = gram
    np.testing.assert_allclose(ggn, want, rtol=0, atol=1e-13)
    np.testing.assert_allclose(hess, want, rtol=0, atol=1e-13)


# ------------------------------------------------------------------------------------------ curvlinops
def test_products_equal_curvlinops():
    """GGNLinearOperator and EFLinearOperator (reduction 'sum', divided by the count here), product by product,
    on the MLP (cross-entropy) and a regressor (squared error)."""
    from curvlinops import EFLinearOperator, GGNLinearOperator

    model, x, y = toy()
    params = [p for p in model.parameters() if p.requires_grad]
    rng = np.random.default_rng(1)
    reg = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    xr = torch.randn(20, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    yr = torch.randn(20, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    cases = [(model, nn.CrossEntropyLoss(reduction="sum"), [(x[:80], y[:80]), (x[80:], y[80:])],
              ClassifyTask("ce"), EvalSet("train", x, y), len(y), 80),
             (reg, nn.MSELoss(reduction="sum"), [(xr, yr)], RegressTask(), EvalSet("train", xr, yr), yr.numel(), 20)]
    for net, loss, batches, task, data, count, bs in cases:
        params = [p for p in net.parameters() if p.requires_grad]
        for curvature, cls in (("ggn", GGNLinearOperator), ("empirical-fisher", EFLinearOperator)):
            theirs = cls(net, loss, params, batches, check_deterministic=False)
            ours = CurvatureOperator(net, data, task, curvature, batch_size=bs)
            for _ in range(2):
                v = rng.standard_normal(ours.n)
                want = np.asarray(theirs @ torch.from_numpy(v)).ravel() / count
                np.testing.assert_allclose(ours.product(v), want, rtol=1e-10, atol=1e-13)


# --------------------------------------------------------------------------------------- the MC Fisher
def test_fisher_expectation_is_the_ggn_for_cross_entropy():
    """E over sampled labels of the Fisher = GGN (cross-entropy). Tolerance: 4 Monte Carlo standard errors of
    the mean over 40 seeds, entry of F v by entry; negative control: the empirical Fisher's product is rejected
    by the same test."""
    model, x, y = toy()
    data = EvalSet("train", x, y)
    task = ClassifyTask("ce")
    v = np.random.default_rng(2).standard_normal(HessianOperator(model, data, task).n)
    ggn_v = explicit_ggn(model, task, x, y) @ v
    draws = np.stack([CurvatureOperator(model, data, task, "fisher", 160, fisher_seed=s).product(v)
                      for s in range(40)])
    mean, se = draws.mean(0), draws.std(0, ddof=1) / np.sqrt(len(draws))
    floor = 1e-3 * np.abs(ggn_v).max()
    assert np.all(np.abs(mean - ggn_v) <= 4 * se + floor)
    ef_v = CurvatureOperator(model, data, task, "empirical-fisher", 160).product(v)
    assert np.mean(np.abs(ef_v - ggn_v) > 4 * se + floor) > 0.5  # the control fails the same test
    # one seed is one fixed matrix: the same product twice
    op = CurvatureOperator(model, data, task, "fisher", 50, fisher_seed=3)
    np.testing.assert_array_equal(op.product(v), op.product(v))


# ------------------------------------------------------------------------------------ the command
def test_command_ggn_eigenvalues_and_trace(tmp_path):
    """landscape-mpi hessian --curvature ggn: top eigenvalues and the trace against the explicit matrix; lambda_min
    of the PSD operator is not asked (NaN, no products)."""
    model = toys.part_trained_model().eval()
    ckpt = tmp_path / "m.pt"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "G.h5"
    rc = main(["hessian", "--model", "hessian_toys:make_model", "--dataset", "hessian_toys:make_data",
               "--checkpoint", str(ckpt), "--out", str(out), "--curvature", "ggn", "--precision", "float64",
               "--top-k", "3", "--tol", "1e-10", "--trace-probes", "40", "--slq-runs", "0",
               "--adaptive-samples", "0", "--batch-size", "64", "--threads", "1"])
    assert rc == 0
    x, y = toys.make_data("train").tensors
    want = np.linalg.eigvalsh(explicit_ggn(model.double(), ClassifyTask("ce"), x.double(), y))
    with h5py.File(out, "r") as f:
        assert f.attrs["curvature"] == "ggn"
        np.testing.assert_allclose(f["eigen/values"][0], want[::-1][:3], rtol=1e-8)
        assert np.isnan(f["eigen/lambda_min"][0]) and f["eigen/products_min"][0] == 0
        assert abs(want[0]) < 1e-12  # what it would be: a zero (many-fold)
        assert abs(f["trace/estimate"][0] - want.sum()) < 4 * f["trace/stderr"][0]


@pytest.mark.parametrize("args, needle", [
    (["--curvature", "fisher"], "--fisher-seed"),
    (["--curvature", "fisher", "--fisher-seed", "1", "--loss", "mse"], "--loss mse"),
    (["--curvature", "fisher", "--fisher-seed", "1", "--task", "task_toys:squared_error"], "no predictive"),
])
def test_bad_input_one_line_exit_2_no_file(tmp_path, capsys, args, needle):
    ckpt = tmp_path / "m.pt"
    torch.save(toys.make_model().state_dict(), ckpt)
    out = tmp_path / "bad.h5"
    rc = main(["hessian", "--model", "hessian_toys:make_model", "--dataset", "hessian_toys:make_data",
               "--checkpoint", str(ckpt), "--out", str(out), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0], err
    assert not out.exists()


def test_three_ranks_equal_one_process(tmp_path):
    """The Fisher (sampled labels: the uniforms follow the global sample order) and its eigenvalues on 3 ranks
    equal one process to the solver's tolerance."""
    model = toys.part_trained_model().eval()
    ckpt = tmp_path / "m.pt"
    torch.save(model.state_dict(), ckpt)
    args = ["--model", "hessian_toys:make_model", "--dataset", "hessian_toys:make_data", "--checkpoint", str(ckpt),
            "--curvature", "fisher", "--fisher-seed", "4", "--precision", "float64", "--top-k", "1",
            "--tol", "1e-8", "--trace-probes", "4", "--slq-runs", "0", "--adaptive-samples", "0",
            "--batch-size", "32"]
    assert main(["hessian", *args, "--out", str(tmp_path / "one.h5")]) == 0
    run(mpiexec(3) + cli("hessian", *args, "--out", str(tmp_path / "three.h5")))
    with h5py.File(tmp_path / "one.h5", "r") as a, h5py.File(tmp_path / "three.h5", "r") as b:
        assert b.attrs["ranks"] == 3
        np.testing.assert_allclose(b["eigen/values"][0], a["eigen/values"][0], rtol=1e-8)
        np.testing.assert_allclose(b["trace/samples"][0], a["trace/samples"][0], rtol=1e-9)


def test_make_operator_keeps_the_hessian():
    model, x, y = toy()
    op = make_operator(model, EvalSet("train", x, y), ClassifyTask("ce"), "hessian", 50)
    assert type(op) is HessianOperator


# ------------------------------------------------------------------------------------------ per block
def test_blocks_equal_the_explicit_blocks_and_differ_from_the_whole(tmp_path):
    """--blocks module: each module's top eigenvalue equals the largest eigenvalue of its explicit diagonal block
    of the GGN, the traces sum to the whole trace's estimate (the same probes) and are within 4 standard errors of
    the blocks' exact traces; the file conforms to the schema. The block caveat: here every block's top is far
    below the whole matrix's lambda_max (order one), so block spectra are not the matrix's."""
    from landscape_mpi.files.conformance import schema_problems

    model = toys.part_trained_model().eval()
    ckpt = tmp_path / "m.pt"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "B.h5"
    assert main(["hessian", "--model", "hessian_toys:make_model", "--dataset", "hessian_toys:make_data",
                 "--checkpoint", str(ckpt), "--out", str(out), "--curvature", "ggn", "--blocks", "module",
                 "--precision", "float64", "--top-k", "1", "--tol", "1e-10", "--trace-probes", "40",
                 "--slq-runs", "0", "--adaptive-samples", "0", "--batch-size", "200", "--threads", "1"]) == 0
    x, y = toys.make_data("train").tensors
    G = explicit_ggn(model.double(), ClassifyTask("ce"), x.double(), y)
    sizes = {"0": 8 * 16 + 16, "1": 32, "3": 16 * 4 + 4}  # Linear(8, 16), BatchNorm1d(16), Linear(16, 4)
    with h5py.File(out, "r") as f:
        assert list(f["blocks/name"].asstr()[()]) == list(sizes) and list(f["blocks/size"][()]) == list(sizes.values())
        tops, traces, se = f["blocks/top"][0], f["blocks/trace"][0], f["blocks/trace_stderr"][0]
        whole = f["eigen/values"][0, 0]
        assert abs(traces.sum() - f["trace/estimate"][0]) < 1e-9 * abs(f["trace/estimate"][0])
    starts = np.cumsum([0, *sizes.values()])
    for b, (lo, hi) in enumerate(zip(starts[:-1], starts[1:])):
        block = G[lo:hi, lo:hi]
        assert abs(tops[b] - np.linalg.eigvalsh(block)[-1]) < 1e-8 * whole
        assert abs(traces[b] - np.trace(block)) < 4 * se[b] + 1e-12
    assert abs(whole - np.linalg.eigvalsh(G)[-1]) < 1e-8 * whole
    assert tops.max() < 0.8 * whole  # the caveat, on this model
    assert schema_problems(str(out)) == []
    from plotting.hessian import draw_hessian

    figures = draw_hessian(str(out), str(tmp_path / "fig"))
    assert any(p.endswith("B_blocks.png") for p in figures)


def test_block_maps():
    from landscape_mpi.config.errors import UserError
    from landscape_mpi.curvature.blocks import parameter_blocks

    names, sizes = ["w", "enc.0.weight", "enc.0.bias", "head.weight"], [2, 3, 1, 4]
    tensor = parameter_blocks(names, sizes, "tensor")
    assert [b.name for b in tensor] == names and [list(b.index) for b in tensor][1] == [2, 3, 4]
    module = parameter_blocks(names, sizes, "module")
    assert [(b.name, list(b.index)) for b in module] == [("(root)", [0, 1]), ("enc.0", [2, 3, 4, 5]),
                                                          ("head", [6, 7, 8, 9])]
    with pytest.raises(UserError, match="--blocks tensor"):
        parameter_blocks([], [], "tensor")
