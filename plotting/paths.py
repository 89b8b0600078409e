"""Figures of path files (values along paths between models; landscape_mpi/files/path_reader.py), from the files
alone: the values along t of several paths on shared axes (linear vs aligned vs curve), the barrier matrix of a
``pairs`` file as a heat map, the layer-wise barriers of a ``layers`` file as bars, and a path's curve drawn on
the contours of a surface file computed on the plane through its models (Garipov et al.'s figure). The barriers
are the files layer's numbers (landscape_mpi/numbers/barriers.py; docs/barriers.md). Points not computed yet are
gaps in the lines; a pair or layer with points missing is left blank (matrix) or hatched at 0 (bars).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from landscape_mpi.config.plot import PATH_KINDS, PlotOptions
from landscape_mpi.files.path_reader import PathFile, read_path
from landscape_mpi.numbers.barriers import barrier_label, barrier_matrix, layer_barriers
from plotting.figures import CMAP, levels_for, plot_contour, save, second_metric
from plotting.fill import fill_missing
from plotting.reader import PlotError, Surface

__all__ = ["PATH_KINDS", "default_kinds", "plot_paths", "plot_barrier_matrix", "plot_layer_barriers",
           "draw_path_files", "PLANE_MODELS", "plane_coordinates", "curve_on_plane", "plot_plane_path",
           "draw_plane_paths"]


def _name(pf: PathFile) -> str:
    return f"{os.path.splitext(os.path.basename(pf.path))[0]} ({pf.kind})"


def _on(metric: str) -> str:
    """``train 1 - acc``: the split and what a barrier of the file's column `metric` is computed on."""
    return f"{metric.split('_', 1)[0]} {barrier_label(metric)}"


def _progress(pf: PathFile) -> str:
    return f"{pf.n_done} of {pf.done.size} points"


def default_kinds(pfs: Sequence[PathFile]) -> list[str]:
    """The values along t always; the matrix for a pairs file, the bars for a layers file."""
    kinds = ["path"]
    if any(pf.kind == "pairs" for pf in pfs):
        kinds.append("barrier_matrix")
    if any(pf.kind == "layers" for pf in pfs):
        kinds.append("layer_barriers")
    return kinds


def plot_paths(pfs: Sequence[PathFile]) -> Figure:
    """Loss (left) and the task's second metric (right: accuracy in % for a classifier) against t, one line per
    file, curve and split (train solid, test dashed), every file on the same axes; a chain's knots dotted."""
    fig, (ax, right) = plt.subplots(1, 2, figsize=(10.0, 4.0), sharex=True)
    shown = None
    k = 0
    handles = []  # the legend: one entry per file and curve (its color), then what the line styles mean
    for pf in pfs:
        for c, curve in enumerate(pf.curves):
            color = f"C{k % 10}"
            k += 1
            label = _name(pf) if len(pf.curves) == 1 else f"{_name(pf)} {curve}"
            handles.append(Line2D([], [], color=color, label=label))
            for split, style in (("train", "-"), ("test", "--")):
                if f"{split}_loss" in pf.values:
                    ax.plot(pf.t, pf.values[f"{split}_loss"][c], style, color=color, label=f"{label} {split}")
                second = second_metric(pf, split)
                if second is not None:
                    metric = second[len(split) + 1:]
                    shown = shown or metric
                    scale = 100.0 if metric.endswith("acc") else 1.0
                    right.plot(pf.t, scale * pf.values[second][c], style, color=color, label=f"{label} {split}")
        if pf.kind == "chain" and pf.knots is not None:
            for knot in pf.knots[1:-1]:
                for a in (ax, right):
                    a.axvline(knot, color="0.6", ls=":", lw=0.8)
    ax.set_xlabel("t")
    ax.set_ylabel("loss")
    right.set_xlabel("t")
    right.set_ylabel("accuracy (%)" if shown == "acc" else f"{shown} (%)" if shown and shown.endswith("acc")
                     else (shown or ""))
    handles += [Line2D([], [], color="k", ls="-", label="train"), Line2D([], [], color="k", ls="--", label="test")]
    fig.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    partial = [pf for pf in pfs if not pf.complete]
    title = "values along the path" + (f": {_name(pfs[0])}" if len(pfs) == 1 else "s")
    if partial:
        title += "  (" + ", ".join(f"{_name(pf)}: {_progress(pf)}" for pf in partial) + ")"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_barrier_matrix(pf: PathFile, metric: str, measure: str = "interpolation") -> Figure:
    """The N x N barrier matrix of a pairs file as a heat map, each cell's value written in it; a pair not
    finished is blank."""
    m = barrier_matrix(pf, metric, measure)
    n = len(pf.checkpoints)
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * n, 1.0 + 0.6 * n))
    finite = m[np.isfinite(m)]
    top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0  # barriers are >= 0: colors from 0
    image = ax.imshow(np.ma.masked_invalid(m), cmap=CMAP, vmin=0.0, vmax=top)
    names = [os.path.basename(c) for c in pf.checkpoints]
    ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    for i in range(n):
        for j in range(n):
            if np.isfinite(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.3g}", ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(image, ax=ax, label=f"{measure} barrier of {_on(metric)}")
    missing = int(np.isnan(m).sum()) // 2
    ax.set_title(f"{_name(pf)}: barriers" + (f"  ({missing} pair(s) not finished)" if missing else ""), fontsize=9)
    fig.tight_layout()
    return fig


