"""Directions from a Hessian file: the top eigenvectors written by `landscape-mpi hessian`
(docs/method.md#directions)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from landscape_mpi.config.errors import UserError
from landscape_mpi.directions.base import Direction
from landscape_mpi.files.contract import EIGENVECTOR_CONVENTION


def hessian_directions(path: str, model: nn.Module, row: int = 0) -> tuple[Direction, Direction, dict]:
    """dx, dy = the eigenvectors of the largest and second largest eigenvalue stored in row `row` of a Hessian file.

    Keyed by parameter name (every ``named_parameters()`` key of `model`; zeros for parameters without
    requires_grad, which have no curvature), float32 CPU tensors of unit L2 norm over the whole vector
    (`EIGENVECTOR_CONVENTION`). Returns also attributes to record with the surface (eigenvalues, convention, file,
    row, checkpoint). Raises UserError (one line) if the file is not a Hessian file, has fewer than two stored
    eigenvectors, lacks the row, or was computed for another model (names or shapes differ).
    """
    from landscape_mpi.files import reader

    vectors, info = reader.read_eigenvectors(path, row, 2)
    params = dict(model.named_parameters())
    trainable = {k: tuple(p.shape) for k, p in params.items() if p.requires_grad}
    stored = {k: tuple(v.shape) for k, v in vectors[0].items()}
    if stored != trainable:
        missing = sorted(set(trainable) - set(stored))
        extra = sorted(set(stored) - set(trainable))
        shapes = sorted(k for k in set(stored) & set(trainable) if stored[k] != trainable[k])
        detail = "; ".join(f"{label}: {', '.join(ks[:3])}" + (" ..." if len(ks) > 3 else "")
                           for label, ks in (("missing", missing), ("unexpected", extra), ("wrong shape", shapes))
                           if ks)
        raise UserError(f"--hessian-file {path} was computed for another model ({detail}); "
                        f"compute it with landscape-mpi hessian for this --model")
    dirs = []
    for vec in vectors:
        dirs.append({k: (torch.from_numpy(np.asarray(vec[k], dtype=np.float32)) if k in vec
                         else torch.zeros(p.shape, dtype=torch.float32)) for k, p in params.items()})
    attrs = {"hessian_file": path, "hessian_row": row, "eigenvalues": info["eigenvalues"][:2].tolist(),
             "checkpoint": info["checkpoint"], "convention": EIGENVECTOR_CONVENTION}
    return dirs[0], dirs[1], attrs
