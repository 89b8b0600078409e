"""Matplotlib figures of surface files: 1D curves, 2D contours, filled contours, heat maps, 3D surfaces,
side-by-side comparisons, training paths (and their distance off the PCA plane) and |lambda_min/lambda_max| maps.

Every function returns a `matplotlib.figure.Figure`; what it drew (levels, color range, masked cells, line data)
is read back from the matplotlib objects themselves. Points not yet computed are NaN in the reader and are left
blank here (masked cells), never drawn as zero.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: works on a login node or in a batch job with no display

import numpy as np
from matplotlib import colors
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from plotting.reader import PlotError, Surface, legend_labels

CMAP = "viridis"


def _title(surface: Surface, what: str) -> str:
    title = f"{surface.label()}: {what}"
    if surface.interpolated:
        title += f"\nINTERPOLATED from {surface.progress()} (dots: computed points)"
    elif not surface.complete:
        title += f"  ({surface.progress()})"
    return title


def _mark_computed(ax, surface: Surface, metric: str) -> np.ndarray | None:
    """With --fill-missing: dots at the computed points, so the interpolated rest is visibly not data.
    Returns the mask of interpolated points (None when nothing was interpolated)."""
    filled = surface.interpolated.get(metric)
    if filled is None:
        return None
    X, Y = np.meshgrid(surface.coords["x"], surface.coords["y"], indexing="ij")
    ax.plot(X[~filled], Y[~filled], ".", color="k", ms=3.0, alpha=0.8, label="computed points")
    return filled


def levels_for(arrays: Sequence[np.ndarray], vmin: float | None = None, vmax: float | None = None,
               n: int = 30, log: bool = False) -> np.ndarray:
    """Contour levels shared by every array: n levels from vmin to vmax (data range by default),
    log-spaced with `log` (losses that span orders of magnitude); non-finite values are ignored."""
    finite = np.concatenate([a[np.isfinite(a)].ravel() for a in arrays]) if arrays else np.array([])
    if log:
        finite = finite[finite > 0]
    if finite.size == 0 and (vmin is None or vmax is None):
        raise PlotError("no finite values to draw yet" + (" (log levels need positive values)" if log else ""))
    lo = float(vmin) if vmin is not None else float(finite.min())
    hi = float(vmax) if vmax is not None else float(finite.max())
    if log and lo <= 0:
        raise PlotError(f"--vmin {lo}: log-spaced levels need a positive --vmin")
    if hi <= lo:
        hi = lo * 1.01 + 1e-12 if lo > 0 else lo + 1.0
    return np.geomspace(lo, hi, n) if log else np.linspace(lo, hi, n)


def spans_decades(arrays: Sequence[np.ndarray], vmin: float | None = None, vmax: float | None = None,
                  decades: float = 2.0) -> bool:
    """True if every finite value (within --vmin/--vmax where given) is positive and the largest is at least
    10**decades times the smallest: levels and colors then belong on a log scale."""
    finite = np.concatenate([a[np.isfinite(a)].ravel() for a in arrays]) if arrays else np.array([])
    lo = float(vmin) if vmin is not None else (float(finite.min()) if finite.size else np.nan)
    hi = float(vmax) if vmax is not None else (float(finite.max()) if finite.size else np.nan)
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo <= 0 or (finite.size and finite.min() <= 0 and vmin is None):
        return False
    return hi / lo >= 10.0 ** decades


def _norm(levels: np.ndarray, log: bool) -> colors.Normalize:
    return colors.LogNorm(levels[0], levels[-1]) if log else colors.Normalize(levels[0], levels[-1])


def _grid(surface: Surface, metric: str) -> tuple[np.ndarray, np.ndarray, np.ma.MaskedArray]:
    if surface.ndim != 2:
        raise PlotError(f"{surface.path} is a {surface.ndim}D grid; this figure needs a 2D surface")
    X, Y = np.meshgrid(surface.coords["x"], surface.coords["y"], indexing="ij")  # the file's [i, j] = (x[i], y[j])
    return X, Y, np.ma.masked_invalid(surface.metric(metric))


def _axis_labels(ax, surface: Surface) -> None:
    ax.set_xlabel("x (direction 1)")
    ax.set_ylabel("y (direction 2)")


def _finish_2d(fig: Figure, ax, surface: Surface, metric: str, what: str) -> Figure:
    """The end of a 2D figure: dots at the computed points (with --fill-missing), axis labels, equal aspect, title."""
    _mark_computed(ax, surface, metric)
    _axis_labels(ax, surface)
    ax.set_aspect("equal", adjustable="box")
    ax.set_title(_title(surface, what), fontsize=9)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------ 1D
def second_metric(surface: Surface, split: str) -> str | None:
    """The task's second metric of `split` that the file holds (classify: acc; lm: ppl; regress: r2), in the
    order the writer declared its metrics."""
    declared = json.loads(surface.attrs.get("metrics", "[]") or "[]") or list(surface.values)
    return next((m for m in declared if m.startswith(f"{split}_") and m != f"{split}_loss" and m in surface.values),
                None)


def plot_1d(surfaces: Sequence[Surface], log: bool = False) -> Figure:
    """Loss (left axis, solid) and the task's second metric (right axis, dashed: accuracy in % for a
    classifier) against the coordinate, train and test; several files are overlaid, each labeled from its
    config (the paper's small- vs large-batch figure)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    acc_ax = ax.twinx()
    right = None
    for k, (s, name) in enumerate(zip(surfaces, legend_labels(list(surfaces)))):
        if s.ndim != 1:
            raise PlotError(f"{s.path} is a {s.ndim}D grid; the 1D figure needs a 1D surface")
        color = f"C{k}"
        x = s.coords["x"]
        for split, width in (("train", 1.8), ("test", 1.0)):
            if f"{split}_loss" in s.values:
                loss = s.values[f"{split}_loss"]
                ax.plot(x, loss, color=color, lw=width, label=f"{name} {split} loss")
                second = second_metric(s, split)
                if second is not None:
                    metric = second[len(split) + 1:]
                    right = right or metric
                    scale = 100 if metric.endswith("acc") else 1
                    shown = "accuracy" if metric == "acc" else metric
                    acc_ax.plot(x, scale * s.values[second], color=color, lw=width, ls="--",
                                label=f"{name} {split} {shown}")
                filled = s.interpolated.get(f"{split}_loss")
                if filled is not None:  # --fill-missing: the computed points as dots on the line
                    ax.plot(x[~filled], loss[~filled], ".", color="k", ms=3)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("x (direction 1)" if surfaces[0].config.get("x_target") is None else "interpolation coefficient")
    ax.set_ylabel("loss")
    if right is None or right.endswith("acc"):
        acc_ax.set_ylabel("accuracy (%)" if right in (None, "acc") else f"{right} (%)")
        acc_ax.set_ylim(0, 100)
    else:
        acc_ax.set_ylabel(right)
    handles = ax.get_legend_handles_labels()
    handles2 = acc_ax.get_legend_handles_labels()
    ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], fontsize=7, loc="upper center")
    partial = [s for s in surfaces if not s.complete]
    title = surfaces[0].label() if len(surfaces) == 1 else "loss and accuracy"
    if partial:
        title += "  (" + ", ".join(s.progress() for s in partial) + ")"
        if any(s.interpolated for s in partial):
            title += "\nINTERPOLATED between the computed points (dots)"
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------ 2D
def plot_contour(surface: Surface, metric: str, levels: np.ndarray, log: bool = False) -> Figure:
    """Contour lines with labeled levels (the paper's 2D figure)."""
    X, Y, Z = _grid(surface, metric)
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    cs = ax.contour(X, Y, Z, levels=levels, cmap=CMAP, norm=_norm(levels, log), linewidths=0.9)
    ax.clabel(cs, cs.levels[::2], inline=True, fontsize=6, fmt="%.3g")
    ax.plot([0], [0], "k+", ms=8)
    fig.colorbar(cs, ax=ax, label=metric, shrink=0.85, format="%.3g")
    return _finish_2d(fig, ax, surface, metric, f"{metric} contours")


