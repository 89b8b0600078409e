"""The metrics of a model on an evaluation set (docs/method.md#evaluation): the plain eager reference.

This is the oracle every fast path of `landscape_mpi.engine` is tested against: keep it plain. What the
numbers mean is the task's (`landscape_mpi.tasks`); classify's formulas (`batch_loss_sum`, `per_sample_loss`)
are re-exported here for the fast engines.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from landscape_mpi.data.datasets import EvalSet
from landscape_mpi.tasks import Task, add_sums, as_task
from landscape_mpi.tasks.classify import batch_loss_sum, per_sample_loss

__all__ = ["evaluate", "evaluate_task", "batch_loss_sum", "per_sample_loss"]


@torch.inference_mode()
def evaluate_task(model: nn.Module, data: EvalSet, task: Task, batch_size: int = 1024,
                  on_batch: Callable[[], None] | None = None) -> list[float]:
    """The task's metrics (in ``task.metrics`` order) over all samples of `data`, model in eval mode (`model`:
    a module, or any callable of the inputs such as a fast engine's forward).

    Per batch the task's sums (Python floats and ints: the loss sums are accumulated in float64) are added
    up; the metrics are finished from the split's totals (sample- or token-weighted means over the whole
    split, not means of batch means). A NaN or inf loss is returned as it is: it is a valid result.
    `on_batch` is called after every batch (the MPI master serves requests and flushes results there while it
    evaluates a long point); whatever it raises propagates.
    """
    if isinstance(model, nn.Module):
        model.eval()
    sums: dict = {}
    for start in range(0, len(data), batch_size):
        x, y = data.rows(start, start + batch_size)
        add_sums(sums, task.batch_sums(task.forward(model, x), x, y))
        if on_batch is not None:
            on_batch()
    return list(task.finish(sums))


def evaluate(model: nn.Module, data: EvalSet, loss: str | Task = "ce", batch_size: int = 1024,
             on_batch: Callable[[], None] | None = None) -> tuple[float, ...]:
    """The metrics of `data` as a tuple; `loss` "ce" | "mse" (the classify task: (loss, accuracy), accuracy the
    fraction in [0, 1] of argmax hits) or any Task. See `evaluate_task`."""
    return tuple(evaluate_task(model, data, as_task(loss), batch_size, on_batch))
