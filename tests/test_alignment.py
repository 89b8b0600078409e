"""Neuron alignment (landscape_mpi/alignment, docs/alignment.md): permutation groups derived by tracing, weight
matching, the permutation file.

Oracles: a permuted model computes the same outputs as the original (float64, to 1e-6) for every supported
architecture, and the same test fails when one tensor is left out of the permutation; the groups found are the
ones the architecture has (sizes counted by hand from each model's definition); weight matching recovers a
planted random permutation exactly; an operation the aligner does not understand is one line naming the module;
a permutation file made for another model is refused.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from conftest import TESTS, cli, one_line_error, run
from landscape_mpi.alignment import Permutation, find_groups, match_weights
from landscape_mpi.alignment.axes import Atom, fix, leaves, reshape, unify
from landscape_mpi.config.errors import UserError
from landscape_mpi.models import build_model, checkpoint_sha256, tied_keys

os.environ["HF_HUB_OFFLINE"] = "1"
HAVE_HF = importlib.util.find_spec("transformers") is not None


def _hf():
    if not HAVE_HF:
        pytest.skip("transformers is not installed (pip install 'landscape-mpi[hf]'; scripts/install.sh does)")
    sys.path.insert(0, str(TESTS))
    import hf_toys

    return hf_toys


def gpt2(attn: str = "sdpa") -> nn.Module:
    model = _hf().gpt2_tiny()
    model.config._attn_implementation = attn
    return model


def llama(attn: str = "sdpa") -> nn.Module:
    """A 2-layer Llama with grouped-query attention (4 query heads over 2 key/value heads), rotary embeddings,
    RMSNorm and a gated MLP, built from a config."""
    _hf()
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         attn_implementation=attn)
    return LlamaForCausalLM(config)


class GroupedConv(nn.Module):
    """A convolution in 4 groups and a depthwise one (2 filters per channel), as in MobileNets and ResNeXts."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 12, 3, padding=1, groups=4)
        self.depthwise = nn.Conv2d(12, 24, 3, groups=12)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        h = torch.relu(self.grouped(torch.relu(self.conv1(x))))
        return self.fc(self.depthwise(h).mean((2, 3)))


def vit() -> nn.Module:
    """torchvision's VisionTransformer, 2 blocks of nn.MultiheadAttention (packed q/k/v projection)."""
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(image_size=8, patch_size=4, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                             num_classes=10)


IMAGES = (4, 1, 8, 8)
RGB = (2, 3, 8, 8)
TOKENS = (2, 16)
#: name -> (model factory, example input shape (float images or int64 token ids), the group sizes the
#: architecture has, counted by hand from its definition)
ARCHS = {
    # 64 -> 32 -> 10: the hidden units
    "digits_mlp": (lambda: build_model("digits_mlp"), IMAGES, [32]),
    # conv1 (8 channels, with bn1's running statistics), conv2 (16); the linear layer reads 16 x 4 x 4
    "digits_cnn": (lambda: build_model("digits_cnn"), IMAGES, [8, 16]),
    # stem+stage 1 share one residual stream (8); stage 2 (16) and 3 (32) streams, each joined by a downsample
    # shortcut; one inner channel group per block (8, 16, 32)
    "resnet2d_8_w1": (lambda: build_model("resnet2d_8_w1"), IMAGES, [8, 8, 16, 16, 32, 32]),
    # the 4 groups of `grouped` (which move whole, and carry the depthwise filters of their channels along);
    # `grouped`'s 2 input and 3 output channels within a group; the depthwise layer's 2 filters per channel
    "grouped_conv": (GroupedConv, IMAGES, [4, 2, 3, 2]),
    # stream 16 (patch embedding, class token, position embedding, every LayerNorm, the head's columns); per
    # block: 2 heads, 8 units per head (q, k and v alike: one packed projection), 32 MLP units
    "vit": (vit, RGB, [16] + 2 * [2, 8, 32]),
    # residual stream 64; per block: 2 heads, 32 query/key units and 32 value/output units per head, 256 MLP units
    "gpt_tiny": (lambda: build_model("gpt_tiny"), TOKENS, [64] + 2 * [2, 32, 32, 256]),
    # stream 32; per block: 2 heads, 16 units per head (the fused c_attn projection ties q, k and v), 128 MLP
    "gpt2": (gpt2, TOKENS, [32] + 2 * [2, 16, 128]),
    "gpt2_eager": (lambda: gpt2("eager"), TOKENS, [32] + 2 * [2, 16, 128]),
    # stream 32; per block: 2 key/value heads, 2 query heads per key/value head, 8 value units (query/key units
    # keep their rotary pairs: fixed), 48 gated-MLP units
    "llama": (llama, TOKENS, [32] + 2 * [2, 2, 8, 48]),
    "llama_eager": (lambda: llama("eager"), TOKENS, [32] + 2 * [2, 2, 8, 48]),
}


