"""The task interface: what a grid point's numbers mean for one kind of model (docs/method.md#tasks).

A `Task` says how a batch goes to the device, how the model is called, the loss of a batch as a SUM and a
COUNT (per sample, per token, per target element), the metric sums of a batch, and how the metrics are
finished from the sums of a whole split. The evaluation loop (`engine.evaluate.evaluate_task`) and the Hessian
(`curvature.hessian.HessianOperator`) know nothing else about the model; a user task is any object with these
members (``--task package.module:factory``; docs/usage.md#tasks).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from landscape_mpi.data.datasets import EvalSet, Inputs

Sums = dict[str, Any]


def model_output(out: Any) -> Any:
    """The tensor a model returned: a tensor as it is, the first element of a tuple or list, ``.logits`` of an
    object that has it (Hugging Face outputs); anything else as it is (the pre-flight reports it)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out:
        return out[0]
    logits = getattr(out, "logits", None)
    return logits if isinstance(logits, torch.Tensor) else out


def call_model(model: nn.Module, inputs: Inputs) -> Any:
    """``model(x)`` for a tensor; ``model(**inputs)`` for a dict of tensors (the keys name forward's arguments)."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(inputs)


def add_sums(total: Sums, new: Sums) -> None:
    """Add one batch's `Task.batch_sums` into the running `total` of a split (in place)."""
    for key, value in new.items():
        total[key] = total[key] + value if key in total else value


def has_own_forward(task: Any) -> bool:
    """Whether `task` calls the model its own way (a `forward` other than `Task.forward`): the fast engines
    call the traced model on a tensor of inputs and read its output with `model_output`, as `Task.forward` does."""
    return getattr(type(task), "forward", None) is not Task.forward


def describe(value: Any) -> str:
    """A short description of what a model returned or a batch holds, for error messages."""
    if isinstance(value, torch.Tensor):
        return f"{str(value.dtype).replace('torch.', '')} {tuple(value.shape)}"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {describe(v)}" for k, v in value.items()) + "}"
    return type(value).__name__


class Task:
    """The interface (subclass it, or write any object with the same members).

    `name`: shown in logs; `metrics`: the metric names, the first one ``loss`` (the file's columns are
    ``<split>_<metric>``).
    """

    name: str = "task"
    metrics: tuple[str, ...] = ("loss",)

    def to_device(self, data: EvalSet, device: torch.device) -> EvalSet:
        """The split on `device` (copied once; evaluation slices it)."""
        return data.to(device)

    def forward(self, model: nn.Module, inputs: Inputs) -> torch.Tensor:
        """The model's output tensor for a batch of inputs."""
        return model_output(call_model(model, inputs))

    def loss_sum(self, output: torch.Tensor, inputs: Inputs, labels: torch.Tensor | None) -> torch.Tensor:
        """The loss SUMMED over the batch's units (samples, tokens, target elements): a differentiable 0-dim
        tensor (the Hessian differentiates it twice)."""
        raise NotImplementedError

    def count(self, inputs: Inputs, labels: torch.Tensor | None) -> int:
        """How many units the batch's loss sum is over (the mean loss is sum / count over the whole split)."""
        raise NotImplementedError

    def batch_sums(self, output: torch.Tensor, inputs: Inputs, labels: torch.Tensor | None) -> Sums:
        """Python numbers to add up over the batches of a split: at least ``loss`` (the loss sum, a float) and
        ``count``; whatever else `finish` needs."""
        return {"loss": float(self.loss_sum(output, inputs, labels).double()), "count": self.count(inputs, labels)}

    def finish(self, sums: Sums) -> list[float]:
        """The metrics of a split, in `metrics` order, from the summed `batch_sums` of all its batches."""
        return [sums["loss"] / sums["count"] if sums["count"] else float("nan")]

    def check(self, output: Any, inputs: Inputs, labels: torch.Tensor | None, split: EvalSet) -> str | None:
        """The pre-flight, on the output of one forward of a couple of samples (`inputs`, `labels`) of `split`:
        None if this task can read the model's output and the data, else what was found (one phrase; the
        caller names the options)."""
        return None
