"""Run a path experiment (`path_definitions`): train its nets, spawn its children, compute its paths.

Layout of ``OUT`` as for the other experiments (runner.py): ``OUT/runs/<run>/`` trainings (shared with every
experiment by name), ``OUT/<experiment>/manifest.json`` and ``OUT/<experiment>/<path>.h5`` path files (a trained
bend beside its file, ``<path>.h5.bend.pt``; an alignment's permutation, ``<path>.h5.align-1.h5``).

Every step is resumable and a finished one costs nothing: a training with ``final.pt`` is not touched, a child
whose folder holds a checkpoint resumes from it, a complete path file is not opened for writing. Each path is a
``landscape-mpi path`` subprocess (under the launcher, if one is given), so that it runs exactly as the command
does (its defaults for BatchNorm and the state space, the bend's training on rank 0).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence

import torch

from landscape_mpi.config.errors import EXIT_COMPLETE, EXIT_RESUMABLE, EXIT_USER_ERROR, UserError
from landscape_mpi.config.train import TrainConfig
from landscape_mpi.experiments.path_definitions import PathExperiment, PathStep, Spawn
from landscape_mpi.experiments.runner import StepFailed, run_dir
from landscape_mpi.files.path_reader import read_path
from landscape_mpi.runtime.lifecycle import launch, write_whole
from landscape_mpi.training.train import TrainingStopped, finished, read_checkpoint, train


def spawn_checkpoint(parent_dir: str, epoch: int, child: TrainConfig) -> str:
    """Start the child `child` from the parent's checkpoint after `epoch` epochs: the file is copied into the
    child's folder with the child's settings (its data-order seed) and a fresh sample-order generator and torch
    generator seeded with it, so that `train(child)` resumes from it. Returns the written path; a child folder that
    already holds a checkpoint is left as it is (the training resumes from its own).

    Raises UserError if the parent has no checkpoint of that epoch.
    """
    name = f"epoch_{epoch:03d}.pt"
    out = os.path.join(child.out_dir, name)
    if os.path.isdir(child.out_dir) and any(n.endswith(".pt") for n in os.listdir(child.out_dir)):
        return out
    src = os.path.join(parent_dir, name)
    if not os.path.isfile(src):
        raise UserError(f"{src}: the parent has no checkpoint after epoch {epoch}; train the parent first")
    ck = read_checkpoint(src)
    ck["config"] = json.dumps(dataclasses.asdict(child))
    state = torch.Generator().manual_seed(child.seed).get_state()
    ck["resume"] = {**ck["resume"], "generator": state, "torch_rng": state.clone()}
    ck["spawned_from"] = {"parent": src, "epoch": epoch}
    os.makedirs(child.out_dir, exist_ok=True)
    tmp = out + ".tmp"
    torch.save(ck, tmp)
    os.replace(tmp, out)
    return out


def path_argv(exp: PathExperiment, step: PathStep, out_dir: str, device: str) -> list[str]:
    """The ``landscape-mpi path`` arguments of one step."""
    cfg = exp.config(step.ends[0])
    argv = ["path", "--model", cfg["model"], "--dataset", cfg["dataset"]]
    for end in step.ends:
        argv += ["--checkpoint", os.path.join(run_dir(out_dir, end), "final.pt")]
    for key, value in step.options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not False and value is not None:
            argv += [flag, str(value)]
    return argv + ["--out", os.path.join(out_dir, exp.name, f"{step.name}.h5"), "--device", device]


def _train(cfg: TrainConfig, label: str, device: torch.device | None, log: Callable[[str], None],
           exp: str) -> None:
    if finished(cfg) is not None:
        return
    log(f"experiment {exp}: training {os.path.basename(cfg.out_dir)} ({label})")
    t = time.perf_counter()
    try:
        train(cfg, device, quiet=True)
    except TrainingStopped as exc:
        raise StepFailed(f"{os.path.basename(cfg.out_dir)}: {exc}", EXIT_RESUMABLE) from None
    log(f"experiment {exp}: trained {os.path.basename(cfg.out_dir)} in {time.perf_counter() - t:.1f} s")


def run_path_experiment(exp: PathExperiment, out_dir: str, device: str = "auto",
                        launcher: Sequence[str] | None = None, data_root: str | None = None,
                        log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> float:
    """Train, spawn and compute every path of `exp`; returns the seconds spent.

    Raises UserError for unusable folders, StepFailed if a path command fails (its exit code: 2 user error, 75
    stopped: rerun to resume)."""
    t0 = time.perf_counter()
    exp_dir = os.path.join(out_dir, exp.name)
    try:
        os.makedirs(exp_dir, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out-dir {out_dir}: cannot create {exp_dir} ({exc}); choose another folder") from None
    write_whole(os.path.join(exp_dir, "manifest.json"), json.dumps(exp.manifest(), indent=2, sort_keys=True) + "\n")
    torch_device = None if device == "auto" else torch.device(device)
    for r in exp.runs:
        _train(TrainConfig(out_dir=run_dir(out_dir, r.name), data_root=data_root, **r.config), r.label,
               torch_device, log, exp.name)
    for s in exp.spawns:
        _spawn(s, out_dir, data_root, torch_device, log, exp.name)
    for step in exp.paths:
        out = os.path.join(exp_dir, f"{step.name}.h5")
        if _complete(out):
            continue
        from landscape_mpi.runtime.lifecycle import STOP

        if STOP.requested:
            raise StepFailed(f"stopped ({STOP.signal_name}): run the same command again to resume", EXIT_RESUMABLE)
        argv = path_argv(exp, step, out_dir, device)
        log(f"experiment {exp.name}: landscape-mpi {' '.join(argv)}")
        t = time.perf_counter()
        code = launch([*(launcher or ()), sys.executable, "-m", "landscape_mpi", *argv])
        if code != EXIT_COMPLETE:
            raise StepFailed(f"landscape-mpi {' '.join(argv)} exited {code}", code)
        log(f"experiment {exp.name}: {step.name} in {time.perf_counter() - t:.1f} s")
    return time.perf_counter() - t0


def _complete(path: str) -> bool:
    """True if `path` is a path file whose every point is done (a missing or unreadable one is not)."""
    if not os.path.isfile(path):
        return False
    try:
        return read_path(path).complete
    except UserError:
        return False


def _spawn(s: Spawn, out_dir: str, data_root: str | None, device: torch.device | None, log: Callable[[str], None],
           exp: str) -> None:
    cfg = TrainConfig(out_dir=run_dir(out_dir, s.name), data_root=data_root, **s.config)
    if finished(cfg) is not None:
        return
    parent = os.path.join(run_dir(out_dir, s.parent))
    try:
        spawn_checkpoint(parent, s.epoch, cfg)
    except UserError as exc:
        raise StepFailed(f"{s.name}: {exc}", EXIT_USER_ERROR) from None
    _train(cfg, s.label, device, log, exp)


def run_paths(names: str, scale: str, out_dir: str, device: str, launcher: Sequence[str] | None,
              data_root: str | None, task: int | None) -> int:
    """`experiments run` for path experiments: every experiment of `names` in turn; the exit code."""
    from landscape_mpi.experiments.path_definitions import path_experiments

    if task is not None:
        raise UserError("--task: the path experiments run as one task; leave --task out")
    for exp in path_experiments(names, scale):
        try:
            seconds = run_path_experiment(exp, out_dir, device, launcher, data_root)
        except StepFailed as exc:
            print(f"landscape-mpi experiments: {exc}", file=sys.stderr, flush=True)
            return exc.code or 1
        print(f"experiment {exp.name} ({scale}): complete in {seconds:.1f} s -> {out_dir}/{exp.name}/",
              file=sys.stderr, flush=True)
    return EXIT_COMPLETE
