"""Tasks (landscape_mpi/tasks): lm, regress and a user task, against independent computations written here.

Expected values never come from the task code: plain loops over the toy models of task_toys.py.
"""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
import torch

import task_toys
from conftest import cli, one_line_error, run

LM = ["--model", "task_toys:make_lm", "--dataset", "task_toys:token_data", "--task", "lm"]
REG = ["--model", "task_toys:make_regressor", "--dataset", "task_toys:regress_data"]


def save(model, path) -> str:
    torch.save(model.state_dict(), path)
    return str(path)


def results(path) -> dict:
    with h5py.File(path, "r") as f:
        return {k: f["results"][k][()] for k in f["results"]}, json.loads(f.attrs["config"])


def plain_lm(model, ids, mask=None, labels=None) -> tuple[float, float]:
    """(mean next-token cross-entropy, token accuracy) in float64, one sequence and one position at a time."""
    total, hits, count = 0.0, 0, 0
    with torch.no_grad():
        for i in range(len(ids)):
            logits = model(ids[i:i + 1]).double()[0]
            for t in range(ids.shape[1] - 1):
                target = int((labels if labels is not None else ids)[i, t + 1])
                if target == -100 or (mask is not None and int(mask[i, t + 1]) == 0):
                    continue
                total += float(-torch.log_softmax(logits[t], dim=0)[target])
                hits += int(int(logits[t].argmax()) == target)
                count += 1
    return total / count, hits / count


# ------------------------------------------------------------------------------------------------- lm
def test_lm_surface_centre_equals_a_plain_loop(tmp_path):
    model = task_toys.make_lm()
    ck = save(model, tmp_path / "lm.pt")
    out = tmp_path / "lm.h5"
    p = run(cli("surface", *LM, "--checkpoint", ck, "--x=-1:1:3", "--y=-1:1:3", "--engine", "batched",
                "--out", str(out)))
    assert "engine batched" in p.stderr and "eager" not in p.stderr, p.stderr
    r, config = results(out)
    assert config["task"] == "lm" and "train_acc" not in r
    model.eval()
    for split in ("train", "test"):
        loss, acc = plain_lm(model, task_toys.tokens(split))
        assert r[f"{split}_loss"][1, 1] == pytest.approx(loss, rel=1e-6)
        assert r[f"{split}_ppl"][1, 1] == pytest.approx(math.exp(loss), rel=1e-6)
        assert r[f"{split}_ppl"][1, 1] == math.exp(r[f"{split}_loss"][1, 1])
        assert r[f"{split}_token_acc"][1, 1] == pytest.approx(acc, abs=1e-12)
    # the corners moved the weights: another loss
    assert r["train_loss"][0, 0] != r["train_loss"][1, 1]
    info = run(cli("info", str(out))).stdout
    assert "train_ppl" in info and "train_token_acc" in info


def test_lm_masked_tokens_are_excluded():
    from landscape_mpi.data.datasets import load_eval_set
    from landscape_mpi.engine.evaluate import evaluate
    from landscape_mpi.tasks import make_task

    model = task_toys.make_lm_output().eval()  # returns an object with .logits; takes attention_mask
    data = load_eval_set("task_toys:dict_data", "train", None, None, 0)
    assert isinstance(data.inputs, dict) and set(data.inputs) == {"input_ids", "attention_mask"}
    ids, mask, labels = task_toys.masked("train")
    got = evaluate(model, data, make_task("lm"), batch_size=7)
    loss, acc = plain_lm(task_toys.make_lm().eval(), ids, mask, labels)
    unmasked, _ = plain_lm(task_toys.make_lm().eval(), ids)
    assert got[0] == pytest.approx(loss, rel=1e-6) and got[0] != pytest.approx(unmasked, rel=1e-6)
    assert got[1] == pytest.approx(math.exp(loss), rel=1e-6) and got[2] == pytest.approx(acc, abs=1e-12)
    # one input key (input_ids) and labels: the inputs are a plain tensor, the model gets it positionally
    data = load_eval_set("task_toys:labels_only_dict_data", "train", None, 5, 0)
    assert isinstance(data.inputs, torch.Tensor) and data.labels.shape == data.inputs.shape and len(data) == 5
    sel = torch.from_numpy(data.indices)
    got = evaluate(task_toys.make_lm().eval(), data, make_task("lm"))
    assert got[0] == pytest.approx(plain_lm(task_toys.make_lm().eval(), ids[sel], None, labels[sel])[0], rel=1e-6)


def test_single_tensor_items_and_fingerprint():
    from landscape_mpi.data.datasets import load_eval_set
    from landscape_mpi.surface.inputs import data_fingerprint

    data = load_eval_set("task_toys:token_data", "test", None, None, 0)
    assert data.labels is None and data.inputs.dtype == torch.int64
    assert torch.equal(data.inputs, task_toys.tokens("test")) and len(data) == 20
    a = load_eval_set("task_toys:dict_data", "train", None, None, 0)
    b = load_eval_set("task_toys:dict_data", "train", None, None, 0)
    assert data_fingerprint(a) == data_fingerprint(b) != data_fingerprint(load_eval_set(
        "task_toys:labels_only_dict_data", "train", None, None, 0))


