"""Hugging Face models and data as users keep them, offline
(docs/usage.md#hugging-face-folders-and-token-data): ``--model hf:DIR`` (a
``save_pretrained`` folder, sharded or not, or a repo id in the local Hub cache), ``--dataset hf:PATH`` (a text
or JSONL file tokenised with the folder's tokenizer, a ``datasets`` ``save_to_disk`` folder).

Everything is built here: a tiny GPT-2 (tests/hf_toys.py) and a Llama, saved whole and sharded with a small
``max_shard_size``, and a tiny BPE tokenizer trained on a few lines. Oracles: the factory path (``--model
hf_toys:gpt2_tiny --checkpoint FILE``, tested in tests/test_hf.py), tensors compared with what safetensors and
hashlib read from the shards directly, the tokenizer's own ``tokenizers`` file with a plain loop over the model
for the centre values, and the peak memory of the one-process run (tests/peak_memory.py) for the sharded group.
Nothing is downloaded (HF_HUB_OFFLINE=1 here and in every command started).
"""

import hashlib
import json
import os
import shutil

import h5py
import numpy as np
import pytest
import torch

import peak_memory
from conftest import mpiexec, run

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

transformers = pytest.importorskip("transformers", reason="the hf extra (scripts/install.sh installs it)")

SEQ = 16
TEXT = ("The loss landscape of a network is the loss as a function of its weights. "
        "Filter normalization makes the landscapes of two networks comparable. ") * 12


def _main(*args):
    from landscape_mpi.cli import main

    return main(list(args))


def _results(path):
    with h5py.File(path, "r") as f:
        return {k: f["results"][k][()] for k in f["results"] if k not in ("rank", "seconds")}, dict(f.attrs)


