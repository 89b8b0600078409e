"""The language model through every engine and analysis: gpt_tiny on the `text` data with --task lm.

Engines (landscape_mpi/engine/): folded, batched (vmap) and compiled (torch.compile) evaluate the lm task and
equal the eager oracle at the tolerances of tests/test_engine.py (loss within relative 1e-5, the same token
hits); the compiled path really compiles (dynamo's graph count). Analyses: the Hessian CLI, surface
--metrics eig, PCA directions of a training trajectory, and info/compare showing the task's metric names.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from landscape_mpi.data.datasets import EvalSet, load_eval_set
from landscape_mpi.directions.base import random_direction, space_keys
from landscape_mpi.engine import make_engine
from landscape_mpi.models import build_model
from landscape_mpi.tasks import LanguageModelTask, make_task

CPU = torch.device("cpu")
COORDS = np.array([[0.0, 0.0], [0.4, -0.3], [-0.6, 0.8]])
_SETUP: dict = {}


def setup() -> tuple:
    """gpt_tiny at its seed-0 initialization, two filter-normalized directions, 16 + 8 sequences of 64 tokens,
    and the eager oracle's values at COORDS (batch 8)."""
    if not _SETUP:
        torch.manual_seed(0)
        model = build_model("gpt_tiny").eval()
        g = torch.Generator().manual_seed(1)
        state = model.state_dict()
        dirs = [random_direction(state, space_keys(model, "weights"), g, "filter", "biasbn") for _ in range(2)]
        data = [load_eval_set("text", "train", None, 16, 0), load_eval_set("text", "test", None, 8, 0)]
        data = [EvalSet(s.name, s.inputs, s.labels) for s in data]
        want = make_engine(model, dirs, data, loss=make_task("lm"), device=CPU, kind="eager", batch_size=8,
                           log=lambda _: None).evaluate(COORDS)
        _SETUP.update(model=model, dirs=dirs, data=data, want=want)
    return _SETUP["model"], _SETUP["dirs"], _SETUP["data"], _SETUP["want"]


def assert_lm_matches(got: np.ndarray, want: np.ndarray, data: list[EvalSet], rtol: float = 1e-5) -> None:
    """Per split [loss, ppl, token_acc]: loss and ppl within rtol, the same number of token hits."""
    assert got.shape == want.shape == (len(COORDS), 3 * len(data))
    np.testing.assert_allclose(got[:, 0::3], want[:, 0::3], rtol=rtol, atol=0)
    np.testing.assert_allclose(got[:, 1::3], want[:, 1::3], rtol=2 * rtol, atol=0)
    tokens = np.array([len(s) * (s.inputs.shape[1] - 1) for s in data])
    np.testing.assert_array_equal(np.rint(got[:, 2::3] * tokens), np.rint(want[:, 2::3] * tokens))


def test_eager_oracle_moves_and_is_the_plain_next_token_loss():
    model, dirs, data, want = setup()
    ids = data[1].inputs
    with torch.no_grad():
        logits = model(ids).double()
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    assert want[0, 3] == pytest.approx(float(loss), rel=1e-6)
    assert want[1, 0] != want[0, 0] and want[2, 0] != want[0, 0]


@pytest.mark.parametrize("kind", ["folded", "batched", "auto"])
def test_fast_engines_match_eager_on_the_language_model(kind):
    model, dirs, data, want = setup()
    logs: list[str] = []
    engine = make_engine(model, dirs, data, loss=make_task("lm"), device=CPU, kind=kind, batch_size=8,
                         log=logs.append)
    assert engine.name == {"folded": "folded", "batched": "batched", "auto": "folded"}[kind], logs
    assert not any("eager" in line for line in logs), logs
    assert_lm_matches(engine.evaluate(COORDS), want, data)
    if kind == "batched":  # groups shorter than the group size, and one point per call
        assert_lm_matches(np.concatenate([engine.evaluate(COORDS[:2]), engine.evaluate(COORDS[2:])]), want, data)


def test_compiled_path_compiles_the_language_model_and_matches_eager():
    """kind="compiled" on gpt_tiny with the lm task: dynamo captures the traced transformer (inductor, C++ on CPU)
    and the values equal the eager oracle's; the graph is reused for the second pass (the same batch shape)."""
    from torch._dynamo.utils import counters

    model, dirs, data, want = setup()
    torch._dynamo.reset()
    counters.clear()
    logs: list[str] = []
    engine = make_engine(model, dirs, data, loss=make_task("lm"), device=CPU, kind="compiled", batch_size=8,
                         log=logs.append)
    assert "compiled" in engine.name, logs
    assert_lm_matches(engine.evaluate(COORDS), want, data)
    assert counters["stats"]["unique_graphs"] >= 1, dict(counters["stats"])
    assert_lm_matches(engine.evaluate(COORDS[::-1])[::-1], want, data)
    assert not any("torch.compile failed" in line or "eager" in line for line in logs), logs
    assert "compiled" in engine.name


class OwnForward(LanguageModelTask):
    """A task that calls the model its own way: the fast paths cannot use their traced forward for it."""

    name = "own"

    def forward(self, model, inputs):
        return super().forward(model, inputs)


