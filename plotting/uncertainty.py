"""The uncertainty map of a surface computed with ``--tolerance`` (sequential estimates,
docs/method.md#sequential-estimates): where the estimates are less certain and where the rule read more.

2D: two heat maps side by side, the relative standard error ``se / |value|`` of the metric (the rule holds it
below the tolerance unless the whole split was read, where it is 0) and the share of the split each point read
(``<split>_samples`` over the split's size, recorded in the file's ``sequential`` attribute). 1D: the metric
with a band of 2 standard errors, and the share read on the right axis. Points not computed are blank.
"""

from __future__ import annotations

import json

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from plotting.figures import CMAP, _axis_labels, _title
from plotting.reader import PlotError, Surface

#: Standard errors in the 1D band.
BAND = 2.0


def uncertainty_metrics(metric: str) -> list[str]:
    """The datasets the map reads: the metric, its standard error and the samples its split's points read."""
    return [metric, f"{metric}_se", f"{metric.split('_')[0]}_samples"]


def has_uncertainty(surface: Surface) -> bool:
    """Whether the file holds sequential estimates (a standard error per point)."""
    return "sequential" in surface.attrs and any(m.endswith("_se") for m in surface.available)


def _read_share(surface: Surface, metric: str) -> tuple[np.ndarray, str]:
    split = metric.split("_")[0]
    samples = surface.metric(f"{split}_samples")
    total = json.loads(surface.attrs.get("sequential", "{}")).get("split_samples", {}).get(split)
    if total:
        return samples / float(total), f"share of the {split} split read"
    return samples, f"{split} samples read"


def plot_uncertainty(surface: Surface, metric: str) -> Figure:
    """The uncertainty map of `metric` (a ``<split>_<metric>`` of a file computed with --tolerance)."""
    if not has_uncertainty(surface):
        raise PlotError(f"{surface.path} holds exact full passes (no --tolerance): it has no uncertainty map; "
                        f"choose another --kind")
    if f"{metric}_se" not in surface.available:
        raise PlotError(f"{surface.path} has no standard error of {metric!r}; choose --metric <split>_<metric>")
    value, se = surface.metric(metric), surface.metric(f"{metric}_se")
    share, share_label = _read_share(surface, metric)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = se / np.abs(value)
    if surface.ndim == 1:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        x = surface.coords["x"]
        ax.plot(x, value, color="C0", lw=1.5, label=metric)
        ax.fill_between(x, value - BAND * se, value + BAND * se, color="C0", alpha=0.3,
                        label=f"+-{BAND:g} standard errors")
        ax.set_xlabel("x (direction 1)")
        ax.set_ylabel(metric)
        right = ax.twinx()
        right.plot(x, share, color="C1", ls="--", lw=1.0, label=share_label)
        right.set_ylabel(share_label)
        ax.legend(fontsize=7, loc="upper left")
        right.legend(fontsize=7, loc="upper right")
        ax.set_title(_title(surface, f"{metric}: sequential estimates"), fontsize=9)
        fig.tight_layout()
        return fig
    if surface.ndim != 2:
        raise PlotError(f"{surface.path} is a {surface.ndim}D grid; the uncertainty map draws 1D and 2D files")
    X, Y = np.meshgrid(surface.coords["x"], surface.coords["y"], indexing="ij")
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.6))
    for ax, data, label in ((axes[0], rel, f"se / |{metric}|"), (axes[1], share, share_label)):
        mesh = ax.pcolormesh(X, Y, np.ma.masked_invalid(data), cmap=CMAP, shading="nearest")
        fig.colorbar(mesh, ax=ax, label=label)
        _axis_labels(ax, surface)
        ax.set_aspect("equal")
        ax.set_title(label, fontsize=9)
    tol = json.loads(surface.attrs.get("sequential", "{}")).get("tolerance")
    fig.suptitle(_title(surface, f"{metric}: sequential estimates (tolerance {tol})"), fontsize=9)
    fig.tight_layout()
    return fig
