"""`landscape-plot FILE.h5 [FILE2.h5 ...] [--kind KIND] [--metric train_loss] [--out DIR] [--format png]`
(also `python -m plotting`). With no --kind, draws every figure that fits the file(s).

Each file is opened once for its header and `done` mask, then only the metrics the chosen figures need
are read. Hessian files (root attribute ``file_kind = "hessian"``) are drawn by `plotting.hessian`."""

from __future__ import annotations

import argparse
import os
import sys

from plotting import export, figures
from plotting.fill import fill_missing
from landscape_mpi.files.reader import UserError, file_kind
from plotting.reader import PlotError, Surface, read_metrics, read_surface

FIGURE_KINDS = ("1d", "contour", "contourf", "heatmap", "surface3d", "compare", "trajectory", "trajectory_residual",
                "eig_ratio")
EXPORT_KINDS = ("vtp", "vti", "html")
KINDS = FIGURE_KINDS + EXPORT_KINDS


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise PlotError(f"{message} (see: landscape-plot --help)")


def build_parser() -> Parser:
    p = Parser(prog="landscape-plot", description="Figures and exports of landscape-mpi surface files.")
    p.add_argument("files", nargs="+", help="surface files; several: 1D overlay or side-by-side comparison")
    p.add_argument("--kind", action="append", choices=KINDS,
                   help="what to draw (repeatable); default: every kind that fits the file(s)")
    p.add_argument("--metric", default="train_loss",
                   help="train_loss (default), test_loss, train_acc, test_acc, ... (the file's <split>_<metric>)")
    p.add_argument("--out", help="output folder (default: figures/ beside the first file)")
    p.add_argument("--format", default="png", choices=("png", "pdf", "svg"))
    p.add_argument("--dpi", type=int, default=200)
    p.add_argument("--scale", default="auto", choices=("auto", "linear", "log"),
                   help="auto (default): log-spaced levels and log10 heights in the 2D and 3D figures when the "
                        "values span two decades or more (figures.spans_decades), else linear; linear; log (also "
                        "the 1D loss axis and the exports)")
    p.add_argument("--log", action="store_true", help="the same as --scale log")
    p.add_argument("--vmin", type=float, help="lowest level / color (default: data minimum)")
    p.add_argument("--vmax", type=float, help="highest level / color (default: data maximum)")
    p.add_argument("--levels", type=int, default=30, help="number of contour levels (default 30)")
    p.add_argument("--zmax", type=float, help="clip heights above this in .vtp/.html exports")
    p.add_argument("--upsample", type=int, default=1, help="smooth .vtp export: K times finer grid (scipy)")
    p.add_argument("--fill-missing", action="store_true",
                   help="partial files: interpolate the points not computed yet from the finished ones (linear, "
                        "nearest outside their hull), marked as interpolated in the figure; default: gaps")
    return p


def default_kinds(surfaces: list[Surface]) -> list[str]:
    s = surfaces[0]
    if len(surfaces) > 1:
        return ["1d"] if s.ndim == 1 else ["compare"] if s.ndim == 2 else []
    if s.ndim == 1:
        return ["1d"]
    if s.ndim == 3:
        return ["vti"]
    kinds = ["contour", "contourf", "heatmap", "surface3d", "vtp", "html"]
    if s.trajectory:
        kinds.append("trajectory")
        if "residual" in s.trajectory:
            kinds.append("trajectory_residual")
    if "eig_ratio" in s.available:
        kinds.append("eig_ratio")
    return kinds


def needed_metrics(surface: Surface, kind: str, metric: str) -> list[str]:
    """The metrics a figure kind reads (so that only those datasets are read from the file)."""
    if kind == "1d":
        return [m for m in surface.available if m.startswith(("train_", "test_"))]
    if kind == "vti":
        return [m for m in surface.available if m != "eig_ratio"]
    if kind == "eig_ratio":
        return ["eig_ratio"]
    if kind == "trajectory_residual":
        return []
    return [metric]


#: The figures whose scale --scale auto chooses from the data (the others follow --scale log only).
AUTO_SCALED = ("contour", "contourf", "heatmap", "surface3d", "trajectory", "compare")


def use_log(surfaces: list[Surface], kind: str, a: argparse.Namespace) -> bool:
    """Whether `kind` is drawn on a log scale: --log / --scale log, or --scale auto on a metric whose values
    span two decades or more (the loss around a minimum: linear levels leave the basin one empty ring)."""
    if a.log or a.scale == "log":
        return True
    if a.scale == "linear" or kind not in AUTO_SCALED:
        return False
    return figures.spans_decades([x.metric(a.metric) for x in surfaces], a.vmin, a.vmax)


