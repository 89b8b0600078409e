"""The cheaper Hessian-vector products and the warm-started eigenvalue pairs, against independent oracles.

Oracles: the exact Hessian of the mean loss, built here by `torch.autograd.functional.hessian` over the flat
parameter vector (`torch.func.functional_call`, the whole set in one float64 batch, eval mode), and today's
product (``product="plain"``: forward + double backward per batch, which tests/test_hessian.py holds to the same
oracle). The model is the 244-parameter tanh + BatchNorm toy of tests/hessian_toys.py (BatchNorm in eval mode:
its running statistics are buffers, so the functional paths must carry them). Which path a product took is
checked by what it does (forward calls counted by a hook; the plain path made to fail), not by a flag alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import hessian_toys as toys
from hessian_toys import exact_hessian
from landscape_mpi.curvature import hessian as hs
from landscape_mpi.curvature import krylov
from landscape_mpi.data.datasets import EvalSet
from landscape_mpi.directions.base import PointSetter, random_direction


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def toy_set(dtype=torch.float64) -> EvalSet:
    x, y = toys.make_data("train").tensors
    return EvalSet("train", x.to(dtype), y)


def trained_toy(dtype=torch.float64) -> nn.Module:
    """The part-trained toy (hessian_toys.part_trained_model: eigenvalues of both signs), in `dtype`, eval mode."""
    return toys.part_trained_model().to(dtype).eval()




def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


class Forwards:
    """Counts the model's forward calls (a forward hook)."""

    def __init__(self, model: nn.Module) -> None:
        self.calls = 0
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1


def _fail(_v):
    raise AssertionError("the plain product was called")


# ---------------------------------------------------------------------------------------------- products
@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_fast_products_equal_the_plain_product_and_the_exact_hessian(loss):
    model, data = trained_toy(), toy_set()
    H = exact_hessian(model, data, loss)
    rng = np.random.default_rng(1)
    vs = [rng.standard_normal(H.shape[0]) for _ in range(3)]
    plain = hs.HessianOperator(model, data, loss, batch_size=1000, product="plain")
    assert plain.path == "plain" and plain.fallback is None
    expected = [plain.product(v) for v in vs]
    for v, e in zip(vs, expected):
        assert rel(e, H @ v) < 1e-10  # the oracle agrees with the exact Hessian itself
    for path in ("graph", "forward", "auto"):
        op = hs.HessianOperator(model, data, loss, batch_size=1000, product=path)
        assert op.path == ("graph" if path == "auto" else path) and op.fallback is None
        for v, e in zip([*vs, vs[0]], [*expected, expected[0]]):  # a repeated vector: the kept graph is reused
            out = op.product(v)
            assert rel(out, e) < 1e-12, (path, rel(out, e))
            assert rel(out, H @ v) < 1e-10, (path, rel(out, H @ v))
        assert op.products == 4


def test_forward_over_reverse_in_float32_and_over_uneven_batches():
    """float32 model: the same product to float32 accuracy; five uneven batches summed in float64."""
    model64, data64 = trained_toy(), toy_set()
    H = exact_hessian(model64, data64)
    v = np.random.default_rng(2).standard_normal(H.shape[0])
    op = hs.HessianOperator(model64, data64, "ce", batch_size=37, product="forward")  # 160 = 4 x 37 + 12
    assert rel(op.product(v), H @ v) < 1e-10 and op.path == "forward"
    op32 = hs.HessianOperator(trained_toy(torch.float32), toy_set(torch.float32), "ce", batch_size=37,
                              product="forward")
    plain32 = hs.HessianOperator(trained_toy(torch.float32), toy_set(torch.float32), "ce", batch_size=37,
                                 product="plain")
    graph32 = hs.HessianOperator(trained_toy(torch.float32), toy_set(torch.float32), "ce", batch_size=1000,
                                 product="graph")
    assert op32.path == "forward" and graph32.path == "graph"
    assert rel(op32.product(v), H @ v) < 1e-5 and rel(op32.product(v), plain32.product(v)) < 1e-5
    # the kept graph does plain's arithmetic (one batch in both): equal, not just to float32 accuracy
    one32 = hs.HessianOperator(trained_toy(torch.float32), toy_set(torch.float32), "ce", batch_size=1000,
                               product="plain")
    assert rel(graph32.product(v), one32.product(v)) < 1e-12


