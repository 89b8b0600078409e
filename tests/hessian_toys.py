"""Tiny user models and datasets for the Hessian tests, given by import path (hessian_toys:make_model, ...).

Smooth activations (tanh) on purpose: finite differences of the loss along a direction must see a smooth
function, which ReLU kinks would spoil. Deliberately not part of the package: tests put this folder on PYTHONPATH.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.data import TensorDataset

FEATURES, CLASSES = 8, 4


def make_data(split):
    """Four Gaussian blobs in 8 dimensions: 160 train / 64 test samples."""
    g = torch.Generator().manual_seed(11 if split == "train" else 12)
    n = 160 if split == "train" else 64
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    centers = torch.randn(CLASSES, FEATURES, generator=torch.Generator().manual_seed(10)) * 1.5
    x = centers[labels] + torch.randn(n, FEATURES, generator=g)
    return TensorDataset(x, labels)


def make_model():
    """8 -> 16 (BatchNorm, tanh) -> 4: 244 trainable parameters."""
    return nn.Sequential(nn.Linear(FEATURES, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, CLASSES))


def make_other_model():
    """Another architecture (12 hidden units): its Hessian file does not fit make_model."""
    return nn.Sequential(nn.Linear(FEATURES, 12), nn.BatchNorm1d(12), nn.Tanh(), nn.Linear(12, CLASSES))


def make_frozen_model():
    """make_model with every parameter frozen (requires_grad False): no Hessian."""
    model = make_model()
    model.requires_grad_(False)
    return model


class ConcaveLogit(nn.Module):
    """logits = (0, -q, -q, -q) with q(x) = sum_j c_j (W x)_j^2, c_j > 0 fixed.

    With every label 0 (make_zero_label_data) the loss is log(1 + 3 exp(-q)), decreasing and convex in q with
    dl/dq = -3/4 at q = 0. At W = 0 the gradient vanishes and the Hessian is -(3/2) blockdiag_j(c_j E[x x^T]):
    W = 0 is a local maximum of the loss, every eigenvalue negative.
    """

    def __init__(self, rows: int = 5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(rows, FEATURES))
        self.register_buffer("c", torch.linspace(1.0, 2.0, rows))

    def forward(self, x):
        q = ((x @ self.weight.T) ** 2 * self.c).sum(dim=1, keepdim=True)
        return torch.cat([torch.zeros_like(q), -q.expand(-1, CLASSES - 1)], dim=1)


def make_concave_model():
    return ConcaveLogit()


def make_zero_label_data(split):
    """make_data's inputs (anisotropic scale per feature: distinct eigenvalues) with every label 0."""
    x, _ = make_data(split).tensors
    scale = torch.linspace(0.5, 1.5, FEATURES)
    return TensorDataset(x * scale, torch.zeros(len(x), dtype=torch.int64))


# ------------------------------------------------------------------------- oracles of the Hessian tests
def part_trained_model() -> nn.Module:
    """`make_model` after 40 full-batch SGD steps on the train split (a saddle-like point: eigenvalues of both
    signs), BatchNorm statistics updated; left in train mode."""
    x, y = make_data("train").tensors
    torch.manual_seed(0)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(40):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def exact_hessian(model: nn.Module, data, loss: str = "ce") -> np.ndarray:
    """Hessian of the mean loss over all samples of `data` (an EvalSet: inputs, labels) w.r.t. the trainable
    parameters: torch.autograd.functional.hessian over the flat parameter vector, float64, one batch, eval mode."""
    model = model.double().eval()
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    flat0 = torch.cat([p.detach().reshape(-1) for _, p in named])
    x = data.inputs.double()

    def mean_loss(flat: torch.Tensor) -> torch.Tensor:
        params, i = {}, 0
        for k, p in named:
            params[k] = flat[i:i + p.numel()].reshape(p.shape)
            i += p.numel()
        logits = functional_call(model, params, (x,))
        if loss == "ce":
            return F.cross_entropy(logits, data.labels)
        return ((torch.softmax(logits, 1) - F.one_hot(data.labels, logits.shape[1]).double()) ** 2).mean()

    return torch.autograd.functional.hessian(mean_loss, flat0, vectorize=True).numpy()
