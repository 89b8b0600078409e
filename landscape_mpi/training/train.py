"""`landscape-mpi train`: train a zoo model, saving checkpoints for the surface, trajectory and Hessian analyses.

Files in ``--out-dir``: ``epoch_000.pt`` (the initialization), ``epoch_NNN.pt`` after every epoch NNN,
``iter_NNNNNNN.pt`` every ``save_every_iters`` optimizer steps (global step count; off by default), and
``final.pt``, written last: it marks the training complete. Each file is a dict loadable with
``torch.load(..., weights_only=True)``: ``state_dict``, ``epoch``, ``iteration``, ``config`` (JSON of
`TrainConfig`), the epoch's metrics (epoch files), and ``resume``: what continuing from this file needs
(optimizer, scheduler and random-generator states, the current epoch's sample order and the next batch).

Reproducibility. Two trainings of one config give bit-identical weights on the same device, torch build and
thread count: the initialization and the sample order (and augmentation) come from the seed, and training runs
under `deterministic` (torch's deterministic algorithms; on CUDA also cuDNN's deterministic kernels and cuBLAS's
fixed workspace). The CPU's float reductions are split over the intra-op threads, so another thread count gives
other roundings, which training amplifies (measured: 1 vs 2 threads differ by 1.5e-3 in the weights after two
epochs of a depth-8 ResNet on MNIST-1D). Every checkpoint records what the weights depend on beyond the config
(``reproducibility``: thread count, torch version, device type); a resume under another thread count says that it
will not match the uninterrupted run.

Training resumes from the latest checkpoint in ``--out-dir`` (by optimizer step) and gives the same weights as
an uninterrupted run on the same device and thread count (every checkpoint holds the generators' states and the
current epoch's sample order). A directory whose ``final.pt`` matches the config returns at once, without loading
data or building the model.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from typing import Any

import torch
import torch.nn.functional as F

from landscape_mpi.config.errors import UserError
from landscape_mpi.config.train import TrainConfig
from landscape_mpi.data.datasets import EvalSet, load_eval_set
from landscape_mpi.engine.evaluate import evaluate
from landscape_mpi.models import build_model
from landscape_mpi.runtime.faults import NO_FAULTS, Faults
from landscape_mpi.runtime.lifecycle import STOP, StopRequested
from landscape_mpi.tasks import Task, make_task

#: TrainConfig fields that never change the weights, so they may differ on resume.
RESUME_FREE_FIELDS = ("out_dir", "data_root", "save_every_iters")
FINAL = "final.pt"
#: Checkpoints written when a stop signal arrives mid-training (removed once the training completes).
STOPPED = "stopped"


class TrainingStopped(StopRequested):
    """A stop signal arrived during training: every step taken is in a checkpoint, the same command resumes."""


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Pad-4 random crop and random horizontal flip of a batch of images (N x C x H x W), vectorized.

    The random offsets and flips are drawn on the CPU from `generator` (so a run is reproducible whatever the
    device, and the generator's state can be saved for resume); the crop itself is one gather on x's device.
    """
    n, c, h, w = x.shape
    dx = torch.randint(0, 9, (n,), generator=generator).to(x.device)
    dy = torch.randint(0, 9, (n,), generator=generator).to(x.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    padded = F.pad(x, (4, 4, 4, 4))
    cols = torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + dx[:, None]  # N x W: a flip reads columns backwards
    rows = torch.arange(h, device=x.device) + dy[:, None]  # N x H
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


# ------------------------------------------------------------------------ the loss: the task's (tasks/)
#: datasets of token sequences: the model is trained on the lm task's next-token loss (labels equal the inputs)
LM_DATASETS = ("text",)


def training_task(dataset: str) -> Task:
    """The task whose loss a training on `dataset` minimises: ``lm`` for token sequences, else ``classify``
    with cross-entropy, the same objects (and formulas) that a surface or Hessian of the model evaluates."""
    return make_task("lm" if dataset in LM_DATASETS else "classify", "ce")


def batch_loss(task: Task, model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The task's mean loss over a batch: its loss sum divided by its count (the unit a surface averages over:
    samples for classify, predicted tokens for lm), a 0-dim tensor to differentiate."""
    return task.loss_sum(task.forward(model, inputs), inputs, labels) / task.count(inputs, labels)


#: Per training task: the evaluation batch size and the metric a checkpoint stores as its accuracy.
SCORED = {"classify": (1024, "acc"), "lm": (512, "token_acc")}


def score(task: Task, model: torch.nn.Module, data: EvalSet) -> tuple[float, float]:
    """(loss, accuracy) over all of `data` as the task evaluates it (the numbers a surface of the model reports
    at its centre): classify's accuracy, lm's token accuracy."""
    batch_size, accuracy = SCORED[task.name]
    values = dict(zip(task.metrics, evaluate(model, data, task, batch_size=batch_size)))
    return values["loss"], values[accuracy]


# ------------------------------------------------------------------------------------------ training
#: cuBLAS's workspace setting for deterministic matrix products (CUDA >= 10.2; read when cuBLAS starts).
CUBLAS_DETERMINISTIC = ":4096:8"


@contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """Torch's deterministic algorithms while training (torch warns, in the log, at an op that has no deterministic
    kernel on the device: that run is then not bit-reproducible; an error would end a GPU job for it); on CUDA also
    cuDNN's deterministic kernels, without its benchmark search. The previous settings come back afterwards (the
    surface engine chooses its own)."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]


