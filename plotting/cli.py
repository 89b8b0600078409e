"""`landscape-plot FILE.h5 [FILE2.h5 ...] [--kind KIND] [--metric train_loss] [--out DIR] [--format png]`
(also `python -m plotting`). With no --kind, draws every figure that fits the file(s)."""

from __future__ import annotations

import argparse
import os
import sys

from plotting import export, figures
from plotting.reader import PlotError, Surface, read_surface

FIGURE_KINDS = ("1d", "contour", "contourf", "heatmap", "surface3d", "compare", "trajectory", "eig_ratio")
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
    p.add_argument("--metric", default="train_loss", help="train_loss (default), test_loss, train_acc, test_acc, ...")
    p.add_argument("--out", help="output folder (default: figures/ beside the first file)")
    p.add_argument("--format", default="png", choices=("png", "pdf", "svg"))
    p.add_argument("--dpi", type=int, default=200)
    p.add_argument("--log", action="store_true", help="log scale: log-spaced levels, log10 heights, 1D log loss axis")
    p.add_argument("--vmin", type=float, help="lowest level / color (default: data minimum)")
    p.add_argument("--vmax", type=float, help="highest level / color (default: data maximum)")
    p.add_argument("--levels", type=int, default=30, help="number of contour levels (default 30)")
    p.add_argument("--zmax", type=float, help="clip heights above this in .vtp/.html exports")
    p.add_argument("--upsample", type=int, default=1, help="smooth .vtp export: K times finer grid (scipy)")
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
    if "eig_ratio" in s.values:
        kinds.append("eig_ratio")
    return kinds


def draw(surfaces: list[Surface], kind: str, a: argparse.Namespace, out_dir: str) -> str:
    s = surfaces[0]
    stem = os.path.splitext(os.path.basename(s.path))[0]
    if kind == "1d":
        name = f"{stem}_1d" if len(surfaces) == 1 else "overlay_1d"
        return figures.save(figures.plot_1d(surfaces, a.log), os.path.join(out_dir, f"{name}.{a.format}"), a.dpi)
    if kind == "eig_ratio":
        return figures.save(figures.plot_eig_ratio(s), os.path.join(out_dir, f"{stem}_eig_ratio.{a.format}"), a.dpi)
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


def main(argv: list[str] | None = None) -> int:
    try:
        a = build_parser().parse_args(argv)
        surfaces = [read_surface(p) for p in a.files]
        if len({s.ndim for s in surfaces}) > 1:
            raise PlotError("the files mix 1D, 2D and 3D grids; give files of one kind")
        kinds = a.kind or default_kinds(surfaces)
        if not kinds:
            raise PlotError("nothing to draw for these files; choose --kind")
        out_dir = a.out or os.path.join(os.path.dirname(os.path.abspath(a.files[0])), "figures")
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as exc:
            raise PlotError(f"--out {out_dir}: cannot create it ({exc})") from None
        for s in surfaces:
            if s.n_done == 0:
                raise PlotError(f"{s.path}: no point computed yet; try again once the job has written some")
        for kind in kinds:
            path = draw(surfaces, kind, a, out_dir)
            try:
                print(path, flush=True)
            except BrokenPipeError:  # `landscape-plot ... | head`: keep drawing, stop printing
                sys.stdout = open(os.devnull, "w")
        return 0
    except PlotError as exc:
        print(f"landscape-plot: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
