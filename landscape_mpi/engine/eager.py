"""The eager engine: today's per-point semantics, kept plain as the oracle of every fast path.

Per point: the model's tensors are set in place to ``theta* + sum_a c_a d_a`` (`directions.PointSetter`),
BatchNorm statistics are re-estimated if asked (`recalibrate_bn`), then `evaluate.evaluate_task` runs each split
through the task (`landscape_mpi.tasks`): the one engine that evaluates any task.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from landscape_mpi.data.datasets import EvalSet, first_tensor
from landscape_mpi.directions.base import Direction, PointSetter
from landscape_mpi.engine.common import Engine, Progress, as_coords, autocast, data_to_device
from landscape_mpi.engine.evaluate import evaluate_task
from landscape_mpi.tasks import Task, as_task, call_model, is_classify


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of `model` that keep running statistics (the ones evaluation mode uses)."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            and m.running_mean is not None]


def recalibration_batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of `n` samples in max(1, n // batch_size) nearly equal batches.

    Batches are between batch_size and 2*batch_size samples, never a lone sample at the end (a train-mode
    BatchNorm1d cannot take a batch of one).
    """
    k = max(1, n // max(batch_size, 2))
    bounds = [round(i * n / k) for i in range(k + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(k)]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data: EvalSet, batch_size: int, precision: str = "fp32",
                   on_batch: Callable[[], None] | None = None) -> None:
    """Re-estimate every BatchNorm's running_mean and running_var from `data`, then leave `model` in eval mode.

    A forward without gradients with the BatchNorm layers (only them: dropout stays off) in train mode, as
    at training time: each batch is normalized with its own statistics. The running statistics are then set
    to the pooled statistics of each layer's inputs over all samples (and all positions for conv features):
    ``running_mean`` = their mean, ``running_var`` = their UNBIASED variance (divisor count - 1), which is
    what BatchNorm stores. Pooling (Chan's parallel update, in float64) weights every sample equally; with
    one batch it equals what ``momentum=None`` cumulative averaging gives, and unlike it, it stays the
    sample-weighted statistic when the last batch is smaller. Whatever `on_batch` raises propagates; the
    model is back in eval mode either way (its statistics are then half-estimated: the next point resets them).
    """
    layers = batchnorms(model)
    stats: dict[nn.Module, tuple[int, torch.Tensor, torch.Tensor]] = {}

    def pool(module: nn.Module, args: tuple) -> None:
        x = args[0]
        xc = x.detach().transpose(0, 1).reshape(x.shape[1], -1).double()
        n_b = xc.shape[1]
        mean_b = xc.mean(dim=1)
        m2_b = ((xc - mean_b[:, None]) ** 2).sum(dim=1)
        if module not in stats:
            stats[module] = (n_b, mean_b, m2_b)
            return
        n_a, mean_a, m2_a = stats[module]
        n = n_a + n_b
        delta = mean_b - mean_a
        stats[module] = (n, mean_a + delta * (n_b / n), m2_a + m2_b + delta ** 2 * (n_a * n_b / n))

    hooks = [m.register_forward_pre_hook(pool) for m in layers]
    model.eval()
    for m in layers:
        m.train()
    try:
        with autocast(precision, first_tensor(data.rows(0, 1)[0]).device):
            for start, stop in recalibration_batches(len(data), batch_size):
                call_model(model, data.rows(start, stop)[0])
                if on_batch is not None:
                    on_batch()
    finally:
        for h in hooks:
            h.remove()
        model.eval()
    for m in layers:
        if m in stats:
            n, mean, m2 = stats[m]
            m.running_mean.copy_(mean.to(m.running_mean.dtype))
            m.running_var.copy_((m2 / max(n - 1, 1)).to(m.running_var.dtype))


class EagerEngine(Engine):
    """One point at a time: set the weights in place, (recalibrate BatchNorm,) run the task's evaluation per split.

    `loss`: a Task, or "ce" | "mse" (the classify task)."""

    name = "eager"
    group_size = 1

    def __init__(self, model: nn.Module, directions: Sequence[Direction], data: Sequence[EvalSet], *, loss: str | Task,
                 device: torch.device, precision: str, batch_size: int, bn: str = "eval",
                 bn_data: EvalSet | None = None) -> None:
        # A private copy: the caller's model stays at theta* whatever happens here.
        self.model = copy.deepcopy(model).to(device).eval()
        self.n_axes = len(directions)
        self.setter = PointSetter(self.model, [{k: v.to(device) for k, v in d.items()} for d in directions])
        self.task = as_task(loss)
        # classify: pinned, non-blocking copies as always; another task moves its own batches (Task.to_device)
        self.data = (data_to_device(data, device) if is_classify(self.task)
                     else [self.task.to_device(s, device) for s in data])
        self.device = device
        self.precision = precision
        self.batch_size = batch_size
        self.bn = bn
        self.bn_data = bn_data.to(device) if (bn == "recalibrate" and bn_data is not None) else None

    def describe(self) -> str:
        return (f"engine eager (per point, NCHW, one host sync per batch), batch {self.batch_size}, "
                f"precision {self.precision}, bn {self.bn}")

    def _batches(self) -> int:
        n = sum(math.ceil(len(s) / self.batch_size) for s in self.data)
        if self.bn_data is not None:
            n += len(recalibration_batches(len(self.bn_data), self.batch_size))
        return n

    def point_forward(self, coords: Sequence[float]) -> nn.Module:
        self.setter.set([float(v) for v in coords])
        if self.bn_data is not None:
            recalibrate_bn(self.model, self.bn_data, self.batch_size, self.precision)
        return self.model

    def evaluate(self, coords: np.ndarray) -> np.ndarray:
        c = as_coords(coords, self.n_axes)
        m = len(self.task.metrics)
        out = np.empty((c.shape[0], m * len(self.data)), dtype=np.float64)
        progress = Progress(self, self._batches() * c.shape[0])
        step = lambda: progress.step(1)  # noqa: E731
        for i, point in enumerate(c):
            self.setter.set([float(v) for v in point])
            if self.bn_data is not None:
                recalibrate_bn(self.model, self.bn_data, self.batch_size, self.precision, step)
            for j, split in enumerate(self.data):
                with autocast(self.precision, self.device):
                    out[i, m * j:m * j + m] = evaluate_task(self.model, split, self.task, self.batch_size, step)
        return out
