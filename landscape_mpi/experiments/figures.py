"""The findings report's figures, drawn from the surfaces `surface_data` read. Each function takes the report's
section (anything with ``figure(fig, stem, alt)``, which saves the figure and returns its markdown link) and
returns that link, or None when there is nothing to draw. matplotlib is imported only here, when drawing."""

from __future__ import annotations

import numpy as np

from landscape_mpi.experiments.rules import fmt
from landscape_mpi.experiments.surface_data import SurfaceData


def contours(section, panels: list[tuple[str, SurfaceData | None]], stem: str, alt: str,
             metric: str = "train_loss", path: bool = False) -> str | None:
    """Side-by-side contour plots with shared log-spaced levels (`path`: the PCA trajectory in red on top)."""
    panels = [(t, d) for t, d in panels if d is not None and d.values.get(metric) is not None
              and len(d.coords) == 2 and np.isfinite(d.values[metric]).any()]
    if not panels:
        return None
    import matplotlib.pyplot as plt

    finite = [d.values[metric][np.isfinite(d.values[metric])] for _, d in panels]
    lo = max(min(float(v.min()) for v in finite), 1e-6)
    hi = max(min(float(v.max()) for v in finite), lo * 1.01)  # the smallest maximum: every panel uses the range
    levels = np.geomspace(lo, hi, 25)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), squeeze=False)
    for ax, (title, d) in zip(axes[0], panels):
        x, y = d.coords
        v = d.values[metric]
        if len(x) > 1 and len(y) > 1:
            ax.contour(x, y, v.T, levels=levels, cmap="viridis", linewidths=0.8)  # v[i, j] is at (x[i], y[j])
        ax.plot([0], [0], "k+")
        if path and d.trajectory:
            t = d.trajectory
            ax.plot(t["x"], t["y"], "r.-", markersize=4, linewidth=1)
        ax.set_title(title, fontsize=8)
        ax.set_aspect("equal")
    fig.tight_layout()
    return section.figure(fig, stem, alt)


def eig_maps(section, panels: list[tuple[str, SurfaceData | None]]) -> str | None:
    """|lambda_min / lambda_max| maps, clipped to [0, 1], of the panels that hold both eigenvalues."""
    panels = [(t, d) for t, d in panels if d is not None and "eig_min" in d.values and "eig_max" in d.values]
    if not panels:
        return None
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0), squeeze=False)
    for ax, (title, d) in zip(axes[0], panels):
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.abs(d.values["eig_min"] / d.values["eig_max"])
        x, y = d.coords
        im = ax.imshow(np.clip(ratio.T, 0, 1), origin="lower", extent=(x[0], x[-1], y[0], y[-1]), vmin=0, vmax=1,
                       cmap="magma")
        ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8)
    return section.figure(fig, "skip_eig_ratio", "abs(lambda_min/lambda_max) maps")


def batch_lines(section, data: dict, wds: list[float], variants: list[str]) -> str | None:
    """Train (solid) and test (dashed) loss along one direction, the small-batch net against each large-batch
    net, per weight decay and norm (`data`: (variant or None, wd, norm) -> SurfaceData or None)."""
    if not any(d is not None for d in data.values()):
        return None
    import matplotlib.pyplot as plt

    colors = ["tab:red", "tab:green", "tab:purple", "tab:orange"]
    fig, axes = plt.subplots(1, 2 * len(wds), figsize=(3.2 * 2 * len(wds), 3.0), squeeze=False)
    for col, (wd, norm) in enumerate((wd, norm) for wd in wds for norm in ("filter", "none")):
        ax = axes[0][col]
        for v, color in [(None, "tab:blue")] + list(zip(variants, colors)):
            d = data.get((v, wd, norm))
            if d is None:
                continue
            label = "small batch" if v is None else f"large, {v}"
            ax.plot(d.coords[0], d.values["train_loss"], "-", color=color, label=f"{label} train")
            if "test_loss" in d.values:
                ax.plot(d.coords[0], d.values["test_loss"], "--", color=color, linewidth=0.8)
        ax.set_yscale("log")
        ax.set_title(f"wd {fmt(wd)}, norm {norm}", fontsize=8)
        ax.legend(fontsize=5)
    fig.tight_layout()
    return section.figure(fig, "batch_1d", "small vs large batch, 1D")


def interpolation_lines(section, data: dict, wds: list[float], variants: list[str]) -> str | None:
    """Loss (log scale, top) and accuracy (bottom) along theta(a) = (1 - a) theta_small + a theta_large, train
    solid and test dashed, one colour per weight decay, one column per way of training the large-batch net
    (`data`: (variant, wd) -> SurfaceData or None)."""
    cols = [v for v in variants if any(data.get((v, wd)) is not None for wd in wds)]
    if not cols:
        return None
    import matplotlib.pyplot as plt

    colors = ["tab:blue", "tab:red", "tab:green", "tab:purple"]
    fig, axes = plt.subplots(2, len(cols), figsize=(3.2 * len(cols), 4.8), squeeze=False)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.1, top=0.93, wspace=0.3, hspace=0.3)
    for col, v in enumerate(cols):
        for row, metric in enumerate(("loss", "acc")):
            ax = axes[row][col]
            for wd, color in zip(wds, colors):
                d = data.get((v, wd))
                if d is None:
                    continue
                for split, style in (("train", "-"), ("test", "--")):
                    values = d.values.get(f"{split}_{metric}")
                    if values is not None:
                        ax.plot(d.coords[0], values, style, color=color, label=f"wd {fmt(wd)} {split}")
            for x in (0.0, 1.0):
                ax.axvline(x, color="0.7", linewidth=0.6)
            if metric == "loss":
                ax.set_yscale("log")
                ax.set_title(f"large batch: {v}", fontsize=8)
            else:
                ax.set_xlabel("a (0: small batch, 1: large batch)", fontsize=7)
            ax.set_ylabel(metric, fontsize=7)
    axes[0][0].legend(fontsize=6)
    return section.figure(fig, "batch_interpolation", "interpolation between the small- and large-batch minimisers")