def test_lm_with_a_classifier_is_one_line_and_no_file(tmp_path):
    import landscape_toys

    ck = save(landscape_toys.make_model(), tmp_path / "c.pt")
    p = run(cli("surface", "--model", "landscape_toys:make_model", "--dataset", "landscape_toys:make_data",
                "--task", "lm", "--checkpoint", ck, "--x=-1:1:3", "--out", str(tmp_path / "s.h5")), check_rc=None)
    one_line_error(p, "--task lm", "expected token ids")
    assert not (tmp_path / "s.h5").exists()
    # classify (the default) on an LM: names what the model returns
    ck = save(task_toys.make_lm(), tmp_path / "lm.pt")
    p = run(cli("surface", "--model", "task_toys:make_lm", "--dataset", "task_toys:labels_only_dict_data",
                "--checkpoint", ck, "--x=-1:1:3", "--out", str(tmp_path / "s.h5")), check_rc=None)
    one_line_error(p, "--model task_toys:make_lm", "expected logits of shape (batch, classes)")
    assert not (tmp_path / "s.h5").exists()
    p = run(cli("surface", *LM, "--loss", "mse", "--checkpoint", ck, "--x=-1:1:3", "--out", str(tmp_path / "s.h5")),
            check_rc=None)
    one_line_error(p, "--loss mse is an option of --task classify")


# ------------------------------------------------------------------------------------------- regress
def plain_regress(model, x, y) -> tuple[float, float]:
    with torch.no_grad():
        pred = np.concatenate([model(x[i:i + 1]).double().numpy() for i in range(len(x))])
    t = y.double().numpy()
    sse = float(((pred - t) ** 2).sum())
    return sse / t.size, 1.0 - sse / float(((t - t.mean()) ** 2).sum())


def test_regress_user_task_and_builtin_equal_a_plain_computation(tmp_path):
    model = task_toys.make_regressor().eval()
    ck = save(model, tmp_path / "r.pt")
    user, builtin = tmp_path / "user.h5", tmp_path / "builtin.h5"
    run(cli("surface", *REG, "--task", "task_toys:squared_error", "--checkpoint", ck, "--x=-1:1:3",
            "--out", str(user)))
    run(cli("surface", *REG, "--task", "regress", "--checkpoint", ck, "--x=-1:1:3", "--engine", "eager",
            "--out", str(builtin)))
    for path in (user, builtin):
        r, _ = results(path)
        assert set(r) >= {"train_loss", "train_r2", "test_loss", "test_r2"} and "train_acc" not in r
        for split in ("train", "test"):
            loss, r2 = plain_regress(model, *task_toys.regress_arrays(split))
            assert r[f"{split}_loss"][1] == pytest.approx(loss, rel=1e-6)
            assert r[f"{split}_r2"][1] == pytest.approx(r2, rel=1e-6, abs=1e-9)
    # the resume identity refuses another --task on the same file
    p = run(cli("surface", *REG, "--task", "regress", "--checkpoint", ck, "--x=-1:1:3", "--out", str(user)),
            check_rc=None)
    one_line_error(p, "task: file has 'task_toys:squared_error', command asks 'regress'")
    # dict items {"features": x, "labels": y}: the same numbers as (x, y) pairs
    from landscape_mpi.data.datasets import load_eval_set

    a = load_eval_set("task_toys:regress_dict_data", "train", None, None, 0)
    b = load_eval_set("task_toys:regress_data", "train", None, None, 0)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels) and a.labels.dtype == torch.float32


def test_classify_dict_items_and_unreadable_items(tmp_path):
    import landscape_toys
    from landscape_mpi.config.errors import UserError
    from landscape_mpi.data.datasets import collate, load_eval_set

    ds = landscape_toys.make_data("train")
    x, y = collate([{"pixel_values": ds[i][0], "labels": ds[i][1]} for i in range(len(ds))])
    ref = load_eval_set("landscape_toys:make_data", "train", None, None, 0)
    assert torch.equal(x, ref.inputs) and torch.equal(y, ref.labels) and y.dtype == torch.int64
    with pytest.raises(ValueError):
        collate([torch.randn(3)])
    with pytest.raises(UserError, match="--dataset task_toys:bad"):
        import task_toys as t

        t.bad = lambda split: [{"x": torch.randn(2), "labels": torch.randn(2)}, {"y": 1}]
        load_eval_set("task_toys:bad", "train", None, None, 0)
    # classify on real-valued labels: one line naming what was found
    ck = save(task_toys.make_regressor(), tmp_path / "c.pt")
    p = run(cli("surface", *REG, "--checkpoint", ck, "--x=-1:1:3", "--out", str(tmp_path / "s.h5")), check_rc=None)
    one_line_error(p, "labels float32 (2, 2), expected integer class labels (B,)")
    assert not (tmp_path / "s.h5").exists()


