"""Per-block curvature: the top eigenvalue and the trace of each diagonal block C_bb of a curvature operator
(docs/method.md#per-block-curvature).

A block is a set of parameter tensors: one per tensor (``tensor``) or all the tensors of one module
(``module``: the name up to its last dot), in ``named_parameters()`` order. A block's product is the operator's
product with v zero outside the block, read on the block's rows (one full product each): C_bb v_b. Its top
eigenvalue is ARPACK's 'LA' on that restricted operator (dense below `krylov.extreme_eigenpairs`' threshold).
Its trace needs no product of its own: with the Rademacher probes z of the whole matrix's Hutchinson run,
E[z_b . (C z)_b] = tr(C_bb) (the off-diagonal blocks' terms have mean zero), so `BlockTraceRecorder` keeps each
probe's per-block dot products while the whole trace is computed (larger variance than probes of the block
alone; the standard error is stored).

A block's spectrum is not a piece of the whole matrix's: the extremes of C_bb lie inside [lambda_min(C),
lambda_max(C)] (Cauchy interlacing) and can differ from them at order one (tests/test_curvature_operators.py).
Torch-free: operators are functions on float64 numpy vectors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from landscape_mpi.config.errors import UserError
from landscape_mpi.curvature.krylov import Matvec, extreme_eigenpairs

BLOCK_MAPS = ("none", "tensor", "module")
#: Blocks of at most this many parameters are diagonalized densely.
DENSE_BLOCK = 20


@dataclass(frozen=True)
class Block:
    name: str
    """The tensor's name, or the module's (``(root)`` for parameters of the model itself)."""
    index: np.ndarray
    """The block's positions in the flat parameter vector (int64)."""


def parameter_blocks(names: Sequence[str], sizes: Sequence[int], mode: str) -> list[Block]:
    """The blocks of the flat parameter vector (`names`, `sizes`: `ParamSpace`'s) under block map `mode`, in
    model order. Raises UserError for an unknown mode or a map that names no parameter."""
    if mode not in BLOCK_MAPS[1:]:
        raise UserError(f"--blocks {mode}: choose {', '.join(BLOCK_MAPS)}")
    if not names:
        raise UserError(f"--blocks {mode}: the model has no trainable parameter to put in a block")
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    groups: dict[str, list[np.ndarray]] = {}
    for name, lo, hi in zip(names, starts[:-1], starts[1:]):
        key = name if mode == "tensor" else (name.rsplit(".", 1)[0] if "." in name else "(root)")
        groups.setdefault(key, []).append(np.arange(lo, hi, dtype=np.int64))
    return [Block(key, np.concatenate(parts)) for key, parts in groups.items()]


def restricted(matvec: Matvec, n: int, block: Block) -> Matvec:
    """v_b -> (C [v_b on the block, 0 elsewhere])_b."""
    def mv(vb: np.ndarray) -> np.ndarray:
        v = np.zeros(n)
        v[block.index] = vb
        return matvec(v)[block.index]
    return mv


class BlockTraceRecorder:
    """Wraps a matvec; while `recording`, keeps z_b . (C z)_b of every product for every block (the whole
    Hutchinson run's probes z)."""

    def __init__(self, matvec: Matvec, blocks: Sequence[Block]) -> None:
        self.matvec, self.blocks = matvec, list(blocks)
        self.recording = False
        self.samples: list[np.ndarray] = []

    def __call__(self, v: np.ndarray) -> np.ndarray:
        out = self.matvec(v)
        if self.recording:
            self.samples.append(np.array([float(v[b.index] @ out[b.index]) for b in self.blocks]))
        return out

    def traces(self) -> tuple[np.ndarray, np.ndarray]:
        """(estimate, standard error) per block from the recorded probes (NaN without probes)."""
        if not self.samples:
            nan = np.full(len(self.blocks), np.nan)
            return nan, nan.copy()
        s = np.stack(self.samples)
        se = s.std(axis=0, ddof=1) / math.sqrt(len(s)) if len(s) > 1 else np.full(len(self.blocks), np.nan)
        return s.mean(axis=0), se


@dataclass
class BlockSpectra:
    names: list[str]
    sizes: np.ndarray
    top: np.ndarray
    """The largest eigenvalue of each diagonal block."""
    products: np.ndarray
    """Full products each block's top eigenvalue took."""
    trace: np.ndarray
    trace_stderr: np.ndarray


def block_tops(matvec: Matvec, n: int, blocks: Sequence[Block], tol: float, maxiter: int,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(top eigenvalue, products) of every diagonal block (ARPACK 'LA' to relative `tol`, seeded)."""
    tops, products = np.empty(len(blocks)), np.zeros(len(blocks), dtype=np.int64)
    for i, block in enumerate(blocks):
        size = len(block.index)  # a small block is built densely (size products; ARPACK takes 21 or more)
        eig = extreme_eigenpairs(restricted(matvec, n, block), size, size if size <= DENSE_BLOCK else 1, "LA", tol,
                                 maxiter, seed)
        tops[i], products[i] = eig.values[0], eig.products
    return tops, products