def _tokenizer(folder):
    """A BPE tokenizer of 90 ids (within gpt2_tiny's 97) trained on TEXT, saved as save_pretrained does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=90, special_tokens=["<pad>", "<unk>"],
                                                        show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>").save_pretrained(folder)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """A tiny GPT-2 moved off its initialization: (state_dict file, whole folder, sharded folder); both folders
    hold the tokenizer."""
    import hf_toys

    out = tmp_path_factory.mktemp("hf")
    model = hf_toys.gpt2_tiny()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    torch.save(model.state_dict(), out / "gpt2.pt")
    model.save_pretrained(out / "whole")
    model.save_pretrained(out / "sharded", max_shard_size="40KB")
    _tokenizer(out / "whole")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(out / "whole" / name, out / "sharded")
    assert len([n for n in os.listdir(out / "sharded") if n.endswith(".safetensors")]) >= 3
    return str(out / "gpt2.pt"), str(out / "whole"), str(out / "sharded")


def _llama(width=32, layers=2, vocab=97):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    return LlamaForCausalLM(LlamaConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                                        max_position_embeddings=64, tie_word_embeddings=False))


# ---------------------------------------------------------------------------------------------- models
def test_sharded_hf_folder_gives_the_factory_paths_values(gpt2, tmp_path):
    ckpt, whole, sharded = gpt2
    args = ("--task", "lm", "--dataset", "text", "--samples", "8", "--splits", "test", "--x=-1:1:3", "--device",
            "cpu")
    assert _main("surface", "--model", "hf_toys:gpt2_tiny", "--checkpoint", ckpt, *args,
                 "--out", str(tmp_path / "factory.h5")) == 0
    assert _main("surface", "--model", f"hf:{sharded}", *args, "--out", str(tmp_path / "sharded.h5")) == 0
    ref, _ = _results(tmp_path / "factory.h5")
    got, attrs = _results(tmp_path / "sharded.h5")
    assert ref["done"].all() and got.keys() == ref.keys()
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    assert attrs["checkpoint"] == os.path.abspath(sharded)  # the folder's own weights, no --checkpoint given
    # a sharded folder's identity: its shards' bytes, in the order of their names
    shards = sorted(n for n in os.listdir(sharded) if n.endswith(".safetensors"))
    h = hashlib.sha256()
    for n in shards:
        h.update(open(os.path.join(sharded, n), "rb").read())
    assert _results(tmp_path / "sharded.h5")[1]["checkpoint_sha256"] == h.hexdigest()


def test_llama_sharded_reads_tensor_by_tensor_like_the_model(tmp_path):
    """Sharded == unsharded == the model's own tensors; each tensor a view of its shard's mapping (no copy);
    hf:DIR builds LlamaForCausalLM for lm and LlamaForSequenceClassification for classify."""
    from safetensors import safe_open

    from landscape_mpi.models import build_model, parameters_on_meta, read_state_dict

    model = _llama()
    model.save_pretrained(tmp_path / "whole")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(index.values())) >= 3
    state = model.state_dict()
    a, b = read_state_dict(str(tmp_path / "whole")), read_state_dict(str(tmp_path / "sharded"))
    assert list(b) == list(index) and set(b) == set(state)
    for k in state:
        assert torch.equal(a[k], state[k]) and torch.equal(b[k], state[k]), k
        with safe_open(str(tmp_path / "sharded" / index[k]), "pt") as f:
            assert torch.equal(f.get_slice(k)[0:1], b[k][0:1])  # the rows safetensors reads itself
    built = build_model(f"hf:{tmp_path / 'sharded'}", "lm")
    assert type(built).__name__ == "LlamaForCausalLM"
    assert type(build_model(f"hf:{tmp_path / 'sharded'}", "classify")).__name__ == "LlamaForSequenceClassification"
    with parameters_on_meta():
        meta = build_model(f"hf:{tmp_path / 'sharded'}", "lm")
    assert {p.device.type for p in meta.parameters()} == {"meta"}
    assert not built.training and not built.config.use_cache


def test_hessian_vector_products_of_an_hf_folder_model(gpt2):
    """A forward with grad enabled differentiates twice (the math attention kernel; the fused CPU kernel has no
    second derivative): the Hessian-vector product equals that of the same weights with eager attention."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from landscape_mpi.models import build_model, load_checkpoint

    _, whole, _ = gpt2
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(0))

    def hvp(model):
        params = [p for p in model.parameters() if p.requires_grad]
        v = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) for i, p in enumerate(params)]
        grads = torch.autograd.grad(model(input_ids=ids, labels=ids).loss, params, create_graph=True)
        return torch.autograd.grad(sum((g * w).sum() for g, w in zip(grads, v)), params)

    ours = build_model(f"hf:{whole}", "lm")
    load_checkpoint(ours, whole)
    config = AutoConfig.from_pretrained(whole, local_files_only=True)
    eager = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    load_checkpoint(eager, whole)
    assert ours.config._attn_implementation != "eager"  # the fast kernels stay the model's choice
    for a, b in zip(hvp(ours), hvp(eager)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # and a forward without grad is the fused kernel's, as before
        torch.testing.assert_close(ours(ids).logits, eager(ids).logits, rtol=1e-5, atol=1e-5)


def test_hub_cache_entry_by_repo_id(gpt2, tmp_path, monkeypatch):
    """hf:org/name is looked up in the local Hub cache (refs/main -> snapshots/<commit>), never downloaded."""
    from landscape_mpi.config.errors import UserError
    from landscape_mpi.config.hub import local_path
    from landscape_mpi.models import build_model, load_checkpoint

    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = cache / "models--tiny-org--gpt2-tiny" / "snapshots" / commit
    shutil.copytree(gpt2[1], snapshot)
    (cache / "models--tiny-org--gpt2-tiny" / "refs").mkdir()
    (cache / "models--tiny-org--gpt2-tiny" / "refs" / "main").write_text(commit)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert os.path.samefile(local_path("hf:tiny-org/gpt2-tiny", "--model"), snapshot)
    model = build_model("hf:tiny-org/gpt2-tiny", "lm")
    load_checkpoint(model, local_path("hf:tiny-org/gpt2-tiny", "--model"))
    want = torch.load(gpt2[0], weights_only=True)
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items() if k in want)
    with pytest.raises(UserError, match="no model 'tiny-org/absent' in the local Hub cache"):
        local_path("hf:tiny-org/absent", "--model")


