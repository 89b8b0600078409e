"""`landscape-mpi train`: train a zoo model and save a checkpoint every epoch.

The checkpoints (``epoch_000.pt`` is the initialization, ``epoch_NNN.pt`` after epoch NNN, ``final.pt``)
are what the surface, interpolation and trajectory commands read, and what the paper's batch-size and
weight-decay experiments compare. Each is a dict with ``state_dict`` and the epoch's metrics, loadable
with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from landscape_mpi.data import load_eval_set
from landscape_mpi.errors import UserError
from landscape_mpi.evaluate import evaluate
from landscape_mpi.models import build_model


@dataclass(frozen=True)
class TrainConfig:
    model: str
    out_dir: str
    dataset: str = "digits"
    data_root: str | None = None
    samples: int | None = None
    """Train on a deterministic subset of this many training samples."""
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    """none, step (x0.1 at 50% and 75% of the epochs) or cosine."""
    augment: bool = True
    """Random crop and horizontal flip (CIFAR-10 only)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise UserError(f"--epochs {self.epochs}: must be at least 1")
        if self.batch_size < 1:
            raise UserError(f"--batch-size {self.batch_size}: must be positive")
        if self.lr <= 0:
            raise UserError(f"--lr {self.lr}: must be positive")
        if self.optimizer not in ("sgd", "adam"):
            raise UserError(f"--optimizer {self.optimizer}: choose sgd or adam")
        if self.schedule not in ("none", "step", "cosine"):
            raise UserError(f"--schedule {self.schedule}: choose none, step or cosine")


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Pad-4 random crop and random horizontal flip of a batch of images, done on tensors."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dx = torch.randint(0, 9, (n,), generator=generator)
    dy = torch.randint(0, 9, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.empty_like(x)
    for i in range(n):
        img = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out[i] = img.flip(-1) if flip[i] else img
    return out


def train(cfg: TrainConfig, device: torch.device | None = None, quiet: bool = False) -> str:
    """Train and save checkpoints; returns the path of ``final.pt``."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        os.makedirs(cfg.out_dir, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out-dir {cfg.out_dir}: cannot create it ({exc}); choose another folder") from None
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    model = build_model(cfg.model).to(device)
    train_set = load_eval_set(cfg.dataset, "train", cfg.data_root, cfg.samples, cfg.seed)
    test_set = load_eval_set(cfg.dataset, "test", cfg.data_root, None, cfg.seed)
    x_train, y_train = train_set.inputs, train_set.labels
    train_dev, test_dev = train_set.to(device), test_set.to(device)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs)
    elif cfg.schedule == "step":
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [cfg.epochs // 2, (3 * cfg.epochs) // 4], 0.1)
    else:
        sched = None
    augment = cfg.augment and cfg.dataset == "cifar10"

    def save(epoch: int, metrics: dict) -> str:
        path = os.path.join(cfg.out_dir, f"epoch_{epoch:03d}.pt")
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        tmp = path + ".tmp"
        torch.save({"state_dict": state, "epoch": epoch, "config": json.dumps(asdict(cfg)), **metrics}, tmp)
        os.replace(tmp, path)
        return path

    def measure() -> dict:
        tl, ta = evaluate(model, train_dev)
        vl, va = evaluate(model, test_dev)
        return {"train_loss": tl, "train_acc": ta, "test_loss": vl, "test_acc": va}

    path = save(0, measure())
    n = len(y_train)
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            xb = x_train[idx]
            if augment:
                xb = _augment(xb, generator)
            xb, yb = xb.to(device), y_train[idx].to(device)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
        if sched is not None:
            sched.step()
        metrics = measure()
        path = save(epoch, metrics)
        if not quiet:
            print(f"epoch {epoch:3d}/{cfg.epochs}  train loss {metrics['train_loss']:.4f} acc {metrics['train_acc']:.4f}"
                  f"  test loss {metrics['test_loss']:.4f} acc {metrics['test_acc']:.4f}  "
                  f"({time.perf_counter() - t0:.1f} s)  -> {path}", file=sys.stderr, flush=True)
    final = os.path.join(cfg.out_dir, "final.pt")
    shutil.copyfile(path, final)
    return final
