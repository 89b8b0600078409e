"""`regress`: real-valued targets (B, ...) from model outputs of the same shape; metrics loss and r2.

loss = squared error summed over target elements, count = target elements: the split's mean squared error.
r2 = 1 - SSE / SST over the split, SST about the split's target mean, from sums of y, y^2 and the count
accumulated in float64 in one pass.
"""

from __future__ import annotations

from typing import Any

import torch

from landscape_mpi.config.surface import TASK_METRICS
from landscape_mpi.data.datasets import EvalSet, Inputs
from landscape_mpi.tasks.base import Sums, Task, describe


class RegressTask(Task):
    """Mean squared error over target elements, and the coefficient of determination."""

    name = "regress"
    metrics = TASK_METRICS["regress"]

    def loss_sum(self, output: torch.Tensor, inputs: Inputs, labels: torch.Tensor | None) -> torch.Tensor:
        out = output if output.dtype == torch.float64 else output.float()
        return ((out.reshape(labels.shape) - labels.to(out.dtype)) ** 2).sum()

    def count(self, inputs: Inputs, labels: torch.Tensor | None) -> int:
        return int(labels.numel())

    def batch_sums(self, output: torch.Tensor, inputs: Inputs, labels: torch.Tensor | None) -> Sums:
        y = labels.double()
        return {"loss": float(self.loss_sum(output, inputs, labels).double()), "count": int(labels.numel()),
                "y": float(y.sum()), "yy": float((y * y).sum())}

    def finish(self, sums: Sums) -> list[float]:
        n = sums["count"]
        if not n:
            return [float("nan")] * 2
        sst = sums["yy"] - sums["y"] ** 2 / n
        r2 = 1.0 - sums["loss"] / sst if sst > 0 else float("nan")
        return [sums["loss"] / n, r2]

    def check(self, output: Any, inputs: Inputs, labels: torch.Tensor | None, split: EvalSet) -> str | None:
        if labels is None or not labels.is_floating_point():
            found = "no labels" if labels is None else f"labels {describe(labels)}"
            return f"{found}, expected real-valued targets (floating point)"
        if not isinstance(output, torch.Tensor) or not output.is_floating_point() or output.numel() != labels.numel() \
                or output.shape[0] != labels.shape[0]:
            return f"the model returns {describe(output)}, expected real values shaped like the targets " \
                   f"{tuple(labels.shape)}"
        return None
