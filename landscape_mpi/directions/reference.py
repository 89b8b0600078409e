"""Direction files written by the paper's reference code (loss-landscape's ``net_plotter.py``), imported so
that a surface computed with that code can be recomputed here and compared.

Layout of such a file (``h5_util.write_list``): groups ``xdirection`` and, for a 2D surface,
``ydirection``, each holding one dataset per tensor named ``"0"`` .. ``"N-1"``:

- ``weights`` space: the tensors of ``model.parameters()``, in ``named_parameters()`` order;
- ``states`` space: the tensors of ``model.state_dict()``, in its order. PyTorch >= 0.4.1 state_dicts hold
  integer ``num_batches_tracked`` buffers, which the reference code also wrote (as a 0-d dataset); files
  written without them (older PyTorch) have one dataset per floating tensor. Both are read; integer buffers
  are dropped because this project never perturbs them (docs/method.md#directions).

The tensors are taken as they are (the reference code had already normalized them): no normalization here.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from landscape_mpi.config.errors import UserError
from landscape_mpi.directions.base import Direction, space_keys
from landscape_mpi.files.reader import read_reference_datasets


def _reference_order(model: nn.Module, dir_space: str, n_datasets: int) -> list[tuple[str, bool]]:
    """The (state_dict key, kept) sequence that the file's datasets "0".."N-1" follow.

    `kept` is False for integer buffers that the reference code wrote but this project does not perturb.
    Raises UserError when N fits neither order.
    """
    if dir_space == "weights":
        order = [(name, True) for name, _ in model.named_parameters()]
        if n_datasets != len(order):
            raise UserError(f"--dir-file: {n_datasets} tensors per direction, but the model has {len(order)} "
                            f"parameters (named_parameters() order, --dir-space weights); give the direction file "
                            f"of this model, or --dir-space states if it was written for the state_dict")
        return order
    if dir_space == "states":
        state = model.state_dict()
        everything = [(k, v.is_floating_point()) for k, v in state.items()]
        floating = [(k, True) for k, v in state.items() if v.is_floating_point()]
        if n_datasets == len(everything):
            return everything
        if n_datasets == len(floating):
            return floating
        raise UserError(f"--dir-file: {n_datasets} tensors per direction, but the model's state_dict has "
                        f"{len(everything)} entries ({len(floating)} floating); give the direction file of this "
                        f"model, or --dir-space weights if it was written for the parameters")
    raise ValueError(dir_space)


def read_reference_directions(path: str, model: nn.Module, dir_space: str) -> list[Direction]:
    """The directions of a reference-code direction file, keyed by state_dict name over the direction space.

    Returns [dx] for a file with only ``xdirection``, [dx, dy] with ``ydirection`` too; each Direction
    covers exactly ``space_keys(model, dir_space)`` (float tensors in the model's dtypes, on the CPU).

    Raises UserError for a missing or non-HDF5 file, a file without ``xdirection``, datasets not named
    "0".."N-1", a tensor count that fits neither order, or a tensor whose shape differs from the model's.
    """
    state = model.state_dict()
    keys = space_keys(model, dir_space)
    out: list[Direction] = []
    for group_name, datasets in read_reference_datasets(path):
        names = set(datasets)
        n = len(names)
        if names != {str(i) for i in range(n)}:
            raise UserError(f"--dir-file {path}: {group_name} holds datasets other than 0..{n - 1}; "
                            f"give a direction file in the reference code's layout")
        order = _reference_order(model, dir_space, n)
        direction: Direction = {}
        for i, (key, kept) in enumerate(order):
            arr = np.asarray(datasets[str(i)])
            expected = tuple(state[key].shape)
            if tuple(arr.shape) != expected:
                raise UserError(f"--dir-file {path}: {group_name}/{i} has shape {tuple(arr.shape)} but {key} "
                                f"has {expected}; give the direction file of this model "
                                f"(--dir-space {dir_space} expects {len(order)} tensors in that order)")
            if kept:
                direction[key] = torch.from_numpy(arr.copy()).to(state[key].dtype)
        # A state_dict order includes only floating entries of `keys`; check nothing of the space is missing.
        missing = [k for k in keys if k not in direction]
        if missing:  # cannot happen for the two orders above; kept as a guard against a changed space_keys
            raise UserError(f"--dir-file {path}: no tensor for {missing[0]}; give the direction file of this model")
        out.append({k: direction[k] for k in keys})
    return out