def plot_contourf(surface: Surface, metric: str, levels: np.ndarray, log: bool = False) -> Figure:
    """Filled contours with a color bar."""
    X, Y, Z = _grid(surface, metric)
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    cs = ax.contourf(X, Y, Z, levels=levels, cmap=CMAP, norm=_norm(levels, log), extend="both")
    fig.colorbar(cs, ax=ax, label=metric)
    return _finish_2d(fig, ax, surface, metric, metric)


def plot_heatmap(surface: Surface, metric: str, levels: np.ndarray, log: bool = False) -> Figure:
    """One cell per grid point; cells not yet computed stay blank (the axes' background shows)."""
    X, Y, Z = _grid(surface, metric)
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    cmap = plt.get_cmap(CMAP).with_extremes(bad=(0, 0, 0, 0))
    mesh = ax.pcolormesh(X, Y, Z, shading="nearest", cmap=cmap, norm=_norm(levels, log))
    fig.colorbar(mesh, ax=ax, label=metric)
    return _finish_2d(fig, ax, surface, metric, metric)


def view_azimuth(X: np.ndarray, Y: np.ndarray, z: np.ndarray) -> float:
    """The camera's azimuth (degrees) that puts the grid's lowest corner nearest the viewer, 15 degrees off its
    diagonal: a high corner in front would hide the basin behind it (matplotlib draws faces in depth order, and
    the tall near faces cover the far ones)."""
    corners = [(0, 0), (0, -1), (-1, 0), (-1, -1)]
    heights = [z[i, j] if np.isfinite(z[i, j]) else np.inf for i, j in corners]
    i, j = corners[int(np.argmin(heights))]
    return float(np.degrees(np.arctan2(np.sign(Y[i, j]) or 1.0, np.sign(X[i, j]) or 1.0))) - 15.0


