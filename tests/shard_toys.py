"""A model that is big next to what a rank holds besides it, for the peak-memory test of sharded groups
(tests/test_groups_setup.py): 16 layers of 2048 x 2048 (67M parameters, 256 MiB in float32), and 16 vectors to
evaluate it on."""

from __future__ import annotations

import torch
from torch import nn

WIDTH, LAYERS, CLASSES, N = 2048, 16, 10, 16


def big_mlp() -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(LAYERS):
        layers += [nn.Linear(WIDTH, WIDTH), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(WIDTH, CLASSES))


def vectors(split: str):
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    return [(torch.randn(WIDTH, generator=g), i % CLASSES) for i in range(N)]


def parameter_bytes() -> int:
    return sum(p.numel() * p.element_size() for p in big_mlp().parameters())
