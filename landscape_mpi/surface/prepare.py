"""Rank 0's file step: create the surface file, or check that an existing one is this command's, to resume.

The resume identity lives here, in one place (`identity_mismatch`), compared field by field:
- the value config (`config.config_diff`; a file of an older version with fewer fields resumes when the
  missing fields had their old defaults; ``--batch-size`` is a run option and never compared);
- the sha256 of the checkpoint and of every other input file (targets, trajectory, Hessian file, direction
  file), and whether each such option is given at all (a dropped ``--x-target`` is a mismatch);
- a fingerprint of each split's evaluation tensors (content, not path) and the stored ``--samples`` indices;
- the exact grid coordinates (floats compared exactly; new points are evaluated at the file's /coords).

``--overwrite`` never destroys a complete surface before its replacement is complete: the new surface is
computed into ``FILE.h5.new`` beside it (resumable under the same command) and renamed onto FILE.h5 only
when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace

import numpy as np

from landscape_mpi.config.errors import UserError
from landscape_mpi.config.surface import RunOptions, SurfaceConfig, config_diff
from landscape_mpi.directions.sources import build_directions, stream_directions
from landscape_mpi.files import contract, reader, store
from landscape_mpi.models import checkpoint_sha256, read_state_dict
from landscape_mpi.surface.inputs import Inputs


def overwrite_path(out: str) -> str:
    """Where an --overwrite run builds its new surface until it is complete."""
    return out + ".new"


def input_files(config: SurfaceConfig) -> dict[str, tuple[str, list[str]]]:
    """name -> (option, files) of every input file whose content determines the values."""
    files: dict[str, tuple[str, list[str]]] = {"checkpoint": ("--checkpoint", [config.checkpoint])}
    for axis in ("x", "y"):
        if config.target(axis):
            files[f"{axis}_target"] = (f"--{axis}-target", [config.target(axis)])
    if config.trajectory:
        from landscape_mpi.directions.pca import trajectory_files

        files["trajectory"] = ("--trajectory", trajectory_files(config.trajectory, config.checkpoint))
    if config.hessian_file:
        files["hessian_file"] = ("--hessian-file", [config.hessian_file])
    if config.dir_file:
        files["dir_file"] = ("--dir-file", [config.dir_file])
    return files


def input_hashes(config: SurfaceConfig) -> dict[str, str]:
    """``<name>_sha256`` of every input file (a list of files: sha256 of their sha256s, in order)."""
    out = {}
    for name, (option, paths) in input_files(config).items():
        if len(paths) == 1:
            out[f"{name}_sha256"] = checkpoint_sha256(paths[0], option)
        else:
            h = hashlib.sha256()
            for p in paths:
                h.update(checkpoint_sha256(p, option).encode())
            out[f"{name}_sha256"] = h.hexdigest()
    return out


def identity_mismatch(summary: reader.SurfaceSummary, config: SurfaceConfig, inputs: Inputs) -> list[str]:
    """Every way in which the file is not this command's surface, one phrase each (empty: resume it)."""
    diff = config_diff(summary.config, config.to_dict())
    diff += hash_mismatch(input_hashes(config), summary.attrs)
    diff += data_mismatch(summary, inputs)
    for name, axis in config.axes.items():
        have = summary.coords.get(name)
        if have is None or have.shape != (axis.num,) or not np.array_equal(have, axis.values()):
            shown = (f"{float(have[0])!r}:{float(have[-1])!r}:{len(have)}" if have is not None and len(have)
                     else "none")
            diff.append(f"{name}: file has {shown}, command asks {axis.spec()} (coordinates compared exactly)")
    for name in summary.coords:
        if name not in config.axes:
            diff.append(f"{name} axis: the file has it, the command does not")
    return diff


def hash_mismatch(wanted: dict[str, str], attrs: dict) -> list[str]:
    """How the input files differ from those the file was computed from (`input_hashes` vs its attributes)."""
    diff = []
    stored = {k: v for k, v in attrs.items() if k.endswith("_sha256") and not k.endswith("data_sha256")}
    for key in sorted(set(wanted) | set(stored)):
        name = key[:-len("_sha256")]
        if key not in wanted:
            diff.append(f"{name}: the file was computed with it, the command gives none")
        elif key not in stored:
            diff.append(f"{name}: the command gives it, the file was computed without it")
        elif wanted[key] != stored[key]:
            diff.append(f"{name}: file was computed from another file (sha256 differs)")
    return diff


def data_mismatch(summary: reader.SurfaceSummary, inputs: Inputs) -> list[str]:
    """How the evaluation data differ from the file's: each split's fingerprint and its --samples indices."""
    diff = []
    for split, fp in inputs.fingerprints.items():
        old = summary.attrs.get(f"{split}_data_sha256")
        if old is not None and old != fp:
            diff.append(f"{split} data: the evaluation samples differ from the file's (another dataset, "
                        f"data folder content or factory)")
    for data in inputs.data:
        old_idx = summary.data_indices.get(data.name)
        new_idx = data.indices
        if (old_idx is None) != (new_idx is None) or (old_idx is not None and not np.array_equal(old_idx, new_idx)):
            diff.append(f"{data.name} data: the --samples subset differs from the file's /data/{data.name}_indices")
    return diff


@dataclass
class Opened:
    """What rank 0's file step read (or wrote) of the file, kept so that the run opens it only once more, to write."""

    done: np.ndarray
    """bool, grid-shaped: the points already computed."""
    inputs: reader.RunInputs | None
    """(directions, coordinates) as `reader.read_run_inputs` gives them (None where no rank holds the whole
    model: each reads its rows)."""


