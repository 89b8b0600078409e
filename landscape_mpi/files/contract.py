"""The file contract: names, versions and the schema of every file landscape-mpi writes, importable without torch
or MPI.

The writers (store.py, hessian_store.py, the path job's writer) and the readers (reader.py, through which
`info`, `compare`, the analyses, the experiments' report and the plotting package read; path_reader.py) take
their names from here. Schema 1 grows only by *optional* datasets and attributes: a reader never requires one
that an older writer did not write.

`SCHEMAS` is the one machine-readable layout of each file kind (surface, Hessian, path): every dataset and
attribute with its dtype, shape rule, when it is written and what it means, the task metrics included
(`TASK_METRICS`). docs/file-format.md's tables are generated from it (`render_docs`; regenerate with
``python -m landscape_mpi.files.contract docs/file-format.md``), and `files.conformance.schema_problems`
checks a written file against it (tests/test_schema.py).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

from landscape_mpi.config.surface import TASK_METRICS

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
KIND_PATH = "path"

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
#: --adaptive: the refinement round that chose each point (-1: not chosen).
ROUND = "results/round"
#: --tolerance (sequential estimates): the rule's root attribute, the columns' suffixes, the order of a split.
SEQUENTIAL_ATTR = "sequential"
SAMPLES_SUFFIX = "_samples"
SE_SUFFIX = "_se"
SEQUENTIAL_ORDER = ("split i (train 0, test 1) in the order numpy.random.default_rng([order_seed, 0x5E9, i])"
                    ".permutation(n), blocks of `block` consecutive samples of it, the same at every point")
#: /results datasets that are bookkeeping, not values.
BOOKKEEPING = (DONE, RANK, SECONDS, EIG_ITERS, ROUND)

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
BLOCKS = "blocks"

#: The groups of a direction file of the paper's reference code (loss-landscape's net_plotter.py), x then y.
REFERENCE_GROUPS = ("xdirection", "ydirection")

#: How the eigenvectors of a Hessian file are scaled (stored in it; recorded with surfaces along them).
EIGENVECTOR_CONVENTION = ("unit L2 norm over the whole trainable-parameter vector (named_parameters with "
                          "requires_grad; biases and BatchNorm included, buffers zero); sign: the largest-magnitude "
                          "entry is positive; coordinate a moves the weights by Euclidean distance |a|")


# -------------------------------------------------------------------------------------------------- the schema
ALWAYS = "always"
#: Every built-in task's metric names, in order of first appearance (classify, lm, regress).
BUILTIN_METRICS = tuple(dict.fromkeys(m for metrics in TASK_METRICS.values() for m in metrics))
#: The input files whose sha256 a surface file records (``<input>_sha256``), as surface/prepare.py names them.
INPUT_FILES = ("checkpoint", "x_target", "y_target", "trajectory", "hessian_file", "dir_file")
#: The path parameter of a path file and its ``path_kind`` attribute's values.
PATH_KIND_ATTR = "path_kind"
PATH_KINDS = ("linear", "chain", "bezier", "pairs", "layers")

#: What a placeholder ``<name>`` in an entry's name stands for: the values it takes (a tuple), or a regular
#: expression for free names. `metric` also takes a user task's own metric names (the file's ``metrics``).
PLACEHOLDERS: dict[str, tuple[str, ...] | str] = {
    "axis": AXIS_NAMES, "split": SPLITS, "metric": BUILTIN_METRICS, "input": INPUT_FILES,
    "key": r"[^/@]+", "param": r"[^/@]+", "name": r"[^/@]+", "k": r"[0-9]+", "r": r"[0-9]{3,}", "j": r"[0-9]+",
    "i": r"[0-9]+",
}
#: How docs/file-format.md explains each placeholder.
PLACEHOLDER_DOCS = {
    "axis": " or ".join(AXIS_NAMES) + ", one per grid axis",
    "split": " or ".join(SPLITS) + " (`--splits`)",
    "metric": "; ".join(f"{task}: {', '.join(metrics)}" for task, metrics in TASK_METRICS.items())
              + "; a user task (`--task package.module:factory`): its own `metrics`",
    "input": ", ".join(INPUT_FILES) + ": each input file given",
    "key": "a state_dict key", "param": "a trainable parameter's name", "name": "a direction's name",
    "k": "0, 1, ...: earlier runs, oldest first", "r": "the row, 3 digits (`row_000`)",
    "j": "0 .. `--store-vectors` - 1", "i": "0, 1, ...: the models in order, a bend last",
}


@dataclass(frozen=True)
class Entry:
    """One dataset or attribute of a file kind.

    `name`: its HDF5 path with placeholders (``<split>``: `PLACEHOLDERS`); an attribute is ``<object>@<name>``
    (``/@config``: a root attribute). `dtype`: a numpy dtype name; ``str`` (a variable-length UTF-8 string),
    ``json`` (a string holding JSON), ``int``, ``float``, ``bool`` (a scalar attribute); ``tensor`` (the stored
    tensor's own dtype). `shape`: sizes named by symbols, each symbol one size throughout a file (``grid``: the
    whole grid shape; placeholders in a symbol take the entry's values), () a scalar, None the stored tensor's
    shape. `when`: `ALWAYS`, or the case in which it is written. `meaning`: what it holds.
    """

    name: str
    dtype: str
    shape: tuple | None
    when: str
    meaning: str

    @property
    def is_attribute(self) -> bool:
        return "@" in self.name

    def pattern(self, values: dict[str, tuple[str, ...]] | None = None) -> re.Pattern:
        """The regular expression of the names this entry stands for (`values`: more values per placeholder)."""
        return re.compile(name_regex(self.name, values or {}))


def name_regex(name: str, values: dict[str, tuple[str, ...]]) -> str:
    """The regular expression of the names that `name` (with placeholders) stands for."""
    out, pos = [], 0
    for m in re.finditer(r"<(\w+)>", name):
        out.append(re.escape(name[pos:m.start()]))
        allowed = PLACEHOLDERS[m.group(1)]
        if not isinstance(allowed, str):
            allowed = "|".join(re.escape(v) for v in (*allowed, *values.get(m.group(1), ())))
        out.append(f"(?P<{m.group(1)}>{allowed})")
        pos = m.end()
    return "".join(out) + re.escape(name[pos:]) + r"\Z"


def _common_root(kind: str) -> list[Entry]:
    """The root attributes every file kind has."""
    return [
        Entry("/@file_kind", "str", (), ALWAYS,
              f'"{kind}"' + (" (a surface file written before it has none)" if kind == KIND_SURFACE else "")),
        Entry("/@schema_version", "int", (), ALWAYS, f"{SCHEMA_VERSION}; a reader refuses a newer one"),
        Entry("/@config", "json", (), ALWAYS, "every setting of the job, resolved"),
        Entry("/@versions", "json", (), ALWAYS, "versions of landscape_mpi, Python, torch, numpy, h5py, HDF5, mpi4py"),
        Entry("/@created", "str", (), ALWAYS, "UTC time of creation, ISO 8601"),
    ]


def _points(shape: tuple, what: str) -> list[Entry]:
    """What every file of the surface family has (store.create_surface_file and the ResultWriter write a surface
    or a path file): its points' values and bookkeeping (`shape`: one point per element), where its evaluation
    data and inputs came from, which ranks computed it."""
    return [
        Entry("/@grid_indexing", "str", (), ALWAYS,
              '"ij": a value dataset\'s `[i, j]` is at coordinate i of its first axis, j of its second'),
        Entry("/@axes", "json", (), ALWAYS, "the names of the datasets under /coords, e.g. `[\"x\", \"y\"]`"),
        Entry("/@<split>_data_sha256", "str", (), "each evaluated split",
              "fingerprint of the split's evaluation tensors (in memory or streamed: the same)"),
        Entry("/@metrics", "json", (), ALWAYS, "the names of the value datasets under /results, in order"),
        Entry("/results/<split>_<metric>", "float64", shape, ALWAYS,
              f"the metric on the split at each {what}; **NaN until computed**"),
        Entry("/results/done", "uint8", shape, ALWAYS,
              "1 once the point's values are durable; written *after* them"),
        Entry("/results/rank", "int32", shape, ALWAYS, "the MPI rank that computed the point (-1: not yet)"),
        Entry("/results/seconds", "float64", shape, ALWAYS,
              "seconds the point's evaluation took (a group's time shared by its points)"),
        Entry("/results/<split>_samples", "int64", shape, "--tolerance",
              "samples of the split the point's sequential estimate read (-1: not yet); all of them: exact"),
        Entry("/results/<split>_<metric>_se", "float64", shape, "--tolerance",
              "the standard error of the metric's estimate (0 where the whole split was read; NaN until computed)"),
        Entry("/@sequential", "json", (), "--tolerance",
              "the stopping rule: tolerance, min_samples, block, order_seed, the order and the estimators"),
        Entry("/data/<split>_indices", "int64", ("n_kept_<split>",), "--samples", "the samples of the split kept"),
        Entry("/ranks/host", "str", ("n_ranks",), "once a run has started",
              "the host of every MPI rank of the latest run"),
        Entry("/ranks/device", "str", ("n_ranks",), "once a run has started",
              "the device of every rank (`cpu`, `cuda:0 NVIDIA H100 ...`); with /results/rank: who computed a point"),
        Entry("/ranks/run_<k>_host", "str", ("n_ranks_<k>",), "after a resume", "an earlier run's /ranks/host"),
        Entry("/ranks/run_<k>_device", "str", ("n_ranks_<k>",), "after a resume", "an earlier run's /ranks/device"),
    ]


def _directions(axis: str, when: str, what: str) -> Entry:
    return Entry(f"/directions/<{axis}>/<key>", "tensor", None, when,
                 f"{what}: every tensor of the direction space, in its dtype and shape, zeros where excluded")


SURFACE_SCHEMA: tuple[Entry, ...] = (
    *_common_root(KIND_SURFACE),
    Entry("/@checkpoint", "str", (), ALWAYS, "the checkpoint's absolute path"),
    Entry("/@<input>_sha256", "str", (), "each input file given",
          "sha256 of the input file (a list of files: of their sha256s in order); resume compares them"),
    Entry("/@pca_explained_variance", "json", (), "--directions pca", "the two directions' explained variance"),
    Entry("/@hessian_hessian_file", "str", (), "--directions hessian", "the Hessian file the directions are from"),
    Entry("/@hessian_hessian_row", "json", (), "--directions hessian", "its row (checkpoint) the directions are of"),
    Entry("/@hessian_eigenvalues", "json", (), "--directions hessian", "the two eigenvalues of the directions"),
    Entry("/@hessian_checkpoint", "str", (), "--directions hessian", "the checkpoint of that row"),
    Entry("/@hessian_convention", "str", (), "--directions hessian", "how the eigenvectors are scaled"),
    Entry("/coords/<axis>", "float64", ("n_<axis>",), ALWAYS,
          "the grid coordinates of the axis: new points are evaluated exactly there"),
    *_points(("grid",), "grid point"),
    Entry("/results/eig_max", "float64", ("grid",), "--metrics loss,eig",
          "the largest Hessian eigenvalue of the loss at the point, on the train split (else the first)"),
    Entry("/results/eig_min", "float64", ("grid",), "--metrics loss,eig", "the smallest Hessian eigenvalue"),
    Entry("/results/eig_iters", "int32", ("grid",), "--metrics loss,eig",
          "Hessian-vector products the point's two eigenvalues took (-1: not yet)"),
    Entry("/results/round", "int32", ("grid",), "--adaptive",
          "the refinement round that chose the point (0: the coarse grid; -1: not chosen), written before its "
          "done flag; a point not chosen stays NaN and not done (docs/method.md#adaptive-grids)"),
    _directions("axis", ALWAYS, "the direction of the axis"),
    Entry("/trajectory/x", "float64", ("n_checkpoints",), "--directions pca",
          "each checkpoint's coordinate on the PCA plane along x"),
    Entry("/trajectory/y", "float64", ("n_checkpoints",), "--directions pca", "... along y"),
    Entry("/trajectory/epochs", "int64", ("n_checkpoints",), "--directions pca",
          "each checkpoint's epoch (else its index)"),
    Entry("/trajectory/residual", "float64", ("n_checkpoints",), "--directions pca",
          "each checkpoint's distance off the plane"),
    Entry("/trajectory/step_norms", "float64", ("n_steps",), "--directions pca",
          "the distances between consecutive checkpoints (files written before it have none)"),
    Entry("/trajectory@explained_variance", "float64", (2,), "--directions pca", "of the two directions"),
    Entry("/trajectory@explained_total", "float", (), "--directions pca", "their sum"),
    Entry("/trajectory@method", "str", (), "--directions pca", "exact or randomized"),
    Entry("/trajectory@tol", "float", (), "--directions pca", "the randomized method's tolerance"),
    Entry("/trajectory@iterations", "int", (), "--directions pca", "its subspace iterations (0: exact)"),
    Entry("/trajectory@centered", "bool", (), "--directions pca", "whether the mean checkpoint was subtracted"),
    Entry("/trajectory@sources", "json", (), "--directions pca", "the checkpoint files, in order"),
)

HESSIAN_SCHEMA: tuple[Entry, ...] = (
    *_common_root(KIND_HESSIAN),
    Entry("/@rows", "int", (), ALWAYS, "R, the rows: one per checkpoint"),
    Entry("/@model", "str", (), ALWAYS, "--model"),
    Entry("/@task", "str", (), ALWAYS, "--task"),
    Entry("/@loss", "str", (), ALWAYS, "classify's --loss; another task: its name"),
    Entry("/@curvature", "str", (), "files written since --curvature",
          "--curvature: the matrix analysed (hessian, ggn, fisher, empirical-fisher); absent: hessian"),
    Entry("/@splits", "str", (), ALWAYS, "the splits the loss is over, comma-separated"),
    Entry("/@samples", "int", (), ALWAYS, "--samples (-1: every sample)"),
    Entry("/@n_params", "int", (), ALWAYS, "trainable parameters (the Hessian's size)"),
    Entry("/@n_samples", "int", (), ALWAYS, "samples the loss is over"),
    Entry("/@precision", "str", (), ALWAYS, "--precision"),
    Entry("/@bn_mode", "str", (), ALWAYS, '"eval": BatchNorm uses its running statistics'),
    Entry("/@ranks", "int", (), ALWAYS, "MPI ranks of the job"),
    Entry("/@eigenvector_convention", "str", (), ALWAYS, "how the eigenvectors are scaled and signed"),
    Entry("/@parameter_names", "str", (), ALWAYS, "the trainable parameters' names, one a line"),
    Entry("/checkpoints/path", "str", ("R",), ALWAYS, "each row's checkpoint"),
    Entry("/checkpoints/sha256", "str", ("R",), ALWAYS, "its sha256"),
    Entry("/checkpoints/epoch", "float64", ("R",), ALWAYS,
          'its "epoch", else the number in its file name, else its index'),
    Entry("/checkpoints/epoch@epoch_source", "json", (), ALWAYS, "which of the three, per row"),
    Entry("/checkpoints/loss", "float64", ("R",), ALWAYS, "the mean loss at the checkpoint"),
    Entry("/checkpoints/seconds", "float64", ("R",), ALWAYS, "wall seconds spent on the row"),
    Entry("/eigen/values", "float64", ("R", "k"), ALWAYS, "the top k = --top-k eigenvalues, largest first"),
    Entry("/eigen/values@which", "str", (), ALWAYS, '"LA" (ARPACK: largest algebraic)'),
    Entry("/eigen/lambda_min", "float64", ("R",), ALWAYS,
          "the smallest algebraic eigenvalue (NaN, not computed, for a positive semi-definite --curvature)"),
    Entry("/eigen/lambda_min@which", "str", (), ALWAYS, '"SA" (ARPACK: smallest algebraic)'),
    Entry("/eigen/products_top", "int64", ("R",), ALWAYS, "Hessian-vector products the top k took"),
    Entry("/eigen/products_min", "int64", ("R",), ALWAYS, "Hessian-vector products lambda_min took"),
    Entry("/eigen@tol", "float", (), ALWAYS, "--tol"),
    Entry("/eigen@maxiter", "int", (), ALWAYS, "--maxiter"),
    Entry("/eigen@solver", "str", (), ALWAYS, "the eigensolver"),
    Entry("/eigenvectors@convention", "str", (), ALWAYS, "as the root's eigenvector_convention"),
    Entry("/eigenvectors/row_<r>/<j>/<param>", "float64", None, "--store-vectors > 0",
          "the eigenvector of eigen/values[r, j], keyed by parameter name"),
    Entry("/eigenvectors/row_<r>/<j>@eigenvalue", "float", (), "--store-vectors > 0", "its eigenvalue"),
    Entry("/trace/estimate", "float64", ("R",), "--trace-probes > 0", "Hutchinson's estimate of the trace"),
    Entry("/trace/stderr", "float64", ("R",), "--trace-probes > 0", "its standard error"),
    Entry("/trace/samples", "float64", ("R", "P"), "--trace-probes > 0", "z^T H z of each of the P probes"),
    Entry("/trace/products", "int64", ("R",), "--trace-probes > 0", "Hessian-vector products spent"),
    Entry("/trace@probes", "int", (), "--trace-probes > 0", "P"),
    Entry("/trace@distribution", "str", (), "--trace-probes > 0", "the probes' distribution"),
    Entry("/density/grid", "float64", ("R", "G"), "--slq-runs > 0", "each row's own eigenvalue grid"),
    Entry("/density/values", "float64", ("R", "G"), "--slq-runs > 0", "the spectral density (SLQ) on it"),
    Entry("/density/nodes", "float64", ("R", "S", "T"), "--slq-runs > 0",
          "Ritz values of each of S runs of T Lanczos steps (NaN where a run stopped)"),
    Entry("/density/weights", "float64", ("R", "S", "T"), "--slq-runs > 0", "their Gauss weights (0 where stopped)"),
    Entry("/density/run_means", "float64", ("R", "S"), "--slq-runs > 0", "v^T H v per run (estimates tr(H)/n)"),
    Entry("/density/sigma", "float64", ("R",), "--slq-runs > 0", "the broadening in eigenvalue units"),
    Entry("/density/products", "int64", ("R",), "--slq-runs > 0", "Hessian-vector products spent"),
    Entry("/density@runs", "int", (), "--slq-runs > 0", "S"),
    Entry("/density@steps", "int", (), "--slq-runs > 0", "T"),
    Entry("/density@sigma_rel", "float", (), "--slq-runs > 0", "--slq-sigma"),
    Entry("/density@probe", "str", (), "--slq-runs > 0", "the runs' start vectors"),
    Entry("/adaptive/sharpness", "float64", ("R",), "--adaptive-samples > 0",
          "the average adaptive rise: mean loss rise over M random filter-scaled perturbations (a lower bound of "
          "Kwon et al.'s worst-case adaptive sharpness, not it; the name predates the rename)"),
    Entry("/adaptive/stderr", "float64", ("R",), "--adaptive-samples > 0", "its standard error"),
    Entry("/adaptive/values", "float64", ("R", "M"), "--adaptive-samples > 0", "loss(theta + delta_m) - loss(theta)"),
    Entry("/adaptive@rho", "float", (), "--adaptive-samples > 0", "--adaptive-rho"),
    Entry("/adaptive@samples", "int", (), "--adaptive-samples > 0", "M"),
    Entry("/adaptive@seed", "int", (), "--adaptive-samples > 0", "--seed"),
    Entry("/adaptive@definition", "str", (), "--adaptive-samples > 0", "the definition, in words"),
    Entry("/blocks/name", "str", ("B",), "--blocks", "each diagonal block: a parameter tensor's or a module's name"),
    Entry("/blocks/size", "int64", ("B",), "--blocks", "its parameters"),
    Entry("/blocks/top", "float64", ("R", "B"), "--blocks", "the largest eigenvalue of each diagonal block"),
    Entry("/blocks/products", "int64", ("R", "B"), "--blocks", "operator products each block's top took"),
    Entry("/blocks/trace", "float64", ("R", "B"), "--blocks",
          "each block's trace, from the whole trace's probes (NaN with --trace-probes 0)"),
    Entry("/blocks/trace_stderr", "float64", ("R", "B"), "--blocks", "its standard error"),
    Entry("/blocks@map", "str", (), "--blocks", "--blocks: tensor or module"),
    Entry("/blocks@definition", "str", (), "--blocks", "how the numbers are computed, in words"),
)

PATH_SCHEMA: tuple[Entry, ...] = (
    *_common_root(KIND_PATH),
    Entry(f"/@{PATH_KIND_ATTR}", "str", (), ALWAYS, "the path: " + ", ".join(PATH_KINDS)),
    Entry("/@path_config", "json", (), ALWAYS, "the path's settings (kind, models, points, ...), resolved"),
    Entry("/@checkpoint", "str", (), ALWAYS, "the first model's absolute path (theta_0)"),
    Entry("/@model_<i>_sha256", "str", (), ALWAYS, "sha256 of each model; resume compares them"),
    Entry("/@alignment", "json", (), "--align", "the permutation file of each model matched to the first"),
    Entry("/coords/t", "float64", ("n_t",), ALWAYS, "the path parameter of each column; 0.0 and 1.0 always are"),
    Entry("/path/checkpoints", "str", ("n_models",), ALWAYS, "a label per model (a bezier's bend is one)"),
    Entry("/path/curves", "str", ("n_curves",), ALWAYS,
          'a label per curve: "0-1" for a pair, a layer name for layers, "chain" or "bezier" for one curve'),
    Entry("/path/endpoints", "int64", ("n_curves", 2), ALWAYS,
          "indices into /path/checkpoints of each curve's t = 0 and t = 1 models"),
    Entry("/path/knots", "float64", ("n_knots",), "path_kind chain", "the t of each checkpoint along the chain"),
    Entry("/path/coefficients", "float64", ("n_curves", "n_t", "K"), ALWAYS,
          "the weights at point (c, j) are theta_0 + sum_k coefficients[c, j, k] d_k"),
    _directions("name", ALWAYS, "the K directions d_k"),
    *_points(("n_curves", "n_t"), "point (curve, t)"),
)

SCHEMAS: dict[str, tuple[Entry, ...]] = {KIND_SURFACE: SURFACE_SCHEMA, KIND_HESSIAN: HESSIAN_SCHEMA,
                                         KIND_PATH: PATH_SCHEMA}


# ----------------------------------------------------------------------------- docs/file-format.md's tables
def _shape_text(shape: tuple | None) -> str:
    if shape is None:
        return "the tensor's shape"
    if shape == ("grid",):
        return "grid shape"
    return "scalar" if shape == () else "`(" + ", ".join(map(str, shape)) + (",)`" if len(shape) == 1 else ")`")


def markdown_table(kind: str) -> str:
    """The schema of a file kind as a Markdown table, and the placeholders it uses."""
    rows = ["| name | type, shape | written | content |", "|---|---|---|---|"]
    used: list[str] = []
    for e in SCHEMAS[kind]:
        used += [p for p in re.findall(r"<(\w+)>", e.name) if p not in used]
        name = e.name[2:] if e.name.startswith("/@") else e.name
        where = "root attribute" if e.name.startswith("/@") else ("attribute" if e.is_attribute else "dataset")
        when = f"`{e.when}`" if e.when.startswith("--") else e.when
        meaning = re.sub(r"(?<![`\w])(--[\w-]+)", r"`\1`", e.meaning)  # options as code
        rows.append(f"| `{name}` ({where}) | {e.dtype}, {_shape_text(e.shape)} | {when} | {meaning} |")
    notes = "; ".join(f"`<{p}>`: {PLACEHOLDER_DOCS[p]}" for p in used)
    return "\n".join(rows) + "\n\nNames: " + notes + ". `A@b` is attribute b of object A.\n"


def render_docs(text: str) -> str:
    """`text` (docs/file-format.md) with each block between ``<!-- schema:KIND -->`` and ``<!-- /schema -->``
    replaced by `markdown_table` (KIND)."""
    def table(m: re.Match) -> str:
        return f"{m.group(1)}\n{markdown_table(m.group(2))}{m.group(3)}"

    return re.sub(r"(<!-- schema:(\w+) -->)\n.*?(<!-- /schema -->)", table, text, flags=re.S)


if __name__ == "__main__":  # python -m landscape_mpi.files.contract docs/file-format.md: regenerate its tables
    for doc in sys.argv[1:]:
        with open(doc, encoding="utf-8") as fh:
            old = fh.read()
        with open(doc, "w", encoding="utf-8") as fh:
            fh.write(render_docs(old))