# ------------------------------------------------------------------------------------------------ data
def _blocks(folder, text, seq):
    """Token blocks of `text` by the tokenizer's own file (the tokenizers library, not transformers)."""
    from tokenizers import Tokenizer

    ids = torch.tensor(Tokenizer.from_file(os.path.join(folder, "tokenizer.json")).encode(
        text, add_special_tokens=False).ids)
    n = len(ids) // seq
    return ids[:n * seq].reshape(n, seq)


def _centre_losses(ckpt, batches):
    """Mean next-token cross-entropy of gpt2_tiny at theta* over each batch of token ids (HF's own loss)."""
    import hf_toys

    model = hf_toys.gpt2_tiny()
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    model.eval()
    with torch.no_grad():
        return [float(model(input_ids=ids, labels=ids).loss) for ids in batches]


def test_text_file_tokenised_with_the_folders_tokenizer_and_its_identity(gpt2, tmp_path, capsys):
    ckpt, whole, _ = gpt2
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    out = tmp_path / "text.h5"
    args = ["surface", "--model", f"hf:{whole}", "--task", "lm", "--dataset", f"hf:{corpus}", "--splits", "test",
            "--x=-1:1:3", "--out", str(out), "--device", "cpu"]
    assert _main(*args, "--seq-len", str(SEQ)) == 0
    res, attrs = _results(out)
    ids = _blocks(whole, TEXT, SEQ)
    assert res["test_loss"][1] == pytest.approx(_centre_losses(ckpt, [ids])[0], rel=1e-5)
    with h5py.File(out, "r") as f:
        stored = json.loads(f.attrs["config"]) if "config" in f.attrs else None
    assert stored is None or (stored["seq_len"] == SEQ and stored["tokenizer"] == whole)
    # a datasets save_to_disk folder holding the same token ids gives the same values
    datasets = pytest.importorskip("datasets", reason="the hf extra")
    saved = tmp_path / "saved"
    datasets.DatasetDict({"test": datasets.Dataset.from_dict({"input_ids": ids.tolist()})}).save_to_disk(saved)
    assert _main("surface", "--model", f"hf:{whole}", "--task", "lm", "--dataset", f"hf:{saved}", "--splits",
                 "test", "--x=-1:1:3", "--out", str(tmp_path / "saved.h5"), "--device", "cpu") == 0
    np.testing.assert_array_equal(_results(tmp_path / "saved.h5")[0]["test_loss"], res["test_loss"])
    # a resume with another tokenisation is refused, the file untouched
    capsys.readouterr()
    before = out.read_bytes()
    assert _main(*args, "--seq-len", str(SEQ // 2)) == 2
    assert "seq_len" in capsys.readouterr().err
    other = tmp_path / "other_tok"
    shutil.copytree(whole, other)
    tok = json.loads((other / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    token = {i: t for t, i in vocab.items()}
    a, b = token[int(ids[0, 0])], token[int(ids[0, 1])]  # two tokens of the text
    assert a != b
    vocab[a], vocab[b] = vocab[b], vocab[a]  # their ids swapped: another tokenisation of the same text
    (other / "tokenizer.json").write_text(json.dumps(tok))
    assert _main(*args, "--seq-len", str(SEQ), "--tokenizer", str(other)) == 2
    assert "test data: the evaluation samples differ" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_jsonl_records_padded_with_a_mask(gpt2, tmp_path):
    ckpt, whole, _ = gpt2
    lines = [s.strip() + "." for s in TEXT.split(".")[:6] if s.strip()]
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    out = tmp_path / "jsonl.h5"
    assert _main("surface", "--model", f"hf:{whole}", "--task", "lm", "--dataset", f"hf:{tmp_path}/{{split}}.jsonl",
                 "--splits", "test", "--seq-len", "12", "--x=-1:1:3", "--out", str(out), "--device", "cpu") == 0
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(whole, "tokenizer.json"))
    rows = [tok.encode(t, add_special_tokens=False).ids[:12] for t in lines]
    assert any(len(r) < 12 for r in rows)  # some records are padded
    # each record alone, unpadded (HF's loss: the mean over its len - 1 predicted tokens), pooled over tokens
    losses = _centre_losses(ckpt, [torch.tensor([r]) for r in rows])
    count = sum(len(r) - 1 for r in rows)
    want = sum(loss * (len(r) - 1) for loss, r in zip(losses, rows)) / count
    assert _results(out)[0]["test_loss"][1] == pytest.approx(want, rel=1e-5)


def test_jsonl_with_labels_on_a_sequence_classifier(gpt2, tmp_path):
    """--task classify builds LlamaForSequenceClassification from the folder; JSONL labels are its classes."""
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(5)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=97, max_position_embeddings=64, num_labels=3,
                         pad_token_id=0)  # the tokenizer's <pad>: the classifier reads each record's last real token
    folder = tmp_path / "classifier"
    LlamaForSequenceClassification(config).save_pretrained(folder)
    _tokenizer(folder)
    lines = [s.strip() for s in TEXT.split(".")[:5] if s.strip()]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps({"text": t, "label": i % 3}) + "\n"
                                                 for i, t in enumerate(lines)))
    out = tmp_path / "classify.h5"
    assert _main("surface", "--model", f"hf:{folder}", "--task", "classify", "--dataset",
                 f"hf:{tmp_path / 'test.jsonl'}", "--splits", "test", "--seq-len", "24", "--x=-1:1:3", "--out",
                 str(out), "--device", "cpu") == 0
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    model = LlamaForSequenceClassification.from_pretrained(folder, local_files_only=True).eval()
    losses, hits = [], 0
    with torch.no_grad():
        for i, t in enumerate(lines):  # one record at a time, unpadded
            logits = model(input_ids=torch.tensor([tok.encode(t, add_special_tokens=False).ids[:24]])).logits
            losses.append(float(F.cross_entropy(logits, torch.tensor([i % 3]))))
            hits += int(logits.argmax(1).item() == i % 3)
    res = _results(out)[0]
    assert res["test_loss"][1] == pytest.approx(sum(losses) / len(lines), rel=1e-5)
    assert res["test_acc"][1] == hits / len(lines)


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("case", ["missing shard", "no weights", "no tokenizer", "not cached"])
def test_bad_folders_are_one_line(gpt2, tmp_path, capsys, case):
    _, whole, sharded = gpt2
    folder = tmp_path / "m"
    dataset = ["--dataset", "text"]
    if case == "missing shard":
        shutil.copytree(sharded, folder)
        lost = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))[1]
        (folder / lost).unlink()
        needles = ["--checkpoint", lost, "is missing"]
    elif case == "no weights":
        folder.mkdir()
        shutil.copy(os.path.join(whole, "config.json"), folder)
        needles = ["a folder without model weights", "model.safetensors", "model.safetensors.index.json"]
    elif case == "no tokenizer":
        folder.mkdir()
        for n in ("config.json", "model.safetensors"):
            shutil.copy(os.path.join(whole, n), folder)
        (tmp_path / "c.txt").write_text(TEXT)
        dataset = ["--dataset", f"hf:{tmp_path / 'c.txt'}", "--splits", "test"]
        needles = ["holds no tokenizer", "--tokenizer"]
    else:
        folder = "not-an-org/not-cached"
        needles = ["--model hf:not-an-org/not-cached", "local Hub cache", "nothing is downloaded"]
    out = tmp_path / "s.h5"
    capsys.readouterr()
    assert _main("surface", "--model", f"hf:{folder}", "--task", "lm", *dataset, "--x=-1:1:3", "--out",
                 str(out), "--device", "cpu") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    for n in needles:
        assert n in lines[0], lines[0]
    assert not out.exists()


