"""Figures of path files (values along paths between models; landscape_mpi/files/path_reader.py), from the files
alone: the values along t of several paths on shared axes (linear vs aligned vs curve), the barrier matrix of a
``pairs`` file as a heat map, and the layer-wise barriers of a ``layers`` file as bars. The barriers are the
files layer's numbers (landscape_mpi/numbers/barriers.py; docs/barriers.md). Points not computed yet are gaps
in the lines; a pair or layer with points missing is left blank (matrix) or hatched at 0 (bars).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from landscape_mpi.config.plot import PATH_KINDS
from landscape_mpi.files.path_reader import PathFile, read_path
from landscape_mpi.numbers.barriers import barrier_label, barrier_matrix, layer_barriers
from plotting.figures import CMAP, save, second_metric
from plotting.reader import PlotError

__all__ = ["PATH_KINDS", "default_kinds", "plot_paths", "plot_barrier_matrix", "plot_layer_barriers",
           "draw_path_files"]


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
