"""PCA directions from a training trajectory (docs/method.md#directions, "PCA directions").

Rows of the matrix are ``theta_i - theta_final`` over the saved checkpoints, flattened over the direction
space's keys in their order (tensors of dim <= 1 zeroed with ``ignore='biasbn'``, as for random
directions). The first two principal components, unit-norm and *not* filter-normalized, become dx and dy;
each checkpoint is drawn at its projection ``((theta_i - theta_final) . dx, (theta_i - theta_final) . dy)``
and its distance off that plane is recorded as the residual.

Centering. The paper's reference code fits scikit-learn's ``PCA(n_components=2)`` to these rows, and that
subtracts the mean row before the SVD. We do the same by default (``center=True``), so the explained-variance
ratios are the paper's: ``s_k^2 / sum(s^2)`` of the singular values of the *centered* matrix, exactly what
``numpy.linalg.svd`` of the mean-subtracted rows gives. The projections (and the residuals) are of the
*uncentered* rows, as in the reference code: the surface's origin is theta_final, so that is where the path
must end. ``center=False`` gives the uncentered variant (ratios from the SVD of the raw rows).

Sign. A principal component's sign is arbitrary; we fix it so that its entry of largest magnitude is
positive (scikit-learn's ``svd_flip`` convention with a V-based decision), so the same checkpoints always
give the same directions.

Only `landscape_mpi.models.read_state_dict` touches files here.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from landscape_mpi.config.errors import UserError
from landscape_mpi.models import natural_key

Direction = dict[str, torch.Tensor]

METHODS = ("auto", "exact", "randomized")
#: auto chooses the exact SVD while the float64 row matrix stays below this many bytes.
EXACT_MAX_BYTES = 2 << 30
#: Randomized SVD: stop when the top two singular values change by less than this (relative) between
#: two subspace iterations.
RANDOMIZED_TOL = 1e-6
RANDOMIZED_MAX_ITERS = 100
#: Extra columns of the randomized range finder beyond the two wanted (Halko, Martinsson, Tropp 2011).
OVERSAMPLE = 8


@dataclass
class PCAResult:
    """Two principal directions of a training trajectory and the trajectory's coordinates on their plane."""

    dx: Direction
    """First principal component, key -> tensor over the space's keys (unit 2-norm over all of them)."""
    dy: Direction
    """Second principal component, orthogonal to dx, unit norm."""
    explained_variance: tuple[float, float]
    """Ratio of the variance along each of the two components to the total variance of the rows (0..1)."""
    explained_total: float
    """The sum of the two ratios: the share of the trajectory's variance that the plane holds."""
    coords: np.ndarray
    """(n_checkpoints, 2) float64: each ``theta_i - theta_final`` projected on (dx, dy), in weight units."""
    residual: np.ndarray
    """(n_checkpoints,) float64: the 2-norm of ``theta_i - theta_final`` off the plane, in weight units."""
    method: str
    """'exact' (LAPACK SVD in float64) or 'randomized' (subspace iteration)."""
    tol: float
    """Exact: float64 machine epsilon. Randomized: the relative change of the top two singular values at
    which the iteration stopped."""
    iterations: int
    """Subspace iterations of the randomized method (0 for exact)."""
    centered: bool
    """Whether the mean row was subtracted before the SVD (the paper's code: yes)."""
    singular_values: tuple[float, float]
    """The top two singular values of the (centered) row matrix."""
    epochs: np.ndarray | None = None
    """(n_checkpoints,) int64 epoch of each row where known (from the file names), else None."""
    sources: list[str] | None = None
    """The checkpoint files of the rows, in order, where they came from files."""
    step_norms: np.ndarray | None = None
    """(n_checkpoints - 1,) float64: ``||theta_{i+1} - theta_i||`` over the direction space (biases and
    BatchNorm left out under --ignore biasbn, as in the rows): the run's own step sizes, which the random-walk
    baseline of the trajectory experiment reuses."""


def _space_dim(final: dict[str, torch.Tensor], keys: Sequence[str]) -> int:
    return int(sum(final[k].numel() for k in keys))


def _row(final: dict[str, torch.Tensor], state: dict[str, torch.Tensor], keys: Sequence[str], ignore: str,
         dtype: torch.dtype, where: str) -> torch.Tensor:
    """``theta_i - theta_final`` flattened over `keys`, biases/BN zeroed with ignore='biasbn'."""
    parts = []
    for k in keys:
        w = final[k]
        if k not in state:
            raise UserError(f"{where}: has no tensor {k}; give checkpoints of the same architecture as --checkpoint")
        t = state[k]
        if tuple(t.shape) != tuple(w.shape):
            raise UserError(f"{where}: {k} has shape {tuple(t.shape)}, --checkpoint has {tuple(w.shape)}; "
                            f"give checkpoints of the same architecture")
        if w.dim() <= 1 and ignore == "biasbn":
            parts.append(torch.zeros(w.numel(), dtype=dtype))
        else:
            parts.append((t.detach().to("cpu", dtype) - w.detach().to("cpu", dtype)).reshape(-1))
    return torch.cat(parts)


