"""Run an experiment: train its models, then compute its surfaces (`run_surface`, with typed configs).

Layout of ``OUT`` (``--out-dir``):

    OUT/runs/<run>/epoch_NNN.pt, iter_*.pt, final.pt   trainings, shared between experiments
    OUT/<experiment>/manifest.json                      the experiment's definition (what the report reads)
    OUT/<experiment>/<step>.h5                          surface files and Hessian files (`HessianStep`)

Every step is resumable and a finished one costs nothing: a training with ``final.pt`` is not touched, a surface
file whose ``done`` mask is full is not opened for writing, a Hessian file (written whole or not at all) that
exists with the step's settings is kept. The runs are trained task by task
(`Experiment.tasks`: usually one run each; the batch experiment's small-batch net with its large-batch partners),
and a task's surfaces and Hessian steps follow its trainings, so that an interpolation between two runs finds both
trained. Surfaces and Hessian steps run in this process or, with a launcher (``mpiexec -n 8``,
``srun --kill-on-bad-exit=1 --mpi=pmix``), as a ``landscape-mpi surface`` / ``hessian`` subprocess under it (its
arguments from the configs: `to_argv`), so MPI and SLURM launches work as for a direct command.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from landscape_mpi.config.errors import EXIT_COMPLETE, EXIT_RESUMABLE, EXIT_USER_ERROR, UserError
from landscape_mpi.config.hessian import HessianConfig, HessianRun
from landscape_mpi.config.options import to_argv
from landscape_mpi.config.surface import Axis, RunOptions, SurfaceConfig
from landscape_mpi.config.train import TrainConfig
from landscape_mpi.experiments.definitions import Experiment, HessianStep, SurfaceStep
from landscape_mpi.files import reader
from landscape_mpi.models import read_state_dict
from landscape_mpi.runtime.lifecycle import launch, write_whole
from landscape_mpi.training.train import TrainingStopped, finished, train


class StepFailed(Exception):
    """A surface command exited non-zero; `code` is its exit code (2 user error, 75 stopped: rerun to resume)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def surface_complete(path: str) -> bool:
    """True if `path` is a surface file whose every point is done."""
    return reader.is_complete(path)


def trajectory_range(path: str) -> float:
    """Half-width of a grid that covers the trajectory stored in `path`: 1.25 x the largest |coordinate|,
    rounded up to two significant digits (so that reruns compute the same grid)."""
    t = reader.read_trajectory(path)
    if t is None:
        raise UserError(f"{path} holds no /trajectory: compute it with surface --directions pca")
    extent = max(float(np.max(np.abs(t["x"]))), float(np.max(np.abs(t["y"]))))
    r = 1.25 * max(extent, 1e-6)
    digits = 1 - int(math.floor(math.log10(r)))
    return math.ceil(r * 10 ** digits) / 10 ** digits


def interpolation_axis(start: str, target: str, axis: Axis) -> Axis:
    """The x axis of an interpolation from checkpoint `start` (a = 0) to `target` (a = 1): `axis` (which has
    a = 0 and a = 1 among its points) with either end moved in, by whole steps, until no BatchNorm running variance
    interpolated with the weights is negative at that end (the surface refuses such a grid,
    `directions.base.check_running_var`, with the same arithmetic). The same checkpoints give the same axis, so a
    rerun resumes the same grid. An axis without a = 0 and a = 1 on its points is returned as it is."""
    h = (axis.stop - axis.start) / (axis.num - 1) if axis.num > 1 else 0.0
    if h <= 0:
        return axis
    k_in, k_lo = round(1 / h), round(-axis.start / h)
    k_hi = axis.num - 1 - k_in - k_lo
    if k_in < 1 or k_lo < 0 or k_hi < 0 or abs(k_in * h - 1) > 1e-9 or abs(axis.start + k_lo * h) > 1e-9:
        return axis
    a, b = read_state_dict(start), read_state_dict(target)
    variances = [(a[k].double(), (b[k].to(a[k].dtype) - a[k]).double()) for k in a
                 if k.endswith("running_var") and k in b and b[k].shape == a[k].shape]

    def ok(c: float) -> bool:
        return not any(bool((v + c * d < 0).any()) for v, d in variances)

    while k_lo > 0 and not ok(-k_lo / k_in):
        k_lo -= 1
    while k_hi > 0 and not ok((k_in + k_hi) / k_in):
        k_hi -= 1
    return Axis(-k_lo / k_in, (k_in + k_hi) / k_in, k_lo + k_in + k_hi + 1)


