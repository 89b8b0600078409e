"""The built-in language model `gpt_tiny` and the `text` data: the corpus found offline and deterministic, the
character tokenizer, the fixed split, causality and tied weights, and `landscape-mpi train` on the next-token
loss."""

import math

import torch

from conftest import cli, run
from landscape_mpi.data import text
from landscape_mpi.data.datasets import load_eval_set
from landscape_mpi.models import INPUT_SHAPES, ZOO, build_model
from landscape_mpi.models.gpt import TEXT_VOCAB_SIZE


def test_corpus_is_offline_and_deterministic():
    first, second = text.corpus_sha256(), text.corpus_sha256()
    assert first == second
    corpus = text.corpus()
    assert 300_000 < len(corpus) < 2_000_000  # pydoc's topics: about 465,000 characters in CPython 3.11
    assert 'The "assert" statement' in corpus  # the first topic in name order
    ids = text.encode(corpus)
    assert float((ids == text.UNKNOWN).float().mean()) < 0.01  # nearly all of it is in the vocabulary


def test_tokenizer_round_trip():
    assert text.VOCAB_SIZE == TEXT_VOCAB_SIZE == 97  # the model's head has one output per token id
    sample = "def f(x):\n    return {'a': x ~ 1} # 100% `ok`?\n"
    ids = text.encode(sample)
    assert ids.dtype == torch.int64 and ids.shape == (len(sample),)
    assert int(ids.min()) >= 1 and int(ids.max()) < text.VOCAB_SIZE
    assert text.decode(ids) == sample
    assert text.encode(text.CHARACTERS).tolist() == list(range(1, text.VOCAB_SIZE))  # sorted, fixed ids
    assert text.encode("a\u2019b\tc").tolist() == [text.encode("a")[0], 0, text.encode("b")[0], 0, text.encode("c")[0]]
    assert text.decode([0]) == "\ufffd"


def test_dataset_shapes_and_fixed_split():
    ids = text.encode(text.corpus())
    cut = int(len(ids) * text.TRAIN_FRACTION)
    for split, part in (("train", ids[:cut]), ("test", ids[cut:])):
        data = load_eval_set("text", split, None, None, 0)
        n = len(part) // text.BLOCK_SIZE
        assert data.inputs.shape == (n, text.BLOCK_SIZE) and data.inputs.dtype == torch.int64
        assert torch.equal(data.labels, data.inputs)
        assert torch.equal(data.inputs.flatten(), part[:n * text.BLOCK_SIZE])  # consecutive, non-overlapping
    assert ZOO["gpt_tiny"][1] == "text" and INPUT_SHAPES["text"] == (text.BLOCK_SIZE,)
    small = load_eval_set("text", "train", None, 10, 0)
    assert small.inputs.shape == (10, text.BLOCK_SIZE)
    assert torch.equal(small.inputs, load_eval_set("text", "train", None, 10, 0).inputs)


def test_model_is_causal_and_deterministic():
    torch.manual_seed(0)
    model = build_model("gpt_tiny").eval()
    torch.manual_seed(0)
    again = build_model("gpt_tiny")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert 50_000 < sum(p.numel() for p in model.parameters()) < 200_000
    ids = load_eval_set("text", "test", None, None, 0).inputs[:4]
    with torch.no_grad():
        logits = model(ids)
        assert logits.shape == (4, text.BLOCK_SIZE, text.VOCAB_SIZE) and logits.dtype == torch.float32
        for t in (0, 17, text.BLOCK_SIZE - 1):
            changed = ids.clone()
            changed[:, t] = (changed[:, t] + 1) % text.VOCAB_SIZE
            out = model(changed)
            assert torch.equal(out[:, :t], logits[:, :t])  # nothing before t sees token t
            assert not torch.allclose(out[:, t], logits[:, t])  # position t does
        assert model(ids[:, :10]).shape == (4, 10, text.VOCAB_SIZE)  # shorter sequences too


def test_output_head_is_tied_to_the_token_embedding():
    model = build_model("gpt_tiny")
    assert model.head.weight is model.tok.weight
    names = [n for n, _ in model.named_parameters()]
    assert "tok.weight" in names and "head.weight" not in names  # one Parameter, listed once
    state = model.state_dict()
    assert torch.equal(state["tok.weight"], state["head.weight"])
    assert state["tok.weight"].data_ptr() == state["head.weight"].data_ptr()


def test_train_reduces_the_next_token_loss(tmp_path):
    out = tmp_path / "gpt"
    p = run(cli("train", "--model", "gpt_tiny", "--dataset", "text", "--samples", "512", "--epochs", "2",
                "--batch-size", "32", "--optimizer", "adam", "--lr", "3e-3", "--weight-decay", "0",
                "--device", "cpu", "--out-dir", str(out)), timeout=120)
    assert "epoch   2/2" in p.stderr
    start = torch.load(out / "epoch_000.pt", weights_only=True)
    final = torch.load(out / "final.pt", weights_only=True)
    assert abs(start["train_loss"] - math.log(text.VOCAB_SIZE)) < 0.3  # near the uniform guess at the start
    assert final["train_loss"] < start["train_loss"] - 0.8
    assert final["test_loss"] < math.log(text.VOCAB_SIZE) - 0.8
    assert final["test_acc"] > start["test_acc"] and 0 <= final["test_acc"] <= 1
    assert "tok.weight" in final["state_dict"] and "head.weight" in final["state_dict"]


def test_demo_of_the_language_model(tmp_path):
    """`landscape-mpi demo --task lm`, the second embedded default (made small here: 5 x 5 points, 1 epoch,
    32 sequences per split): gpt_tiny trained on the shipped corpus, its surface with the lm task's metrics."""
    import json

    import h5py
    import numpy as np

    out_dir = tmp_path / "demo"
    p = run(cli("demo", "--task", "lm", "--out-dir", str(out_dir), "--points", "5", "--epochs", "1",
                "--samples", "32"), timeout=600)
    assert "training gpt_tiny on the text dataset" in p.stderr and "--task lm" in p.stderr
    path = out_dir / "surface-lm.h5"
    info = json.loads(run(cli("info", str(path), "--json")).stdout)
    assert info["complete"] and info["total"] == 25 and info["config"]["task"] == "lm"
    with h5py.File(path, "r") as f:
        loss, ppl = f["results/test_loss"][()], f["results/test_ppl"][()]
        assert set(f["results"]) >= {"train_loss", "train_ppl", "train_token_acc", "test_token_acc"}
    np.testing.assert_allclose(ppl, np.exp(loss), rtol=1e-12)
    assert loss[2, 2] < np.log(97)  # trained: the centre predicts better than a uniform guess over 97 tokens
