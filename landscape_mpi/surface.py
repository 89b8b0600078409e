"""`landscape-mpi surface`: compute a loss surface into one HDF5 file, on one process or many MPI ranks.

Reads top to bottom in the order things happen:
  1. discover ranks and devices;
  2. rank 0 creates the surface file (or checks that an existing one belongs to this command, to resume);
  3. every rank loads the model, the data and the directions *from the file*;
  4. the master hands out the points not yet done; every rank evaluates; results are written;
  5. the master prints the per-rank summary; every rank exits with the same status.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence

import numpy as np
import torch

from landscape_mpi.config import RunOptions, SurfaceConfig, config_diff
from landscape_mpi.context import RunContext, make_context
from landscape_mpi.data import EvalSet, load_eval_set
from landscape_mpi.directions import (Direction, PointSetter, check_running_var, random_direction, space_keys,
                                      target_direction)
from landscape_mpi.errors import EXIT_COMPLETE, EXIT_RESUMABLE, UserError
from landscape_mpi.evaluate import evaluate
from landscape_mpi.models import build_model, checkpoint_sha256, load_checkpoint, read_state_dict
from landscape_mpi.progress import Progress
from landscape_mpi import scheduler as sched
from landscape_mpi import store


def log(ctx: RunContext, message: str) -> None:
    if ctx.is_master:
        print(f"landscape-mpi: {message}", file=sys.stderr, flush=True)


def on_every_rank(ctx: RunContext, step: Callable[[], object]) -> object:
    """Run `step` on every rank; if it fails anywhere, raise the first failure on every rank.

    Used for set-up, so that a user error found by one rank (a missing file, a bad checkpoint) ends every
    rank with the same one-line message instead of leaving the others waiting.
    """
    result, error = None, None
    try:
        result = step()
    except UserError as exc:
        error = ("user", str(exc))
    except Exception:
        error = ("internal", traceback.format_exc())
    if ctx.comm is not None:
        errors = ctx.comm.allgather(error)
        failed = [(r, e) for r, e in enumerate(errors) if e is not None]
        error = None
        if failed:
            rank, (kind, msg) = failed[0]
            error = (kind, msg if kind == "user" else f"rank {rank}: {msg}")
    if error is not None:
        kind, msg = error
        if kind == "user":
            raise UserError(msg)
        raise RuntimeError(msg)
    return result


# ------------------------------------------------------------------------------------------ the file
def build_directions(config: SurfaceConfig, model: torch.nn.Module) -> dict[str, Direction]:
    """Directions per axis name, over the full space (zeros where excluded), on the CPU."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    keys = space_keys(model, config.dir_space)
    generator = torch.Generator().manual_seed(config.seed)
    out: dict[str, Direction] = {}
    for axis in config.axes:
        target = config.target(axis)
        if axis == "y" and config.same_dir:
            out[axis] = out["x"]
        elif target is not None:
            out[axis] = target_direction(state, read_state_dict(target, f"--{axis}-target"), keys,
                                         f"--{axis}-target {target}")
        else:
            out[axis] = random_direction(state, keys, generator, config.norm, config.ignore)
    corners = list(itertools.product(*[(a.start, a.stop) for a in config.axes.values()]))
    check_running_var(state, list(out.values()), corners)
    return out


def input_hashes(config: SurfaceConfig) -> dict[str, str]:
    """sha256 of the checkpoint and of the target checkpoints: what a resume must find unchanged."""
    files = {"checkpoint": ("--checkpoint", config.checkpoint)}
    files.update({f"{a}_target": (f"--{a}-target", config.target(a)) for a in ("x", "y") if config.target(a)})
    return {f"{name}_sha256": checkpoint_sha256(path, option) for name, (option, path) in files.items()}