def prune_checkpoints(folder: str) -> int:
    """Remove the epoch and iteration checkpoints of a finished training (``final.pt`` stays); returns how many."""
    if not os.path.isfile(os.path.join(folder, "final.pt")):
        return 0
    names = [n for n in os.listdir(folder) if n.endswith(".pt") and n.startswith(("epoch_", "iter_"))]
    for n in names:
        os.remove(os.path.join(folder, n))
    return len(names)


def _write_json(path: str, obj: object) -> None:
    # Every array task of an experiment writes the same manifest at the same moment: whole or not at all.
    write_whole(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def run_dir(out_dir: str, run: str) -> str:
    return os.path.join(out_dir, "runs", run)


def surface_configs(exp: Experiment, step: SurfaceStep, out_dir: str, device: str, data_root: str | None,
                    grid_range: float | None = None, x_axis: Axis | None = None) -> tuple[SurfaceConfig, RunOptions]:
    """The surface and run options of one step: the run's model, final checkpoint and data, the step's options
    (its trajectory glob inside the run's folder; with `grid_range` R, its axes scaled by R; its target run's
    final checkpoint as ``x_target``; `x_axis` instead of its x axis).

    Raises UserError for an option SurfaceConfig does not have or a value it refuses.
    """
    r = exp.run(step.run)
    rdir = run_dir(out_dir, r.name)
    options = dict(step.options)
    _check_options("surface", step.name, options, SurfaceConfig)
    if options.get("trajectory") is not None:
        options["trajectory"] = os.path.join(rdir, options["trajectory"])
    if step.target_run is not None:
        options["x_target"] = os.path.join(run_dir(out_dir, exp.run(step.target_run).name), "final.pt")
    if x_axis is not None:
        options["x"] = x_axis
    if grid_range is not None:
        for name in ("x", "y", "z"):
            axis = options.get(name)
            if axis is not None:
                options[name] = Axis(axis.start * grid_range, axis.stop * grid_range, axis.num)
    config = SurfaceConfig(model=r.config["model"], checkpoint=os.path.join(rdir, "final.pt"),
                           dataset=r.config["dataset"], data_root=data_root, **options)
    return config, RunOptions(out=os.path.join(out_dir, exp.name, f"{step.name}.h5"), device=device)


def _check_options(command: str, step: str, options: dict, config: type) -> None:
    """UserError naming the options of `step` that the dataclass `config` (the `command`'s settings) lacks."""
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(config)})
    if unknown:
        raise UserError(f"{command} step {step}: no such {command} option {', '.join(unknown)}")


def hessian_config(exp: Experiment, step: HessianStep, out_dir: str, data_root: str | None) -> HessianConfig:
    """The `landscape-mpi hessian` settings of one step: the run's model, final checkpoint and data, the step's
    options, the file ``OUT/<experiment>/<step>.h5``. Raises UserError for an option HessianConfig does not have
    or a value it refuses."""
    r = exp.run(step.run)
    _check_options("hessian", step.name, step.options, HessianConfig)
    return HessianConfig(model=r.config["model"], checkpoint=os.path.join(run_dir(out_dir, r.name), "final.pt"),
                         dataset=r.config["dataset"], data_root=data_root,
                         out=os.path.join(out_dir, exp.name, f"{step.name}.h5"), **step.options)


#: The stored settings a kept Hessian file may differ in from its step: paths (a moved --out-dir); every other
#: setting must be equal.
HESSIAN_PATHS = ("checkpoint", "out", "data_root")


def hessian_done(cfg: HessianConfig) -> bool:
    """True if ``cfg.out`` holds this step's analysis (the file is written whole, so it exists only complete).

    Raises UserError if it holds one with other settings (it is not replaced silently)."""
    if not os.path.exists(cfg.out):
        return False
    stored = reader.read_hessian_file(cfg.out, "hessian step")["config"]
    wanted = json.loads(json.dumps(cfg.to_dict()))
    differ = [k for k in sorted(set(stored) | set(wanted)) if k not in HESSIAN_PATHS and stored.get(k) != wanted.get(k)]
    if differ:
        k = differ[0]
        raise UserError(f"{cfg.out} holds a Hessian analysis with other settings ({k} {stored.get(k)!r}, the "
                        f"experiment wants {wanted.get(k)!r}); remove the file to recompute it, or choose another "
                        f"--out-dir")
    return True


def _stop_if_requested() -> None:
    """Raise StepFailed (exit 75, resumable) if SIGTERM/SIGINT/SIGUSR1 arrived (between steps; a training and a
    surface stop by themselves at their next batch)."""
    from landscape_mpi.runtime.lifecycle import STOP

    if STOP.requested:
        raise StepFailed(f"stopped ({STOP.signal_name}): run the same command again to resume", EXIT_RESUMABLE)


