"""Model zoo, user models by import path, and checkpoint loading.

A model is named by a zoo name (`ZOO`), by ``package.module:factory``, where ``factory()`` returns an
``nn.Module`` (a Hugging Face ``transformers`` model built from its config, say: the ``hf`` extra), or by
``hf:PATH``, a ``save_pretrained`` folder or a local Hub cache entry built through the task's Auto class
(`hf_folder`).
Checkpoints are a file holding a plain state_dict or a dict holding one under ``state_dict``,
``model_state_dict``, ``model`` or ``net`` (always loaded with ``weights_only=True``), or a folder written by
Hugging Face's ``save_pretrained``: its ``model.safetensors`` (read with ``safetensors``, imported only then) or
else its ``pytorch_model.bin``, else the shards named by its ``model.safetensors.index.json`` (read tensor by
tensor, each tensor mapped from its shard: a rank that keeps some rows reads only those). A checkpoint's sha256
is that of the one weight file it is read from (for a folder: that file's bytes, so config.json and other files
of the folder do not count); of a sharded folder, that of its shards' bytes one after the other, in the order
of their names. Keys of tied tensors
that a checkpoint leaves out (``save_pretrained`` stores a tied output head once, under the embedding's name)
are filled from the tensor they are tied to.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from landscape_mpi.config.errors import UserError
from landscape_mpi.config.hub import HF_PREFIX
from landscape_mpi.config.imports import import_object
from landscape_mpi.models.cifar import VGG9, CifarResNet, DenseNet
from landscape_mpi.models.gpt import TinyGPT
from landscape_mpi.models.resnet_small import SmallResNet, zoo_entries
from landscape_mpi.models.small import DigitsCNN, DigitsMLP

#: name -> (factory, dataset it is built for)
ZOO: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "digits_mlp": (DigitsMLP, "digits"),
    "digits_cnn": (DigitsCNN, "digits"),
    "resnet20": (partial(CifarResNet, 20), "cifar10"),
    "resnet56": (partial(CifarResNet, 56), "cifar10"),
    "resnet110": (partial(CifarResNet, 110), "cifar10"),
    "resnet20_noshort": (partial(CifarResNet, 20, shortcut=False), "cifar10"),
    "resnet56_noshort": (partial(CifarResNet, 56, shortcut=False), "cifar10"),
    "resnet110_noshort": (partial(CifarResNet, 110, shortcut=False), "cifar10"),
    "wrn56_2": (partial(CifarResNet, 56, width=2), "cifar10"),
    "wrn56_4": (partial(CifarResNet, 56, width=4), "cifar10"),
    "wrn56_8": (partial(CifarResNet, 56, width=8), "cifar10"),
    "wrn56_2_noshort": (partial(CifarResNet, 56, width=2, shortcut=False), "cifar10"),
    "wrn56_4_noshort": (partial(CifarResNet, 56, width=4, shortcut=False), "cifar10"),
    "wrn56_8_noshort": (partial(CifarResNet, 56, width=8, shortcut=False), "cifar10"),
    "wrn110_4_noshort": (partial(CifarResNet, 110, width=4, shortcut=False), "cifar10"),
    "vgg9": (VGG9, "cifar10"),
    "densenet121": (DenseNet, "cifar10"),
    "gpt_tiny": (TinyGPT, "text"),  # a causal language model: int64 token ids (B, 64) -> logits (B, 64, 97)
}
# Small ResNets for small-scale science: resnet1d_* on MNIST-1D signals, resnet2d_* on digits images.
ZOO.update({name: (partial(SmallResNet, dim, depth, width, shortcut), "mnist1d" if dim == 1 else "digits")
            for name, (dim, depth, width, shortcut) in zoo_entries().items()})

#: one sample's input shape for each dataset a zoo model is built for (text: int64 token ids, not floats)
INPUT_SHAPES: dict[str, tuple[int, ...]] = {"digits": (1, 8, 8), "mnist1d": (1, 40), "cifar10": (3, 32, 32),
                                           "text": (64,)}

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net")
#: the weight files of a ``save_pretrained`` folder, in the order they are looked for
PRETRAINED_FILES = ("model.safetensors", "pytorch_model.bin")
#: the index of a sharded ``save_pretrained`` folder (``max_shard_size`` smaller than the model)
SHARDED_INDEX = "model.safetensors.index.json"


def build_model(name: str, task: str | None = None) -> nn.Module:
    """A freshly initialized model, by zoo name, ``package.module:factory`` or ``hf:PATH`` (`task`, the --task
    name: which Auto class builds an ``hf:`` model; `hf_folder.build_pretrained`)."""
    if name.startswith(HF_PREFIX):
        from landscape_mpi.models.hf_folder import build_pretrained

        return build_pretrained(name, task)
    if ":" in name:
        model = import_object(name, "--model")()
        if not isinstance(model, nn.Module):
            raise UserError(f"--model {name}: the factory returned {type(model).__name__}, not a torch.nn.Module")
        return model
    if name not in ZOO:
        raise UserError(f"--model {name}: unknown model; choose one of {', '.join(ZOO)}, "
                        f"give package.module:factory or hf:DIR (a save_pretrained folder)")
    return ZOO[name][0]()


def natural_key(path: str) -> list:
    """Sort key of checkpoint files that orders epoch_2 before epoch_10 (numbers in the file name compared as
    numbers; the whole path breaks ties)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", os.path.basename(path))] + [path]


