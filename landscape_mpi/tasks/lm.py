"""`lm`: causal language modelling on token sequences; metrics loss, ppl and token_acc.

Inputs: token ids (B, T) (int64), or a dict with ``input_ids`` (and ``attention_mask``); labels: none (the
targets are the inputs shifted by one) or (B, T) with -100 where no token is predicted (Hugging Face style,
unshifted). The model returns logits (B, T, V) (or an object with ``.logits``). Per predicted token: the
cross-entropy of ``logits[:, t]`` against the token at t + 1; positions whose target is -100 or whose
attention_mask is 0 are not counted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from landscape_mpi.config.surface import TASK_METRICS
from landscape_mpi.data.datasets import EvalSet, Inputs
from landscape_mpi.tasks.base import Sums, Task, describe

IGNORE_INDEX = -100


def token_ids(inputs: Inputs) -> torch.Tensor:
    return inputs["input_ids"] if isinstance(inputs, Mapping) else inputs


def targets(inputs: Inputs, labels: torch.Tensor | None) -> torch.Tensor:
    """(B, T - 1) int64: the token predicted at each position 0..T-2, IGNORE_INDEX where none is."""
    y = (labels if labels is not None else token_ids(inputs))[:, 1:].long()
    if isinstance(inputs, Mapping) and "attention_mask" in inputs:
        y = y.masked_fill(inputs["attention_mask"][:, 1:] == 0, IGNORE_INDEX)
    return y


class LanguageModelTask(Task):
    """Next-token cross-entropy summed over predicted tokens; count = predicted tokens."""

    name = "lm"
    metrics = TASK_METRICS["lm"]

    def loss_sum(self, output: torch.Tensor, inputs: Inputs, labels: torch.Tensor | None) -> torch.Tensor:
        logits = output[:, :-1]
        if logits.dtype != torch.float64:
            logits = logits.float()
        y = targets(inputs, labels)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE_INDEX,
                               reduction="sum")

    def count(self, inputs: Inputs, labels: torch.Tensor | None) -> int:
        return int((targets(inputs, labels) != IGNORE_INDEX).sum())

    def batch_sums(self, output: torch.Tensor, inputs: Inputs, labels: torch.Tensor | None) -> Sums:
        y = targets(inputs, labels)
        valid = y != IGNORE_INDEX
        hits = (output[:, :-1].argmax(dim=-1) == y) & valid
        return {"loss": float(self.loss_sum(output, inputs, labels).double()), "count": int(valid.sum()),
                "hits": int(hits.sum())}

    def finish(self, sums: Sums) -> list[float]:
        n = sums["count"]
        if not n:
            return [float("nan")] * 3
        loss = sums["loss"] / n
        ppl = math.exp(loss) if loss < 709.0 else float("inf")  # exp overflows a float64 beyond ~709.78
        return [loss, ppl, sums["hits"] / n]

    def check(self, output: Any, inputs: Inputs, labels: torch.Tensor | None, split: EvalSet) -> str | None:
        ids = token_ids(inputs)
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point():
            return f"inputs {describe(inputs)}, expected token ids of shape (batch, tokens), int64"
        if ids.shape[1] < 2:
            return f"sequences of {ids.shape[1]} token, expected at least 2 (one to predict)"
        if labels is not None and (labels.shape != ids.shape or labels.is_floating_point()):
            return f"labels {describe(labels)}, expected int64 token labels shaped like the inputs {tuple(ids.shape)}"
        if (not isinstance(output, torch.Tensor) or output.dim() != 3 or tuple(output.shape[:2]) != tuple(ids.shape)
                or not output.is_floating_point()):
            return (f"the model returns {describe(output)}, expected floating-point logits (batch, tokens, vocab) "
                    f"= {(*ids.shape, 'V')}")
        top = int(ids.max())
        if top >= output.shape[2] or int(ids.min()) < 0:
            return f"token ids go up to {top} but the model has {output.shape[2]} logits per token"
        return None
