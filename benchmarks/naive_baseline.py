"""A naive grid-point evaluation, written the way a straightforward implementation does it (the comparison
point of benchmarks/bench_engine.py; the paper's reference code works this way).

At each point: a fresh state_dict ``theta* + sum c_i d_i`` loaded with ``load_state_dict``, a torch
DataLoader at batch 128 iterated anew over the evaluation set, an eager NCHW forward, and ``.item()`` per
batch (a host synchronization per batch).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def naive_point(model: nn.Module, theta: dict[str, torch.Tensor], directions: Sequence[dict[str, torch.Tensor]],
                coords: Sequence[float], dataset: TensorDataset, batch_size: int = 128) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` at theta + sum c d on `dataset`."""
    state = {k: v.clone() for k, v in theta.items()}
    for c, d in zip(coords, directions):
        for k, v in d.items():
            state[k] += c * v
    model.load_state_dict(state)
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    total, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            out = model(x)
            total += F.cross_entropy(out, y).item() * len(y)
            correct += (out.argmax(1) == y).sum().item()
            n += len(y)
    return total / n, correct / n


def naive_lm_point(model: nn.Module, theta: dict[str, torch.Tensor], directions: Sequence[dict[str, torch.Tensor]],
                   coords: Sequence[float], ids: torch.Tensor, batch_size: int = 128) -> tuple[float, float]:
    """(mean next-token cross-entropy, token accuracy) of a causal LM at theta + sum c d on token ids (N, T).

    The same naive shape as `naive_point`: a fresh state_dict loaded with ``load_state_dict``, an eager forward
    per batch and ``.item()`` per batch. Tied weights (gpt_tiny's head.weight is tok.weight) get the moved
    value under every name that shares the storage (load_state_dict would otherwise copy the unmoved twin last).
    """
    state = {k: v.clone() for k, v in theta.items()}
    for c, d in zip(coords, directions):
        for k, v in d.items():
            state[k] += c * v
    for k in list(state):
        for k2, t in theta.items():
            if k2 != k and t.data_ptr() == theta[k].data_ptr() and any(k in d for d in directions):
                state[k2] = state[k]
    model.load_state_dict(state)
    model.eval()
    total, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for start in range(0, len(ids), batch_size):
            x = ids[start:start + batch_size]
            logits = model(x)[:, :-1]
            y = x[:, 1:]
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum").item()
            correct += (logits.argmax(-1) == y).sum().item()
            n += y.numel()
    return total / n, correct / n
