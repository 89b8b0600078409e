"""`PlotOptions` (`landscape-plot`, the plotting package's command): what to draw from which files, and how.

Torch-free like every config module, so that plotting imports its options from here and still runs on a
login node."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from landscape_mpi.config.errors import UserError
from landscape_mpi.config.options import check_choices, literal_values, option

#: Figures (matplotlib), drawn with --fill-missing's interpolated points where asked.
FigureKind = Literal["1d", "contour", "contourf", "heatmap", "surface3d", "compare", "trajectory",
                     "trajectory_residual", "eig_ratio", "uncertainty", "scattered"]
FIGURE_KINDS: tuple[FigureKind, ...] = literal_values(FigureKind)
#: Exports (ParaView, plotly), always with their gaps.
ExportKind = Literal["vtp", "vti", "html"]
EXPORT_KINDS: tuple[ExportKind, ...] = literal_values(ExportKind)
#: Figures of path files (plotting/paths.py): values along t, the barrier matrix, layer-wise barriers, and a
#: path's curve on a surface file through its models (plane_path: given a surface file and path files).
PathKind = Literal["path", "barrier_matrix", "layer_barriers", "plane_path"]
PATH_KINDS: tuple[PathKind, ...] = literal_values(PathKind)
PlotKind = Literal[FigureKind, ExportKind, PathKind]
KINDS: tuple[PlotKind, ...] = literal_values(PlotKind)
ImageFormat = Literal["png", "pdf", "svg"]
Scale = Literal["auto", "linear", "log"]


@dataclass(frozen=True)
class PlotOptions:
    """`landscape-plot FILE.h5 [FILE2.h5 ...] [--kind KIND] ...` (plotting/cli.py draws them)."""

    files: tuple[str, ...] = option(help="surface files; several: 1D overlay or side-by-side comparison",
                                    positional=True)
    kind: tuple[PlotKind, ...] = option((), help="what to draw (repeatable); default: every kind that fits the "
                                                 "file(s)")
    metric: str = option("train_loss", help="the file's <split>_<metric>: train_loss, test_loss, train_acc, "
                                            "test_acc, ...")
    out: str | None = option(None, help="output folder (default: figures/ beside the first file)")
    format: ImageFormat = option("png", help="file format of the figures")
    dpi: int = option(200, help="resolution of the figures in dots per inch")
    scale: Scale = option("auto", help="auto: log-spaced levels and log10 heights in the 2D and 3D figures when the "
                                       "values span two decades or more (figures.spans_decades), else linear; "
                                       "linear; log (also the 1D loss axis and the exports)")
    log: bool = option(False, help="the same as --scale log")
    vmin: float | None = option(None, help="lowest level / color (default: data minimum)")
    vmax: float | None = option(None, help="highest level / color (default: data maximum)")
    levels: int = option(30, help="number of contour levels")
    zmax: float | None = option(None, help="clip heights above this in .vtp/.html exports")
    upsample: int = option(1, help="smooth .vtp export: K times finer grid (scipy)")
    fill_missing: bool = option(False, help="partial files: interpolate the points not computed yet from the "
                                            "finished ones (linear, nearest outside their hull), marked as "
                                            "interpolated in the figure; default: gaps")

    def __post_init__(self) -> None:
        check_choices(self)
        if self.dpi < 1:
            raise UserError(f"--dpi {self.dpi}: must be at least 1, e.g. 200")
        if self.levels < 2:
            raise UserError(f"--levels {self.levels}: must be at least 2 (the colors lie between levels), e.g. 30")
        if self.upsample < 1:
            raise UserError(f"--upsample {self.upsample}: must be at least 1 (1: the grid as computed)")
