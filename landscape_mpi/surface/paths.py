"""`landscape-mpi path`: loss and metrics along paths between models, by the surface job's pipeline.

A path file is a surface file of another kind (files/contract.py, ``file_kind = "path"``): its grid is
(curves x t), and the weights at point (c, j) are theta_0 + sum_k coefficients[c, j, k] d_k with d_k the other
models minus the first (directions/paths.py). So the job is `SurfaceJob` with two steps of its own: the file
step (the path's directions and coefficient table, its resume identity) and the evaluator (a point's coefficient
vector from the table, not from grid coordinates). Everything else is the surface job's: the pre-flight, the
master/worker scheduling, the engines (BatchNorm re-estimated at every point with --bn recalibrate), groups of
ranks per point, --io, the durable writes, resume, stops, faults and exit codes (docs/paths.md).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch

from landscape_mpi.config.errors import UserError
from landscape_mpi.config.path import PathConfig, path_config_diff
from landscape_mpi.config.surface import RunOptions, SurfaceConfig, config_diff
from landscape_mpi.directions.base import StreamedDirection, check_target, space_keys, target_tensor
from landscape_mpi.directions.paths import PathTable, blocks_of, check_blocks, path_directions, path_table
from landscape_mpi.files import contract, reader, store
from landscape_mpi.models import checkpoint_sha256, read_state_dict
from landscape_mpi.runtime.context import RunContext
from landscape_mpi.surface.inputs import Inputs
from landscape_mpi.surface.prepare import as_read_back, data_attrs, data_indices, data_mismatch, hash_mismatch
from landscape_mpi.surface.run import GridEvaluator, SurfaceJob, run_surface


def run_path(path: PathConfig, config: SurfaceConfig, options: RunOptions, ctx: RunContext | None = None) -> int:
    """Compute (or resume) the path file `options.out`; the process exit code, as `run_surface`'s.

    `config`: how a point is evaluated (`evaluation_config` makes it: theta* is the first model)."""
    return run_surface(config, options, ctx, job=lambda c, o, x: PathJob(path, c, o, x))


def evaluation_config(path: PathConfig, config: SurfaceConfig) -> SurfaceConfig:
    """`config` with the path's first model as theta* and t as its one axis (stored in the file as ``config``)."""
    from dataclasses import replace

    from landscape_mpi.config.surface import Axis

    table = path_table(path.kind, len(path.models), path.points, ("",))
    return replace(config, checkpoint=path.checkpoints[0], x=Axis(0.0, 1.0, len(table.t)), y=None, z=None)


def model_options(path: PathConfig) -> list[str]:
    """The option that names each model of the path (the bend last), for errors: ``--checkpoint`` or ``--bend``."""
    return ["--checkpoint"] * len(path.checkpoints) + (["--bend"] if path.bend else [])


def model_hashes(path: PathConfig) -> dict[str, str]:
    """``model_<i>_sha256`` of every model of the path (the bend last): what a resume must find unchanged."""
    return {f"model_{i}_sha256": checkpoint_sha256(p, option)
            for i, (p, option) in enumerate(zip(path.models, model_options(path)))}


