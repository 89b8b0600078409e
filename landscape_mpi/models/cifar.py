"""The paper's CIFAR-10 zoo: ResNet-20/56/110 with and without shortcuts, wide ResNets, VGG-9, DenseNet-121.

Architectures follow Li et al. (2018) and He et al. (2016): 3x32x32 inputs, 10 classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from landscape_mpi.models.resnet_small import resnet_stages


class CifarResNet(nn.Module):
    """ResNet for CIFAR: 6n+2 layers, three stages of 16k, 32k, 64k channels (k: width multiplier)."""

    def __init__(self, depth: int, width: int = 1, shortcut: bool = True, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("CIFAR ResNet depth must be 6n+2")
        n = (depth - 2) // 6
        planes = [16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        # the stages are the small ResNets' (models/resnet_small.py), over images, from 16 channels at any width
        self.layer1, self.layer2, self.layer3 = resnet_stages(2, 16, planes, n, shortcut)
        self.linear = nn.Linear(planes[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class VGG9(nn.Module):
    """VGG-9 as in the paper: 7 conv layers with BatchNorm and 2 fully connected layers."""

    cfg = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, "M"]

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers, c = [], 3
        for v in self.cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class Bottleneck(nn.Module):
    def __init__(self, in_planes: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


class Transition(nn.Module):
    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    """DenseNet-BC for CIFAR; DenseNet-121 is blocks (6, 12, 24, 16) with growth rate 32."""

    def __init__(self, blocks=(6, 12, 24, 16), growth: int = 32, reduction: float = 0.5, num_classes: int = 10) -> None:
        super().__init__()
        planes = 2 * growth
        self.conv1 = nn.Conv2d(3, planes, 3, padding=1, bias=False)
        stages = []
        for i, nb in enumerate(blocks):
            layers = []
            for _ in range(nb):
                layers.append(Bottleneck(planes, growth))
                planes += growth
            stages.append(nn.Sequential(*layers))
            if i < len(blocks) - 1:
                out = int(planes * reduction)
                stages.append(Transition(planes, out))
                planes = out
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(planes)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.features(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))
