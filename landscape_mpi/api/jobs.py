"""The jobs called from Python: `surface`, `hessian` and `path` take a model object and data in memory.

Each call is the command line's own code from the parsed arguments on: the keyword options are the fields of the
command's typed configs (landscape_mpi/config: `SurfaceConfig` and `RunOptions`; `HessianConfig` and `HessianRun`;
`PathConfig` with both of surface's), set on the namespace that the command's parser gives for the required
arguments, and the command's function (cli/<command>.py) builds its configs from it and runs the job. So the
defaults, the checks and the one-line messages are the command's: a user mistake raises `UserError` with the line
the command prints (without its ``landscape-mpi: error:`` prefix).

The model object is saved as the checkpoint (``theta.pt``) the job reads and named by an import path into
`landscape_mpi.api.given`, so is the data; both live in a temporary folder of each rank, removed after the call.
``out=None`` computes into a temporary file that is read into memory and removed. Under ``mpiexec`` every rank runs
the caller's script and calls the same function; rank 0 returns the result, every other rank None.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from landscape_mpi.config.errors import EXIT_COMPLETE, EXIT_FAILURE, EXIT_USER_ERROR, UserError
from landscape_mpi.config.surface import AXIS_NAMES, Axis

#: What the keyword options may not set: the command's own bookkeeping, and what the call's arguments give.
NOT_OPTIONS = ("command", "func")


@dataclass
class Result:
    """What a job computed (rank 0's return value): the file as an xarray Dataset (`open`)."""

    kind: str
    """``surface``, ``hessian`` or ``path``."""
    path: str | None
    """The file written (None: computed in memory, no file kept)."""
    complete: bool
    """False when a stop signal (Ctrl-C, SIGTERM) ended the job early: the file holds every finished point and
    the same call resumes it (in memory: the points finished so far)."""
    dataset: object
    """The file's `xarray.Dataset`, loaded into memory."""

    def to_xarray(self):
        """The result as an `xarray.Dataset` (coordinates, one variable per metric and split, ``done``, attrs)."""
        return self.dataset


def surface(model, data, out: str | None = None, **options) -> Result | None:
    """A loss surface of `model` on `data` (``landscape-mpi surface``; docs/api.md).

    `model`: an ``nn.Module`` at theta* (its weights are saved as the checkpoint), or a zoo name or
    ``package.module:factory`` with ``checkpoint=PATH`` as on the command line. `data`: a torch Dataset, an
    ``(inputs, labels)`` pair, a tensor of token ids, a dict of tensors, or a dict of those by split
    (``{"train": ..., "test": ...}``), or a dataset name (``"digits"``). `out`: the file (resumed when it exists,
    as the command does); None: in memory. `options`: the command's options by field name (``x=(-1, 1, 51)`` or
    ``x="-1:1:51"``, ``y=...``, ``norm="filter"``, ``eig=True`` for ``--metrics loss,eig``, ``batch_size=256``...).
    A model object may also stand for ``x_target`` and ``y_target``."""
    from landscape_mpi.cli.surface import cmd_surface

    return _run("surface", model, data, out, options, cmd_surface, targets=("x_target", "y_target"))


def hessian(model, data, out: str | None = None, **options) -> Result | None:
    """Hessian eigenvalues, trace, spectral density and average adaptive rise of `model` on `data` (``landscape-mpi
    hessian``; docs/hessian.md). `model`: an ``nn.Module`` (one row: its weights), or its architecture with
    ``checkpoint="DIR/epoch_*.pt"`` (one row per file), or a zoo name or import path with ``checkpoint``. `data`,
    `out`, `options`: as `surface` (``top_k=5``, ``trace_probes=100``, ``overwrite=True`` to replace `out`...)."""
    from landscape_mpi.cli.hessian import cmd_hessian

    return _run("hessian", model, data, out, options, cmd_hessian)


def path(models: Sequence, data, out: str | None = None, **options) -> Result | None:
    """Loss and metrics along paths between `models` (``landscape-mpi path``; docs/paths.md): ``nn.Module`` objects
    of one architecture (each saved as its checkpoint), A and B for ``kind="linear"`` (the default), ``"bezier"``
    and ``"layers"``, two or more for ``"chain"`` and ``"pairs"``; or checkpoint paths with ``model=`` naming the
    architecture (an ``nn.Module`` or a zoo name). `bend`: an ``nn.Module`` or a checkpoint. `data`, `out`,
    `options`: as `surface` (``points=21``, ``align=True``, ``train_bend=200``...)."""
    from landscape_mpi.cli.path import cmd_path

    models = list(models)
    architecture = options.pop("model", None)
    if architecture is None:
        objects = [m for m in models if not isinstance(m, str)]
        if not objects:
            raise UserError("path(): give the models as nn.Module objects, or name their architecture with model= "
                            "(a zoo name, package.module:factory or an nn.Module) for checkpoint paths")
        architecture = objects[0]
    options["checkpoint"] = models
    return _run("path", architecture, data, out, options, cmd_path, targets=("bend",))


# ------------------------------------------------------------------------------------------------ the call
def _run(command: str, model, data, out: str | None, options: dict, run: Callable[[argparse.Namespace], int],
         targets: Sequence[str] = ()) -> Result | None:
    """Register the objects, build the command's namespace, run the command's function on every rank and read
    the file on rank 0."""
    from landscape_mpi.api.given import clear, register_data, register_model
    from landscape_mpi.runtime.lifecycle import STOP

    comm = _world()
    own = tempfile.mkdtemp(prefix="landscape-mpi-api-")  # this rank's checkpoints of the objects
    memory = None
    STOP.reset()  # a stop caught by an earlier call is that call's
    try:
        STOP.install()  # Ctrl-C stops at the next batch, every finished point kept (the main thread only)
    except ValueError:
        pass
    try:
        checkpoint = options.pop("checkpoint", None)
        if isinstance(model, str):
            spec = model
        else:
            spec = register_model(_module(model, "model"))
            if checkpoint is None:
                checkpoint = _save(model, own, "theta")
        if checkpoint is None:  # a model by name alone: the command decides (its message names what it needs)
            checkpoints = []
        else:
            checkpoints = list(checkpoint) if isinstance(checkpoint, (list, tuple)) else [checkpoint]
        checkpoints = [c if isinstance(c, str) else _save(c, own, f"model_{i}") for i, c in enumerate(checkpoints)]
        for name in targets:
            if options.get(name) is not None and not isinstance(options[name], str):
                options[name] = _save(options[name], own, name)
        _same_weights(comm, own)
        if isinstance(data, str):
            options.setdefault("dataset", data)
        else:
            options["dataset"], options["splits"] = register_data(data, _splits(options.get("splits")))
        if out is None:
            memory = comm.bcast(tempfile.mkdtemp(prefix="landscape-mpi-memory-") if comm.Get_rank() == 0 else None)
            out = os.path.join(memory, f"{command}.h5")
        argv = [command, "--model", spec, *[f"--checkpoint={c}" for c in checkpoints], "--out", out]
        from landscape_mpi.cli import build_parser

        namespace = build_parser().parse_args(argv)
        for name, value in options.items():
            if name in NOT_OPTIONS or name in ("model", "out") or not hasattr(namespace, name):
                raise UserError(f"{command}(): no option {name!r}; the options are the fields of the command's "
                                f"configs (landscape-mpi {command} --help, docs/usage.md)")
            setattr(namespace, name, _value(name, value))
        code = _guarded(lambda: run(namespace))
        if comm.Get_rank() != 0:
            return None
        from landscape_mpi.files.xarray_view import open_dataset

        dataset = open_dataset(out).load()
        return Result(command, None if memory else out, code == EXIT_COMPLETE, dataset)
    finally:
        STOP.release()
        clear()
        shutil.rmtree(own, ignore_errors=True)
        if memory is not None and comm.Get_rank() == 0:
            shutil.rmtree(memory, ignore_errors=True)


def _guarded(body: Callable[[], int]) -> int:
    """The command's guard for a caller that wants exceptions: a failure every rank agreed on (or any failure of a
    process alone) is raised; one that a rank of several met alone ends the job (MPI_Abort), as the command
    does, since the other ranks would wait for it forever."""
    from landscape_mpi.runtime.lifecycle import AgreedError, abort, world

    try:
        return body()
    except AgreedError:
        raise
    except UserError as exc:
        if world().Get_size() > 1:
            abort(f"error: {exc}", EXIT_USER_ERROR)
        raise
    except Exception as exc:
        if world().Get_size() > 1:
            abort(f"internal error: {type(exc).__name__}: {exc}\n{traceback.format_exc()}", EXIT_FAILURE)
        raise


def _world():
    """MPI's COMM_WORLD under an MPI launcher, else the communicator of a process alone (as the jobs decide)."""
    from landscape_mpi.runtime.comm import SELF
    from landscape_mpi.runtime.context import launched_under_mpi

    if not launched_under_mpi():
        return SELF
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise UserError(f"launched under MPI but mpi4py cannot be imported ({exc}); pip install mpi4py (built for "
                        f"this MPI) or run without mpiexec") from None
    return MPI.COMM_WORLD


def _module(model, what: str):
    from torch import nn

    if not isinstance(model, nn.Module):
        raise UserError(f"{what}: a {type(model).__name__}; give a torch.nn.Module, a zoo name or "
                        f"package.module:factory")
    return model


def _save(model, folder: str, name: str) -> str:
    """`model`'s state_dict (on the CPU) as ``folder/name.pt``: a plain state_dict, as the jobs read it. The same
    weights give the same bytes, so a file computed from them resumes (its identity is the checkpoint's sha256)."""
    import torch

    state = {k: v.detach().cpu() for k, v in _module(model, f"--checkpoint {name}").state_dict().items()}
    path = os.path.join(folder, f"{name}.pt")
    torch.save(state, path)
    return path


def _same_weights(comm, folder: str) -> None:
    """Every rank saved the same weights (a script that builds its model without a fixed seed would give each
    rank its own theta*): checked on the sha256 of each saved file, one allgather."""
    if comm.Get_size() == 1:
        return
    from landscape_mpi.models import checkpoint_sha256

    mine = {n: checkpoint_sha256(os.path.join(folder, n)) for n in sorted(os.listdir(folder))}
    everyone = comm.allgather(mine)
    for rank, theirs in enumerate(everyone):
        if theirs != everyone[0]:
            raise UserError(f"the model's weights differ between rank 0 and rank {rank}; build the model with the "
                            f"same seed on every rank, or load the same checkpoint")


def _splits(value) -> tuple[str, ...] | None:
    if value is None:
        return None
    from landscape_mpi.config.options import comma_tuple

    return comma_tuple(value) if isinstance(value, str) else tuple(value)


def _value(name: str, value):
    """A keyword option's value as the command's configs take it: an axis also from (min, max, num); a list as a
    tuple. Text is parsed by the option's declaration, as on the command line."""
    if name in AXIS_NAMES and isinstance(value, (tuple, list)):
        if len(value) != 3:
            raise UserError(f"--{name}={value!r}: expected (min, max, num), e.g. {name}=(-1, 1, 51)")
        return Axis.parse(":".join(str(v) for v in value), name)
    if isinstance(value, list):
        return tuple(value)
    return value
