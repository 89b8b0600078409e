"""Hugging Face `transformers` models by import path (the optional `hf` extra; tests/hf_toys.py): a tiny GPT-2 on
`--task lm --dataset text` and a tiny BERT classifier on a dict-item token dataset, their centre values against
plain loops calling the models, one process against three ranks, `save_pretrained` folders as --checkpoint, and
filter normalization on transformer layers (docs/method.md#transformer-layers), gpt_tiny included.

Nothing is downloaded: the models are built from configs and HF_HUB_OFFLINE=1 is set for this process and every
command it starts. Without transformers the tests that need it skip (and a skip fails the suite unless
LANDSCAPE_MPI_ALLOW_SKIP=1); scripts/install.sh installs it.
"""

import hashlib
import importlib.util
import os

import h5py
import pytest
import torch
import torch.nn.functional as F

from conftest import assert_same_results, cli, mpiexec, one_line_error, run
from landscape_mpi.data.datasets import load_eval_set
from landscape_mpi.directions.base import PointSetter, filter_dims, random_direction, space_keys
from landscape_mpi.models import build_model, checkpoint_sha256, load_checkpoint, read_state_dict

os.environ["HF_HUB_OFFLINE"] = "1"  # also reaches the CLI runs (conftest.env copies os.environ)
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

HAVE_HF = importlib.util.find_spec("transformers") is not None
SAMPLES = 32


@pytest.fixture(scope="module")
def hf():
    """The hf_toys module; skips (a failure unless skips are allowed) without transformers."""
    if not HAVE_HF:
        pytest.skip("transformers is not installed (pip install 'landscape-mpi[hf]'; scripts/install.sh does)")
    import hf_toys

    return hf_toys