def weight_file(path: str, option: str = "--checkpoint") -> str:
    """The file a checkpoint is read from: `path` itself, or a ``save_pretrained`` folder's weight file
    (`PRETRAINED_FILES`, the first one present, else its `SHARDED_INDEX`)."""
    if os.path.isdir(path):
        for name in (*PRETRAINED_FILES, SHARDED_INDEX):
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        sharded = [n for n in sorted(os.listdir(path)) if n.endswith(".index.json")]
        found = f"only {sharded[0]}, an index of pytorch_model shards (not read)" if sharded else "neither"
        raise UserError(f"{option} {path}: a folder without model weights: expected {' or '.join(PRETRAINED_FILES)} "
                        f"or {SHARDED_INDEX} (as save_pretrained writes them), found {found}; save the model with "
                        f"save_pretrained(path) (safetensors), or give a state_dict file")
    if not os.path.isfile(path):
        raise UserError(f"{option} {path}: no such file; give the path of a saved model (torch.save) or a "
                        f"save_pretrained folder")
    return path


def weight_files(path: str, option: str = "--checkpoint") -> list[str]:
    """The files a checkpoint's tensors are read from: `weight_file`, or the shards its index names (in the
    order of their names; UserError naming a missing one)."""
    file = weight_file(path, option)
    if not file.endswith(".index.json"):
        return [file]
    return sorted(set(_shard_map(file, option).values()))


def _shard_map(index: str, option: str) -> dict[str, str]:
    """key -> shard file of a sharded folder's index, every shard checked to exist."""
    import json

    folder = os.path.dirname(index)
    try:
        with open(index) as f:
            names = json.load(f)["weight_map"]
        assert isinstance(names, dict) and names and all(isinstance(v, str) for v in names.values())
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise UserError(f"{option} {folder}: {os.path.basename(index)} is not a readable index (a JSON object with "
                        f"a weight_map of tensor name -> shard file); save the model again with "
                        f"save_pretrained") from None
    shards = {n: os.path.join(folder, n) for n in set(names.values())}
    missing = sorted(n for n, p in shards.items() if not os.path.isfile(p))
    if missing:
        raise UserError(f"{option} {folder}: shard {missing[0]}, named in {os.path.basename(index)}, is missing"
                        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                        + "; copy the whole folder save_pretrained wrote")
    return {k: shards[n] for k, n in names.items()}


def checkpoint_sha256(path: str, option: str = "--checkpoint") -> str:
    """sha256 of a checkpoint's weight file (`weight_file`: the file itself, or a save_pretrained folder's
    model.safetensors / pytorch_model.bin; a sharded folder: its shards' bytes in order, `weight_files`): what a
    resume must find unchanged."""
    h = hashlib.sha256()
    for file in weight_files(path, option):
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _read_sharded(index: str, option: str) -> dict[str, torch.Tensor]:
    """The tensors of a sharded folder, tensor by tensor from their shards with safetensors: each one mapped
    from its file (safetensors maps a file and its tensors view the mapping), so only the bytes a caller
    touches are read (the rows a member of a sharded group keeps: `engine.group.fill_shards`)."""
    try:
        from safetensors import safe_open
    except ImportError:
        raise UserError(f"{option} {os.path.dirname(index)}: reading safetensors shards needs the safetensors "
                        f"package (the hf extra: pip install 'landscape-mpi[hf]')") from None
    where = _shard_map(index, option)
    by_shard: dict[str, list[str]] = {}
    for key, shard in where.items():
        by_shard.setdefault(shard, []).append(key)
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(by_shard):
        try:
            with safe_open(shard, framework="pt", device="cpu") as f:
                held = set(f.keys())
                lost = [k for k in by_shard[shard] if k not in held]
                if lost:
                    raise UserError(f"{option} {os.path.dirname(index)}: {os.path.basename(shard)} lacks {lost[0]}, "
                                    f"which {os.path.basename(index)} places there; save the model again")
                for key in by_shard[shard]:
                    out[key] = f.get_tensor(key)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001  (safetensors raises its own types for a damaged file)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{option} {shard}: not a readable safetensors file ({first[:160]})") from None
    return {k: out[k] for k in where}