def test_the_kept_graph_does_no_forward_per_product():
    model, data = trained_toy(), toy_set()
    counter = Forwards(model)
    v = np.random.default_rng(3).standard_normal(hs.ParamSpace.of(model).n)
    plain = hs.HessianOperator(model, data, "ce", batch_size=1000, product="plain")
    for _ in range(3):
        plain.product(v)
    assert counter.calls == 3  # plain: one forward per product (one batch)
    counter.calls = 0
    op = hs.HessianOperator(model, data, "ce", batch_size=1000)  # the default: auto
    assert op.path == "graph"
    op.plain_product_sum = _fail
    for _ in range(5):
        op.product(v)
    assert counter.calls == 1 and op.graph_builds == 1  # one forward for the operator's lifetime
    op.release()
    op.product(v)
    assert counter.calls == 2 and op.graph_builds == 2
    counter.handle.remove()


def test_forward_over_reverse_takes_the_functional_path():
    model, data = trained_toy(), toy_set()
    op = hs.HessianOperator(model, data, "ce", batch_size=50, product="forward")
    op.plain_product_sum = _fail  # a product must not fall back silently
    H = exact_hessian(model, data)
    v = np.random.default_rng(4).standard_normal(H.shape[0])
    assert rel(op.product(v), H @ v) < 1e-10 and op.path == "forward" and op.fallback is None


def test_the_kept_graph_follows_weights_set_in_place():
    """A surface sets weights through `.data` (PointSetter), which autograd's version counters do not see: the
    graph is rebuilt when the weights differ from those it was built at, and the product is the new Hessian's."""
    model, data = trained_toy(), toy_set()
    state = {k: p.detach() for k, p in model.named_parameters()}
    setter = PointSetter(model, [random_direction(state, list(state), torch.Generator().manual_seed(5), "filter",
                                                  "biasbn")])
    op = hs.HessianOperator(model, data, "ce", batch_size=1000, product="graph")
    v = np.random.default_rng(5).standard_normal(op.n)
    before = op.product(v)
    setter.set([0.3])
    after = op.product(v)
    assert op.graph_builds == 2
    assert rel(after, exact_hessian(model, data) @ v) < 1e-10 and rel(after, before) > 1e-3
    setter.set([0.0])
    assert rel(op.product(v), before) < 1e-12 and op.graph_builds == 3


def test_fallbacks_to_the_plain_product_with_a_reason():
    model, data = trained_toy(), toy_set()
    H = exact_hessian(model, data)
    v = np.random.default_rng(6).standard_normal(H.shape[0])
    # the graph is kept for one batch only: 160 samples in batches of 50 take the plain path
    for path in ("auto", "graph"):
        op = hs.HessianOperator(model, data, "ce", batch_size=50, product=path)
        assert op.path == "plain" and "4 batches" in op.fallback
        assert rel(op.product(v), H @ v) < 1e-10
    with pytest.raises(ValueError, match="product='fast'"):
        hs.HessianOperator(model, data, "ce", product="fast")


