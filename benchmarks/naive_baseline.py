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
