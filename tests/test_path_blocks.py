"""`path --kind layers --blocks transformer-block | permutation-group`: the blocks against hand-written lists (gpt_tiny,
Hugging Face GPT-2 and Llama, a ResNet, an MLP, a CNN), every tensor of the direction space in exactly one block, a
model without repeated layers refused, and a layers path against a plain loop that rebuilds the model with one block
interpolated and evaluates it."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import torch
import torch.nn.functional as F

from conftest import one_line_error
from landscape_mpi.alignment import find_groups
from landscape_mpi.cli import main
from landscape_mpi.data.datasets import load_eval_set
from landscape_mpi.directions.base import space_keys
from landscape_mpi.directions.paths import blocks_of

os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, os.path.dirname(__file__))
SAMPLES = 120


def build(name: str) -> torch.nn.Module:
    from landscape_mpi.models import build_model

    return build_model(name)


def blocks(model: torch.nn.Module, by: str, example=None) -> dict[str, list[str]]:
    keys = space_keys(model, "states")
    out = blocks_of(model, keys, by, find_groups(model, example) if example is not None else None)
    flat = [k for block in out.values() for k in block]
    assert sorted(flat) == sorted(keys) and len(flat) == len(set(flat))  # every tensor in exactly one block
    return out


def layer(prefix: str, *parts: str) -> list[str]:
    return [f"{prefix}.{p}" for p in parts]


def bn(prefix: str) -> list[str]:
    return layer(prefix, "weight", "bias", "running_mean", "running_var")


def test_transformer_blocks_are_the_repeated_layers_plus_embeddings_and_head():
    gpt = blocks(build("gpt_tiny"), "transformer-block")
    block = ["ln1.weight", "ln1.bias", *(f"attn.{m}.{p}" for m in ("query", "key", "value", "proj")
                                         for p in ("weight", "bias")),
             "ln2.weight", "ln2.bias", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]
    assert gpt == {"embeddings": ["tok.weight", "pos.weight"], "blocks.0": layer("blocks.0", *block),
                   "blocks.1": layer("blocks.1", *block), "head": ["ln_f.weight", "ln_f.bias"]}  # head tied to tok

    resnet = blocks(build("resnet2d_8_w1"), "transformer-block")
    assert list(resnet) == ["embeddings", "layer1.0", "layer2.0", "layer3.0", "head"]
    assert resnet["embeddings"] == ["conv1.weight", *bn("bn1")] and resnet["head"] == ["linear.weight", "linear.bias"]
    inner = ["conv1.weight", *bn("bn1"), "conv2.weight", *bn("bn2")]
    assert resnet["layer1.0"] == layer("layer1.0", *inner)
    assert resnet["layer2.0"] == layer("layer2.0", *inner, "shortcut.0.weight", *bn("shortcut.1"))

    from transformers import LlamaConfig, LlamaForCausalLM

    import hf_toys

    hf = blocks(hf_toys.gpt2_tiny(), "transformer-block")
    assert list(hf) == ["embeddings", "transformer.h.0", "transformer.h.1", "head"]
    assert hf["embeddings"] == ["transformer.wte.weight", "transformer.wpe.weight"]
    assert hf["head"] == ["transformer.ln_f.weight", "transformer.ln_f.bias"]  # lm_head is tied to wte
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    ll = blocks(llama, "transformer-block")
    assert list(ll) == ["embeddings", "model.layers.0", "model.layers.1", "head"]
    assert ll["embeddings"] == ["model.embed_tokens.weight"] and ll["head"] == ["model.norm.weight", "lm_head.weight"]
    assert ll["model.layers.1"] == layer("model.layers.1", *(f"self_attn.{p}_proj.weight" for p in "qkvo"),
                                         *(f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")),
                                         "input_layernorm.weight", "post_attention_layernorm.weight")


def test_permutation_group_blocks_follow_the_aligners_groups():
    mlp = blocks(build("digits_mlp"), "permutation-group", torch.randn(2, 64))
    assert mlp == {"fc1.weight:0": ["fc1.weight", "fc1.bias", "fc2.weight"], "(unpermuted)": ["fc2.bias"]}
    cnn = blocks(build("digits_cnn"), "permutation-group", torch.randn(2, 1, 8, 8))
    assert cnn == {"conv1.weight:0": ["conv1.weight", "conv1.bias", *bn("bn1")],
                   "conv2.weight:0": ["conv2.weight", "conv2.bias", *bn("bn2"), "fc.weight"],
                   "(unpermuted)": ["fc.bias"]}
    resnet = blocks(build("resnet2d_8_w1"), "permutation-group", torch.randn(2, 1, 8, 8))
    # a residual block's inner convolutions go with its hidden channels; the residual stream keeps the rest
    assert resnet["layer1.0.conv1.weight:0"] == layer("layer1.0", "conv1.weight", *bn("bn1"), "conv2.weight")
    assert resnet["conv1.weight:0"] == ["conv1.weight", *bn("bn1"), *bn("layer1.0.bn2")]
    gpt = blocks(build("gpt_tiny"), "permutation-group", torch.randint(0, 50, (2, 16)))
    assert gpt["blocks.0.mlp.0.weight:0"] == layer("blocks.0", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight")
    assert gpt["blocks.1.attn.value.weight:0.1"] == layer("blocks.1.attn", "value.weight", "value.bias",
                                                          "proj.weight")
    assert "tok.weight" in gpt["tok.weight:1"] and "ln_f.weight" in gpt["tok.weight:1"]  # the residual stream


def plain_values(name: str, state: dict[str, torch.Tensor]) -> dict[str, float]:
    """The oracle: a fresh model with `state`, eval mode, loss and accuracy of each split by torch directly."""
    model = build(name)
    model.load_state_dict(state)
    model.eval()
    out = {}
    for split in ("train", "test"):
        data = load_eval_set("digits", split, None, SAMPLES, 0)
        with torch.no_grad():
            logits = model(data.inputs)
        out[f"{split}_loss"] = float(F.cross_entropy(logits.double(), data.labels))
        out[f"{split}_acc"] = float((logits.argmax(1) == data.labels).double().mean())
    return out


def test_a_layers_path_by_these_blocks_equals_the_plain_loop(tmp_path, capsys):
    for name, by, curve in (("resnet2d_8_w1", "transformer-block", "layer2.0"),
                            ("digits_cnn", "permutation-group", "conv2.weight:0")):
        states = []
        for seed in (0, 1):
            torch.manual_seed(seed)
            states.append(build(name).state_dict())
            torch.save({"state_dict": states[-1]}, tmp_path / f"{name}-{seed}.pt")
        out = str(tmp_path / f"{name}.h5")
        assert main(["path", "--model", name, "--dataset", "digits", "--samples", str(SAMPLES), "--bn", "eval",
                     "--kind", "layers", "--blocks", by, "--points", "3", "--checkpoint",
                     str(tmp_path / f"{name}-0.pt"), "--checkpoint", str(tmp_path / f"{name}-1.pt"),
                     "--out", out]) == 0
        with h5py.File(out, "r") as f:
            curves = [c.decode() for c in f["path/curves"][()]]
            got = {k: f["results"][k][()] for k in f["results"]}
        a, b = states
        model = build(name)
        expected = blocks_of(model, space_keys(model, "states"), by, find_groups(model, torch.randn(2, 1, 8, 8)))
        assert curves == list(expected)
        c, mine = curves.index(curve), set(expected[curve])
        half = {k: (a[k] + 0.5 * (b[k] - a[k]) if k in mine else a[k]) for k in a}
        assert any(not torch.equal(half[k], a[k]) for k in mine)
        for j, state in ((1, half), (2, {k: (b[k] if k in mine else a[k]) for k in a})):
            for metric, want in plain_values(name, state).items():
                tol = 1.01 / SAMPLES if metric.endswith("_acc") else 2e-5 * abs(want) + 1e-6
                assert abs(got[metric][c, j] - want) <= tol, (name, metric, j)
        capsys.readouterr()
        assert main(["info", out]) == 0
        lines = capsys.readouterr().out.splitlines()
        header = next(i for i, line in enumerate(lines) if line.split()[0] == "curve")
        shown = {line.split()[0] for line in lines[header + 1:]}
        assert shown == set(curves)  # info names every block in full (group names differ at their end)


def test_a_model_without_repeated_layers_is_one_line_and_no_file(tmp_path, capsys):
    torch.save({"state_dict": build("digits_mlp").state_dict()}, tmp_path / "a.pt")
    out = str(tmp_path / "bad.h5")
    args = ["path", "--model", "digits_mlp", "--kind", "layers", "--blocks", "transformer-block",
            "--checkpoint", str(tmp_path / "a.pt"), "--checkpoint", str(tmp_path / "a.pt"), "--out", out]
    capsys.readouterr()
    code = main(args)
    one_line_error(subprocess.CompletedProcess(args, code, *capsys.readouterr()), "--blocks transformer-block",
                   "--blocks module")
    assert not os.path.exists(out)