def reproducibility(device: torch.device) -> dict[str, Any]:
    """What a training's weights depend on beyond its config and seed, recorded in every checkpoint."""
    return {"threads": torch.get_num_threads(), "torch": str(torch.__version__), "device": device.type}


def warmup_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The factor on the scheduled learning rate of optimizer step `step` + 1 (1 after the warm-up):
    (step + 1) / (warmup_epochs * steps_per_epoch), a function of the step alone, so a resume continues it."""
    ramp = cfg.warmup_epochs * steps_per_epoch
    return 1.0 if step >= ramp else (step + 1) / ramp


def _step(opt: torch.optim.Optimizer, factor: float) -> None:
    """One optimizer step at `factor` x each group's rate; the rates are put back after it, so the epoch
    scheduler never sees the warm-up (its state is the same with or without one)."""
    if factor == 1.0:
        opt.step()
        return
    rates = [g["lr"] for g in opt.param_groups]
    for g, r in zip(opt.param_groups, rates):
        g["lr"] = r * factor
    opt.step()
    for g, r in zip(opt.param_groups, rates):
        g["lr"] = r


def _config_diff(stored: dict[str, Any], cfg: TrainConfig) -> list[str]:
    wanted = asdict(cfg)
    # A field added after a checkpoint was written is there at its default (the behaviour it was trained with).
    there = {f.name: stored.get(f.name, f.default) for f in fields(TrainConfig) if f.name not in RESUME_FREE_FIELDS}
    return [f"{k}: {v!r} there, {wanted[k]!r} now" for k, v in there.items() if v != wanted[k]]


def _check_config(path: str, stored_json: str | None, cfg: TrainConfig) -> None:
    if stored_json is None:
        raise UserError(f"{path} holds no training config (written by an older version): "
                        f"choose a new --out-dir or remove the folder's checkpoints")
    diff = _config_diff(json.loads(stored_json), cfg)
    if diff:
        raise UserError(f"--out-dir {cfg.out_dir} holds a training with other settings ({'; '.join(diff)}): "
                        f"use the same settings to resume, or another --out-dir")


def read_checkpoint(path: str, noun: str = "checkpoint", fix: str = "delete it to resume from the one before"
                    ) -> dict[str, Any]:
    """A training checkpoint (or a bend's, training/bend.py) on the CPU; a damaged file is a UserError naming
    `fix`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise UserError(f"{path}: cannot read this {noun} ({type(exc).__name__}); {fix}") from None


def _latest_checkpoint(out_dir: str, steps_per_epoch: int) -> str | None:
    """The checkpoint of the most optimizer steps in `out_dir` (an epoch file wins a tie: it has metrics)."""
    best, best_key = None, None
    for path in glob.glob(os.path.join(out_dir, "*_*.pt")):
        m = re.fullmatch(r"(epoch|iter|stopped)_(\d+)\.pt", os.path.basename(path))
        if m is None:
            continue
        step = int(m.group(2)) * (steps_per_epoch if m.group(1) == "epoch" else 1)
        key = (step, m.group(1) == "epoch")
        if best_key is None or key > best_key:
            best, best_key = path, key
    return best


def reached_target(cfg: TrainConfig, metrics: dict) -> bool:
    """Whether an epoch's metrics meet ``--target-loss`` (never when it is off)."""
    return bool(cfg.target_loss) and float(metrics.get("train_loss", float("inf"))) <= cfg.target_loss


def finished(cfg: TrainConfig) -> str | None:
    """The path of ``final.pt`` if the training in ``cfg.out_dir`` is complete with this config, else None.

    Raises UserError if the folder holds a finished training with other settings.
    """
    final = os.path.join(cfg.out_dir, FINAL)
    if not os.path.isfile(final):
        return None
    _check_config(final, read_checkpoint(final).get("config"), cfg)
    return final


def train(cfg: TrainConfig, device: torch.device | None = None, quiet: bool = False,
          faults: Faults = NO_FAULTS) -> str:
    """Train (or resume, or find finished) and save checkpoints; returns the path of ``final.pt``.

    `device`: where the model, the data and the augmentation live (default: CUDA if available, else CPU).
    `faults`: the test suite's fault points, ``train_step:K`` after the K-th step
    (docs/testing.md#test-hooks-the-landscape_mpi_test_-variables).
    Raises UserError for an unusable --out-dir or a resume whose stored config differs.
    """
    done = finished(cfg)
    if done is not None:
        return done  # a rerun of a finished training costs nothing
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        os.makedirs(cfg.out_dir, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out-dir {cfg.out_dir}: cannot create it ({exc}); choose another folder") from None
    with deterministic(device):
        return _train(cfg, device, quiet, faults)


def _train(cfg: TrainConfig, device: torch.device, quiet: bool, faults: Faults) -> str:
    # The model is initialized on the CPU from the seed, so the same seed gives the same start on every device.
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)  # sample order and augmentation: CPU, saved for resume
    model = build_model(cfg.model).to(device)
    train_dev = load_eval_set(cfg.dataset, "train", cfg.data_root, cfg.samples, cfg.seed).to(device)
    test_dev = load_eval_set(cfg.dataset, "test", cfg.data_root, None, cfg.seed).to(device)
    n = len(train_dev)
    steps_per_epoch = -(-n // cfg.batch_size)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs)
    elif cfg.schedule == "step":
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [cfg.epochs // 2, (3 * cfg.epochs) // 4], 0.1)
    elif cfg.schedule == "step3":  # the paper's: /10 at epochs 150, 225 and 275 of 300
        sched = torch.optim.lr_scheduler.MultiStepLR(
            opt, [cfg.epochs // 2, (3 * cfg.epochs) // 4, (11 * cfg.epochs) // 12], 0.1)
    else:
        sched = None
    augment = cfg.augment and cfg.dataset == "cifar10"
    task = training_task(cfg.dataset)

    def save(name: str, epochs_done: int, step: int, order: torch.Tensor, next_batch: int, metrics: dict) -> str:
        """Write one checkpoint atomically (temporary file, then rename: a kill never leaves half a file).

        `next_batch` > 0: saved inside epoch ``epochs_done + 1``, whose sample `order` it keeps.
        """
        path = os.path.join(cfg.out_dir, name)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        sched_state = None
        if sched is not None:
            # MultiStepLR keeps its milestones in a collections.Counter, which weights_only loading refuses.
            sched_state = {k: (dict(v) if isinstance(v, dict) else v) for k, v in sched.state_dict().items()}
        resume = {"optimizer": opt.state_dict(), "scheduler": sched_state, "generator": generator.get_state(),
                  "torch_rng": torch.get_rng_state(), "order": order.cpu(), "next_batch": next_batch,
                  "epoch_in_progress": epochs_done + 1}
        tmp = path + ".tmp"
        torch.save({"state_dict": state, "epoch": epochs_done, "iteration": step,
                    "config": json.dumps(asdict(cfg)), "resume": resume, "reproducibility": reproducibility(device),
                    **metrics}, tmp)
        os.replace(tmp, path)
        return path

    def measure() -> dict:
        tl, ta = score(task, model, train_dev)
        vl, va = score(task, model, test_dev)
        return {"train_loss": tl, "train_acc": ta, "test_loss": vl, "test_acc": va}

    # Resume from the latest checkpoint, or start from epoch 0 (whose file is the initialization).
    epoch, step, next_batch, order = 1, 0, 0, torch.empty(0, dtype=torch.int64)
    keep_order = False  # resumed inside an epoch (or at a stop before its first batch): its sample order is kept
    latest = _latest_checkpoint(cfg.out_dir, steps_per_epoch)
    if latest is None:
        path = save("epoch_000.pt", 0, 0, order, 0, measure())
    else:
        ck = read_checkpoint(latest)
        _check_config(latest, ck.get("config"), cfg)
        if "resume" not in ck:
            raise UserError(f"{latest} holds no resume state (written by an older version): "
                            f"choose a new --out-dir or remove the folder's checkpoints")
        r = ck["resume"]
        model.load_state_dict(ck["state_dict"])
        opt.load_state_dict(r["optimizer"])
        if sched is not None:
            sched.load_state_dict(r["scheduler"])
        generator.set_state(r["generator"])
        torch.set_rng_state(r["torch_rng"])
        epoch, step, next_batch, order = r["epoch_in_progress"], ck["iteration"], r["next_batch"], r["order"]
        keep_order = order.numel() > 0
        path = latest if latest.startswith(os.path.join(cfg.out_dir, "epoch_")) else None
        if path is not None and reached_target(cfg, ck):
            epoch = cfg.epochs + 1  # stopped at the target before it was marked final: nothing left to train
        if not quiet:
            print(f"resuming {cfg.out_dir} from {os.path.basename(latest)} (step {step})", file=sys.stderr, flush=True)
        was = ck.get("reproducibility", {}).get("threads")
        if was is not None and was != torch.get_num_threads():
            print(f"landscape-mpi train: warning: {os.path.basename(latest)} was written with {was} thread(s), this "
                  f"process has {torch.get_num_threads()}: the resumed weights will differ from an uninterrupted "
                  f"run in the last digits (set OMP_NUM_THREADS={was} to match it)", file=sys.stderr, flush=True)

    while epoch <= cfg.epochs:
        t0 = time.perf_counter()
        model.train()
        if next_batch == 0 and not keep_order:
            order = torch.randperm(n, generator=generator)
        keep_order = False
        order_dev = order.to(device)
        for b in range(next_batch, steps_per_epoch):
            if STOP.requested:  # SIGTERM/SIGINT/SIGUSR1: keep every step taken, resume exactly here
                save(f"{STOPPED}_{step:07d}.pt", epoch - 1, step, order, b, {})
                raise TrainingStopped(f"training stopped by {STOP.signal_name} at step {step} "
                                      f"(epoch {epoch}/{cfg.epochs}): rerun the same command to resume")
            idx = order_dev[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            xb, yb = train_dev.inputs[idx], train_dev.labels[idx]
            if augment:
                xb = _augment(xb, generator)
            opt.zero_grad(set_to_none=True)
            batch_loss(task, model, xb, yb).backward()
            if cfg.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
            _step(opt, warmup_factor(cfg, step, steps_per_epoch))
            step += 1
            if faults.enabled:
                faults.reached(f"train_step:{step}")
            if cfg.save_every_iters and step % cfg.save_every_iters == 0:
                save(f"iter_{step:07d}.pt", epoch - 1, step, order, b + 1, {})
                model.train()
        if sched is not None:
            sched.step()
        metrics = measure()
        path = save(f"epoch_{epoch:03d}.pt", epoch, step, torch.empty(0, dtype=torch.int64), 0, metrics)
        if not quiet:
            print(f"epoch {epoch:3d}/{cfg.epochs}  "
                  f"train loss {metrics['train_loss']:.4f} acc {metrics['train_acc']:.4f}"
                  f"  test loss {metrics['test_loss']:.4f} acc {metrics['test_acc']:.4f}  "
                  f"({time.perf_counter() - t0:.1f} s)  -> {path}", file=sys.stderr, flush=True)
        if reached_target(cfg, metrics):
            if not quiet:
                print(f"train loss {metrics['train_loss']:.4g} <= --target-loss {cfg.target_loss:g}: stopping after "
                      f"epoch {epoch}", file=sys.stderr, flush=True)
            break
        epoch, next_batch = epoch + 1, 0
    final = os.path.join(cfg.out_dir, FINAL)
    if path is None:  # resumed from an iteration file at the very end: the last epoch file exists
        path = os.path.join(cfg.out_dir, f"epoch_{cfg.epochs:03d}.pt")
    tmp = final + ".tmp"
    shutil.copyfile(path, tmp)
    os.replace(tmp, final)  # written last: final.pt marks the training complete
    for stale in glob.glob(os.path.join(cfg.out_dir, f"{STOPPED}_*.pt")):  # stop points, passed and not needed
        os.remove(stale)
    return final