def _run_command(argv: list[str], in_process: Callable[[], int], launcher: Sequence[str] | None) -> None:
    """``landscape-mpi ARGV`` under `launcher` as a subprocess, or `in_process` inside the guard of a command
    (one-line user errors, exit codes); StepFailed unless it completes."""
    if launcher:
        code = launch([*launcher, sys.executable, "-m", "landscape_mpi", *argv])  # the ranks' chosen code
    else:
        from landscape_mpi.runtime.lifecycle import run_main

        code = run_main(in_process)
    if code != EXIT_COMPLETE:
        raise StepFailed(f"landscape-mpi {' '.join(argv)} exited {code}", code)


def _run_surface(config: SurfaceConfig, options: RunOptions, launcher: Sequence[str] | None) -> None:
    def in_process() -> int:
        from landscape_mpi.surface.run import run_surface

        return run_surface(config, options)

    _run_command(["surface", *to_argv(config), *to_argv(options)], in_process, launcher)


def _run_hessian(cfg: HessianConfig, device: str, launcher: Sequence[str] | None) -> None:
    run = HessianRun(device=device)

    def in_process() -> int:
        from landscape_mpi.hessian.run import run_hessian
        from landscape_mpi.runtime.context import make_context

        return run_hessian(cfg, make_context(run.device, run.threads))

    _run_command(["hessian", *to_argv(cfg), *to_argv(run)], in_process, launcher)


def run_experiment(exp: Experiment, out_dir: str, device: str = "auto", launcher: Sequence[str] | None = None,
                   data_root: str | None = None, task: int | None = None,
                   log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> float:
    """Train the experiment's models and compute its surfaces and Hessian steps (all, or only the runs of array
    task `task` and their steps: one SLURM array task). Returns the seconds spent.

    Raises UserError for a bad task index or unusable folders, StepFailed if a step's options are refused (code 2),
    a surface fails or a stop signal arrived (code 75: rerun to resume).
    """
    t0 = time.perf_counter()
    groups = exp.tasks()
    if task is not None:
        if not 0 <= task < len(groups):
            raise UserError(f"--task {task}: experiment {exp.name} at this scale has tasks 0..{len(groups) - 1}")
        groups = [groups[task]]
    exp_dir = os.path.join(out_dir, exp.name)
    try:
        os.makedirs(exp_dir, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out-dir {out_dir}: cannot create {exp_dir} ({exc}); choose another folder") from None
    _write_json(os.path.join(exp_dir, "manifest.json"), exp.manifest())
    torch_device = None if device == "auto" else torch.device(device)
    for group in groups:
        for r in group:
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
            if r.prune:
                prune_checkpoints(cfg.out_dir)
        names = {r.name for r in group}
        for step in (s for s in exp.surfaces if s.run in names):
            out = os.path.join(exp_dir, f"{step.name}.h5")
            if surface_complete(out):
                continue
            _stop_if_requested()
            try:
                if not set(exp.step_runs(step)) <= names:
                    raise UserError(f"runs {', '.join(exp.step_runs(step))} are not in one task")
                grid_range = (trajectory_range(os.path.join(exp_dir, f"{step.range_from}.h5")) if step.range_from
                              else None)
                x_axis = None
                if step.target_run is not None:
                    x_axis = interpolation_axis(os.path.join(run_dir(out_dir, step.run), "final.pt"),
                                                os.path.join(run_dir(out_dir, step.target_run), "final.pt"),
                                                step.options["x"])
                config, options = surface_configs(exp, step, out_dir, device, data_root, grid_range, x_axis)
            except UserError as exc:
                raise StepFailed(f"{step.name}: {exc}", EXIT_USER_ERROR) from None
            log(f"experiment {exp.name}: landscape-mpi surface {' '.join(to_argv(config) + to_argv(options))}")
            t = time.perf_counter()
            _run_surface(config, options, launcher)
            log(f"experiment {exp.name}: {step.name} in {time.perf_counter() - t:.1f} s")
        for hstep in (h for h in exp.hessians if h.run in names):
            try:
                cfg = hessian_config(exp, hstep, out_dir, data_root)
                if hessian_done(cfg):
                    continue
            except UserError as exc:
                raise StepFailed(f"{hstep.name}: {exc}", EXIT_USER_ERROR) from None
            _stop_if_requested()
            log(f"experiment {exp.name}: landscape-mpi hessian {' '.join(to_argv(cfg))}")
            t = time.perf_counter()
            _run_hessian(cfg, device, launcher)
            log(f"experiment {exp.name}: {hstep.name} in {time.perf_counter() - t:.1f} s")
    return time.perf_counter() - t0
