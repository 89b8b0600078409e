"""`landscape-mpi info FILE [--json]`: a surface file's summary (landscape_mpi/numbers/summary.py), printed.

Imports neither torch nor MPI: it reads files only.
"""

from __future__ import annotations

import argparse
import json

from landscape_mpi.config.errors import EXIT_COMPLETE
from landscape_mpi.config.info import InfoOptions
from landscape_mpi.config.options import add_options, from_args


def add_parser(sub) -> None:
    """Register `info`; its options are the fields of `InfoOptions` (landscape_mpi/config/info.py)."""
    p = sub.add_parser("info", help="summarize a surface file: config, points done, value ranges")
    add_options(p, InfoOptions)
    p.set_defaults(func=cmd_info)


def cmd_info(a: argparse.Namespace) -> int:
    from landscape_mpi.files.reader import file_kind
    from landscape_mpi.numbers.summary import describe

    o = from_args(InfoOptions, a)
    if file_kind(o.file) == "path":
        return path_info(o)
    info = describe(o.file)
    if o.json:
        print(json.dumps(info, indent=2))
        return EXIT_COMPLETE
    for line in summary_lines(info):
        print(line)
    return EXIT_COMPLETE


def summary_lines(info: dict) -> list[str]:
    """The text form of `describe`'s dict."""
    c = info["config"]
    axes = "  ".join(f"{n}={c[n]}" for n in ("x", "y", "z") if c.get(n))
    lines = [f"{info['file']}  (schema {info['schema_version']}, created {info['created']})",
             f"  model      {c['model']}  checkpoint {info['checkpoint']}",
             f"  data       {c['dataset']}  splits {','.join(c['splits'])}  samples {c['samples'] or 'all'}  "
             + (f"task {c['task']}" if c.get("task") else f"loss {c['loss']}"),
             f"  directions norm={c['norm']} ignore={c['ignore']} space={c['dir_space']} seed={c['seed']}"
             + (f" x-target={c['x_target']}" if c.get("x_target") else "") + (" same-dir" if c.get("same_dir") else ""),
             f"  grid       {axes}  ({'x'.join(map(str, info['shape']))})",
             f"  progress   {info['done']}/{info['total']} points done" + ("  (complete)" if info["complete"] else "")]
    for name, r in info["metrics"].items():
        extra = f"  ({r['nonfinite']} NaN/inf)" if r["nonfinite"] else ""
        if r["min"] is None:
            lines.append(f"  {name:<11}no finite values yet{extra}")
        else:
            lines.append(f"  {name + ' ':<11}{r['min']:.6g} .. {r['max']:.6g}{extra}")
    if info.get("adaptive"):
        from landscape_mpi.numbers.refinement import adaptive_lines

        lines += adaptive_lines(info["adaptive"])
    if info.get("estimates"):
        from landscape_mpi.numbers.estimates import estimate_lines

        lines += estimate_lines(info["estimates"])
    sharp = info.get("sharpness") or {}
    if "unavailable" not in sharp:
        from landscape_mpi.numbers.sharpness import format_sharpness

        for metric, numbers in sharp.items():
            lines.append(f"  sharpness of {metric}:")
            lines += [f"    {line}" for line in format_sharpness(numbers)]
    return lines


def path_info(o: InfoOptions) -> int:
    """A path file: its models, curves and progress, and the barriers of every curve (numbers/barriers.py)."""
    from dataclasses import asdict

    from landscape_mpi.files.path_reader import read_path
    from landscape_mpi.numbers.barriers import path_barriers

    pf = read_path(o.file)
    barriers = path_barriers(pf, partial=True)
    if o.json:
        print(json.dumps({"file": pf.path, "kind": pf.kind, "checkpoints": pf.checkpoints, "curves": pf.curves,
                          "done": pf.n_done, "total": int(pf.done.size), "t": pf.t.tolist(),
                          "config": pf.config, "path_config": json.loads(pf.attrs.get("path_config", "{}")),
                          "barriers": [asdict(b) for b in barriers]}, indent=2))
        return EXIT_COMPLETE
    c = pf.config
    print(f"{pf.path}  (path file, {pf.kind})")
    print(f"  model      {c['model']}  data {c['dataset']}  splits {','.join(c['splits'])}  bn {c['bn']}  "
          f"space {c['dir_space']}")
    for i, name in enumerate(pf.checkpoints):
        print(f"  model {i:<4} {name}")
    print(f"  grid       {len(pf.curves)} curve(s) x {len(pf.t)} values of t  "
          f"progress {pf.n_done}/{pf.done.size}" + ("  (complete)" if pf.complete else ""))
    w = max([14] + [len(b.curve) + 1 for b in barriers])  # whole names: a layers file's blocks differ at the end
    print(f"  {'curve':<{w}}{'metric':<12}{'on':<9}{'barrier':>11}{'at t':>7}{'above ends':>12}"
          f"{'max at t':>9}{'missing':>8}")
    for b in barriers:
        print(f"  {b.curve:<{w}}{b.metric:<12}{b.on:<9}{b.interpolation:>11.4g}{b.interpolation_t:>7.3f}"
              f"{b.above_max:>12.4g}{b.max_t:>9.3f}{b.n_missing:>8d}")
    return EXIT_COMPLETE