def _flip_sign(v: torch.Tensor) -> torch.Tensor:
    """Make the entry of largest magnitude positive (a reproducible sign)."""
    i = int(torch.argmax(v.abs()))
    return -v if float(v[i]) < 0 else v


def _exact(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """Top two (singular values, right singular vectors as rows) by LAPACK's SVD."""
    _, s, vh = torch.linalg.svd(m, full_matrices=False)
    return s[:2], vh[:2], 0, float(torch.finfo(m.dtype).eps)


def _randomized(m: torch.Tensor, tol: float, max_iters: int,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """Top two singular triplets by randomized subspace iteration (Halko, Martinsson, Tropp 2011, alg. 4.4):
    a seeded Gaussian start, re-orthonormalized every step, stopped when the top two singular values change
    by less than `tol` relative. Only products with `m` and `m.T` are formed: no n x n or p x p matrix."""
    n, _ = m.shape
    q = min(n, 2 + OVERSAMPLE)
    g = torch.Generator().manual_seed(seed)
    omega = torch.randn(n, q, generator=g, dtype=torch.float64).to(m.dtype)
    basis = torch.linalg.qr(m.T @ omega).Q  # (p, q): spans the row space's dominant part
    prev = None
    change = float("inf")
    it = 0
    for it in range(1, max_iters + 1):  # noqa: B007  (the count of iterations run is returned)
        y = torch.linalg.qr(m @ basis).Q  # (n, q)
        basis = torch.linalg.qr(m.T @ y).Q  # (p, q)
        s = torch.linalg.svdvals(m @ basis)[:2].double()
        if prev is not None:
            change = float(((s - prev).abs() / s.clamp_min(1e-300)).max())
            if change < tol:
                break
        prev = s
    _, s, vh_small = torch.linalg.svd(m @ basis, full_matrices=False)
    vh = vh_small[:2] @ basis.T
    return s[:2], vh, it, change


def pca_directions(final: dict[str, torch.Tensor], checkpoints: Sequence[dict[str, torch.Tensor]],
                   keys: Sequence[str], ignore: str, method: str = "auto", center: bool = True,
                   tol: float = RANDOMIZED_TOL, names: Sequence[str] | None = None) -> PCAResult:
    """The first two principal components of the rows ``theta_i - theta_final`` (see the module docstring).

    `final` is theta_final's state_dict, `checkpoints` the states of the trajectory in order (iterated once, so
    a lazy sequence that reads each file on access keeps only the row matrix in memory), `keys` the direction space's
    state_dict keys in order, `ignore` 'biasbn' (zero rows on tensors of dim <= 1) or 'none'. `method`:
    'exact', 'randomized', or 'auto' (exact while the float64 matrix is under 2 GiB). `names` label the
    checkpoints in error messages.

    Raises UserError for fewer than 3 checkpoints (2 without centering), a checkpoint of another
    architecture, or checkpoints that span fewer than two dimensions (e.g. all equal).
    """
    if method not in METHODS:
        raise UserError(f"--pca-method {method}: choose one of {', '.join(METHODS)}")
    if ignore not in ("biasbn", "none"):
        raise ValueError(ignore)
    p = _space_dim(final, keys)
    states = checkpoints if hasattr(checkpoints, "__len__") else list(checkpoints)
    n = len(states)
    needed = 3 if center else 2
    if n < needed:
        raise UserError(f"--trajectory: {n} checkpoint(s) besides the final one; PCA directions need at least "
                        f"{needed}: save a checkpoint every epoch (landscape-mpi train does)")
    if method == "auto":
        method = "exact" if n * p * 8 <= EXACT_MAX_BYTES else "randomized"
    # float64 for the exact method (the ratios must match numpy's SVD closely); float32 halves the memory of
    # the large matrices the randomized method is for.
    dtype = torch.float64 if method == "exact" else torch.float32
    m = torch.empty(n, p, dtype=dtype)
    for i, state in enumerate(states):
        where = names[i] if names is not None else f"checkpoint {i}"
        m[i] = _row(final, state, keys, ignore, dtype, where)
    del states
    raw_rows = m
    a = m - m.mean(dim=0, keepdim=True) if center else m
    total = float((a.double() ** 2).sum())
    if method == "exact":
        s, vh, iters, used_tol = _exact(a)
    else:
        s, vh, iters, used_tol = _randomized(a, tol, RANDOMIZED_MAX_ITERS)
    s = s.double()
    if total == 0.0 or len(s) < 2 or float(s[1]) <= 1e-12 * max(float(s[0]), 1e-300):
        raise UserError("--trajectory: the checkpoints span fewer than two dimensions (identical or collinear "
                        "weights); give the checkpoints of a real training run")
    v1 = _flip_sign(vh[0].double())
    v2 = _flip_sign(vh[1].double())
    # Gram-Schmidt once more: the randomized path gives vectors orthogonal only to float32 precision.
    v1 = v1 / v1.norm()
    v2 = v2 - (v2 @ v1) * v1
    v2 = v2 / v2.norm()
    rows = raw_rows.double()
    coords = torch.stack([rows @ v1, rows @ v2], dim=1)
    off_plane = rows - coords[:, :1] * v1 - coords[:, 1:] * v2
    residual = off_plane.norm(dim=1)
    step_norms = (rows[1:] - rows[:-1]).norm(dim=1)
    ratios = (float(s[0]) ** 2 / total, float(s[1]) ** 2 / total)

    def unflatten(v: torch.Tensor) -> Direction:
        out: Direction = {}
        offset = 0
        for k in keys:
            w = final[k]
            out[k] = v[offset:offset + w.numel()].reshape(w.shape).to(w.dtype).clone()
            offset += w.numel()
        return out

    return PCAResult(dx=unflatten(v1), dy=unflatten(v2), explained_variance=ratios,
                     explained_total=ratios[0] + ratios[1], coords=coords.numpy(), residual=residual.numpy(),
                     method=method, tol=used_tol, iterations=iters, centered=center,
                     singular_values=(float(s[0]), float(s[1])), step_norms=step_norms.numpy())


# --------------------------------------------------------------------------------------------- files
def epoch_of(path: str) -> int | None:
    """The last number in the file name (``epoch_012.pt`` -> 12), or None."""
    found = re.findall(r"\d+", os.path.splitext(os.path.basename(path))[0])
    return int(found[-1]) if found else None


def trajectory_files(pattern: str, final: str | None = None, option: str = "--trajectory") -> list[str]:
    """The checkpoint files matching the glob `pattern`, in natural (epoch) order, without `final` itself
    (compared as the same file on disk, so ``DIR/*.pt`` may include ``--checkpoint``).

    Raises UserError when nothing matches.
    """
    paths = [p for p in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(p)]
    if final is not None and os.path.exists(final):
        paths = [p for p in paths if not os.path.samefile(p, final)]
    if not paths:
        raise UserError(f"{option} '{pattern}': no checkpoint files match (besides --checkpoint); give a glob "
                        f"of the saved checkpoints such as 'DIR/epoch_*.pt' (quote it)")
    return sorted(paths, key=natural_key)


def pca_from_files(final: dict[str, torch.Tensor], pattern: str, keys: Sequence[str], ignore: str,
                   method: str = "auto", center: bool = True, final_path: str | None = None,
                   option: str = "--trajectory") -> PCAResult:
    """`pca_directions` over the checkpoints matching `pattern` (natural order, `final_path` left out), each
    read once with `read_state_dict`; the result carries the files and, where every file name holds a
    distinct number, the epochs (``epoch_003.pt`` -> 3).

    Raises UserError for no matching file, too few, an unreadable file, or another architecture.
    """
    paths = trajectory_files(pattern, final_path, option)
    needed = 3 if center else 2
    if len(paths) < needed:  # checked before reading any file: the error should be immediate
        raise UserError(f"{option} '{pattern}': {len(paths)} checkpoint(s) besides the final one; PCA directions "
                        f"need at least {needed}: save a checkpoint every epoch (landscape-mpi train does)")
    result = pca_directions(final, _LazyStates(paths, option), keys, ignore, method, center, names=paths)
    epochs = [epoch_of(p) for p in paths]
    if all(e is not None for e in epochs) and len(set(epochs)) == len(epochs):
        result.epochs = np.asarray(epochs, dtype=np.int64)
    result.sources = list(paths)
    return result


class _LazyStates(list):
    """A list-like of checkpoint states read on access, so the row matrix is the only large thing in memory."""

    def __init__(self, paths: Sequence[str], option: str) -> None:
        super().__init__(paths)
        self._option = option

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        from landscape_mpi.models import read_state_dict

        for p in list.__iter__(self):
            yield read_state_dict(p, self._option)