def _read_safetensors(path: str, option: str) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise UserError(f"{option} {path}: reading model.safetensors needs the safetensors package "
                        f"(pip install safetensors, or the hf extra: pip install 'landscape-mpi[hf]')") from None
    try:
        return load_file(path, device="cpu")
    except Exception as exc:  # noqa: BLE001  (safetensors raises its own types for a damaged file)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{option} {path}: not a readable safetensors file ({first[:160]})") from None


def read_state_dict(path: str, option: str = "--checkpoint", mmap: bool = False,
                    meta: dict | None = None) -> dict[str, torch.Tensor]:
    """The state_dict stored in a checkpoint file or save_pretrained folder (tensors on the CPU).

    `mmap`: the tensors are mapped from the file, not read: a tensor's bytes come from disk (or the page cache,
    shared by a node's ranks) only where they are used, so a rank that keeps a slice of each tensor never holds
    the whole model (safetensors maps its files this way anyway; a torch file needs torch's zip format, the
    default of ``torch.save`` since 1.6). `meta`: filled with the top-level entries of a torch file's dict (such as
    a training checkpoint's "epoch" beside its state_dict), for a caller that needs them without a second read."""
    file = weight_file(path, option)
    if file.endswith(".index.json"):
        return _read_sharded(file, option)
    if file.endswith(".safetensors"):
        obj = _read_safetensors(file, option)
        if not obj:
            raise UserError(f"{option} {path}: holds no tensors")
        return obj
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{option} {path}: not a readable PyTorch checkpoint ({first[:160]}); "
                        f"re-save it with torch.save(model.state_dict(), path)") from None
    if isinstance(obj, dict):
        if meta is not None:
            meta.update(obj)
        for key in STATE_DICT_KEYS:
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{option} {path}: holds no state_dict; save torch.save(model.state_dict(), path) "
                        f"or a dict with it under one of {', '.join(STATE_DICT_KEYS)}")
    # Checkpoints saved from DataParallel / DistributedDataParallel prefix every key with "module.".
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def tied_keys(model: nn.Module) -> dict[str, str]:
    """state_dict key -> the first key of the same tensor, for every key that is not its tensor's first name
    (tied weights: one tensor under several names)."""
    first: dict[tuple, str] = {}
    out: dict[str, str] = {}
    for k, v in model.state_dict(keep_vars=True).items():
        if not v.numel():
            continue
        ident = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()))
        if ident in first:
            out[k] = first[ident]
        else:
            first[ident] = k
    return out


def load_checkpoint(model: nn.Module, path: str, option: str = "--checkpoint", meta: dict | None = None) -> None:
    """Load a checkpoint into `model`, naming missing, unexpected and mis-shaped keys if it does not fit (`meta`:
    as `read_state_dict`'s)."""
    state = read_state_dict(path, option, meta=meta)
    check_fits(model, state, tied_keys(model), path, option)
    model.load_state_dict(state)


def check_fits(model: nn.Module, state: dict[str, torch.Tensor], tied: dict[str, str], path: str,
               option: str = "--checkpoint") -> None:
    """Raise UserError naming missing, unexpected and mis-shaped keys if `state` does not fit `model` (shapes
    only: `model` may hold its parameters on the meta device); fills the keys of tied tensors (`tied`) that the
    checkpoint saved once."""
    expected = model.state_dict()
    for k, source in tied.items():  # a tied tensor saved once (save_pretrained does that)
        if k not in state and source in state:
            state[k] = state[source]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if keys:
                shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
                parts.append(f"{label}: {shown}")
        raise UserError(f"{option} {path} does not fit the model ({'; '.join(parts)}); "
                        f"check --model matches the architecture the checkpoint was trained with")


@contextlib.contextmanager
def parameters_on_meta():
    """Modules built inside hold their parameters on the meta device (a shape, no memory) and their buffers for
    real: a model larger than a rank's memory can be built and then sharded (`engine.group`), each rank filling
    only its own rows. Each parameter is created as usual and moved to meta at once, so at most one layer's
    parameters exist at a time. Buffers stay real because a module computes its non-persistent ones (a causal
    mask, say) at construction and no checkpoint holds them."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param) -> None:
        register(module, name, param)
        p = module._parameters.get(name)
        if p is not None and p.device.type != "meta":
            module._parameters[name] = nn.Parameter(p.detach().to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def tied_parameters(model: nn.Module) -> dict[str, str]:
    """`tied_keys` for a model whose parameters are on the meta device (no storage to compare): a parameter
    object reached under several names is tied."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for k, v in model.state_dict(keep_vars=True).items():
        if id(v) in first:
            out[k] = first[id(v)]
        else:
            first[id(v)] = k
    return out