class _OldStyleSquare(torch.autograd.Function):
    """x**2 as an autograd.Function without setup_context: double backward works, torch.func refuses it."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2.0 * x * grad


class _CustomFunctionModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = toys.make_model()

    def forward(self, x):
        return self.body(_OldStyleSquare.apply(x * 0.5))


def test_forward_over_reverse_falls_back_where_torch_func_cannot_go():
    torch.manual_seed(0)
    model = _CustomFunctionModel().double().eval()
    data = toy_set()
    op = hs.HessianOperator(model, data, "ce", batch_size=1000, product="forward")
    v = np.random.default_rng(7).standard_normal(op.n)
    x = data.inputs
    H = exact_hessian(nn.Sequential(model.body).double(), EvalSet("train", (x * 0.5) ** 2, data.labels))
    assert rel(op.product(v), H @ v) < 1e-10
    assert op.path == "plain" and op.fallback.startswith("forward-over-reverse failed")
    assert "setup_context" in op.fallback or "functorch" in op.fallback
    counter = Forwards(model)
    op.product(v)  # no second try: one forward (the plain path's)
    assert counter.calls == 1


# ------------------------------------------------------------------------------------------ warm starts
def _symmetric(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    values = np.concatenate([[9.0, -4.0], rng.uniform(-1.0, 2.0, n - 2)])
    return (q * values) @ q.T


def test_extreme_pair_vectors_are_eigenvectors_and_a_warm_start_takes_any_start():
    n = 120
    a = _symmetric(n, 0)
    ev, evec = np.linalg.eigh(a)
    cold = krylov.extreme_pair_vectors(lambda v: a @ v, n, 1e-8, 1000)
    assert abs(cold.lambda_max - 9.0) < 1e-7 and abs(cold.lambda_min + 4.0) < 1e-7
    assert cold.vectors.shape == (n, 2)
    for lam, u in ((cold.lambda_max, cold.top), (cold.lambda_min, cold.bottom)):
        assert abs(np.linalg.norm(u) - 1) < 1e-10 and np.linalg.norm(a @ u - lam * u) < 1e-6
    assert krylov.extreme_pair(lambda v: a @ v, n, 1e-8, 1000) == (cold.lambda_max, cold.lambda_min, cold.products)
    # started from the answer: one short Lanczos basis
    warm = krylov.extreme_pair_vectors(lambda v: a @ v, n, 1e-8, 1000, v0=cold.vectors)
    assert warm.products <= krylov.WARM_NCV + 1 < cold.products
    assert abs(warm.lambda_max - 9.0) < 1e-7 and abs(warm.lambda_min + 4.0) < 1e-7
    # bad starts still give the right ends: two interior eigenvectors, one vector, a vector of ones
    for v0 in (evec[:, [n // 2, n // 3]], evec[:, n // 2], np.ones(n)):
        bad = krylov.extreme_pair_vectors(lambda v: a @ v, n, 1e-8, 1000, v0=v0)
        assert abs(bad.lambda_max - 9.0) < 1e-7 and abs(bad.lambda_min + 4.0) < 1e-7
        assert abs(krylov.extreme_pair(lambda v: a @ v, n, 1e-8, 1000, v0=v0)[0] - 9.0) < 1e-7
    for v0 in (np.zeros(n), np.ones(n - 1), np.full(n, np.nan)):
        with pytest.raises(ValueError, match="start vector"):
            krylov.extreme_pair_vectors(lambda v: a @ v, n, 1e-8, 1000, v0=v0)
    top = krylov.extreme_eigenpairs(lambda v: a @ v, n, 1, "LA", 1e-8, 1000, v0=cold.top, ncv=4)
    assert abs(top.values[0] - 9.0) < 1e-7 and top.products <= 5
    # tiny operators: dense, with vectors too
    small = np.diag([2.0, -1.0, 0.5])
    pair = krylov.extreme_pair_vectors(lambda v: small @ v, 3, 1e-6, 100)
    assert (pair.lambda_max, pair.lambda_min) == (2.0, -1.0)
    assert np.allclose(np.abs(pair.vectors), [[1, 0], [0, 1], [0, 0]])


def test_warm_starts_along_a_line_of_points_save_products():
    """theta* + t d, t = -0.4 .. 0.4 (9 points, filter-normalized d) of the trained toy, ARPACK tolerance 1e-3:
    cold (seeded start) at every point vs each point started from the previous point's eigenvectors. Both
    against the exact Hessian's eigenvalues; the warm total is smaller."""
    tol = 1e-3
    model, data = trained_toy(), toy_set()
    state = {k: p.detach() for k, p in model.named_parameters()}
    setter = PointSetter(model, [random_direction(state, list(state), torch.Generator().manual_seed(3), "filter",
                                                  "biasbn")])
    cold_total, warm_total, prev = 0, 0, None
    try:
        for t in np.linspace(-0.4, 0.4, 9):
            setter.set([float(t)])
            ev = np.linalg.eigvalsh(exact_hessian(model, data))
            cold = hs.eig_pair(model, data, "ce", tol=tol, maxiter=1000)
            warm = hs.eig_pair(model, data, "ce", tol=tol, maxiter=1000, v0=None if prev is None else prev.vectors)
            scale = abs(ev[-1])
            for pair in (cold, warm):
                assert abs(pair.lambda_max - ev[-1]) <= tol * scale and abs(pair.lambda_min - ev[0]) <= tol * scale
            assert abs(warm.lambda_max - cold.lambda_max) <= tol * scale
            assert abs(warm.lambda_min - cold.lambda_min) <= tol * scale
            assert ev[-1] > 0 > ev[0]
            cold_total += cold.products
            warm_total += warm.products
            prev = warm
    finally:
        setter.set([0.0])
    # measured: 376 cold, 302 warm (WARM_NCV 12)
    assert warm_total < 0.9 * cold_total, (warm_total, cold_total)


def test_eig_extremes_keeps_its_signature_and_takes_a_start():
    model, data = trained_toy(), toy_set()
    pair = hs.eig_pair(model, data, "ce", tol=1e-6, maxiter=1000)
    three = hs.eig_extremes(model, data, "ce", tol=1e-6, maxiter=1000)
    assert three == (pair.lambda_max, pair.lambda_min, pair.products)
    op = hs.HessianOperator(model, data, "ce", product="plain")
    lmax, lmin, products = hs.operator_extremes(op, tol=1e-6, maxiter=1000, v0=pair.vectors)
    assert abs(lmax - pair.lambda_max) <= 1e-5 * abs(pair.lambda_max) and products < pair.products
    warm = hs.operator_pair(op, tol=1e-6, maxiter=1000, v0=pair.top)
    assert warm.vectors.shape == (op.n, 2) and abs(warm.lambda_min - pair.lambda_min) <= 1e-5 * abs(lmax)