def test_task_with_its_own_forward_is_evaluated_eagerly_with_a_note():
    model, dirs, data, want = setup()
    logs: list[str] = []
    engine = make_engine(model, dirs, data, loss=OwnForward(), device=CPU, kind="batched", batch_size=8,
                         log=logs.append)
    assert engine.name == "eager"
    assert any("task own calls the model its own way" in line and "eager" in line for line in logs), logs
    np.testing.assert_array_equal(engine.evaluate(COORDS[:1]), want[:1])


# ------------------------------------------------------------------------------------------------ analyses
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A few Adam steps of gpt_tiny on 48 sequences, a checkpoint every iteration (the PCA trajectory)."""
    from conftest import cli, run

    out = tmp_path_factory.mktemp("gpt") / "run"
    run(cli("train", "--model", "gpt_tiny", "--dataset", "text", "--samples", "48", "--epochs", "1",
            "--batch-size", "16", "--optimizer", "adam", "--lr", "3e-3", "--weight-decay", "0",
            "--save-every-iters", "1", "--device", "cpu", "--out-dir", str(out)), timeout=600)
    return out


# --threads 1: two pytest workers share 2 cores
GPT = ["--model", "gpt_tiny", "--dataset", "text", "--task", "lm", "--device", "cpu", "--threads", "1"]


def test_hessian_cli_on_the_language_model(trained, tmp_path):
    """landscape-mpi hessian --task lm end to end: its lambda_max equals the surface side's eig_extremes on the
    same 16 sequences (an independent ARPACK run on a separately built operator)."""
    import h5py

    from conftest import cli, run
    from landscape_mpi.curvature.hessian import eig_extremes

    out = tmp_path / "h.h5"
    run(cli("hessian", *GPT, "--checkpoint", str(trained / "final.pt"), "--samples", "16", "--seed", "0",
            "--top-k", "2", "--trace-probes", "0", "--slq-runs", "0", "--adaptive-samples", "0", "--out", str(out)),
        timeout=600)
    with h5py.File(out, "r") as f:
        top = f["eigen"]["values"][0]
        lam_min = float(f["eigen"]["lambda_min"][0])
        assert f.attrs["task"] == "lm" and f.attrs["loss"] == "lm"
    model = build_model("gpt_tiny")
    model.load_state_dict(torch.load(trained / "final.pt", weights_only=True)["state_dict"])
    data = load_eval_set("text", "train", None, 16, 0)
    lam_max, lam_min2, _ = eig_extremes(model.eval(), [data], make_task("lm"), tol=1e-6, maxiter=1000)
    assert top[0] >= top[1] and top[0] > 0 > lam_min
    assert top[0] == pytest.approx(lam_max, rel=1e-4)
    assert lam_min == pytest.approx(lam_min2, rel=1e-3)


def test_surface_eig_pca_and_sharpness_on_the_language_model(trained, tmp_path):
    """surface --metrics loss,eig --task lm on a 3-point line, PCA directions of the trajectory, and info/compare
    naming the lm metrics."""
    import h5py

    from conftest import cli, run

    ck = str(trained / "final.pt")
    eig = tmp_path / "eig.h5"
    run(cli("surface", *GPT, "--checkpoint", ck, "--samples", "8", "--splits", "train", "--x=-0.5:0.5:3",
            "--metrics", "loss,eig", "--out", str(eig)), timeout=600)
    with h5py.File(eig, "r") as f:
        r = {k: f["results"][k][()] for k in f["results"]}
    assert {"train_loss", "train_ppl", "train_token_acc"} <= set(r)
    assert r["eig_max"].shape == r["train_loss"].shape == (3,)
    assert np.all(np.isfinite(r["eig_max"])) and np.all(r["eig_max"] > 0) and np.all(r["eig_max"] > r["eig_min"])
    np.testing.assert_allclose(r["train_ppl"], np.exp(r["train_loss"]), rtol=1e-12)

    pca = tmp_path / "pca.h5"
    p = run(cli("surface", *GPT, "--checkpoint", ck, "--samples", "8", "--splits", "train", "--directions", "pca",
                "--trajectory", str(trained / "iter_*.pt"), "--x=-1:1:3", "--y=-1:1:3", "--engine", "batched",
                "--out", str(pca)), timeout=600)
    assert "eager" not in p.stderr, p.stderr
    with h5py.File(pca, "r") as f:
        loss = f["results"]["train_loss"][()]
    assert loss.shape == (3, 3) and np.all(np.isfinite(loss)) and len(np.unique(loss)) > 1

    info = run(cli("info", str(pca))).stdout
    assert "task lm" in info and "train_ppl" in info and "train_token_acc" in info and "sharpness of train_loss" in info
    assert "train_acc" not in info
    compare = run(cli("compare", "--metric", "train_ppl", str(pca), str(eig))).stdout
    assert compare.startswith("metric train_ppl") and str(pca) in compare and str(eig) in compare, compare
    p = run(cli("compare", "--metric", "train_acc", str(eig)), check_rc=2)
    assert "no metric 'train_acc'" in p.stderr and "train_loss, train_ppl, train_token_acc" in p.stderr, p.stderr
