"""`landscape-plot FILE.h5 [FILE2.h5 ...] [--kind KIND] [--metric train_loss] [--out DIR] [--format png]`
(also `python -m plotting`). With no --kind, draws every figure that fits the file(s).

Each file is opened once for its header and `done` mask, then only the metrics the chosen figures need
are read. Hessian files (root attribute ``file_kind = "hessian"``) are drawn by `plotting.hessian`."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from landscape_mpi.config.options import add_options, from_args
from landscape_mpi.config.plot import FIGURE_KINDS, PATH_KINDS, PlotOptions
from landscape_mpi.files.reader import UserError, file_kind
from plotting import export, figures, paths, scattered, uncertainty
from plotting.fill import fill_missing
from plotting.reader import PlotError, Surface, read_metrics, read_surface


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise PlotError(f"{message} (see: landscape-plot --help)")


def build_parser() -> Parser:
    """The options are the fields of `PlotOptions` (landscape_mpi/config/plot.py)."""
    p = Parser(prog="landscape-plot", description="Figures and exports of landscape-mpi surface files.")
    add_options(p, PlotOptions)
    return p


def default_kinds(surfaces: list[Surface]) -> list[str]:
    s = surfaces[0]
    if len(surfaces) > 1:
        return ["1d"] if s.ndim == 1 else ["compare"] if s.ndim == 2 else []
    if scattered.is_adaptive(s):  # the computed points as they are (plotting/scattered.py); 3D: exported with gaps
        return ["scattered"] if s.ndim < 3 else ["vti"]
    if s.ndim == 1:
        return ["1d"] + (["uncertainty"] if uncertainty.has_uncertainty(s) else [])
    if s.ndim == 3:
        return ["vti"]
    kinds = ["contour", "contourf", "heatmap", "surface3d", "vtp", "html"]
    if s.trajectory:
        kinds.append("trajectory")
        if "residual" in s.trajectory:
            kinds.append("trajectory_residual")
    if "eig_ratio" in s.available:
        kinds.append("eig_ratio")
    if uncertainty.has_uncertainty(s):  # --tolerance: the estimates' standard errors and samples read
        kinds.append("uncertainty")
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
    if kind == "uncertainty":
        return [m for m in uncertainty.uncertainty_metrics(metric) if m in surface.available]
    return [metric]


#: The figures whose scale --scale auto chooses from the data (the others follow --scale log only).
AUTO_SCALED = ("contour", "contourf", "heatmap", "surface3d", "trajectory", "compare", "scattered")


def use_log(surfaces: list[Surface], kind: str, a: PlotOptions) -> bool:
    """Whether `kind` is drawn on a log scale: --log / --scale log, or --scale auto on a metric whose values
    span two decades or more (the loss around a minimum: linear levels leave the basin one empty ring)."""
    if a.log or a.scale == "log":
        return True
    if a.scale == "linear" or kind not in AUTO_SCALED:
        return False
    return figures.spans_decades([x.metric(a.metric) for x in surfaces], a.vmin, a.vmax)


def draw(surfaces: list[Surface], kind: str, a: PlotOptions, out_dir: str) -> str:
    s = surfaces[0]
    stem = os.path.splitext(os.path.basename(s.path))[0]
    a = dataclasses.replace(a, log=use_log(surfaces, kind, a))
    if kind == "1d":
        name = f"{stem}_1d" if len(surfaces) == 1 else "overlay_1d"
        return figures.save(figures.plot_1d(surfaces, a.log), os.path.join(out_dir, f"{name}.{a.format}"), a.dpi)
    if kind == "eig_ratio":
        return figures.save(figures.plot_eig_ratio(s), os.path.join(out_dir, f"{stem}_eig_ratio.{a.format}"), a.dpi)
    if kind == "uncertainty":
        return figures.save(uncertainty.plot_uncertainty(s, a.metric),
                            os.path.join(out_dir, f"{stem}_{a.metric}_uncertainty.{a.format}"), a.dpi)
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
            "surface3d": figures.plot_surface3d, "trajectory": figures.plot_trajectory,
            "scattered": scattered.plot_scattered}[kind]
    return figures.save(plot(s, a.metric, levels, a.log), os.path.join(out_dir, f"{stem}_{a.metric}_{kind}.{a.format}"),
                        a.dpi)


def _out_dir(a: PlotOptions) -> str:
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


def draw_hessian_file(path: str, out_dir: str, a: PlotOptions) -> list[str]:
    """A Hessian file is drawn by plotting.hessian (imported only when one is given)."""
    try:
        from plotting import hessian
    except ImportError as exc:
        raise PlotError(f"{path} is a Hessian file and this landscape-plot cannot draw those ({exc}); "
                        f"update landscape-mpi") from None
    return hessian.draw_hessian(path, out_dir, a.format, a.dpi)


def main(argv: list[str] | None = None) -> int:
    try:
        a = from_args(PlotOptions, build_parser().parse_args(argv))
        kinds_of_files = {p: file_kind(p) for p in a.files}
        hessian_files = [p for p, k in kinds_of_files.items() if k == "hessian"]
        path_files = [p for p, k in kinds_of_files.items() if k == "path"]
        surface_files = [p for p in a.files if p not in hessian_files and p not in path_files]
        out_dir = _out_dir(a)
        for path in hessian_files:
            for made in draw_hessian_file(path, out_dir, a):
                _print(made)
        plane = "plane_path" in a.kind  # path files drawn on a surface through their models
        path_kinds = [k for k in a.kind if k in PATH_KINDS and k != "plane_path"]
        if path_files and (path_kinds or not plane):  # plotting.paths: values along t, barriers
            for made in paths.draw_path_files(path_files, path_kinds, out_dir, a.metric, a.format, a.dpi):
                _print(made)
        if plane:
            planes = [read_surface(p, metrics=(a.metric,)) for p in surface_files]
            for made in paths.draw_plane_paths(planes, path_files, a, out_dir, use_log(planes, "contour", a)):
                _print(made)
        surface_kinds = [k for k in a.kind if k not in PATH_KINDS]
        if not surface_files or (plane and not surface_kinds):
            return 0
        surfaces = [read_surface(p, metrics=()) for p in surface_files]  # header and done mask only
        if len({s.ndim for s in surfaces}) > 1:
            raise PlotError("the files mix 1D, 2D and 3D grids; give files of one kind")
        kinds = surface_kinds or default_kinds(surfaces)
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
