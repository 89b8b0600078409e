"""Where the directions of a surface come from: random (filter-normalized), targets, PCA of a trajectory,
Hessian eigenvectors, a direction file (docs/method.md#directions). One entry point, `build_directions`."""

from __future__ import annotations

import json

import torch
from torch import nn

from landscape_mpi.config.errors import UserError
from landscape_mpi.directions.base import (
    Direction,
    StreamedDirection,
    check_running_var,
    check_target,
    filter_dims,
    random_direction,
    random_tensor,
    space_keys,
    target_direction,
    target_tensor,
)
from landscape_mpi.directions.hessian import hessian_directions
from landscape_mpi.directions.pca import pca_from_files
from landscape_mpi.directions.reference import read_reference_directions


def build_directions(config, model: nn.Module, checkpoint_path: str | None = None
                     ) -> tuple[dict[str, Direction], dict | None, dict[str, str]]:
    """The directions of a surface, per axis name, over the full space (zeros where excluded), on the CPU.

    `config` is a `SurfaceConfig`; `model` holds theta*. Returns (directions, trajectory, attrs): `trajectory`
    is the PCA path to store (``directions='pca'``), `attrs` what to record about where the directions came from.
    Raises UserError for inputs that do not fit the model.
    """
    import itertools

    import numpy as np

    from landscape_mpi.models import read_state_dict

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    keys = space_keys(model, config.dir_space)
    generator = torch.Generator().manual_seed(config.seed)
    out: dict[str, Direction] = {}
    trajectory, attrs = None, {}
    given: list[Direction] | None = None
    if config.directions == "pca":
        pca = pca_from_files(state, config.trajectory, keys, config.ignore, final_path=checkpoint_path)
        given = [pca.dx, pca.dy]
        trajectory = {"x": np.asarray(pca.coords[:, 0], dtype=np.float64),
                      "y": np.asarray(pca.coords[:, 1], dtype=np.float64),
                      "residual": np.asarray(pca.residual, dtype=np.float64),
                      "step_norms": np.asarray(pca.step_norms, dtype=np.float64),
                      "epochs": (np.asarray(pca.epochs, dtype=np.int64) if pca.epochs is not None
                                 else np.arange(len(pca.residual), dtype=np.int64)),
                      "explained_variance": list(map(float, pca.explained_variance)),
                      "explained_total": float(pca.explained_total), "method": pca.method, "tol": float(pca.tol),
                      "iterations": int(pca.iterations), "centered": bool(pca.centered),
                      "sources": json.dumps(pca.sources or [])}
        attrs["pca_explained_variance"] = json.dumps(list(map(float, pca.explained_variance)))
    elif config.directions == "hessian":
        dx, dy, info = hessian_directions(config.hessian_file, model)
        given = [dx, dy]
        attrs.update({f"hessian_{k}": (v if isinstance(v, str) else json.dumps(v)) for k, v in info.items()})
    elif config.directions == "file":
        given = _directions_from_file(config, model, keys)
    if given is not None:
        needed = len(config.axes)
        if len(given) < needed:
            raise UserError(f"--directions {config.directions} gives {len(given)} direction(s), the grid has "
                            f"{needed} axes; drop --z (or --y)")
        for i, axis in enumerate(config.axes):
            d = given[i]
            out[axis] = {k: (d[k].to(state[k].dtype) if k in d else torch.zeros_like(state[k])) for k in keys}
    else:
        for axis in config.axes:
            target = config.target(axis)
            if axis == "y" and config.same_dir:
                out[axis] = out["x"]
            elif target is not None:
                out[axis] = target_direction(state, read_state_dict(target, f"--{axis}-target"), keys,
                                             f"--{axis}-target {target}")
            else:
                out[axis] = random_direction(state, keys, generator, config.norm, config.ignore,
                                             filter_dims(model))
    corners = list(itertools.product(*[(a.start, a.stop) for a in config.axes.values()]))
    check_running_var(state, list(out.values()), corners)
    return out, trajectory, attrs


#: The direction sources `stream_directions` makes tensor by tensor (the others need the whole model at once).
STREAMED_SOURCES = ("random",)


def stream_directions(config, model: nn.Module, state) -> dict[str, StreamedDirection]:
    """`build_directions` for a rank that does not hold the model (`model`'s parameters on the meta device,
    `state`: theta*'s tensors, memory-mapped from the checkpoint): each axis a `StreamedDirection` that makes a
    tensor when the file step writes it, so one tensor exists at a time. Random directions (and --x-target /
    --y-target ones, theta_target - theta*, also memory-mapped), over the trainable weights; the same bits as
    `build_directions` (the same draws in the same order). `config.directions` must be in STREAMED_SOURCES."""
    from landscape_mpi.models import read_state_dict

    keys = space_keys(model, "weights")
    dims = filter_dims(model)
    generator = torch.Generator().manual_seed(config.seed)
    out: dict[str, StreamedDirection] = {}
    for axis in config.axes:
        target = config.target(axis)
        if axis == "y" and config.same_dir:
            replay = torch.Generator().manual_seed(config.seed)  # x's draws again: the same direction
            out[axis] = StreamedDirection(keys, lambda k, g=replay: random_tensor(state[k], g, config.norm,
                                                                                 config.ignore, dims.get(k, 0)))
        elif target is not None:
            theirs = read_state_dict(target, f"--{axis}-target", mmap=True)
            check_target(state, theirs, keys, f"--{axis}-target {target}")
            out[axis] = StreamedDirection(keys, lambda k, t=theirs: target_tensor(state[k], t[k]))
        else:
            out[axis] = StreamedDirection(keys, lambda k: random_tensor(state[k], generator, config.norm,
                                                                        config.ignore, dims.get(k, 0)))
    return out


def _directions_from_file(config, model: nn.Module, keys: list[str]) -> list[Direction]:
    if config.dir_format == "reference":
        return read_reference_directions(config.dir_file, model, config.dir_space)
    from landscape_mpi.files.reader import read_direction_file

    dirs = [{k: torch.from_numpy(v) for k, v in d.items()} for d in read_direction_file(config.dir_file)]
    state = model.state_dict()
    for d in dirs:
        bad = [k for k in keys if k not in d or tuple(d[k].shape) != tuple(state[k].shape)]
        if bad:
            raise UserError(f"--dir-file {config.dir_file} does not fit the model (at {', '.join(bad[:3])}); "
                            f"give directions of this --model and --dir-space")
    return dirs
