"""User models and datasets for the resume-identity and pre-flight tests (given by import path, as a user would).

`shifted_data` reads TOY_DATA_SHIFT from the environment: the same factory, the same shapes, other values.
"""

import os

import torch
from torch import nn
from torch.utils.data import TensorDataset

from landscape_toys import make_data


def shifted_data(split):
    x, y = make_data(split).tensors
    return TensorDataset(x + float(os.environ.get("TOY_DATA_SHIFT", "0")), y)


def two_class_model():
    """2 outputs: does not fit make_data's 3 classes."""
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


class TiedNet(nn.Module):
    """The second square layer shares the first one's weight: one storage under two state_dict names."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 6)
        self.b.weight = self.a.weight
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        return self.out(torch.relu(self.b(torch.relu(self.a(torch.relu(self.inp(x)))))))


def tied_model():
    return TiedNet()
