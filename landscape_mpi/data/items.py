"""What an evaluation split is: its tensors (`EvalSet`), how a user dataset's items become tensors (`collate`)
and which samples a --samples subset keeps. Where splits come from: `datasets` (in memory) and `stream` (read in
batches).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch

from landscape_mpi.config.errors import UserError


def decode_images(raw: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, C, H, W) -> float32 normalized ``(raw / 255 - mean) / std`` (mean, std: (1, C, 1, 1)).

    The one definition of the normalization: the float inputs are computed with it at load time, and an engine
    that keeps the uint8 images on its device computes each batch with it, so both give the same bits (every
    step is one correctly rounded IEEE operation per element, on any device)."""
    return (raw.float().div_(255.0) - mean) / std


@dataclass
class CompactImages:
    """The uint8 form of an image split (a quarter of the float32 bytes) and its normalization."""

    raw: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def subset(self, idx: torch.Tensor) -> "CompactImages":
        return CompactImages(self.raw[idx].contiguous(), self.mean, self.std)


#: A split's inputs: one tensor (B, ...), or a dict of tensors with the same first dimension (keyword
#: arguments of the model's forward, e.g. input_ids and attention_mask).
Inputs = Union[torch.Tensor, dict]


def map_inputs(inputs: Inputs, fn: Callable[[torch.Tensor], torch.Tensor]) -> Inputs:
    """`fn` applied to the tensor, or to every tensor of a dict (keys kept in order)."""
    if isinstance(inputs, dict):
        return {k: fn(v) for k, v in inputs.items()}
    return fn(inputs)


def first_tensor(inputs: Inputs) -> torch.Tensor:
    return next(iter(inputs.values())) if isinstance(inputs, dict) else inputs


@dataclass
class EvalSet:
    """One split's inputs and labels, as tensors on the evaluation device."""

    name: str
    inputs: Inputs
    labels: torch.Tensor | None
    """None where the task needs none (token sequences: the targets are the inputs shifted)."""
    indices: np.ndarray | None = None
    """Which samples of the split were kept by --samples (None: all)."""
    compact: CompactImages | None = None
    """The same inputs as uint8 images (CIFAR-10), from which `inputs` was decoded; None for other data."""
    streamed = False
    """True for a split read in batches (`stream.StreamedSplit`): no `inputs` or `labels` tensors to hold."""

    def __len__(self) -> int:
        if self.labels is not None:
            return int(self.labels.shape[0])
        return int(first_tensor(self.inputs).shape[0])

    def to(self, device: torch.device) -> "EvalSet":
        return EvalSet(self.name, map_inputs(self.inputs, lambda t: t.to(device)),
                       self.labels.to(device) if self.labels is not None else None, self.indices)

    def rows(self, start: int, stop: int) -> tuple[Inputs, torch.Tensor | None]:
        """(inputs, labels) of samples start..stop-1 (views)."""
        return (map_inputs(self.inputs, lambda t: t[start:stop]),
                self.labels[start:stop] if self.labels is not None else None)

    def part(self, start: int, stop: int, indices: np.ndarray | None = None) -> "EvalSet":
        """Samples start..stop-1 as an EvalSet of their own (contiguous copies where sliced)."""
        x, y = self.rows(start, stop)
        return EvalSet(self.name, x, y, self.indices if indices is None else indices)

    def label_range(self) -> tuple[float, float] | None:
        """(smallest, largest) label, None without labels or samples."""
        if self.labels is None or self.labels.numel() == 0:
            return None
        return float(self.labels.min()), float(self.labels.max())

    def select(self, idx: torch.Tensor) -> tuple[Inputs, torch.Tensor | None]:
        """(inputs, labels) of the samples `idx` (an index tensor)."""
        return map_inputs(self.inputs, lambda t: t[idx]), (self.labels[idx] if self.labels is not None else None)


def subset_indices(n: int, samples: int | None, seed: int) -> np.ndarray | None:
    """The positions of the --samples subset of a split of `n` samples (None: all of them).

    A seeded permutation, sorted: the same subset on every rank, machine and rerun, in memory or streamed."""
    if samples is None or samples >= n:
        return None
    return np.sort(np.random.RandomState(seed).permutation(n)[:samples])


