"""What the findings report reads of a surface file and of a Hessian file, through the files layer's reader
(landscape_mpi/files/reader.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from landscape_mpi.files import contract, reader
from landscape_mpi.numbers.sharpness import center_index

#: The trajectory datasets the report uses: the path on the PCA plane, its residual off the plane, and the run's own
#: step lengths between consecutive checkpoints (the random-walk baseline takes them: measures.random_walk_explained).
TRAJECTORY_DATASETS = ("x", "y", "epochs", "residual", "step_norms")


@dataclass
class SurfaceData:
    """What the report reads from one surface file; values are NaN where a point is not done."""

    path: str
    done: np.ndarray
    """bool, grid-shaped: the points computed."""
    coords: list[np.ndarray]
    values: dict[str, np.ndarray]
    config: dict
    trajectory: dict | None
    weight_norm: float
    """||w|| over the tensors of dim >= 2, from the filter-normalized x direction (NaN for other norms)."""

    @property
    def center(self) -> tuple[int, ...]:
        return center_index(self.coords)

    def at_center(self, metric: str) -> float:
        v = self.values.get(metric)
        return float(v[self.center]) if v is not None else float("nan")


def read_surface(path: str) -> SurfaceData:
    """Read a surface file: the done mask first, then the values (the file contract), the trajectory if any."""
    with reader.open_surface(path) as f:
        done = f.done()
        values = {name: f.values(name, done) for name in sorted(f.metrics())}
        coords = list(f.coords().values())
        stored = f.trajectory()
        trajectory = None
        if stored is not None:
            trajectory = {k: stored[k] for k in TRAJECTORY_DATASETS if k in stored}
            trajectory["explained_variance"] = [float(v) for v in np.atleast_1d(stored.get("explained_variance", []))]
        wn = float("nan")
        if f.config.get("norm") == "filter" and f.has(f"{contract.DIRECTIONS}/{contract.AXIS_NAMES[0]}"):
            # filter normalization scales each filter of d to the norm of that filter of w: ||d|| = ||w||
            dx = f.directions(contract.AXIS_NAMES[:1])[0]
            wn = float(np.sqrt(sum(float(np.sum(np.asarray(d, dtype=np.float64) ** 2))
                                   for d in dx.values() if d.ndim >= 2)))
    return SurfaceData(path, done, coords, values, f.config, trajectory, wn)


def read_hessian_numbers(path: str) -> tuple[dict[str, float], dict]:
    """The first row of a Hessian file (`landscape-mpi hessian`, one checkpoint): lambda_max, Hutchinson's trace
    estimate and the average adaptive rise (NaN where the file does not hold it), and the file's stored settings."""
    f = reader.read_hessian_file(path, "hessian step")
    nan = float("nan")

    def first(key: str) -> float:
        return float(np.atleast_1d(f[key])[0]) if key in f else nan

    return ({"lambda_max": float(np.asarray(f[f"{contract.EIGEN}/values"])[0, 0]),
             "trace": first(f"{contract.TRACE}/estimate"), "adaptive_rise": first(f"{contract.ADAPTIVE}/sharpness")},
            f["config"])
