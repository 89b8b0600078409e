"""Directions in weight space and setting the weights at a grid point (docs/method.md#directions).

A direction is a dict ``state_dict key -> tensor`` over the chosen space:
``weights`` (the trainable parameters) or ``states`` (every floating tensor of the state_dict, BatchNorm
running statistics included; integer buffers such as ``num_batches_tracked`` are never perturbed).
The weights at grid point (a, b, c) are ``theta* + a*dx + b*dy + c*dz``, recomputed from theta* each time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from landscape_mpi.config.errors import UserError

Direction = dict[str, torch.Tensor]


def space_keys(model: nn.Module, dir_space: str) -> list[str]:
    """The state_dict keys that make up the vector space, in the model's own order.

    Tied tensors (one storage under several names, e.g. shared embedding and output weights) count once,
    under their first name, as `named_parameters()` does: one storage gets one direction.
    """
    if dir_space == "weights":
        return [name for name, _ in model.named_parameters()]
    if dir_space == "states":
        keys, seen = [], set()
        for k, v in model.state_dict(keep_vars=True).items():
            if not v.is_floating_point():
                continue
            storage = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()))
            if v.numel() and storage in seen:
                continue
            seen.add(storage)
            keys.append(k)
        return keys
    raise ValueError(dir_space)


def filter_dims(model: nn.Module) -> dict[str, int]:
    """state_dict key -> the dimension of its output filters, for the weights whose filters are not along dim 0.

    Every torch layer stores a weight (out, in, ...), filters along dim 0, and is left out. Hugging Face's
    ``Conv1D`` (GPT-2's attention and MLP projections; ``y = x @ W + b``) stores the transpose, (in, out): its
    output filters are the columns, dim 1. Recognized by the class name ``Conv1D`` with a 2-dim weight whose
    second size is the layer's ``nf`` (its number of outputs), so ``transformers`` is never imported here.
    docs/method.md#transformer-layers.
    """
    out = {}
    for name, module in model.named_modules():
        w = getattr(module, "weight", None)
        if (type(module).__name__ == "Conv1D" and isinstance(w, torch.Tensor) and w.dim() == 2
                and getattr(module, "nf", None) == w.shape[1]):
            out[f"{name}.weight" if name else "weight"] = 1
    return out


def normalize(d: torch.Tensor, w: torch.Tensor, norm: str, dim: int = 0) -> torch.Tensor:
    """Scale a random direction tensor `d` like the weight tensor `w` (new tensor; inputs untouched).

    filter: each slice along `dim` (an output channel / output row: dim 0 for every torch layer, 1 for a
    Hugging Face Conv1D, `filter_dims`) gets the norm of the matching slice of w.
    layer: the whole tensor gets the norm of w.  weight: d * w elementwise.  none: d unchanged.
    """
    if norm == "filter":
        if dim != 0:
            return normalize(d.movedim(dim, 0), w.movedim(dim, 0), norm).movedim(0, dim).contiguous()
        dn = d.flatten(1).norm(dim=1)
        wn = w.flatten(1).norm(dim=1)
        scale = wn / (dn + 1e-10)
        return d * scale.view(-1, *([1] * (d.dim() - 1)))
    if norm == "layer":
        return d * (w.norm() / (d.norm() + 1e-10))
    if norm == "weight":
        return d * w
    if norm == "none":
        return d.clone()
    raise ValueError(norm)


def random_direction(state: dict[str, torch.Tensor], keys: Sequence[str], generator: torch.Generator,
                     norm: str, ignore: str, dims: Mapping[str, int] | None = None) -> Direction:
    """A seeded Gaussian direction, normalized per tensor.

    Tensors of dim <= 1 (biases, BatchNorm and LayerNorm weights and statistics) get a zero direction with
    ``ignore='biasbn'`` (the paper's choice), and ``d = w`` with ``ignore='none'`` (the reference code's).
    Gaussians are drawn on the CPU in float32, tensor by tensor in `keys` order, so the same seed gives
    bit-identical directions on every machine, device and rank. `dims`: the output-filter dimension of keys
    whose filters are not along dim 0 (`filter_dims`; only ``norm='filter'`` reads it).
    """
    dims = dims or {}
    return {k: random_tensor(state[k], generator, norm, ignore, dims.get(k, 0)) for k in keys}


class StreamedDirection(Mapping):
    """A direction made tensor by tensor as it is read, and dropped after: what a file step writes when no rank
    holds the whole model (`directions.sources.stream_directions`). Read it once, in key order (`items()`, as
    `files.store.create_surface_file` does): a random direction draws from the generator it shares with the
    other axes in that order, which is the order `random_direction` draws in, so the bits are the same."""

    def __init__(self, keys: Sequence[str], make) -> None:
        self._keys, self._make = list(keys), make

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._keys:
            raise KeyError(key)
        return self._make(key)

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def random_tensor(w: torch.Tensor, generator: torch.Generator, norm: str, ignore: str, dim: int = 0) -> torch.Tensor:
    """One tensor of `random_direction` (the same draw, the same bits)."""
    if w.dim() <= 1:
        return torch.zeros_like(w) if ignore == "biasbn" else w.detach().clone()
    d = torch.randn(w.shape, generator=generator, dtype=torch.float32).to(w.dtype)
    return normalize(d, w.detach().cpu(), norm, dim)


def target_direction(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], keys: Sequence[str],
                     option: str) -> Direction:
    """``theta_target - theta*`` over the space (not normalized): a = 1 is the target model."""
    check_target(state, target, keys, option)
    return {k: target_tensor(state[k], target[k]) for k in keys}


def check_target(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], keys: Sequence[str],
                 option: str) -> None:
    """Raise UserError if the target checkpoint lacks a key of the space or has another shape there."""
    missing = [k for k in keys if k not in target or target[k].shape != state[k].shape]
    if missing:
        raise UserError(f"{option}: checkpoint does not match the model at {', '.join(missing[:5])}; "
                        f"give a checkpoint of the same architecture")


def target_tensor(w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """One tensor of `target_direction`: t - w in w's dtype."""
    return (t.to(w.dtype) - w).detach().clone()


def check_running_var(state: dict[str, torch.Tensor], directions: Sequence[Direction],
                      corners: Sequence[Sequence[float]]) -> None:
    """Refuse grids that would make a BatchNorm running_var negative somewhere.

    The weights are linear in the coordinates, so a running_var is non-negative on the whole grid iff
    it is at every corner of the grid's box.
    """
    for k, w in state.items():
        if not k.endswith("running_var"):
            continue
        for corner in corners:
            v = w.double().clone()
            for c, d in zip(corner, directions):
                if k in d:
                    v += c * d[k].double()
            if (v < 0).any():
                raise UserError(f"the grid reaches a negative BatchNorm variance in {k} at coordinates "
                                f"{tuple(corner)}; use --ignore biasbn, --dir-space weights or a smaller grid")


class PointSetter:
    """Sets a model's tensors to theta* + sum_i c_i * d_i in place, on the model's device.

    Only tensors where some direction is non-zero are touched; each is recomputed from theta*, so there is
    no drift from incremental updates and no reload from disk.
    """

    def __init__(self, model: nn.Module, directions: Sequence[Direction]) -> None:
        self.model = model
        tensors = dict(model.state_dict(keep_vars=True))
        self.targets: list[tuple[torch.Tensor, torch.Tensor, list[torch.Tensor | None]]] = []
        for k, t in tensors.items():
            ds = [d.get(k) for d in directions]
            ds = [None if (d is None or not bool(d.any())) else d.to(t.device, t.dtype) for d in ds]
            if any(d is not None for d in ds):
                self.targets.append((t, t.detach().clone(), ds))

    @torch.no_grad()
    def set(self, coords: Sequence[float]) -> None:
        for tensor, base, ds in self.targets:
            tensor.data.copy_(base)
            for c, d in zip(coords, ds):
                if d is not None and c != 0.0:
                    tensor.data.add_(d, alpha=float(c))

    def reset(self) -> None:
        self.set([0.0] * 3)