def test_stored_config_has_task_only_when_not_classify():
    from landscape_mpi.config.errors import UserError
    from landscape_mpi.config.surface import SurfaceConfig, config_diff

    c = SurfaceConfig(model="m", checkpoint="c")
    assert "task" not in json.loads(c.to_json()) and c.metrics[:2] == ["train_loss", "train_acc"]
    lm = SurfaceConfig(model="m", checkpoint="c", task="lm")
    assert json.loads(lm.to_json())["task"] == "lm"
    assert lm.metrics == ["train_loss", "train_ppl", "train_token_acc", "test_loss", "test_ppl", "test_token_acc"]
    assert config_diff(json.loads(c.to_json()), lm.to_dict()) == ["task: file has 'classify', command asks 'lm'"]
    assert config_diff(json.loads(c.to_json()), c.to_dict()) == []
    with pytest.raises(UserError, match="--loss mse is an option of --task classify"):
        SurfaceConfig(model="m", checkpoint="c", task="regress", loss="mse")
    with pytest.raises(UserError, match="--task nope"):
        SurfaceConfig(model="m", checkpoint="c", task="nope")


# ------------------------------------------------------------------------------------------- engines
def test_fast_engines_evaluate_lm_as_eager_does():
    from landscape_mpi.data.datasets import EvalSet
    from landscape_mpi.engine import make_engine
    from landscape_mpi.tasks import make_task

    model = task_toys.make_lm().eval()
    data = [EvalSet("train", task_toys.tokens("train"), None)]
    direction = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    for kind in ("auto", "eager", "folded", "batched"):  # compiled: tests/test_lm_engines.py
        notes = []
        engine = make_engine(model, [direction], data, loss=make_task("lm"), device=torch.device("cpu"), kind=kind,
                             log=notes.append)
        assert engine.name == {"auto": "batched"}.get(kind, kind) and not any("using the eager" in n for n in notes)
        got = engine.evaluate(np.array([[0.0], [0.5]]))
        assert got.shape == (2, 3)
        loss, acc = plain_lm(model, data[0].inputs)
        assert got[0, 0] == pytest.approx(loss, rel=1e-6) and got[0, 2] == pytest.approx(acc, abs=1e-12)
        assert got[1, 0] != pytest.approx(loss, rel=1e-3)


# ------------------------------------------------------------------------------------------- Hessian
def test_lm_hessian_top_eigenvalue_equals_an_exact_hessian():
    from torch.func import functional_call

    from landscape_mpi.curvature.hessian import eig_extremes
    from landscape_mpi.data.datasets import EvalSet
    from landscape_mpi.tasks import make_task

    torch.manual_seed(3)
    model = task_toys.TinyLM(vocab=4, width=3).double().eval()
    ids = torch.randint(0, 4, (12, 5), generator=torch.Generator().manual_seed(9))
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])

    def mean_loss(v):
        params, start = {}, 0
        for k, s in zip(names, shapes):
            n = int(np.prod(s)) if len(s) else 1
            params[k] = v[start:start + n].reshape(s)
            start += n
        logits = functional_call(model, params, (ids,))
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        return -logp.gather(2, ids[:, 1:, None]).sum() / (ids.shape[0] * (ids.shape[1] - 1))

    exact = torch.linalg.eigvalsh(torch.autograd.functional.hessian(mean_loss, flat))
    top, bottom, _ = eig_extremes(model, [EvalSet("train", ids, None)], make_task("lm"), tol=1e-8, maxiter=1000,
                                  batch_size=5)
    assert top == pytest.approx(float(exact[-1]), rel=1e-3)
    assert bottom == pytest.approx(float(exact[0]), rel=1e-3, abs=1e-6)


# ------------------------------------------------------------------------------- the built-in gpt_tiny
def test_gpt_tiny_on_text_centre_equals_a_plain_loop(tmp_path):
    text = pytest.importorskip("landscape_mpi.data.text")
    from landscape_mpi.models import build_model

    torch.manual_seed(0)
    model = build_model("gpt_tiny").eval()
    ck = save(model, tmp_path / "gpt.pt")
    out = tmp_path / "gpt.h5"
    run(cli("surface", "--model", "gpt_tiny", "--dataset", "text", "--task", "lm", "--checkpoint", ck,
            "--samples", "6", "--splits", "train", "--x=-1:1:3", "--y=-1:1:3", "--out", str(out)))
    r, _ = results(out)
    with h5py.File(out, "r") as f:
        indices = f["data"]["train_indices"][()]
    ids = text.text_split("train")[0][torch.from_numpy(indices)]
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(ids)):  # one sequence at a time, float64 cross-entropy per position
            logits = model(ids[i:i + 1])
            logits = (logits.logits if hasattr(logits, "logits") else logits).double()[0]
            for t in range(ids.shape[1] - 1):
                total += float(-torch.log_softmax(logits[t], dim=0)[int(ids[i, t + 1])])
                count += 1
    assert r["train_loss"][1, 1] == pytest.approx(total / count, rel=1e-6)
    assert r["train_ppl"][1, 1] == math.exp(r["train_loss"][1, 1])
    assert r["train_ppl"][1, 1] == pytest.approx(math.exp(total / count), rel=1e-5)