#: The key of a dict item that holds the labels (the other keys are inputs).
LABEL_KEYS = ("labels", "label")


def open_user_dataset(spec: str, split: str) -> tuple[object, int | None]:
    """``factory(split)`` of a user dataset and its length (None: an iterable dataset, read in order)."""
    from landscape_mpi.config.imports import import_object

    factory = import_object(spec, "--dataset")
    ds = factory(split)
    try:
        n = len(ds)
    except TypeError:
        if not hasattr(ds, "__iter__"):
            raise UserError(f"--dataset {spec}: factory({split!r}) must return a torch Dataset: map-style (len() "
                            f"and [i]) or iterable") from None
        return ds, None
    if n == 0:
        raise UserError(f"--dataset {spec}: the {split} split is empty")
    return ds, n


def collate_user_items(spec: str, split: str, items: list) -> tuple[Inputs, torch.Tensor | None]:
    """`collate`, with what the collation cannot read as one line naming the accepted item forms."""
    try:
        return collate(items)
    except (TypeError, ValueError, RuntimeError, KeyError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"--dataset {spec}: cannot read the {split} items ({first}); an item is (x, y), "
                        f"a dict of tensors (labels under 'labels'), or a LongTensor of token ids") from None


def _stack_inputs(values: list) -> torch.Tensor:
    """Inputs of every item, stacked: int64 token ids stay int64 (int32 too), anything else float32 as always."""
    first = values[0]
    if isinstance(first, torch.Tensor) and first.dtype in (torch.int64, torch.int32):
        return torch.stack([torch.as_tensor(v).long() for v in values])
    return torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in values])


def _stack_labels(values: list) -> torch.Tensor:
    """Labels of every item: integers (class labels) int64 as always; real values (regression targets) float32;
    tensors of any shape stacked (token labels (T,), targets (k,))."""
    first = values[0]
    if isinstance(first, torch.Tensor) and first.dim() > 0 or isinstance(first, np.ndarray) and first.ndim > 0:
        stacked = torch.stack([torch.as_tensor(v) for v in values])
        return stacked.float() if stacked.is_floating_point() else stacked.long()
    real = (isinstance(first, (float, np.floating)) or (isinstance(first, torch.Tensor) and first.is_floating_point())
            or (isinstance(first, np.ndarray) and first.dtype.kind == "f"))
    if real:
        return torch.as_tensor([float(v) for v in values], dtype=torch.float32)
    return torch.as_tensor([int(v) for v in values], dtype=torch.int64)


def collate(items: list) -> tuple[Inputs, torch.Tensor | None]:
    """A user dataset's items as (inputs, labels) tensors, in item order.

    An item is (x, y) (a tuple or list), a dict (``labels`` or ``label``: the labels; every other key an
    input: one key is the input tensor, several are the model's keyword arguments), or a single integer tensor
    of token ids (no labels: language modelling). ValueError for anything else."""
    first = items[0]
    if isinstance(first, torch.Tensor):
        if first.is_floating_point():
            raise ValueError(f"a single tensor item must be integer token ids, found {first.dtype}")
        return torch.stack([torch.as_tensor(v).long() for v in items]), None
    if isinstance(first, dict):
        label_key = next((k for k in LABEL_KEYS if k in first), None)
        keys = [k for k in first if k != label_key]
        if not keys:
            raise ValueError(f"a dict item needs an input besides {label_key!r}")
        inputs = {k: _stack_inputs([item[k] for item in items]) for k in keys}
        labels = _stack_labels([item[label_key] for item in items]) if label_key else None
        return (inputs[keys[0]] if len(keys) == 1 else inputs), labels
    if isinstance(first, (tuple, list)) and len(first) == 2:
        xs, ys = zip(*items)
        if isinstance(xs[0], dict):
            inputs = {k: _stack_inputs([x[k] for x in xs]) for k in xs[0]}
            x = inputs if len(inputs) > 1 else next(iter(inputs.values()))
        else:
            x = _stack_inputs(list(xs))
        return x, _stack_labels(list(ys))
    raise ValueError(f"an item is a {type(first).__name__}")
