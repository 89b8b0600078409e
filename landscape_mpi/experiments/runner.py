"""Run an experiment: train its models, then compute its surfaces through the ``landscape-mpi surface`` command.

Layout of ``OUT`` (``--out-dir``):

    OUT/runs/<run>/epoch_NNN.pt, iter_*.pt, final.pt   trainings, shared between experiments
    OUT/<experiment>/manifest.json                      the experiment's definition (what the report reads)
    OUT/<experiment>/<step>.h5                          surface files

Every step is resumable and a finished one costs nothing: a training with ``final.pt`` is not touched, a surface
file whose ``done`` mask is full is not opened for writing. Surfaces run in this process (the command's Python
entry point) or, with a launcher (``mpiexec -n 8``, ``srun --kill-on-bad-exit=1 --mpi=pmix``), as a subprocess
under it, so MPI and SLURM launches work as for a direct ``landscape-mpi surface``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import h5py
import numpy as np
import torch

from landscape_mpi.config.errors import EXIT_COMPLETE, EXIT_RESUMABLE, UserError
from landscape_mpi.experiments.definitions import Experiment, SurfaceStep
from landscape_mpi.training.train import TrainConfig, TrainingStopped, finished, train


class StepFailed(Exception):
    """A surface command exited non-zero; `code` is its exit code (2 user error, 75 stopped: rerun to resume)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def surface_complete(path: str) -> bool:
    """True if `path` is a surface file whose every point is done."""
    if not os.path.isfile(path):
        return False
    try:
        with h5py.File(path, "r", locking=False) as f:
            return bool(np.all(f["results/done"][()]))
    except (OSError, KeyError):
        return False


def trajectory_range(path: str) -> str:
    """Half-width of a grid that covers the trajectory stored in `path`: 1.25 x the largest |coordinate|,
    rounded up to two significant digits (so that reruns compute the same grid)."""
    with h5py.File(path, "r", locking=False) as f:
        if "trajectory" not in f:
            raise UserError(f"{path} holds no /trajectory: compute it with surface --directions pca")
        extent = max(float(np.max(np.abs(f["trajectory/x"][()]))), float(np.max(np.abs(f["trajectory/y"][()]))))
    r = 1.25 * max(extent, 1e-6)
    digits = 1 - int(math.floor(math.log10(r)))
    return repr(math.ceil(r * 10 ** digits) / 10 ** digits)


def _write_json(path: str, obj: object) -> None:
    # Every array task of an experiment writes the same manifest at the same moment: a temporary file of its own
    # (unique across nodes), then an atomic rename, so that no task reads or renames another's half-written file.
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=os.path.dirname(path))
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def run_dir(out_dir: str, run: str) -> str:
    return os.path.join(out_dir, "runs", run)


def surface_argv(exp: Experiment, step: SurfaceStep, out_dir: str, device: str, data_root: str | None,
                 grid_range: str | None = None) -> list[str]:
    """The ``landscape-mpi surface`` arguments of one step."""
    r = exp.run(step.run)
    rdir = run_dir(out_dir, r.name)
    argv = ["surface", "--model", r.config["model"], "--checkpoint", os.path.join(rdir, "final.pt"),
            "--dataset", r.config["dataset"], "--device", device,
            "--out", os.path.join(out_dir, exp.name, f"{step.name}.h5")]
    if data_root:
        argv += ["--data-root", data_root]
    for a in step.args:
        a = a.replace("{RUN}", rdir)
        if grid_range is not None:
            a = a.replace("{R}", grid_range)
        argv.append(a)
    return argv


def _stop_if_requested() -> None:
    """Raise StepFailed (exit 75, resumable) if SIGTERM/SIGINT/SIGUSR1 arrived (between steps; a training and a
    surface stop by themselves at their next batch)."""
    from landscape_mpi.runtime.lifecycle import STOP

    if STOP.requested:
        raise StepFailed(f"stopped ({STOP.signal_name}): run the same command again to resume", EXIT_RESUMABLE)


def _run_surface(argv: list[str], launcher: Sequence[str] | None) -> None:
    if launcher:
        code = subprocess.call([*launcher, sys.executable, "-m", "landscape_mpi", *argv])
    else:
        from landscape_mpi.cli import main

        code = main(argv)
    if code != EXIT_COMPLETE:
        raise StepFailed(f"landscape-mpi {' '.join(argv)} exited {code}", code)


def run_experiment(exp: Experiment, out_dir: str, device: str = "auto", launcher: Sequence[str] | None = None,
                   data_root: str | None = None, task: int | None = None,
                   log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> float:
    """Train the experiment's models and compute its surfaces (all, or only training run number `task` and its
    surfaces: one SLURM array task). Returns the seconds spent.

    Raises UserError for a bad task index or unusable folders, StepFailed if a surface command fails or a stop
    signal arrived (code 75: rerun to resume).
    """
    t0 = time.perf_counter()
    runs = list(exp.runs)
    if task is not None:
        if not 0 <= task < len(runs):
            raise UserError(f"--task {task}: experiment {exp.name} at this scale has tasks 0..{len(runs) - 1}")
        runs = [runs[task]]
    exp_dir = os.path.join(out_dir, exp.name)
    try:
        os.makedirs(exp_dir, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out-dir {out_dir}: cannot create {exp_dir} ({exc}); choose another folder") from None
    _write_json(os.path.join(exp_dir, "manifest.json"), exp.manifest())
    torch_device = None if device == "auto" else torch.device(device)
    for r in runs:
        cfg = TrainConfig(out_dir=run_dir(out_dir, r.name), data_root=data_root, **r.config)
        _stop_if_requested()
        if finished(cfg) is None:
            log(f"experiment {exp.name}: training {r.name} ({r.label})")
            t = time.perf_counter()
            try:
                train(cfg, torch_device, quiet=True)
            except TrainingStopped as exc:
                raise StepFailed(f"{r.name}: {exc}", EXIT_RESUMABLE) from None
            log(f"experiment {exp.name}: trained {r.name} in {time.perf_counter() - t:.1f} s")
        for step in (s for s in exp.surfaces if s.run == r.name):
            out = os.path.join(exp_dir, f"{step.name}.h5")
            if surface_complete(out):
                continue
            _stop_if_requested()
            grid_range = trajectory_range(os.path.join(exp_dir, f"{step.range_from}.h5")) if step.range_from else None
            argv = surface_argv(exp, step, out_dir, device, data_root, grid_range)
            log(f"experiment {exp.name}: landscape-mpi {' '.join(argv)}")
            t = time.perf_counter()
            _run_surface(argv, launcher)
            log(f"experiment {exp.name}: {step.name} in {time.perf_counter() - t:.1f} s")
    return time.perf_counter() - t0
