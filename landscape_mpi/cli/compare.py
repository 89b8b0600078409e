"""`landscape-mpi compare A.h5 B.h5 ... [--metric train_loss] [--radius R] [--levels 0.1,0.5,1] [--json]`:
one table of sharpness numbers (landscape_mpi/numbers/sharpness.py), one row per surface file. Column names
say what each number is (docs/analyses.md#what-the-names-promise): `max-rise(r=R)` is the grid max-rise (a sampled
lower bound of eps-sharpness), `med clip ratio` the median of min(|eig_min/eig_max|, 1) over the map.

Imports neither torch nor MPI: it reads files only.
"""

from __future__ import annotations

import argparse
import json

from landscape_mpi.config.compare import CompareOptions, format_levels
from landscape_mpi.config.errors import EXIT_COMPLETE
from landscape_mpi.config.options import add_options, from_args
from landscape_mpi.numbers import sharpness as sh


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
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
                     for line in [head, *body])


def cmd_compare(a: argparse.Namespace) -> int:
    o = from_args(CompareOptions, a)
    radius = o.radius if o.radius is not None else sh.radius_for(o.files)
    rows = [sh.sharpness(path, o.metric, radius, o.levels) for path in o.files]
    if o.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"metric {o.metric}, grid max-rise radius {radius:g} (sampled lower bound of eps-sharpness), "
              f"basin levels = center loss + "
              f"{{{format_levels(o.levels)}}}; partial files: over their done points")
        print(table(rows))
    return EXIT_COMPLETE


def add_parser(sub) -> None:
    """Register `compare` on the CLI's subparsers (called from landscape_mpi/cli/__init__.py); its options are
    the fields of `CompareOptions` (landscape_mpi/config/compare.py)."""
    s = sub.add_parser("compare", help="sharpness numbers of several surface files, one row per file")
    add_options(s, CompareOptions)
    s.set_defaults(func=cmd_compare)