def plot_surface3d(surface: Surface, metric: str, levels: np.ndarray, log: bool = False) -> Figure:
    """A 3D surface (z = the metric, log10 with `log`); missing points leave holes."""
    X, Y, Z = _grid(surface, metric)
    z = np.ma.filled(Z.astype(float), np.nan)
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(z > 0, np.log10(z), np.nan)
    lo, hi = (np.log10(levels[0]), np.log10(levels[-1])) if log else (levels[0], levels[-1])
    z = np.where(np.isfinite(z), np.clip(z, lo, hi), np.nan)
    fig = plt.figure(figsize=(6.4, 5.2))
    ax = fig.add_subplot(projection="3d")
    ax.plot_surface(X, Y, z, cmap=CMAP, vmin=lo, vmax=hi, rstride=1, cstride=1, linewidth=0, antialiased=True)
    ax.view_init(elev=30, azim=view_azimuth(X, Y, z))
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_zlabel(f"log10 {metric}" if log else metric)
    ax.set_zlim(lo, hi)
    filled = surface.interpolated.get(metric)
    if filled is not None:  # the computed points as dots on the surface
        ax.scatter(X[~filled], Y[~filled], z[~filled], color="k", s=2, depthshade=False)
    ax.set_title(_title(surface, metric), fontsize=9)
    return fig


def plot_compare(surfaces: Sequence[Surface], metric: str, levels: np.ndarray, log: bool = False,
                 filled: bool = True) -> Figure:
    """Several surfaces side by side with one color scale and the same levels (the paper's with- vs
    without-skip-connections figure)."""
    n = len(surfaces)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n + 1.0, 3.8), squeeze=False)
    norm = _norm(levels, log)
    cs = None
    for ax, s, name in zip(axes[0], surfaces, legend_labels(list(surfaces))):
        X, Y, Z = _grid(s, metric)
        if filled:
            cs = ax.contourf(X, Y, Z, levels=levels, cmap=CMAP, norm=norm, extend="both")
        else:
            cs = ax.contour(X, Y, Z, levels=levels, cmap=CMAP, norm=norm, linewidths=0.8)
        _mark_computed(ax, s, metric)
        ax.set_aspect("equal", adjustable="box")
        note = "" if s.complete else (f"\nINTERPOLATED from {s.progress()} (dots)" if s.interpolated
                                      else f"\n({s.progress()})")
        ax.set_title(name + note, fontsize=8)
        ax.set_xlabel("x")
    axes[0][0].set_ylabel("y")
    fig.colorbar(cs, ax=list(axes[0]), label=metric, shrink=0.9)
    return fig


