"""Pieces every engine shares: the Engine interface, the weights at grid points, precision, work accounting."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import numpy as np
import torch

from landscape_mpi.data.datasets import EvalSet, decode_images, map_inputs


class Engine:
    """Evaluates grid points: coordinates in, the task's metrics per split out (classify: [loss, acc]).

    Subclasses set `name` (recorded in the log), `group_size` (grid points it prefers per call: 1 for a
    per-point engine, K for one that stacks K points per forward) and implement `evaluate`.
    """

    name: str = "engine"
    group_size: int = 1
    on_batch: Callable[[float], None] | None = None
    """Called after every evaluation batch with the fraction (0..1] of the current call's work done. It may
    raise (the run abandons a point on a stop signal): the exception propagates and the engine stays
    usable, because every call recomputes the weights from theta* before evaluating."""

    def evaluate(self, coords: np.ndarray) -> np.ndarray:
        """coords float64 (K, n_axes) -> float64 (K, n_metrics * n_splits): per split in order the task's
        metrics (classify: [loss, accuracy])."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for the log: the engine and its settings."""
        return f"engine {self.name}, group_size {self.group_size}"

    def point_forward(self, coords: Sequence[float]) -> Callable:
        """Set the weights at one point and return the callable that computes the model's output there (a
        per-point engine's; `engine.sequential` reads its own batches through it)."""
        raise NotImplementedError(f"engine {self.name} evaluates whole splits only")


class Progress:
    """Counts evaluated samples of one `evaluate` call and reports the fraction to `on_batch`."""

    def __init__(self, engine: Engine, total: int) -> None:
        self.engine = engine
        self.total = max(total, 1)
        self.done = 0

    def step(self, n: int) -> None:
        self.done += n
        if self.engine.on_batch is not None:
            self.engine.on_batch(min(self.done / self.total, 1.0))


def as_coords(coords: np.ndarray | Sequence[Sequence[float]], n_axes: int) -> np.ndarray:
    """Validate the (K, n_axes) float64 coordinate array an engine receives."""
    c = np.array(coords, dtype=np.float64, order="C")  # a copy: the caller's array may be a strided view
    if c.ndim == 1:
        c = c[None, :]
    if c.ndim != 2 or c.shape[1] != n_axes:
        raise ValueError(f"coords must be shaped (K, {n_axes}), got {c.shape}")
    return c


class AffineFamily:
    """Named tensors that are affine in the grid coordinates: ``t(c) = base + sum_a c_a * d_a``.

    Only tensors with some non-zero direction are held. `write` sets them in place at one point (each
    recomputed from its base, as `directions.PointSetter` does: no drift); `stacked` returns K points at once,
    shaped (K, *shape), for engines that evaluate several points per forward.
    """

    def __init__(self, bases: dict[str, torch.Tensor], dirs: dict[str, list[torch.Tensor | None]]) -> None:
        self.bases = bases
        self.dirs = dirs

    @classmethod
    def from_directions(cls, state: dict[str, torch.Tensor], directions: Sequence[dict[str, torch.Tensor]],
                        device: torch.device) -> "AffineFamily":
        """The tensors of `state` that some direction moves (zero directions are dropped), on `device`."""
        bases, dirs = {}, {}
        for k, t in state.items():
            ds = [d.get(k) for d in directions]
            ds = [None if (d is None or not bool(d.any())) else d.to(device, t.dtype) for d in ds]
            if any(d is not None for d in ds):
                bases[k] = t.detach().to(device).clone()
                dirs[k] = ds
        return cls(bases, dirs)

    def names(self) -> list[str]:
        return list(self.bases)

    @torch.no_grad()
    def write(self, targets: dict[str, torch.Tensor], coords: Sequence[float]) -> None:
        """Set ``targets[name]`` (same shape) in place to the tensor at `coords`."""
        for k, base in self.bases.items():
            t = targets[k]
            t.copy_(base)
            for c, d in zip(coords, self.dirs[k]):
                if d is not None and c != 0.0:
                    t.add_(d, alpha=float(c))

    @torch.no_grad()
    def at(self, coords: Sequence[float]) -> dict[str, torch.Tensor]:
        """New tensors at one point."""
        out = {}
        for k, base in self.bases.items():
            t = base.clone()
            for c, d in zip(coords, self.dirs[k]):
                if d is not None and c != 0.0:
                    t.add_(d, alpha=float(c))
            out[k] = t
        return out

    @torch.no_grad()
    def stacked(self, coords: np.ndarray) -> dict[str, torch.Tensor]:
        """New tensors at K points: name -> (K, *shape)."""
        k_points = coords.shape[0]
        out = {}
        for k, base in self.bases.items():
            t = base.unsqueeze(0).repeat(k_points, *([1] * base.dim()))
            for a, d in enumerate(self.dirs[k]):
                if d is None:
                    continue
                c = torch.as_tensor(coords[:, a], dtype=base.dtype, device=base.device)
                t.add_(c.view(-1, *([1] * base.dim())) * d)
            out[k] = t
        return out


def set_precision(precision: str, device: torch.device) -> None:
    """Backend flags for `precision` (process-wide: they are torch's own globals).

    fp32: TF32 off for matmul and cuDNN (CUDA would otherwise run convolutions in TF32 and a GPU surface
    would differ from a CPU one by about 1e-4); tf32: both on; bf16: fp32 flags, the forward runs under
    bfloat16 autocast (see `autocast`).
    """
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context the forward runs in: bfloat16 autocast for ``bf16``, nothing otherwise."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class DecodedImages:
    """Device inputs kept as uint8 images and normalized per slice: ``x[a:b]`` is the float32 batch, the same
    bits as the float inputs (`data.decode_images` made those too), at a quarter of the device memory."""

    def __init__(self, raw: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.raw, self.mean, self.std = raw, mean, std
        self.shape = raw.shape
        self.device = raw.device
        self.dtype = torch.float32

    def __getitem__(self, key) -> torch.Tensor:
        return decode_images(self.raw[key], self.mean, self.std)

    def __len__(self) -> int:
        return int(self.raw.shape[0])

    def dim(self) -> int:
        return self.raw.dim()


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def data_to_device(data: Sequence[EvalSet], device: torch.device,
                   memory_format: torch.memory_format | None = None, compact: bool = False) -> list[EvalSet]:
    """The evaluation sets on `device`, copied once (pinned and non-blocking on CUDA), optionally in
    channels-last layout so that every batch slice is already in the layout the convolutions want.

    `compact`: a set with a uint8 form (`EvalSet.compact`) goes to the device as uint8 and its inputs become
    `DecodedImages` (normalized per batch); sets without one are copied as they are."""
    out = []
    for s in data:
        if s.streamed:  # read in batches: each batch goes to the device as it is read
            out.append(s.to(device))
            continue
        y = _to(s.labels, device) if s.labels is not None else None
        if compact and s.compact is not None:
            raw = _to(s.compact.raw, device)
            if memory_format is not None and raw.dim() == 4:
                raw = raw.contiguous(memory_format=memory_format)
            x = DecodedImages(raw, s.compact.mean.to(device), s.compact.std.to(device))
        elif isinstance(s.inputs, dict):
            x = map_inputs(s.inputs, lambda t: _to(t, device))
        else:
            x = _to(s.inputs, device)
            if memory_format is not None and x.dim() == 4:
                x = x.contiguous(memory_format=memory_format)
        out.append(EvalSet(s.name, x, y, s.indices))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out