def plot_layer_barriers(pf: PathFile, metric: str, measure: str = "interpolation") -> Figure:
    """One horizontal bar per layer (or block, or permutation group) of a layers file; a layer with points
    missing is drawn as an empty hatched bar."""
    names, values = layer_barriers(pf, metric, measure)
    fig, ax = plt.subplots(figsize=(6.4, 1.2 + 0.3 * len(names)))
    finite = np.isfinite(values)
    y = np.arange(len(names))
    ax.barh(y[finite], values[finite], color="C0")
    for i in y[finite]:  # the value beside each bar: a zero barrier is a number, not a missing bar
        ax.text(values[i], i, f" {values[i]:.3g}", va="center", fontsize=7)
    top = float(values[finite].max()) if finite.any() else 0.0
    ax.set_xlim(0.0, 1.15 * top if top > 0 else 1.0)
    if not finite.all():
        ax.barh(y[~finite], np.zeros((~finite).sum()), fill=False, hatch="//", label="not finished")
        ax.legend(fontsize=7)
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"{measure} barrier of {_on(metric)}")
    ax.set_title(f"{_name(pf)}: layer-wise barriers", fontsize=9)
    fig.tight_layout()
    return fig


def draw_path_files(paths: Sequence[str], kinds: Sequence[str] | None, out_dir: str, metric: str = "train_loss",
                    fmt: str = "png", dpi: int = 200, measure: str = "interpolation") -> list[str]:
    """Draw `kinds` (default: every kind that fits, `default_kinds`) of the path files at `paths` into
    `out_dir`; returns the written paths. The values along t: one figure of every file together."""
    pfs = [read_path(p) for p in paths]
    for pf in pfs:
        if pf.n_done == 0:
            raise PlotError(f"{pf.path}: no point computed yet; try again once the job has written some")
    written = []
    for kind in kinds or default_kinds(pfs):
        if kind == "path":
            name = f"{os.path.splitext(os.path.basename(paths[0]))[0]}_path" if len(pfs) == 1 else "paths"
            written.append(save(plot_paths(pfs), os.path.join(out_dir, f"{name}.{fmt}"), dpi))
            continue
        want = "pairs" if kind == "barrier_matrix" else "layers"
        chosen = [pf for pf in pfs if pf.kind == want]
        if not chosen:
            raise PlotError(f"--kind {kind} draws {want} path files; none of these is one")
        plot = plot_barrier_matrix if kind == "barrier_matrix" else plot_layer_barriers
        for pf in chosen:
            stem = os.path.splitext(os.path.basename(pf.path))[0]
            written.append(save(plot(pf, metric, measure), os.path.join(out_dir, f"{stem}_{kind}.{fmt}"), dpi))
    return written


# ------------------------------------------------------------------------------- a path on a plane of models
#: The surface's models and where they sit on its plane theta* + x (x_target - theta*) + y (y_target - theta*)
#: (`landscape-mpi surface --checkpoint A --x-target B --y-target C`): file attribute, name, (x, y).
PLANE_MODELS = (("checkpoint", "A", (0.0, 0.0)), ("x_target", "B", (1.0, 0.0)), ("y_target", "C", (0.0, 1.0)))


def _short_hash(h: object) -> str:
    return f"{str(h)[:12]}..." if h else "none recorded"


def plane_coordinates(surface: Surface, pf: PathFile) -> np.ndarray:
    """(n_models, 2): where each model of `pf` sits on the plane of `surface`, found by sha256 (the path file's
    ``model_<i>_sha256`` among the surface's ``checkpoint``, ``x_target`` and ``y_target`` hashes). Raises
    PlotError, one line, for a path whose models are not all among the surface's, or that leaves the plane
    (``layers``; ``--align``, which permuted the models after they were hashed)."""
    if pf.kind == "layers":
        raise PlotError(f"{pf.path}: a layers path moves one block at a time, off the plane of the models; "
                        f"--kind plane_path draws linear, chain, bezier and pairs path files")
    if pf.attrs.get("alignment"):
        raise PlotError(f"{pf.path}: its models were permuted (--align), so its curve is not on the plane of the "
                        f"checkpoints; draw a path computed without --align")
    hashes = {name: surface.attrs.get(f"{name}_sha256") for name, _, _ in PLANE_MODELS}
    where = {hashes[name]: xy for name, _, xy in PLANE_MODELS if hashes[name]}
    out = []
    for i, label in enumerate(pf.checkpoints):
        h = pf.attrs.get(f"model_{i}_sha256")
        if h not in where:
            raise PlotError(f"{pf.path}: its model {i} ({os.path.basename(label)}, sha256 {_short_hash(h)}) is none "
                            f"of {surface.path}'s --checkpoint, --x-target, --y-target; compute the surface with "
                            f"--checkpoint A --x-target B --y-target C of the path's models")
        out.append(where[h])
    return np.array(out, dtype=np.float64)