# ---------------------------------------------------------------------------------------- sharded group
def test_no_rank_of_a_sharded_group_holds_the_whole_sharded_folder(tmp_path):
    """A 50 MB Llama in 10 MB shards, G = 2 (one launch): each member's peak anonymous memory stays far below
    the one-process run's (which holds theta*, its copy and two directions), and the values agree."""
    model = _llama(width=512, layers=2, vocab=4096)
    model_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    model.save_pretrained(tmp_path / "llama", max_shard_size="10MB")
    del model
    base = ["surface", "--model", f"hf:{tmp_path / 'llama'}", "--task", "lm", "--dataset", "text", "--samples", "2",
            "--splits", "test", "--x=-1:1:2", "--y=-1:1:2", "--threads", "1", "--device", "cpu"]
    folders = {name: tmp_path / f"peaks-{name}" for name in ("one", "shards")}
    for folder in folders.values():
        folder.mkdir()
    run(peak_memory.command(*base, "--out", str(tmp_path / "one.h5")), timeout=600, PEAKS_DIR=folders["one"])
    shards = run([*mpiexec(2), *peak_memory.command(*base, "--out", str(tmp_path / "g2.h5"), "--ranks-per-point",
                                                    "2")], timeout=600, PEAKS_DIR=folders["shards"])
    assert "each rank builds only its shards" in shards.stderr, shards.stderr
    (ref,), got = peak_memory.peaks(folders["one"]), peak_memory.peaks(folders["shards"])
    print(f"peaks (MB): one process {ref}; G=2 shards {got}; model {model_mb:.0f}")
    assert len(got) == 2
    assert all(ref["anon"] - g["anon"] > 2 * model_mb for g in got), (ref, got, model_mb)
    a, _ = _results(tmp_path / "one.h5")
    b, _ = _results(tmp_path / "g2.h5")
    np.testing.assert_allclose(b["test_loss"], a["test_loss"], rtol=1e-5)


