"""The models of the path experiments (landscape_mpi/experiments/path_definitions.py), named by import path
(``landscape_mpi.experiments.path_models:digits_mlp2_x4``) as any user model is: a two-hidden-layer perceptron on
the digits at widths 1x, 4x and 16x of 32 units, so that the width effect of weight matching (Ainsworth et al.
2023) is measured on nets that differ in width only."""

from __future__ import annotations

from torch import nn

#: Hidden units of the 1x net; the wider nets multiply it.
BASE_WIDTH = 32
#: The widths of the width experiment, as multiples of `BASE_WIDTH`.
WIDTHS = (1, 4, 16)


def digits_mlp2(hidden: int) -> nn.Module:
    """64 -> hidden -> hidden -> 10, ReLU between: two permutation groups of `hidden` units each."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 10))


def digits_mlp2_x1() -> nn.Module:
    return digits_mlp2(BASE_WIDTH)


def digits_mlp2_x4() -> nn.Module:
    return digits_mlp2(4 * BASE_WIDTH)


def digits_mlp2_x16() -> nn.Module:
    return digits_mlp2(16 * BASE_WIDTH)


def model_name(width: int) -> str:
    """The import path of the net `width` x `BASE_WIDTH` wide."""
    return f"{__name__}:digits_mlp2_x{width}"