def _train(model, batches, steps, loss_of):
    """A few Adam steps, so that theta* is not the initialization."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        opt.zero_grad()
        loss_of(model, batches[step % len(batches)]).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def gpt2_ckpts(hf, tmp_path_factory):
    """A tiny GPT-2 trained 20 steps on the text data: (state_dict file, save_pretrained folder)."""
    out = tmp_path_factory.mktemp("gpt2")
    ids = load_eval_set("text", "train", None, 128, 1).inputs
    model = _train(hf.gpt2_tiny(), list(ids.split(32)), 20, lambda m, x: m(x, labels=x).loss)
    torch.save(model.state_dict(), out / "gpt2.pt")
    model.save_pretrained(out / "gpt2_hf")
    return str(out / "gpt2.pt"), str(out / "gpt2_hf")


@pytest.fixture(scope="module")
def bert_ckpts(hf, tmp_path_factory):
    """A tiny BERT classifier trained 20 steps: (state_dict file, save_pretrained folder)."""
    out = tmp_path_factory.mktemp("bert")
    ids, mask, labels = hf.token_arrays("train")
    model = _train(hf.bert_tiny(), [(ids, mask, labels)], 20,
                   lambda m, b: m(input_ids=b[0], attention_mask=b[1], labels=b[2]).loss)
    torch.save({"state_dict": model.state_dict()}, out / "bert.pt")
    model.save_pretrained(out / "bert_hf")
    return str(out / "bert.pt"), str(out / "bert_hf")


def surface(model, ckpt, out, *extra, n=None):
    prefix = mpiexec(n) if n else []
    return run(prefix + cli("surface", "--model", model, "--checkpoint", ckpt, "--out", str(out), "--device", "cpu",
                            *extra), timeout=300)


def results(path):
    with h5py.File(path, "r") as f:
        return {k: f["results"][k][()] for k in f["results"]}, dict(f.attrs)


# ------------------------------------------------------------------------------------------------ GPT-2, lm
def test_gpt2_lm_surface_one_and_three_ranks_and_centre(hf, gpt2_ckpts, tmp_path):
    ckpt, folder = gpt2_ckpts
    args = ("--task", "lm", "--dataset", "text", "--samples", str(SAMPLES), "--x=-1:1:3", "--y=-1:1:3")
    one, three, pretrained = tmp_path / "one.h5", tmp_path / "three.h5", tmp_path / "pretrained.h5"
    surface("hf_toys:gpt2_tiny", ckpt, one, *args)
    surface("hf_toys:gpt2_tiny", ckpt, three, *args, n=3)
    assert_same_results(one, three)
    # the save_pretrained folder (model.safetensors without the tied lm_head.weight) gives the same file
    surface("hf_toys:gpt2_tiny", folder, pretrained, *args)
    assert_same_results(one, pretrained)
    res, attrs = results(pretrained)
    weights = os.path.join(folder, "model.safetensors")
    assert attrs["checkpoint_sha256"] == hashlib.sha256(open(weights, "rb").read()).hexdigest()

    # the centre against a plain loop: HF's own loss (labels=input_ids: mean next-token cross-entropy)
    res, _ = results(one)
    assert res["done"].all()
    model = hf.gpt2_tiny()
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    model.eval()
    for split in ("train", "test"):
        ids = load_eval_set("text", split, None, SAMPLES, 0).inputs  # the CLI's subset (--seed 0)
        total, tokens, hits = 0.0, 0, 0
        with torch.no_grad():
            for batch in ids.split(8):
                out = model(input_ids=batch, labels=batch)
                n = batch.shape[0] * (batch.shape[1] - 1)  # every position but the last predicts a token
                total += float(out.loss) * n
                tokens += n
                hits += int((out.logits[:, :-1].argmax(-1) == batch[:, 1:]).sum())
        loss = total / tokens
        assert res[f"{split}_loss"][1, 1] == pytest.approx(loss, rel=1e-6), split
        assert res[f"{split}_token_acc"][1, 1] == pytest.approx(hits / tokens, abs=1e-12), split
        assert torch.isfinite(torch.as_tensor(res[f"{split}_loss"])).all()

    # the stored directions of the Conv1D projections are normalized per output COLUMN (dim 1)
    state = read_state_dict(ckpt)
    with h5py.File(one, "r") as f:
        for key in ("transformer.h.0.attn.c_attn.weight", "transformer.h.1.mlp.c_proj.weight"):
            d = torch.from_numpy(f["directions"]["x"][key][()])
            assert torch.allclose(d.norm(dim=0), state[key].norm(dim=0), rtol=1e-5)
        assert "lm_head.weight" not in f["directions"]["x"] or not f["directions"]["x"]["lm_head.weight"][()].any()


# ------------------------------------------------------------------------------------------ BERT, classify
def test_bert_classify_surface_centre(hf, bert_ckpts, tmp_path):
    ckpt, folder = bert_ckpts
    args = ("--task", "classify", "--dataset", "hf_toys:token_classes", "--x=-1:1:3")
    out, pretrained = tmp_path / "bert.h5", tmp_path / "bert_hf.h5"
    surface("hf_toys:bert_tiny", ckpt, out, *args)
    surface("hf_toys:bert_tiny", folder, pretrained, *args)
    assert_same_results(out, pretrained)
    res, _ = results(out)
    assert res["done"].all()
    model = hf.bert_tiny()
    model.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"])
    model.eval()
    for split in ("train", "test"):
        data = hf.token_classes(split)
        losses, hits = [], 0
        with torch.no_grad():
            for i in range(len(data)):  # one item at a time: independent of batching
                item = data[i]
                logits = model(input_ids=item["input_ids"][None], attention_mask=item["attention_mask"][None]).logits
                y = torch.tensor([item["labels"]])
                losses.append(float(F.cross_entropy(logits, y)))
                hits += int(logits.argmax(1).item() == item["labels"])
        assert res[f"{split}_loss"][1] == pytest.approx(sum(losses) / len(data), rel=1e-5), split
        assert res[f"{split}_acc"][1] == hits / len(data), split


# ----------------------------------------------------------------------------------------- checkpoints
def test_save_pretrained_folder_reads_like_the_state_dict(hf, gpt2_ckpts, bert_ckpts, tmp_path):
    for ckpt, folder, factory in ((*gpt2_ckpts, hf.gpt2_tiny), (*bert_ckpts, hf.bert_tiny)):
        a, b = factory(), factory()
        load_checkpoint(a, ckpt)
        load_checkpoint(b, folder)
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
        assert checkpoint_sha256(folder) == hashlib.sha256(
            open(os.path.join(folder, "model.safetensors"), "rb").read()).hexdigest()
    # pytorch_model.bin when there is no model.safetensors
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    torch.save(torch.load(gpt2_ckpts[0], weights_only=True), legacy / "pytorch_model.bin")
    m = hf.gpt2_tiny()
    load_checkpoint(m, str(legacy))
    assert checkpoint_sha256(str(legacy)) == checkpoint_sha256(str(legacy / "pytorch_model.bin"))
    assert m.lm_head.weight is m.transformer.wte.weight
    from landscape_mpi.hessian.run import resolve_checkpoints

    assert resolve_checkpoints(gpt2_ckpts[1]) == [gpt2_ckpts[1]]  # landscape-mpi hessian takes the folder too


def test_folder_without_weights_is_one_line(tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    p = run(cli("surface", "--model", "digits_mlp", "--checkpoint", str(empty), "--x=-1:1:3",
                "--out", str(tmp_path / "s.h5")), check_rc=None)
    one_line_error(p, "--checkpoint", str(empty), "model.safetensors", "pytorch_model.bin")
    assert not (tmp_path / "s.h5").exists()


# ------------------------------------------------------------------------ filter normalization, transformers
def _check_filter_normalized(model, expected_dims):
    """Per output filter, the direction's norm equals the weight's, computed independently: for a weight
    (out, in) the rows, for an embedding (vocab, dim) the token rows, for HF's Conv1D (in, out) the columns
    (it computes x @ W, the transpose of nn.Linear). Norms and biases (dim 1) get zero with --ignore biasbn;
    a tied tensor gets one direction."""
    torch.manual_seed(0)
    state = model.state_dict()
    keys = space_keys(model, "weights")
    dims = filter_dims(model)
    assert dims == expected_dims
    d = random_direction(state, keys, torch.Generator().manual_seed(7), "filter", "biasbn", dims)
    assert list(d) == keys
    modules = dict(model.named_modules())
    for k in keys:
        w = state[k]
        owner = modules[k.rsplit(".", 1)[0]]
        if w.dim() <= 1:
            assert not d[k].any(), k  # LayerNorm weights and biases, linear biases
            continue
        if type(owner).__name__ == "Conv1D":
            as_linear_w, as_linear_d = w.t(), d[k].t()  # nn.Linear's (out, in) layout
        else:
            assert isinstance(owner, (torch.nn.Linear, torch.nn.Embedding)), (k, type(owner))
            as_linear_w, as_linear_d = w, d[k]
        for j in range(as_linear_w.shape[0]):
            assert torch.allclose(as_linear_d[j].norm(), as_linear_w[j].norm(), rtol=1e-5), (k, j)
    # tied weights: the embedding and the output head are one tensor under two names, one direction
    tied = [k for k in state if k not in keys and state[k].is_floating_point()]
    assert len(tied) == 1
    for space in ("weights", "states"):
        assert tied[0] not in space_keys(model, space)
    setter = PointSetter(model, [d])
    setter.set([0.5])
    moved = model.state_dict()
    assert torch.equal(moved[tied[0]], moved[[k for k in keys if state[k].data_ptr() == state[tied[0]].data_ptr()][0]])
    setter.reset()
    return d


def test_filter_normalization_gpt_tiny():
    model = build_model("gpt_tiny")
    _check_filter_normalized(model, {})


def test_filter_normalization_hf_gpt2_conv1d(hf):
    model = hf.gpt2_tiny()
    conv = {f"transformer.h.{i}.{n}.weight": 1 for i in range(2) for n in ("attn.c_attn", "attn.c_proj",
                                                                           "mlp.c_fc", "mlp.c_proj")}
    d = _check_filter_normalized(model, conv)
    # the same random draws as without Conv1D handling, only scaled per column instead of per row
    rows = random_direction(model.state_dict(), space_keys(model, "weights"), torch.Generator().manual_seed(7),
                            "filter", "biasbn")
    key = "transformer.h.0.mlp.c_fc.weight"
    assert torch.allclose(rows[key].norm(dim=1), model.state_dict()[key].norm(dim=1), rtol=1e-5)
    ratio = d[key] / rows[key]
    assert torch.allclose(ratio, ratio[:1].expand_as(ratio) * ratio[:, :1] / ratio[0, 0], rtol=1e-4)