def _trajectory(surface: Surface) -> dict:
    t = surface.trajectory
    if not t or "x" not in t or "y" not in t:
        raise PlotError(f"{surface.path} holds no /trajectory (x, y): compute a PCA-direction surface first")
    return t


def _explained(t: dict) -> np.ndarray:
    return np.asarray(t.get("explained_variance", [np.nan, np.nan]), dtype=float).ravel()[:2]


def plot_trajectory(surface: Surface, metric: str, levels: np.ndarray, log: bool = False) -> Figure:
    """The projected training path on the contour of the PCA plane, with epoch markers; the axes carry
    the explained variance of each component (a low total warns that the path leaves the plane)."""
    t = _trajectory(surface)
    fig = plot_contour(surface, metric, levels, log)
    ax = fig.axes[0]
    ev = _explained(t)
    ax.plot(t["x"], t["y"], "-o", color="crimson", ms=3, lw=1.2,
            label=f"training path (plane: {100 * np.nansum(ev):.1f}% of variance)")
    epochs = t.get("epochs", np.arange(len(t["x"])))
    step = max(1, len(epochs) // 10)
    for i in range(0, len(epochs), step):
        ax.annotate(str(int(epochs[i])), (t["x"][i], t["y"][i]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlabel(f"PC1: {100 * ev[0]:.1f}% of variance")
    ax.set_ylabel(f"PC2: {100 * ev[1]:.1f}% of variance")
    ax.legend(fontsize=7)
    return fig


def plot_trajectory_residual(surface: Surface) -> Figure:
    """Each checkpoint's distance off the PCA plane (``/trajectory/residual``) against its epoch, beside its
    distance from theta* within the plane: where the residual is comparable, the drawn path misleads."""
    t = _trajectory(surface)
    if "residual" not in t:
        raise PlotError(f"{surface.path} holds no /trajectory/residual; recompute the PCA surface with a "
                        f"landscape-mpi that records it")
    residual = np.asarray(t["residual"], dtype=float)
    epochs = np.asarray(t.get("epochs", np.arange(len(residual))))
    in_plane = np.hypot(np.asarray(t["x"], dtype=float), np.asarray(t["y"], dtype=float))
    ev = _explained(t)
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    ax.plot(epochs, residual, "-o", color="crimson", ms=3, label="off the plane (residual norm)")
    ax.plot(epochs, in_plane, "--s", color="C0", ms=3, label="in the plane (projected distance)")
    ax.set_xlabel("epoch" if "epochs" in t else "checkpoint")
    ax.set_ylabel(r"distance from $\theta^*$ (weight-space 2-norm)")
    ax.legend(fontsize=7)
    ax.set_title(f"{surface.label()}: trajectory off the PCA plane "
                 f"(PC1 {100 * ev[0]:.1f}%, PC2 {100 * ev[1]:.1f}% of variance)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_eig_ratio(surface: Surface) -> Figure:
    """|lambda_min / lambda_max| over the grid: near 0 where the surface is locally convex-looking."""
    X, Y, Z = _grid(surface, "eig_ratio")
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    cmap = plt.get_cmap("magma").with_extremes(bad=(0, 0, 0, 0))
    vmax = float(np.nanmax(np.ma.filled(Z, np.nan))) if Z.count() else 1.0
    mesh = ax.pcolormesh(X, Y, Z, shading="nearest", cmap=cmap, vmin=0.0, vmax=max(vmax, 1e-12))
    fig.colorbar(mesh, ax=ax, label=r"$|\lambda_{min} / \lambda_{max}|$")
    _axis_labels(ax, surface)
    ax.set_aspect("equal", adjustable="box")
    ax.set_title(_title(surface, "|lambda_min / lambda_max|"), fontsize=9)
    fig.tight_layout()
    return fig


def save(fig: Figure, path: str, dpi: int = 200) -> str:
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path
