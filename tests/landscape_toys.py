"""A user model and dataset given by import path (--model landscape_toys:make_model,
--dataset landscape_toys:make_data).

Deliberately not part of the package: tests put this folder on PYTHONPATH, as a user would.
"""

import torch
from torch import nn
from torch.utils.data import TensorDataset


def make_data(split):
    g = torch.Generator().manual_seed(1 if split == "train" else 2)
    n = 120 if split == "train" else 60
    labels = torch.randint(0, 3, (n,), generator=g)
    centers = torch.tensor([[2.0, 0.0, 0.0, 1.0], [0.0, 2.0, 0.0, -1.0], [0.0, 0.0, 2.0, 0.5]])
    x = centers[labels] + torch.randn(n, 4, generator=g)
    return TensorDataset(x, labels)


def make_model():
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def make_wide_model():
    return nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
