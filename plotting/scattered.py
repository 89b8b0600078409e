"""`landscape-plot --kind scattered`: an adaptive surface (--adaptive) drawn from its computed points alone.

An adaptive file computes a scattered subset of its grid (the lattice), denser where the surface bends. The
figure draws it as it is, without filling the lattice: in 2-D, filled contours and contour lines on the Delaunay
triangulation of the computed points (`matplotlib.tri.Triangulation`; linear within each triangle, nothing is
drawn outside their convex hull), with every sample location marked and colored by the refinement round that
chose it (/results/round); in 1-D, the values joined by straight lines, each computed point marked. The title
says so. A regular file's computed points are drawn the same way (its partial files included).
"""

from __future__ import annotations

import numpy as np
from matplotlib import pyplot as plt
from matplotlib import tri
from matplotlib.figure import Figure

from landscape_mpi.files import contract
from landscape_mpi.files.reader import open_surface
from plotting.figures import _axis_labels, _norm
from plotting.reader import PlotError, Surface

CMAP = "viridis"


def rounds_of(surface: Surface) -> np.ndarray | None:
    """/results/round of the file (the refinement round of each point, -1: not chosen), or None (regular file)."""
    with open_surface(surface.path) as f:
        return f.raw(contract.ROUND.split("/")[-1]) if f.has(contract.ROUND) else None


def is_adaptive(surface: Surface) -> bool:
    return surface.config.get("adaptive") is not None


def plot_scattered(surface: Surface, metric: str, levels: np.ndarray, log: bool = False) -> Figure:
    """The computed points of `surface`: tricontours (2-D) or a polyline (1-D), with the sample locations."""
    if surface.ndim not in (1, 2):
        raise PlotError(f"{surface.path} is a {surface.ndim}D grid; --kind scattered draws 1D and 2D files "
                        f"(a 3D grid is exported with its gaps: --kind vti)")
    values = surface.metric(metric)
    keep = surface.done & np.isfinite(values) & ((values > 0) if log else True)
    rounds = rounds_of(surface)
    label = f"{surface.label()}: {metric}, {int(keep.sum())} computed points of the {surface.n_total}-point lattice"
    if surface.ndim == 1:
        x = surface.coords["x"]
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        ax.plot(x[keep], values[keep], "-", color="tab:blue", lw=1.2)
        ax.plot(x[keep], values[keep], "o", color="k", ms=3, label="computed points")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("x (direction 1)")
        ax.set_ylabel(metric)
        ax.legend(fontsize=8)
        ax.set_title(f"{label}\njoined by straight lines", fontsize=9)
        fig.tight_layout()
        return fig
    if keep.sum() < 3:
        raise PlotError(f"{surface.path}: {int(keep.sum())} finite computed point(s) of {metric}; a triangulation "
                        f"needs 3 or more")
    X, Y = np.meshgrid(surface.coords["x"], surface.coords["y"], indexing="ij")
    triangulation = tri.Triangulation(X[keep], Y[keep])
    fig, ax = plt.subplots(figsize=(8.0, 6.0))
    norm = _norm(levels, log)
    filled = ax.tricontourf(triangulation, values[keep], levels=levels, cmap=CMAP, norm=norm, extend="both")
    ax.tricontour(triangulation, values[keep], levels=levels[::3], colors="k", linewidths=0.4, norm=norm)
    fig.colorbar(filled, ax=ax, label=metric)
    if rounds is not None:
        dots = ax.scatter(X[keep], Y[keep], c=rounds[keep], s=6, cmap="autumn", edgecolors="none")
        fig.colorbar(dots, ax=ax, label="refinement round (0: coarse grid)", pad=0.02)
    else:
        ax.plot(X[keep], Y[keep], ".", color="k", ms=2.5)
    _axis_labels(ax, surface)
    ax.set_aspect("equal", adjustable="box")
    ax.set_title(f"{label}\nDelaunay triangulation of the computed points (matplotlib.tri), linear in each "
                 f"triangle; dots: sample locations", fontsize=8)
    fig.tight_layout()
    return fig
