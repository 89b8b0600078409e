"""`landscape-mpi compare A.h5 B.h5 ... [--metric train_loss] [--radius R] [--levels 0.1,0.5,1] [--json]`:
one table of sharpness numbers (landscape_mpi/numbers/sharpness.py), one row per surface file. Column names
say what each number is (docs/analyses.md#what-the-names-promise): `max-rise(r=R)` is the grid max-rise (a sampled
lower bound of eps-sharpness), `med clip ratio` the median of min(|eig_min/eig_max|, 1) over the map.

Imports neither torch nor MPI: it reads files only.
"""

from __future__ import annotations

import argparse
import json

from landscape_mpi.numbers import sharpness as sh
from landscape_mpi.config.errors import EXIT_COMPLETE, UserError


def _levels(spec: str) -> list[float]:
    try:
        return [float(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--levels {spec}: expected comma-separated numbers, e.g. 0.1,0.5,1") from None


def table(rows: list[dict]) -> str:
    """A plain-text table of `sharpness` dicts (one line per file; '-' where a number is not available)."""
    def g(v) -> str:
        return "-" if v is None else f"{v:.4g}"

    axes = sorted({k for r in rows for k in r["curvature"]}, key=lambda a: "xyz".index(a) if a in "xyz" else 9)
    levels = [b["level"] for b in rows[0]["basin"]]
    head = (["file", "done", "min", "min at", "center", f"max-rise(r={rows[0]['max_rise']['radius']:g})"]
            + [f"curv {a}" for a in axes] + [f"basin+{lv:g}" for lv in levels] + ["rough", "barrier", "med clip ratio"])
    body = []
    for r in rows:
        m = r["minimum"]
        body.append([r["file"], f"{r['done']}/{r['total']}", g(m["value"]) if m else "-",
                     ",".join(f"{c:.3g}" for c in m["coords"]) if m else "-", g(r["center"]["value"]),
                     g(r["max_rise"]["value"])]
                    + [g(r["curvature"].get(a, {}).get("value")) for a in axes]
                    + [g(b["fraction"]) for b in r["basin"]]
                    + [g(r["roughness"]), g(r["barrier"]["value"]) if r["barrier"] else "-",
                       g(r["eig"]["median_clipped_ratio"]) if r["eig"] else "-"])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [head, *body])


def cmd_compare(a: argparse.Namespace) -> int:
    radius = a.radius if a.radius is not None else sh.radius_for(a.files)
    rows = [sh.sharpness(path, a.metric, radius, _levels(a.levels)) for path in a.files]
    if a.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"metric {a.metric}, grid max-rise radius {radius:g} (sampled lower bound of eps-sharpness), "
              f"basin levels = center loss + "
              f"{{{a.levels}}}; partial files: over their done points")
        print(table(rows))
    return EXIT_COMPLETE


def add_parser(sub) -> None:
    """Register `compare` on the CLI's subparsers (called from landscape_mpi/cli/__init__.py)."""
    s = sub.add_parser("compare", help="sharpness numbers of several surface files, one row per file")
    s.add_argument("files", nargs="+", help="surface files (.h5); partial files are measured over their done points")
    s.add_argument("--metric", default="train_loss", help="train_loss (default), test_loss, ...")
    s.add_argument("--radius", type=float, default=None,
                   help=f"grid max-rise radius (sampled lower bound of eps-sharpness) in grid coordinates (default "
                        f"{sh.DEFAULT_RADIUS:g}, or the largest grid step of the files if larger)")
    s.add_argument("--levels", default=",".join(f"{v:g}" for v in sh.DEFAULT_LEVELS),
                   help="basin levels: loss increases over the center's loss (default 0.1,0.5,1)")
    s.add_argument("--json", action="store_true", help="machine-readable output: a list of one dict per file")
    s.set_defaults(func=cmd_compare)