def example(shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    if shape == TOKENS:
        return torch.randint(0, 97, shape, generator=g)
    return torch.randn(shape, generator=g, dtype=torch.float64)


def output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    return getattr(out, "logits", out)


def trained_like(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The model's state in float64 with every floating tensor moved off its initial value (so that LayerNorm
    weights and BatchNorm running statistics differ per unit, and a wrong permutation of them shows); running
    variances stay positive."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            v = v.double() + 0.1 * torch.rand(v.shape, generator=g, dtype=torch.float64)
        out[k] = v
    return out


def planted(spec, seed: int) -> Permutation:
    rng = np.random.default_rng(seed)
    return Permutation(spec, {g: rng.permutation(n) for g, n in spec.sizes.items()})


class _Calls(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.add(getattr(func, "__name__", ""))
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module", params=list(ARCHS))
def arch(request):
    factory, shape, sizes = ARCHS[request.param]
    model = factory().double().eval()
    x = example(shape)
    if request.param in ("gpt2", "gpt2_eager", "llama", "llama_eager"):  # the attention path the name claims
        with _Calls() as calls:
            output(model, x)
        assert ("scaled_dot_product_attention" in calls.names) == (not request.param.endswith("eager"))
    return request.param, model, x, find_groups(model, x), sizes


def test_groups_are_the_architectures(arch):
    name, _, _, spec, sizes = arch
    assert Counter(spec.sizes.values()) == Counter(sizes), (name, spec.sizes)


def test_permuted_model_computes_the_same(arch):
    name, model, x, spec, _ = arch
    state = trained_like(model, 1)
    model.load_state_dict(state)
    before = output(model, x)
    perm = planted(spec, 2)
    permuted = perm.apply(state)
    tied = tied_keys(model)  # a tensor under two names: leaving one name out would not leave the tensor out
    moved = [k for k in state if not torch.equal(permuted[k], state[k]) and k not in tied and k not in tied.values()]
    assert moved, "the permutation moved nothing"
    model.load_state_dict(permuted)
    assert torch.allclose(output(model, x), before, rtol=0, atol=1e-6), name
    # the oracle can fail: leave one moved tensor unpermuted and the outputs change
    model.load_state_dict({**permuted, moved[0]: state[moved[0]]})
    assert not torch.allclose(output(model, x), before, rtol=0, atol=1e-6), (name, moved[0])
    model.load_state_dict(state)


def test_weight_matching_recovers_a_planted_permutation(arch):
    name, model, _, spec, _ = arch
    state_a = trained_like(model, 3)
    perm = planted(spec, 4)
    g = torch.Generator().manual_seed(6)
    state_b = {k: v + 1e-4 * torch.randn(v.shape, generator=g, dtype=v.dtype) if v.is_floating_point() else v
               for k, v in perm.apply(state_a).items()}  # B: A permuted, plus small noise
    found = match_weights(spec, state_a, state_b, seed=0)
    for group, planted_perm in perm.perms.items():
        # gathering B by the found permutation undoes the planted one: planted[found[i]] == i
        assert np.array_equal(planted_perm[found.perms[group]], np.arange(len(planted_perm))), (name, group)
    aligned = found.apply(state_b)
    assert all(torch.allclose(aligned[k], state_a[k], atol=1e-3) for k in state_a if state_a[k].is_floating_point())
    assert found.info["objective_after"] > found.info["objective_before"]


class CumsumMLP(nn.Module):
    """An MLP whose hidden layer goes through a cumulative sum: an operation the aligner has no rule for."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 16)
        self.mix = Cumsum()
        self.fc2 = nn.Linear(16, 16)
        self.fc3 = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(self.mix(torch.relu(self.fc1(x.flatten(1)))))))


class Cumsum(nn.Module):
    def forward(self, h):
        return h.cumsum(-1)


class CumsumInput(nn.Module):
    """The same operation on the input (a fixed axis): harmless."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.flatten(1).cumsum(-1))))


def test_an_unsupported_operation_is_one_line_naming_the_module():
    x = example(IMAGES)
    assert find_groups(CumsumInput().double(), x).sizes == {"fc1.weight:0": 16}  # it reads fixed axes only
    model = CumsumMLP().double()
    with pytest.raises(UserError) as err:
        find_groups(model, x)
    message = str(err.value)
    assert "\n" not in message and "module mix (Cumsum) calls cumsum" in message and "--unsupported leave" in message
    # left unpermuted where asked: fc1's units (read by cumsum) stay fixed, fc2's are a group, the function is kept
    spec = find_groups(model, x, unsupported="leave")
    assert spec.sizes == {"fc2.weight:0": 16}
    state = trained_like(model, 1)
    model.load_state_dict(state)
    before = output(model, x)
    model.load_state_dict(planted(spec, 3).apply(state))
    assert torch.allclose(output(model, x), before, rtol=0, atol=1e-9)


def test_weight_matching_refuses_checkpoints_of_another_shape():
    spec = find_groups(build_model("digits_mlp").double(), example(IMAGES))
    state = build_model("digits_mlp").state_dict()
    wide = {**state, "fc1.weight": torch.zeros(33, 64)}
    with pytest.raises(UserError, match=r"^alignment: checkpoint B does not fit the model \(fc1.weight: shape "
                                        r"\(33, 64\), the model has \(32, 64\)\); give checkpoints of the --model"):
        match_weights(spec, state, wide)


def test_the_permutation_file_round_trips_and_refuses_another_model(tmp_path):
    mlp, cnn = build_model("digits_mlp").double(), build_model("digits_cnn").double()
    x = example(IMAGES)
    spec = find_groups(mlp, x)
    perm = planted(spec, 1)
    perm.hash_a, perm.hash_b, perm.info = "a" * 64, "b" * 64, {"method": "weight_matching", "seed": 1}
    path = str(tmp_path / "perm.h5")
    perm.save(path)
    back = Permutation.load(path)
    assert back.spec == spec and back.info == perm.info and (back.hash_a, back.hash_b) == (perm.hash_a, perm.hash_b)
    assert all(np.array_equal(back.perms[g], perm.perms[g]) for g in spec.sizes)
    state = trained_like(mlp, 2)
    assert all(torch.equal(back.apply(state)[k], perm.apply(state)[k]) for k in state)
    back.check_model(spec, path)  # the same model: accepted
    with pytest.raises(UserError, match=r"^--permutation .*perm.h5: made for another model .* landscape-mpi align"):
        back.check_model(find_groups(cnn, x), path)
    with pytest.raises(UserError, match=r"^--permutation .*: computed from other checkpoints"):
        back.check_checkpoints("a" * 64, "c" * 64, path)
    (tmp_path / "other.h5").write_bytes(b"not hdf5")
    with pytest.raises(UserError, match=r"^--permutation .*other.h5: cannot read it as HDF5"):
        Permutation.load(str(tmp_path / "other.h5"))


def test_axes_unify_split_and_fix():
    """The unification the trace rests on: a view into heads splits a class everywhere it appears; factors
    that do not line up fix both sides."""
    stream, other = Atom(12), Atom(12)
    unify([stream], [other])
    heads = reshape([[other]], (3, 4))  # (12,) viewed as (3, 4)
    assert [a.size for a in leaves([stream])] == [3, 4] and leaves(heads[0]) == leaves([stream])[:1]
    a, b = Atom(6), Atom(4)
    c, d = Atom(4), Atom(6)
    unify([a, b], [c, d])  # 6x4 against 4x6: no common factorisation
    assert all(r.fixed for r in leaves([a, b, c, d]))
    assert reshape([[Atom(6)]], (4,)) is None
    e = Atom(5)
    fix([e])
    f = Atom(5)
    unify([f], [e])
    assert leaves([f])[0].fixed


def test_align_command_undoes_a_planted_permutation_and_names_an_unsupported_module(tmp_path):
    """`landscape-mpi align` as a user runs it: B is A with a planted permutation; the file it writes, applied
    to B, gives A back, and records both checkpoints' hashes. A model with an operation the aligner does not
    understand: exit 2, one line, no file."""
    model = build_model("digits_cnn")
    state_a = trained_like(model, 1)
    spec = find_groups(model.double(), example(IMAGES))
    perm = planted(spec, 7)
    a, b, out = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "perm.h5"
    torch.save(state_a, a)
    torch.save(perm.apply(state_a), b)
    run(cli("align", "--model", "digits_cnn", "--checkpoint-a", str(a), "--checkpoint-b", str(b), "--out", str(out)))
    found = Permutation.load(str(out))
    found.check_model(spec, str(out))
    assert (found.hash_a, found.hash_b) == (checkpoint_sha256(str(a)), checkpoint_sha256(str(b)))
    aligned = found.apply(torch.load(b, weights_only=True))
    assert all(torch.equal(aligned[k], state_a[k]) for k in state_a)

    torch.save(CumsumMLP().state_dict(), a)
    bad = tmp_path / "bad.h5"
    p = run(cli("align", "--model", "test_alignment:CumsumMLP", "--checkpoint-a", str(a), "--checkpoint-b", str(a),
                "--out", str(bad)), check_rc=None)
    one_line_error(p, "module mix (Cumsum) calls cumsum", "--unsupported leave")
    assert not bad.exists()
