"""A model whose loss at the point (a, b) of a surface is a known bump, for tests/test_adaptive.py
(--model adaptive_toys:make_model --dataset adaptive_toys:make_data --task regress, with target directions
e_1, e_2 from theta* = 0: the weights at (a, b) are (a, b)).

Deliberately not part of the package: tests put this folder on PYTHONPATH, as a user would.
"""

import math

import torch
from torch import nn
from torch.utils.data import TensorDataset

#: The bump's center and width: loss(a, b) = exp(-|(a, b) - CENTER|^2 / WIDTH) (0 far from it).
CENTER, WIDTH = (0.4, -0.3), 0.02


def bump(a: float, b: float = 0.0) -> float:
    """The loss the surface must show at (a, b) (b = 0 on a 1-D surface: the bump's center is off the x axis)."""
    return math.exp(-((a - CENTER[0]) ** 2 + (b - CENTER[1]) ** 2) / WIDTH)


def make_data(split):
    x = torch.ones(8, 1)
    return TensorDataset(x, torch.zeros(8, 1))


class Bump(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1, 2))

    def forward(self, x):
        center = torch.tensor(CENTER, dtype=self.w.dtype)
        # mse against 0 of sqrt(bump): the loss is the bump itself
        return x * torch.exp(-((self.w[0] - center) ** 2).sum() / (2 * WIDTH))


def make_model():
    return Bump()


def save_checkpoints(folder) -> tuple[str, str, str]:
    """theta* = (0, 0) and the two targets (1, 0), (0, 1): paths of the three state_dicts."""
    paths = []
    for name, w in (("center", [0.0, 0.0]), ("ex", [1.0, 0.0]), ("ey", [0.0, 1.0])):
        path = f"{folder}/{name}.pt"
        torch.save({"w": torch.tensor([w])}, path)
        paths.append(path)
    return tuple(paths)