def prepare_file(config: SurfaceConfig, options: RunOptions) -> str:
    """Rank 0: create the surface file, or check that the existing one may be resumed. Returns what it did."""
    path = options.out
    if os.path.exists(path) and not options.overwrite:
        summary = store.read_summary(path, with_values=False)
        diff = config_diff(summary.config, config.to_dict())
        for key, sha in input_hashes(config).items():
            if summary.attrs.get(key) != sha:
                diff.append(f"{key.replace('_sha256', '')}: file was computed from another file (sha256 differs)")
        if diff:
            raise UserError(f"--out {path} holds a surface of another configuration ({'; '.join(diff)}); "
                            f"rerun with the file's settings to resume, choose another --out, or add --overwrite")
        return f"resuming {path}: {int(summary.done.sum())}/{summary.done.size} points done"
    model = build_model(config.model)
    load_checkpoint(model, config.checkpoint)
    directions = build_directions(config, model)
    indices = {split: load_eval_set(config.dataset, split, config.data_root, config.samples, config.seed).indices
               for split in config.splits}
    attrs = {"checkpoint": os.path.abspath(config.checkpoint), **input_hashes(config)}
    store.create_surface_file(path, config, directions, attrs, indices)
    verb = "overwrote" if options.overwrite else "created"
    return f"{verb} {path}: grid {'x'.join(map(str, config.shape))} = {int(np.prod(config.shape))} points"


# ----------------------------------------------------------------------------------- evaluation
class PointEvaluator:
    """Everything one rank needs to evaluate grid points: model at theta*, directions, data, on its device."""

    def __init__(self, config: SurfaceConfig, path: str, device: torch.device) -> None:
        self.config = config
        model = build_model(config.model)
        load_checkpoint(model, config.checkpoint)
        axes = list(config.axes)
        directions = store.read_directions(path, axes)
        keys = set(space_keys(model, config.dir_space))
        for axis, d in zip(axes, directions):
            if set(d) != keys:
                raise UserError(f"{path}: stored {axis} direction does not match the model's tensors; "
                                f"recompute with --overwrite")
        self.model = model.to(device).eval()
        self.setter = PointSetter(self.model, [{k: v.to(device) for k, v in d.items()} for d in directions])
        self.data: list[EvalSet] = [
            load_eval_set(config.dataset, s, config.data_root, config.samples, config.seed).to(device)
            for s in config.splits]
        self.coords = [a.values() for a in config.axes.values()]
        self.shape = config.shape
        self.on_batch: Callable[[], None] | None = None

    def __call__(self, flat: int) -> tuple[float, ...]:
        index = np.unravel_index(flat, self.shape)
        self.setter.set([float(c[i]) for c, i in zip(self.coords, index)])
        values: list[float] = []
        for data in self.data:
            values.extend(evaluate(self.model, data, self.config.loss, self.config.batch_size, self.on_batch))
        return tuple(values)


def with_test_hooks(evaluate_point: Callable[[int], Sequence[float]], rank: int) -> Callable[[int], Sequence[float]]:
    """Testing hooks, read from the environment (documented in README.md, used by tests/):

    LANDSCAPE_MPI_TEST_DELAY="S" or "S,R:S2,...": sleep S seconds per point (S2 on rank R) to simulate
    slow ranks; LANDSCAPE_MPI_TEST_FAIL="R:N": rank R raises after N points.
    """
    delay_spec = os.environ.get("LANDSCAPE_MPI_TEST_DELAY", "")
    fail_spec = os.environ.get("LANDSCAPE_MPI_TEST_FAIL", "")
    if not delay_spec and not fail_spec:
        return evaluate_point
    delay = 0.0
    for part in filter(None, delay_spec.split(",")):
        if ":" in part:
            r, s = part.split(":")
            if int(r) == rank:
                delay = float(s)
                break
        else:
            delay = float(part)
    fail_after = None
    if fail_spec and int(fail_spec.split(":")[0]) == rank:
        fail_after = int(fail_spec.split(":")[1])
    count = 0

    def hooked(flat: int) -> Sequence[float]:
        nonlocal count
        if fail_after is not None and count >= fail_after:
            raise RuntimeError(f"test hook: rank {rank} fails after {fail_after} points")
        count += 1
        if delay:
            time.sleep(delay)
        return evaluate_point(flat)

    return hooked