class PathFileKind:
    """`prepare`'s view of a path file (surface/prepare.py, `SurfaceFileKind` is the surface's)."""

    kind = contract.KIND_PATH
    noun = "path"

    def __init__(self, path: PathConfig, config: SurfaceConfig, model: torch.nn.Module, out: str) -> None:
        self.path, self.config, self.out = path, config, out
        keys = space_keys(model, config.dir_space)
        groups = None
        if path.kind == "layers" and path.blocks == "permutation-group":  # the aligner's groups, by its tracing
            from landscape_mpi.alignment import find_groups
            from landscape_mpi.alignment.run import example_batch

            groups = find_groups(model, example_batch(config.dataset, config.data_root), path.align_unsupported,
                                 option="--align-unsupported")
        self.blocks = blocks_of(model, keys, path.blocks, groups) if path.kind == "layers" else None
        if self.blocks is not None:
            check_blocks(self.blocks, path.blocks)
        self.table = path_table(path.kind, len(path.models), path.points, list(self.blocks or ()))
        self.names = [f"d{k + 1}" for k in range(self.table.coefficients.shape[2])]
        self.shape = self.table.shape
        self.alignment: dict = {}

    # ------------------------------------------------------------------------------------------ identity
    def mismatch(self, summary: reader.SurfaceSummary, inputs: Inputs) -> list[str]:
        attrs = summary.attrs
        diff = config_diff(summary.config, self.config.to_dict())
        stored_path = json.loads(attrs.get("path_config", "{}"))
        diff += path_config_diff(stored_path, self.path.to_dict())
        diff += hash_mismatch(model_hashes(self.path), attrs)
        diff += data_mismatch(summary, inputs)
        have = summary.coords.get("t")
        if have is None or not np.array_equal(have, self.table.t) or tuple(summary.done.shape) != self.shape:
            diff.append(f"t: the file's grid is {tuple(summary.done.shape)}, the command's {self.shape}")
        return diff

    # ------------------------------------------------------------------------------------------ creation
    def create(self, out: str, inputs: Inputs) -> dict:
        """Write the complete path file at `out`: the directions from the models, the coefficient table."""
        path, config, table = self.path, self.config, self.table
        options = [f"{o} {p}" for o, p in zip(model_options(path), path.models)]
        keys = space_keys(inputs.model, config.dir_space)
        if inputs.theta is None:  # the whole model on this rank: directions in memory
            theta0 = {k: v.detach().cpu() for k, v in inputs.model.state_dict().items()}
            others = [read_state_dict(p, o.split()[0]) for p, o in zip(path.models[1:], options[1:])]
            if path.align:
                others = self.aligned(inputs, theta0, others)
            made = path_directions(path.kind, theta0, others, keys, options[1:], self.blocks)
            directions = {name: d for name, d in zip(self.names, made)}
        else:  # no rank holds the whole model: each direction made tensor by tensor as the file step writes it
            if path.align:
                raise UserError("--align needs the whole model on rank 0 (weight matching compares every layer); "
                                "use --group-mode data, or --ranks-per-point 1")
            directions = self.streamed(keys, options)
        attrs = {"checkpoint": os.path.abspath(path.checkpoints[0]), "path_config": path.to_json(),
                 contract.PATH_KIND_ATTR: path.kind, **model_hashes(path), **data_attrs(inputs)}
        if self.alignment:
            attrs["alignment"] = json.dumps(self.alignment, sort_keys=True)
        grid = store.Grid(self.kind, self.shape, {"t": table.t}, lambda f: write_path_group(f, path, table))
        store.create_surface_file(out, config, directions, attrs, data_indices(inputs), grid=grid)
        return directions

    def streamed(self, keys: list[str], options: list[str]) -> dict:
        path = self.path
        theta0 = read_state_dict(path.checkpoints[0], "--checkpoint", mmap=True)
        others = [read_state_dict(p, o.split()[0], mmap=True) for p, o in zip(path.models[1:], options[1:])]
        for other, option in zip(others, options[1:]):
            check_target(theta0, other, keys, option)
        if path.kind == "layers":
            return {name: StreamedDirection(keys, lambda k, mine=set(block): (
                target_tensor(theta0[k], others[0][k]) if k in mine else torch.zeros_like(theta0[k])))
                for name, block in zip(self.names, self.blocks.values())}
        return {name: StreamedDirection(keys, lambda k, o=other: target_tensor(theta0[k], o[k]))
                for name, other in zip(self.names, others)}

    def aligned(self, inputs: Inputs, theta0: dict, others: list[dict]) -> list[dict]:
        """Every other model permuted to match the first (weight matching); each permutation saved beside the
        file as OUT.align-<k>.h5, and recorded in the file's ``alignment`` attribute."""
        from landscape_mpi.alignment import find_groups, match_weights

        example = inputs.data[0].inputs[:2] if not isinstance(inputs.data[0].inputs, dict) else {
            k: v[:2] for k, v in inputs.data[0].inputs.items()}
        spec = find_groups(inputs.model, example, self.path.align_unsupported, option="--align-unsupported")
        out = []
        hashes = model_hashes(self.path)
        for k, other in enumerate(others, start=1):
            perm = match_weights(spec, theta0, other, seed=self.config.seed)
            perm.hash_a, perm.hash_b = hashes["model_0_sha256"], hashes[f"model_{k}_sha256"]
            saved = f"{self.out}.align-{k}.h5"
            perm.save(saved)
            self.alignment[str(k)] = {"file": os.path.abspath(saved), "groups": len(spec.sizes), **perm.info}
            out.append(perm.apply(other))
        return out

    def read_back(self, directions: dict) -> reader.RunInputs:
        return as_read_back(self.names, directions, [self.table.t])


def write_path_group(f, path: PathConfig, table: PathTable) -> None:
    """The /path group of a path file (layout: files/contract.py, PATH_SCHEMA)."""
    import h5py

    g = f.create_group("path")
    labels = [os.path.abspath(p) for p in path.models]
    g.create_dataset("checkpoints", data=np.array(labels, dtype=h5py.string_dtype()))
    g.create_dataset("curves", data=np.array(table.curves, dtype=h5py.string_dtype()))
    g.create_dataset("endpoints", data=np.asarray(table.endpoints, dtype=np.int64))
    g.create_dataset("coefficients", data=np.asarray(table.coefficients, dtype=np.float64))
    if table.knots is not None:
        g.create_dataset("knots", data=np.asarray(table.knots, dtype=np.float64))


class PathJob(SurfaceJob):
    """The surface job on a path file: its file kind, and an evaluator that reads the coefficient table."""

    def __init__(self, path: PathConfig, config: SurfaceConfig, options: RunOptions, ctx: RunContext) -> None:
        super().__init__(config, options, ctx)
        self.path = path
        from landscape_mpi.models import build_model

        self.file = PathFileKind(path, config, build_model(config.model), options.out)

    def make_evaluator(self, inputs: Inputs, stored: tuple) -> GridEvaluator:
        return PathEvaluator(self.config, self.options, inputs, stored, self.ctx, self.ctx.faults.batch_hooks(),
                             self.group, table=self.file.table.coefficients)


class PathEvaluator(GridEvaluator):
    """A point's coefficients from the path's table (curves x t x K) instead of grid coordinates."""

    def __init__(self, *args, table: np.ndarray) -> None:
        super().__init__(*args)
        self.table = table
        self.shape = table.shape[:2]

    def coefficients(self, flats: np.ndarray) -> np.ndarray:
        c, j = np.unravel_index(np.asarray(flats, dtype=np.int64), self.shape)
        return self.table[c, j, :]


def log(message: str) -> None:
    print(f"landscape-mpi path: {message}", file=sys.stderr, flush=True)
