"""The per-layer figure of a Hessian file computed with ``--blocks`` (``<name>_blocks.<fmt>``): the top eigenvalue
and the trace (+-1 standard error) of every diagonal block, in model order, one line per checkpoint.

Reads the file through landscape_mpi's files layer (numpy, matplotlib): nothing from torch or MPI.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only: works with no display

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from landscape_mpi.files import contract
from landscape_mpi.files.reader import read_hessian_file


def read_blocks(path: str) -> dict | None:
    """The blocks' names, sizes, tops, traces and their errors, the rows' epochs and the operator's name; None if
    the file has no blocks."""
    h = read_hessian_file(path, option="")
    if contract.BLOCKS not in h["group_attrs"]:
        return None
    g = contract.BLOCKS
    return {"names": list(h[f"{g}/name"]), "sizes": h[f"{g}/size"], "top": h[f"{g}/top"],
            "trace": h[f"{g}/trace"], "trace_stderr": h[f"{g}/trace_stderr"], "map": h["group_attrs"][g]["map"],
            "epoch": h[f"{contract.CHECKPOINTS}/epoch"], "whole": h[f"{contract.EIGEN}/values"][:, 0],
            "curvature": str(h["attrs"].get("curvature", "hessian"))}


def blocks_figure(b: dict) -> Figure:
    """Two panels over the blocks in model order: top eigenvalue (the whole matrix's lambda_max dashed) and trace."""
    n = len(b["names"])
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(6.4, 0.35 * n + 2), 6.0), sharex=True)
    rows = len(b["epoch"])
    colors = plt.cm.viridis(np.linspace(0, 0.9, rows)) if rows > 1 else ["C0"]
    x = np.arange(n)
    for r in range(rows):
        label = f"epoch {b['epoch'][r]:g}"
        ax1.plot(x, b["top"][r], "o-", color=colors[r], label=label, ms=4)
        ax1.axhline(b["whole"][r], color=colors[r], ls="--", lw=0.8)
        ax2.errorbar(x, b["trace"][r], yerr=b["trace_stderr"][r], fmt="o-", color=colors[r], ms=4, capsize=2)
    for ax in (ax1, ax2):
        if np.all(np.asarray(b["top"]) > 0):
            ax.set_yscale("symlog", linthresh=1e-6)
        ax.grid(alpha=0.3)
    ax1.set_ylabel("top eigenvalue of the block")
    ax2.set_ylabel("trace of the block")
    ax1.set_title(f"{b['curvature']}: diagonal blocks per {b['map']} (dashed: the whole matrix's lambda_max)")
    ax2.set_xticks(x, [f"{name} ({size})" for name, size in zip(b["names"], b["sizes"])], rotation=60,
                   ha="right", fontsize=7)
    if rows > 1:
        ax1.legend(fontsize=7)
    fig.tight_layout()
    return fig