# ------------------------------------------------------------------------------------------ the run
def check_collective_io(ctx: RunContext) -> None:
    import h5py

    if not h5py.get_config().mpi:
        raise UserError("--io collective needs h5py built with parallel HDF5 (h5py.get_config().mpi is False): "
                        "conda install -c conda-forge 'h5py=*=mpi*', or build it: CC=mpicc HDF5_MPI=ON "
                        "pip install --no-binary=h5py --no-build-isolation h5py (see README); or use --io single")


def run_surface(config: SurfaceConfig, options: RunOptions, ctx: RunContext | None = None) -> int:
    """Compute (or resume) the surface; returns the process exit code (0 complete, 75 stopped, resumable)."""
    ctx = ctx or make_context(options.device, options.threads)
    if options.io == "collective":
        on_every_rank(ctx, lambda: check_collective_io(ctx))

    # Rank 0 holds FILE.h5.lock for the whole run: a second job on the same file is refused.
    lock = on_every_rank(ctx, lambda: store.RunLock(options.out) if ctx.is_master else None)
    try:
        return _run_locked(config, options, ctx)
    finally:
        if lock is not None:
            lock.release()


def _run_locked(config: SurfaceConfig, options: RunOptions, ctx: RunContext) -> int:
    message = on_every_rank(ctx, lambda: prepare_file(config, options) if ctx.is_master else None)
    log(ctx, str(message))

    summary = store.read_summary(options.out, with_values=False) if ctx.is_master else None
    todo = np.flatnonzero(~summary.done.ravel()) if summary is not None else None
    n_todo = ctx.comm.bcast(len(todo) if todo is not None else 0, root=0) if ctx.comm else len(todo)
    if n_todo == 0:
        log(ctx, f"{options.out} is complete: nothing to compute")
        return EXIT_COMPLETE
    evaluator = on_every_rank(ctx, lambda: PointEvaluator(config, options.out, ctx.device))

    comm_io = ctx.comm
    if options.io == "collective" and comm_io is None:
        from mpi4py import MPI

        comm_io = MPI.COMM_SELF
    writer = None
    if options.io == "collective":  # every rank opens the file: a collective open
        writer = on_every_rank(ctx, lambda: store.ResultWriter(options.out, config.metrics, "collective", comm_io))
    elif ctx.is_master:
        writer = store.ResultWriter(options.out, config.metrics, "single")
    sink = sched.ResultSink(writer.write if writer else None, len(config.metrics), options.flush_seconds)
    evaluate_point = with_test_hooks(evaluator, ctx.rank)
    stats = sched.RankStats(ctx.rank, ctx.host, str(ctx.device))
    stop = sched.StopFlag().install()
    try:
        if ctx.is_master:
            total = int(summary.done.size)
            log(ctx, f"{n_todo} points to compute on {ctx.size} rank(s), io={options.io}, "
                     f"rank 0 on {ctx.device} with {ctx.threads} thread(s)")
            progress = Progress(total, total - n_todo, options.progress_seconds)
            master = sched.Master(ctx.comm, todo, evaluate_point, sink, stop, options.chunk_size, progress.update,
                                  worker_results_to_sink=(options.io == "single"), stats=stats)
            evaluator.on_batch = master.tick  # keep serving and flushing while rank 0 evaluates a long point
            outcome = master.run()
            progress.close()
            print_summary(ctx, options, outcome)
            status = outcome.status
        else:
            local = sink if options.io == "collective" else None
            status = sched.Worker(ctx.comm, evaluate_point, stop, local, stats, options.flush_seconds).run()
    finally:
        stop.uninstall()
        if writer is not None:
            writer.close()  # a collective close under --io collective: every rank reaches it
    return EXIT_COMPLETE if status == sched.STATUS_COMPLETE else EXIT_RESUMABLE


def print_summary(ctx: RunContext, options: RunOptions, outcome: sched.Outcome) -> None:
    lines = ["per-rank summary:"] + [s.line() for s in outcome.stats]
    print("\n".join(lines), file=sys.stderr, flush=True)
    if outcome.status == sched.STATUS_COMPLETE:
        log(ctx, f"complete: {options.out}")
    else:
        log(ctx, f"stopped early ({outcome.stop_reason}); every finished point is in {options.out}. "
                 f"Rerun the same command to resume (exit code {EXIT_RESUMABLE}).")