def test_hessian_of_a_folder_by_its_path_alone(gpt2, tmp_path, capsys):
    """`hessian --model hf:DIR` needs no --checkpoint (the folder's weights, the task's Auto class): the same file
    numbers as with --checkpoint DIR given; a zoo model without --checkpoint is one line, exit 2."""
    _, whole, _ = gpt2
    args = ["hessian", "--model", f"hf:{whole}", "--task", "lm", "--dataset", "text", "--samples", "4", "--splits",
            "train", "--top-k", "1", "--trace-probes", "0", "--slq-runs", "0", "--adaptive-samples", "0",
            "--tol", "0.1"]
    assert _main(*args, "--out", str(tmp_path / "alone.h5")) == 0
    assert _main(*args, "--checkpoint", whole, "--out", str(tmp_path / "given.h5")) == 0
    with h5py.File(tmp_path / "alone.h5", "r") as a, h5py.File(tmp_path / "given.h5", "r") as b:
        assert a["eigen/values"][()] == pytest.approx(b["eigen/values"][()], rel=1e-6)
        assert a["checkpoints/loss"][()] == pytest.approx(b["checkpoints/loss"][()], rel=1e-12)
        assert json.loads(a.attrs["config"])["checkpoint"] == whole
    capsys.readouterr()
    assert _main("hessian", "--model", "digits_mlp", "--out", str(tmp_path / "no.h5")) == 2
    assert not (tmp_path / "no.h5").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--checkpoint is required" in err[0], err
