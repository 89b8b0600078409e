"""Small convolutional ResNets for small-scale science on 2 CPU cores: 1D (MNIST-1D, 1x40 signals) and 2D
(digits, 1x8x8 images), 10 classes.

The architecture is the paper's CIFAR ResNet (He et al. 2016; Li et al. 2018) shrunk: depth 6n+2 (8, 20, 56),
three stages of ``8w, 16w, 32w`` channels (w: width multiplier 1, 2, 4; the CIFAR nets have 16, 32, 64), each
stage but the first halving the resolution, BatchNorm after every convolution, global average pooling, one
linear classifier. ``shortcut=False`` removes every skip connection (the paper's "noshort" nets), so a depth-56
net without shortcuts is a plain 56-layer convolutional stack, the case the paper finds chaotic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: channels of the first stage at width 1 (then x2, x4 in the next stages)
BASE_CHANNELS = 8
DEPTHS = (8, 20, 56)
WIDTHS = (1, 2, 4)


def _layers(dim: int) -> tuple[type[nn.Module], type[nn.Module]]:
    if dim == 1:
        return nn.Conv1d, nn.BatchNorm1d
    if dim == 2:
        return nn.Conv2d, nn.BatchNorm2d
    raise ValueError(f"dim must be 1 or 2, not {dim}")


class SmallBlock(nn.Module):
    """Two 3-wide convolutions with BatchNorm; the input added back when `shortcut` (a 1-wide projection when
    the shape changes)."""

    def __init__(self, dim: int, in_planes: int, planes: int, stride: int, shortcut: bool) -> None:
        super().__init__()
        conv, bn = _layers(dim)
        self.conv1 = conv(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = bn(planes)
        self.conv2 = conv(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = bn(planes)
        self.use_shortcut = shortcut
        self.shortcut = nn.Sequential()
        if shortcut and (stride != 1 or in_planes != planes):
            self.shortcut = nn.Sequential(conv(in_planes, planes, 1, stride, bias=False), bn(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.use_shortcut:
            out = out + self.shortcut(x)
        return F.relu(out)


def resnet_stages(dim: int, in_planes: int, planes: list[int], blocks: int, shortcut: bool) -> list[nn.Sequential]:
    """The stages of a 6n+2-layer ResNet (this zoo's and the CIFAR nets'): stage i is `blocks` `SmallBlock`s
    of ``planes[i]`` channels, the first block of every stage but the first with stride 2. Built in this order
    (so a seeded model draws the same initial weights); state_dict keys ``<stage>.<block>.conv1.weight`` ..."""
    stages = []
    for i, p in enumerate(planes):
        stage = []
        for b in range(blocks):
            stage.append(SmallBlock(dim, in_planes, p, 2 if (b == 0 and i > 0) else 1, shortcut))
            in_planes = p
        stages.append(nn.Sequential(*stage))
    return stages


class SmallResNet(nn.Module):
    """A 6n+2-layer ResNet over 1D signals (``dim=1``, input N x 1 x L) or 2D images (``dim=2``, N x 1 x H x W).

    Raises ValueError for a depth that is not 6n+2 or a dim other than 1 and 2.
    """

    def __init__(self, dim: int, depth: int, width: int = 1, shortcut: bool = True, in_channels: int = 1,
                 num_classes: int = 10) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 with n >= 1, not {depth}")
        conv, bn = _layers(dim)
        self.dim = dim
        n = (depth - 2) // 6
        planes = [BASE_CHANNELS * width, 2 * BASE_CHANNELS * width, 4 * BASE_CHANNELS * width]
        self.conv1 = conv(in_channels, planes[0], 3, 1, 1, bias=False)
        self.bn1 = bn(planes[0])
        self.layer1, self.layer2, self.layer3 = resnet_stages(dim, planes[0], planes, n, shortcut)
        self.linear = nn.Linear(planes[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(out.flatten(2).mean(dim=2))  # global average pooling over positions


def zoo_name(dim: int, depth: int, width: int, shortcut: bool) -> str:
    """The zoo name of a small ResNet, e.g. ``resnet1d_20_noshort_w4``."""
    return f"resnet{dim}d_{depth}{'' if shortcut else '_noshort'}_w{width}"


def zoo_entries() -> dict[str, tuple[int, int, int, bool]]:
    """Every small ResNet of the zoo: name -> (dim, depth, width, shortcut)."""
    return {zoo_name(dim, depth, width, shortcut): (dim, depth, width, shortcut)
            for dim in (1, 2) for depth in DEPTHS for shortcut in (True, False) for width in WIDTHS}
