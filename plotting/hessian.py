"""Figures of a Hessian file (``file_kind = "hessian"``, written by `landscape-mpi hessian`).

- ``<name>_density.<fmt>``: the eigenvalue spectral density (stochastic Lanczos quadrature) on a log-density axis,
  as papers show it (Ghorbani et al. 2019), one curve per checkpoint.
- ``<name>_sharpness.<fmt>`` (files with several checkpoints): top eigenvalue (and lambda_min), Hutchinson trace and
  average adaptive rise (stored as /adaptive/sharpness; docs/analyses.md#what-the-names-promise) against the epoch,
  with +-1 standard error bars.
- ``<name>_blocks.<fmt>`` (files computed with ``--blocks``): top eigenvalue and trace per diagonal block, in model
  order (plotting/blocks.py).

Reads the file through landscape_mpi's files layer (landscape_mpi/files/reader.py; numpy, matplotlib): nothing
from torch, MPI or the rest of landscape_mpi.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # files only: works with no display

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from landscape_mpi.files import contract
from landscape_mpi.files.reader import read_hessian_file
from plotting.blocks import blocks_figure, read_blocks
from plotting.reader import PlotError

#: Densities below this fraction of a curve's peak are not drawn: the Gaussian tails would otherwise reach
#: 1e-300 and squash the interesting decades of the log axis.
DENSITY_FLOOR = 1e-7


def read_hessian(path: str) -> dict:
    """Everything the figures need, as numpy arrays; UserError (one line) for a missing or foreign file."""
    h = read_hessian_file(path, option="")
    out = {"path": path, "config": h["config"], "model": str(h["attrs"].get("model", "?")),
           "epoch": h[f"{contract.CHECKPOINTS}/epoch"], "checkpoint": h[f"{contract.CHECKPOINTS}/path"],
           "eigenvalues": h[f"{contract.EIGEN}/values"], "lambda_min": h[f"{contract.EIGEN}/lambda_min"]}
    for group, keys in ((contract.TRACE, ("estimate", "stderr")), (contract.DENSITY, ("grid", "values", "sigma")),
                        (contract.ADAPTIVE, ("sharpness", "stderr"))):
        if group in h["group_attrs"]:
            for key in keys:
                out[f"{group}_{key}"] = h[f"{group}/{key}"]
            out[f"{group}_attrs"] = h["group_attrs"][group]
    return out


def _row_labels(h: dict) -> list[str]:
    return [f"epoch {e:g}" for e in h["epoch"]]


def density_figure(h: dict) -> Figure:
    """Spectral density per row on a log axis (grid in eigenvalue units)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    rows = len(h["epoch"])
    colors = plt.cm.viridis(np.linspace(0, 0.9, rows)) if rows > 1 else ["C0"]
    floors = []
    for r, label in enumerate(_row_labels(h)):
        grid, values = h["density_grid"][r], h["density_values"][r]
        floor = DENSITY_FLOOR * np.nanmax(values)
        floors.append(floor)
        shown = np.where(values >= floor, values, np.nan)  # blank, not clipped: no fake plateau at the floor
        ax.semilogy(grid, shown, color=colors[r], lw=1.2, label=label if rows > 1 else None)
    ax.set_ylim(bottom=min(floors))
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log)")
    a = h["density_attrs"]
    ax.set_title(f"{h['model']}: Hessian spectral density\nSLQ {int(a['runs'])} runs x {int(a['steps'])} steps, "
                 f"Gaussian broadening {float(a['sigma_rel']):g} x width", fontsize=9)
    if rows > 1:
        ax.legend(fontsize=7)
    return fig


def sharpness_figure(h: dict) -> Figure:
    """Top eigenvalue / lambda_min, trace and average adaptive rise against the epoch (one panel each present)."""
    epoch = h["epoch"]
    order = np.argsort(epoch, kind="stable")
    e = epoch[order]
    panels = ["eigen"] + [p for p in ("trace", "adaptive") if f"{p}_stderr" in h]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "eigen":
            ax.plot(e, h["eigenvalues"][order, 0], "o-", label=r"$\lambda_{max}$")
            ax.plot(e, h["lambda_min"][order], "s--", label=r"$\lambda_{min}$")
            ax.axhline(0.0, color="0.6", lw=0.8)
            ax.set_title("extreme eigenvalues")
            ax.legend(fontsize=8)
        elif panel == "trace":
            ax.errorbar(e, h["trace_estimate"][order], yerr=h["trace_stderr"][order], fmt="o-", capsize=3)
            ax.set_title(f"trace (Hutchinson, {int(h['trace_attrs']['probes'])} probes, +-1 s.e.)", fontsize=9)
        else:
            ax.errorbar(e, h["adaptive_sharpness"][order], yerr=h["adaptive_stderr"][order], fmt="o-", capsize=3)
            a = h["adaptive_attrs"]
            ax.set_title(f"average adaptive rise (rho {float(a['rho']):g}, {int(a['samples'])} samples)", fontsize=9)
        ax.set_xlabel("epoch")
    fig.suptitle(f"{h['model']}: curvature over training", fontsize=10)
    fig.tight_layout()
    return fig


def draw_hessian(path: str, out_dir: str, fmt: str = "png", dpi: int = 200) -> list[str]:
    """Draw every figure that fits the Hessian file at `path` into `out_dir`; returns the written paths.

    The density figure needs SLQ results (--slq-runs > 0); the curves against the epoch need two rows or more.
    Raises PlotError if the file is not a Hessian file or holds nothing to draw.
    """
    h = read_hessian(path)
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0])
    written = []
    figures = []
    if "density_values" in h:
        figures.append((density_figure(h), f"{stem}_density.{fmt}"))
    if len(h["epoch"]) > 1:
        figures.append((sharpness_figure(h), f"{stem}_sharpness.{fmt}"))
    blocks = read_blocks(path)
    if blocks is not None:  # --blocks: the per-layer figure
        figures.append((blocks_figure(blocks), f"{stem}_blocks.{fmt}"))
    if not figures:
        raise PlotError(f"{path}: nothing to draw (one checkpoint and no spectral density); compute it with "
                        f"--slq-runs > 0 or several checkpoints")
    for fig, out in figures:
        fig.savefig(out, dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        written.append(out)
    return written
