"""The file contract: names and versions of everything landscape-mpi writes, importable without torch or MPI.

The writers (store.py, hessian_store.py) and the one reader (reader.py, through which `info`, `compare`, the
analyses, the experiments' report and the plotting package read) take their names from here. Schema 1 grows
only by *optional* datasets and attributes: a reader never requires one that an older writer did not write.

Surface file (``file_kind`` absent or ``"surface"``):

    /coords/<axis>                      float64, one per grid axis (x, y, z)
    /results/<split>_<loss|acc>         float64, grid-shaped, NaN until computed
    /results/done                       uint8, grid-shaped, 1 once the point's values are durable
    /results/rank, /results/seconds     int32 / float64, grid-shaped
    /results/eig_max, eig_min           float64 (optional: --metrics ...,eig)
    /results/eig_iters                  int32 (optional), Hessian-vector products the point's two eigenvalues took
    /directions/<axis>/<state_dict key> the stored directions (the source of truth for every rank and resume)
    /data/<split>_indices               int64 (only with --samples)
    /ranks/host, /ranks/device          strings, one per MPI rank of each run (optional; latest run)
    /trajectory/x, y, epochs, residual  the training path projected on the PCA plane (optional), and
    /trajectory/step_norms              the distances between consecutive checkpoints (optional)
    root attribute <split>_data_sha256  sha256 of the split's evaluation tensors (in memory or streamed: the same)

Hessian file (``file_kind = "hessian"``): see `landscape_mpi/files/hessian_store.py`.
"""

from __future__ import annotations

SCHEMA_VERSION = 1
#: Schema versions this package reads.
READABLE_SCHEMA_VERSIONS = (1,)

#: Root attributes.
SCHEMA_VERSION_ATTR = "schema_version"
CONFIG_ATTR = "config"
AXES_ATTR = "axes"
METRICS_ATTR = "metrics"
GRID_INDEXING_ATTR = "grid_indexing"
FILE_KIND_ATTR = "file_kind"
KIND_SURFACE = "surface"
KIND_HESSIAN = "hessian"

COORDS = "coords"
RESULTS = "results"
DIRECTIONS = "directions"
DATA = "data"
RANKS = "ranks"
TRAJECTORY = "trajectory"

DONE = "results/done"
RANK = "results/rank"
SECONDS = "results/seconds"
EIG_MAX = "results/eig_max"
EIG_MIN = "results/eig_min"
EIG_ITERS = "results/eig_iters"
#: /results datasets that are bookkeeping, not values.
BOOKKEEPING = (DONE, RANK, SECONDS, EIG_ITERS)

GRID_INDEXING = "ij"
AXIS_NAMES = ("x", "y", "z")
SPLITS = ("train", "test")

#: The Hessian file's groups (layout: files/hessian_store.py).
CHECKPOINTS = "checkpoints"
EIGEN = "eigen"
EIGENVECTORS = "eigenvectors"
TRACE = "trace"
DENSITY = "density"
ADAPTIVE = "adaptive"

#: The groups of a direction file of the paper's reference code (loss-landscape's net_plotter.py), x then y.
REFERENCE_GROUPS = ("xdirection", "ydirection")

#: How the eigenvectors of a Hessian file are scaled (stored in it; recorded with surfaces along them).
EIGENVECTOR_CONVENTION = ("unit L2 norm over the whole trainable-parameter vector (named_parameters with "
                          "requires_grad; biases and BatchNorm included, buffers zero); sign: the largest-magnitude "
                          "entry is positive; coordinate a moves the weights by Euclidean distance |a|")