@dataclass
class Prepared:
    path: str
    """The file this run computes into (``--out``, or ``--out``.new under --overwrite)."""
    message: str
    todo: int
    """Points not done yet."""
    opened: Opened | None = None
    """Rank 0's (None once `broadcastable`, and when nothing is left to compute)."""

    def broadcastable(self) -> Prepared:
        """Without `opened` (the directions are shared once per node, not broadcast to every rank)."""
        return replace(self, opened=None)


class SurfaceFileKind:
    """What `prepare` needs to know of the surface file (the path job has its own, surface/paths.py): its kind,
    direction names and grid shape, the resume identity, and how to create it."""

    kind = contract.KIND_SURFACE
    noun = "surface"

    def __init__(self, config: SurfaceConfig) -> None:
        self.config = config
        self.names = list(config.axes)
        self.shape = config.shape

    def mismatch(self, summary: reader.SurfaceSummary, inputs: Inputs) -> list[str]:
        return identity_mismatch(summary, self.config, inputs)

    def create(self, path: str, inputs: Inputs) -> dict:
        """Write the complete file at `path` (atomically); returns the directions written, by name."""
        config = self.config
        if inputs.theta is None:
            directions, trajectory, attrs = build_directions(config, inputs.model, config.checkpoint)
        else:  # made and written tensor by tensor: no rank holds the whole model (surface.inputs.streams_shards).
            # The filter norms read all of theta*: through a mapping of their own, whose pages leave this
            # process's resident set with it (inputs.theta keeps only the rows this rank's shards read later).
            theta = read_state_dict(config.checkpoint, "--checkpoint", mmap=True)
            directions, trajectory, attrs = stream_directions(config, inputs.model, theta), None, {}
        attrs = {"checkpoint": os.path.abspath(config.checkpoint), **attrs, **input_hashes(config),
                 **data_attrs(inputs)}
        if config.tolerance is not None:  # the rule, with the size of each split (what a point reads at most)
            attrs[contract.SEQUENTIAL_ATTR] = json.dumps(store.sequential_rule_attr(
                config, {d.name: len(d) for d in inputs.data}))
        store.create_surface_file(path, config, directions, attrs, data_indices(inputs), trajectory)
        return directions

    def read_back(self, directions: dict) -> reader.RunInputs:
        return as_read_back(self.names, directions, [a.values() for a in self.config.axes.values()])


def data_attrs(inputs: Inputs) -> dict[str, str]:
    """The root attributes that identify the evaluation data (``<split>_data_sha256``)."""
    return {f"{split}_data_sha256": fp for split, fp in inputs.fingerprints.items()}


def data_indices(inputs: Inputs) -> dict[str, np.ndarray | None]:
    return {d.name: d.indices for d in inputs.data}


def prepare_file(config: SurfaceConfig, options: RunOptions, inputs: Inputs) -> Prepared:
    """`prepare` for the surface file of `config`."""
    return prepare(SurfaceFileKind(config), options, inputs)


def prepare(spec, options: RunOptions, inputs: Inputs) -> Prepared:
    """Create the file (or the --overwrite work file), or check the existing one may be resumed. `spec`: the
    file kind (`SurfaceFileKind`, or the path job's).

    Opens the file once: an existing one is read (summary, and where points are left, directions and
    coordinates) and checked; a new one is written under a temporary name and renamed into place, and what was
    written is returned as it would be read back (`Opened`).
    """
    out = options.out
    store.check_out_path(out)
    path = overwrite_path(out) if options.overwrite else out
    if os.path.exists(path):
        with reader.open_surface(path, kind=spec.kind) as f:
            summary = f.summary(with_values=False, with_ranks=False)
            diff = spec.mismatch(summary, inputs)
            left = int((~summary.done).sum())
            opened = None
            if not diff and left:  # a run that holds no whole model reads its rows later (inputs.theta)
                opened = Opened(summary.done, f.run_inputs(spec.names) if inputs.theta is None else None)
        if not diff:
            return Prepared(path, f"resuming {path}: {summary.done.size - left}/{summary.done.size} points done",
                            left, opened)
        if not options.overwrite:
            raise UserError(f"--out {out} holds a {spec.noun} of another configuration ({'; '.join(diff)}); rerun "
                            f"with the file's settings to resume, choose another --out, or add --overwrite")
        os.remove(path)  # a stale --overwrite work file of another command: not anyone's complete surface
    directions = spec.create(path, inputs)
    total = int(np.prod(spec.shape))
    verb = f"building the replacement of {out} in" if options.overwrite else "created"
    opened = Opened(np.zeros(spec.shape, dtype=bool), spec.read_back(directions) if inputs.theta is None else None)
    return Prepared(path, f"{verb} {path}: grid {'x'.join(map(str, spec.shape))} = {total} points", total,
                    opened)


def as_read_back(names: list[str], directions: dict, coords: list[np.ndarray]) -> reader.RunInputs:
    """The (directions, coordinates) that `reader.read_run_inputs` gives of a file just created from `directions`
    (`store.create_surface_file`), without reading it: keys in HDF5's name order, arrays in the dtypes written."""
    stored = [{k: np.array(store.as_array(directions[a][k])) for k in sorted(directions[a])} for a in names]
    return stored, coords


def finish_overwrite(options: RunOptions, path: str) -> None:
    """The --overwrite work file is complete: rename it onto --out (atomic) and make the rename durable."""
    if path != options.out:
        os.replace(path, options.out)
        store.fsync_folder(options.out)
