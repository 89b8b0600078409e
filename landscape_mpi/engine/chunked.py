"""A chunk of grid points per batch read: the fast engine for streamed splits (and, in `engine.group_chunked`, for a
group of ranks per point in data mode).

A split read in batches (`data.stream`: --stream-data or an iterable dataset) cannot be held on the device, so the
per-point fast engines (`engine.fast`), which run a whole split at one point before the next, would read the data
once per point. Here every batch is read once and evaluated at all the K points of the current chunk (the
evaluator's `group_size` points) before the next batch is read: the data is read once per chunk, memory stays one
batch, plus the K points' moving tensors (K parameter sets within `choose_group_size`'s budget, as `batched`'s: 1 GiB
on CPU with the activations, a quarter of the free memory on CUDA; a chunk of one point writes the folded model's own
tensors instead, so a model too large for a second copy takes chunks of one point, reading the data once per point).

At each batch the K points' outputs come from the folded model (`engine.fold`, `FoldedTensors.stacked`): either
all K in one forward (``batched``: torch.func.vmap over the stacked tensors, as `fast.BatchedEngine`) or one forward
per point through `torch.func.functional_call` with that point's slice of the stacked tensors (``folded``, optional
channels-last: for models too large for K points per forward). Each output goes through the task's `batch_sums`
(per point per batch, as the eager engine sums them) and each point's sums are finished per split: the eager
engine's values up to float32 rounding (tests/test_engine_stream.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from landscape_mpi.data.items import EvalSet, Inputs
from landscape_mpi.engine.common import Engine, Progress, as_coords, autocast
from landscape_mpi.engine.fast import FoldedTensors
from landscape_mpi.tasks import Task, add_sums, model_output


class ChunkedEngine(Engine):
    """Each batch of a split read once and evaluated at every point of a chunk of up to `k` points."""

    def __init__(self, tensors: FoldedTensors, data: Sequence[EvalSet], n_axes: int, *, task: Task,
                 device: torch.device, precision: str, batch_size: int, k: int, batched: bool,
                 channels_last: bool = False) -> None:
        self.tensors = tensors
        self.module = tensors.module
        self.task = task
        self.n_metrics = len(task.metrics)
        self.data = [task.to_device(s, device) for s in data]
        self.n_axes = n_axes
        self.device = device
        self.precision = precision
        self.batch_size = batch_size
        self.group_size = k
        self.batched = batched
        self.channels_last = channels_last and not batched
        self.forward_kind = "batched" if batched else "folded" + ("+channels_last" if self.channels_last else "")
        self.name = f"streamed+{self.forward_kind}"

        def one(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(self.module, params, (x,))

        self.vmapped = torch.func.vmap(one, in_dims=(0, None))

    def _how(self) -> str:
        per_forward = f"{self.group_size} points per forward" if self.batched else "one point per forward"
        return (f"each batch read once for a chunk of up to {self.group_size} points, {per_forward}, "
                f"BatchNorm folded, task {self.task.name}: its sums per batch per point")

    def describe(self) -> str:
        return (f"engine {self.name} (the evaluation data is streamed: {self._how()}), batch {self.batch_size}, "
                f"precision {self.precision}")

    @torch.no_grad()
    def logits(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """(K, B, ...) outputs of K stacked parameter sets on one batch, in one forward (`fast.probe_batched`)."""
        with autocast(self.precision, self.device):
            return self.vmapped(params, x)

    @torch.no_grad()
    def outputs(self, params: dict[str, torch.Tensor], x: Inputs, k: int) -> list[torch.Tensor]:
        """The K points' output tensors on one batch `x`."""
        if self.batched:
            out = model_output(self.logits(params, x))
            return [out[i] for i in range(k)]
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.precision, self.device):
            return [model_output(torch.func.functional_call(self.module, {n: p[i] for n, p in params.items()}, (x,)))
                    for i in range(k)]

    # ------------------------------------------------------------------ what a group of ranks changes
    def _batches(self, split: EvalSet) -> Iterator[tuple[Inputs, torch.Tensor | None, bool]]:
        """(inputs, labels, real) of every batch this rank evaluates, in order (read now)."""
        for start in range(0, len(split), self.batch_size):
            x, y = split.rows(start, start + self.batch_size)
            yield x, y, True

    def _after_batch(self, progress: Progress) -> None:
        progress.step(1)

    def _reduce(self, sums: list[dict]) -> list[dict]:
        """The K points' sums of one split over every rank that read a share of it (here: this rank alone)."""
        return sums

    # ------------------------------------------------------------------ evaluation
    def _chunk(self, coords: np.ndarray, progress: Progress) -> np.ndarray:
        k = coords.shape[0]
        if k == 1 and not self.batched:  # the folded model's own tensors at the point: no stacked copy
            self.tensors.write([float(v) for v in coords[0]])
            params: dict[str, torch.Tensor] = {}
        else:
            params = self.tensors.stacked(coords)
        out = []
        for split in self.data:
            sums: list[dict] = [{} for _ in range(k)]
            for x, y, real in self._batches(split):
                if real:
                    for i, output in enumerate(self.outputs(params, x, k)):
                        add_sums(sums[i], self.task.batch_sums(output, x, y))
                self._after_batch(progress)
            finished = [self.task.finish(s) for s in self._reduce(sums)]
            out.append(np.array(finished, dtype=np.float64).reshape(k, self.n_metrics))
        return np.concatenate(out, axis=1)

    def _batches_per_pass(self) -> int:
        return sum(math.ceil(len(s) / self.batch_size) for s in self.data)

    def evaluate(self, coords: np.ndarray) -> np.ndarray:
        c = as_coords(coords, self.n_axes)
        chunks = [c[i:i + self.group_size] for i in range(0, c.shape[0], self.group_size)]
        progress = Progress(self, self._batches_per_pass() * len(chunks))
        return np.concatenate([self._chunk(chunk, progress) for chunk in chunks], axis=0)