def curve_on_plane(pf: PathFile, at: np.ndarray) -> np.ndarray:
    """(n_curves, n_t, 2): the plane coordinates of every point of every curve of `pf`, its models at `at`
    (`plane_coordinates`): theta = M_0 + sum_k c_k (M_k - M_0) is at at[0] + sum_k c_k (at[k] - at[0]), with the
    file's own coefficients c_k (for a bezier path on the plane through A, B and its bend: (c_1, c_2) = (t^2,
    2t(1 - t)) as they are)."""
    return at[0] + pf.coefficients @ (at[1:] - at[0])


def plot_plane_path(surface: Surface, pfs: Sequence[PathFile], metric: str, levels: np.ndarray,
                    log: bool = False) -> Figure:
    """The contours of `surface` (a 2D surface on the plane through A, B and C) with the curves of the path
    files `pfs` drawn on them, the straight line between each curve's ends (the linear path), and the models
    marked and named (Garipov et al. 2018, their figure of a trained curve)."""
    at = [plane_coordinates(surface, pf) for pf in pfs]  # every file checked before anything is drawn
    fig = plot_contour(surface, metric, levels, log)
    ax = fig.axes[0]
    linear: set[tuple] = set()
    n = 0  # curves drawn so far: the first crimson, the others the color cycle's
    for pf, xy in zip(pfs, at):
        curves = curve_on_plane(pf, xy)
        for c, curve in enumerate(pf.curves):
            ends = tuple(map(tuple, xy[pf.endpoints[c]]))
            if ends not in linear and pf.kind in ("bezier", "chain"):  # the others are straight already
                ax.plot(*np.transpose(ends), "--", color="0.3", lw=1.0, label=None if linear else "linear path")
                linear.add(ends)
            label = _name(pf) if len(pf.curves) == 1 else f"{_name(pf)} {curve}"
            ax.plot(curves[c, :, 0], curves[c, :, 1], "-o", color="crimson" if n == 0 else f"C{n % 10}", ms=2.5,
                    lw=1.6, label=label)
            n += 1
    names = {xy: name for _, name, xy in PLANE_MODELS}
    marked: dict[tuple, str] = {}
    for pf, xy in zip(pfs, at):
        for i, point in enumerate(map(tuple, xy)):
            role = " (bend)" if pf.kind == "bezier" and i == 2 else ""
            marked.setdefault(point, f"{names[point]}{role}: {os.path.basename(pf.checkpoints[i])}")
    points = np.array(sorted(marked))
    ax.plot(points[:, 0], points[:, 1], "o", color="w", mec="k", ms=6, ls="none", label="models")
    for point, text in marked.items():
        ax.annotate(text, point, fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("x: weight of B - A")
    ax.set_ylabel("y: weight of C - A")
    ax.legend(fontsize=7)
    ax.set_title(f"{', '.join(_name(pf) for pf in pfs)} on the plane through A, B, C\n{ax.get_title()}", fontsize=9)
    return fig


def draw_plane_paths(surfaces: Sequence[Surface], path_files: Sequence[str], a: PlotOptions, out_dir: str,
                     log: bool) -> list[str]:
    """``--kind plane_path``: each 2D surface (its `a.metric` read) with the curves of every path file drawn
    on it, into `out_dir`; returns the written paths."""
    if not surfaces or not path_files:
        raise PlotError("--kind plane_path draws path files on a surface file: give both, e.g. landscape-plot "
                        "plane.h5 bezier.h5 --kind plane_path")
    pfs = [read_path(p) for p in path_files]
    written = []
    for s in surfaces:
        if s.n_done == 0:
            raise PlotError(f"{s.path}: no point computed yet; try again once the job has written some")
        drawn = fill_missing(s, [a.metric]) if a.fill_missing else s
        levels = levels_for([drawn.metric(a.metric)], a.vmin, a.vmax, a.levels, log)
        stem = os.path.splitext(os.path.basename(s.path))[0]
        written.append(save(plot_plane_path(drawn, pfs, a.metric, levels, log),
                            os.path.join(out_dir, f"{stem}_{a.metric}_plane_path.{a.format}"), a.dpi))
    return written