def draw(surfaces: list[Surface], kind: str, a: argparse.Namespace, out_dir: str) -> str:
    s = surfaces[0]
    stem = os.path.splitext(os.path.basename(s.path))[0]
    a = argparse.Namespace(**{**vars(a), "log": use_log(surfaces, kind, a)})
    if kind == "1d":
        name = f"{stem}_1d" if len(surfaces) == 1 else "overlay_1d"
        return figures.save(figures.plot_1d(surfaces, a.log), os.path.join(out_dir, f"{name}.{a.format}"), a.dpi)
    if kind == "eig_ratio":
        return figures.save(figures.plot_eig_ratio(s), os.path.join(out_dir, f"{stem}_eig_ratio.{a.format}"), a.dpi)
    if kind == "trajectory_residual":
        return figures.save(figures.plot_trajectory_residual(s),
                            os.path.join(out_dir, f"{stem}_trajectory_residual.{a.format}"), a.dpi)
    if kind == "vti":
        return export.write_vti(s, os.path.join(out_dir, f"{stem}.vti"))
    if kind == "vtp":
        return export.write_vtp(s, a.metric, os.path.join(out_dir, f"{stem}_{a.metric}.vtp"), a.log, a.zmax, a.upsample)
    if kind == "html":
        return export.write_html(s, a.metric, os.path.join(out_dir, f"{stem}_{a.metric}.html"), a.log, a.zmax)
    levels = figures.levels_for([x.metric(a.metric) for x in surfaces], a.vmin, a.vmax, a.levels, a.log)
    if kind == "compare":
        fig = figures.plot_compare(surfaces, a.metric, levels, a.log)
        return figures.save(fig, os.path.join(out_dir, f"compare_{a.metric}.{a.format}"), a.dpi)
    plot = {"contour": figures.plot_contour, "contourf": figures.plot_contourf, "heatmap": figures.plot_heatmap,
            "surface3d": figures.plot_surface3d, "trajectory": figures.plot_trajectory}[kind]
    return figures.save(plot(s, a.metric, levels, a.log), os.path.join(out_dir, f"{stem}_{a.metric}_{kind}.{a.format}"),
                        a.dpi)


def _out_dir(a: argparse.Namespace) -> str:
    out_dir = a.out or os.path.join(os.path.dirname(os.path.abspath(a.files[0])), "figures")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise PlotError(f"--out {out_dir}: cannot create it ({exc})") from None
    return out_dir


def _print(path: str) -> None:
    try:
        print(path, flush=True)
    except BrokenPipeError:  # `landscape-plot ... | head`: keep drawing, stop printing
        sys.stdout = open(os.devnull, "w")


def draw_hessian_file(path: str, out_dir: str, a: argparse.Namespace) -> list[str]:
    """A Hessian file is drawn by plotting.hessian (imported only when one is given)."""
    try:
        from plotting import hessian
    except ImportError as exc:
        raise PlotError(f"{path} is a Hessian file and this landscape-plot cannot draw those ({exc}); "
                        f"update landscape-mpi") from None
    return hessian.draw_hessian(path, out_dir, a.format, a.dpi)


def main(argv: list[str] | None = None) -> int:
    try:
        a = build_parser().parse_args(argv)
        kinds_of_files = {p: file_kind(p) for p in a.files}
        hessian_files = [p for p, k in kinds_of_files.items() if k == "hessian"]
        surface_files = [p for p in a.files if p not in hessian_files]
        out_dir = _out_dir(a)
        for path in hessian_files:
            for made in draw_hessian_file(path, out_dir, a):
                _print(made)
        if not surface_files:
            return 0
        surfaces = [read_surface(p, metrics=()) for p in surface_files]  # header and done mask only
        if len({s.ndim for s in surfaces}) > 1:
            raise PlotError("the files mix 1D, 2D and 3D grids; give files of one kind")
        kinds = a.kind or default_kinds(surfaces)
        if not kinds:
            raise PlotError("nothing to draw for these files; choose --kind")
        for s in surfaces:
            if s.n_done == 0:
                raise PlotError(f"{s.path}: no point computed yet; try again once the job has written some")
        if a.fill_missing and surfaces[0].ndim == 3:
            raise PlotError("--fill-missing draws 1D and 2D files; a 3D grid is exported with its gaps (vti)")
        for kind in kinds:
            for s in surfaces:
                read_metrics(s, needed_metrics(s, kind, a.metric))
            drawn = surfaces
            if a.fill_missing and kind in FIGURE_KINDS:  # exports keep their gaps: they cannot show a mark
                drawn = [fill_missing(s, needed_metrics(s, kind, a.metric)) for s in surfaces]
            _print(draw(drawn, kind, a, out_dir))
        return 0
    except UserError as exc:  # PlotError, or the files layer's (missing file, foreign file, ...)
        print(f"landscape-plot: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
