"""The findings report: ``docs/findings.md`` and its figures, generated from the experiments' HDF5 files only.

Every number in the report is read from a surface file (`surface_data` reads it through the files layer,
`measures` turns arrays into numbers); the experiments' ``manifest.json`` only says which file plays which role.
Formatting is deterministic (fixed significant digits, sorted order, no dates), so two runs on the same files give
the same text. Each claim gets a verdict from stated thresholds (`verdicts`): reproduced, not reproduced, or
inconclusive at this scale; `figures` draws the figures. This module assembles the markdown.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from landscape_mpi.analysis.sharpness import roughness
from landscape_mpi.config.errors import UserError
from landscape_mpi.experiments import figures as draw
from landscape_mpi.experiments import measures
from landscape_mpi.experiments.definitions import NAMES
from landscape_mpi.experiments.surface_data import SurfaceData, read_surface
from landscape_mpi.experiments.verdicts import (EXPLORATORY, MEASURES_2D, RADIUS_FRACTION, RANDOM_WALK_TRIALS,
                                                batch_verdicts, eig_verdict, fmt, skip_verdict, trajectory_verdict,
                                                untrained, width_verdict)


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in r) + " |" for r in rows]
    return out


def rough(values: np.ndarray) -> float:
    """`sharpness.roughness`, NaN where it is not computable (the report's tables and verdicts use NaN)."""
    r = roughness(values)
    return float("nan") if r is None else r


class Section:
    """One experiment's part of the report: reads its manifest and files, draws figures, writes markdown."""

    def __init__(self, out_dir: str, name: str, figures: str, rel_figures: str) -> None:
        self.name = name
        self.dir = os.path.join(out_dir, name)
        with open(os.path.join(self.dir, "manifest.json")) as f:
            self.manifest = json.load(f)
        self.figures, self.rel_figures = figures, rel_figures
        self.lines: list[str] = []
        self.notes: list[str] = []
        self.runs = {r["name"]: r for r in self.manifest["runs"]}

    def steps(self, kind: str) -> list[tuple[dict, SurfaceData | None]]:
        """(step, data) for every step of this kind; data None (and a note why) when its file is missing."""
        out = []
        for s in self.manifest["surfaces"]:
            if s["role"].get("kind") != kind:
                continue
            path = os.path.join(self.dir, f"{s['name']}.h5")
            if os.path.isfile(path):
                d = read_surface(path)
                done, total = int(d.done.sum()), int(d.done.size)
                if done < total:  # numbers over the points done so far: say so
                    self.notes.append(f"`{s['name']}` partial: {done} of {total} points; its numbers and figure use "
                                      f"those. Run `landscape-mpi experiments run {self.name}` to complete it.")
                out.append((s, d))
                continue
            self.notes.append(f"`{s['name']}` missing: run `landscape-mpi experiments run {self.name}`.")
            out.append((s, None))
        return out

    def figure(self, fig, stem: str, alt: str) -> str:
        path = os.path.join(self.figures, f"{stem}.png")
        fig.savefig(path, dpi=80, metadata={"Software": None})
        import matplotlib.pyplot as plt

        plt.close(fig)
        return f"![{alt}]({self.rel_figures}/{stem}.png)"

    def verdict(self, claim: str, verdict: str, reason: str) -> None:
        self.lines.append(f"- **{claim}: {verdict}.** {reason}")


ROUGHNESS_NOTE = ("Two measures of chaos, each with its own verdict: roughness (mean abs second difference divided by "
                  "the loss range on the grid, so a loss that explodes at the grid's edge makes it small) and the "
                  "non-convex fraction (share of interior points where the surface curves down in some direction).")
MAX_RISE_NOTE = ("grid max-rise: the largest L - L(center) among the grid points within {f} x the grid's half-width "
                 "of the center, a sampled lower bound of eps-sharpness (Keskar et al. 2017), not its maximisation "
                 "(docs/analyses.md#what-the-names-promise).")
EIG_RATIO_NOTE = ("eig ratio: per map, the median over its computed points of abs(eig_min/eig_max) clipped to [0, 1] "
                  "(it replaced the unclipped mean, which one point with eig_max near 0 can dominate).")
SPLIT_NOTE = ("Within each eigenvalue map, the clipped ratio at the interior points where the map's own train-loss "
              "surface is locally non-convex (its 2x2 finite-difference Hessian has a negative eigenvalue) against "
              "the points where it is locally convex. Rank-biserial r = P(non-convex ratio > convex ratio) - "
              "P(<) over all pairs (2 U / (n1 n2) - 1, U of Mann-Whitney): +1 if every non-convex point has the "
              "larger ratio, as the paper's relation says; 0 no relation; n/a if a group is empty. No p-value: "
              "neighbouring grid points are not independent samples.")


# ------------------------------------------------------------------------------------------- sections
def skip_section(s: Section) -> None:
    loss = s.steps("loss2d")
    eig = {(st["role"]["depth"], st["role"]["shortcut"]): d for st, d in s.steps("eig2d")}
    rows, rough_of, nonconvex, ratio, split_rows = [], {}, {}, {}, []
    for st, d in sorted(loss, key=lambda p: (p[0]["role"]["depth"], not p[0]["role"]["shortcut"])):
        key = (st["role"]["depth"], st["role"]["shortcut"])
        if d is None:
            continue
        v = d.values["train_loss"]
        x, y = d.coords
        rough_of[key] = rough(v)
        nonconvex[key] = measures.nonconvex_fraction(v, x, y)
        e = eig.get(key)
        has_eig = e is not None and "eig_min" in e.values and "eig_max" in e.values
        ratio[key] = measures.eig_ratio_median(e.values["eig_min"], e.values["eig_max"]) if has_eig else float("nan")
        rows.append([str(key[0]), "yes" if key[1] else "no", d.at_center("train_loss"), 1 - d.at_center("test_acc"),
                     float(np.nanmax(v)), rough_of[key], nonconvex[key],
                     measures.grid_max_rise(v, d.coords, RADIUS_FRACTION * float(np.max(np.abs(x)))), ratio[key]])
        if has_eig and "train_loss" in e.values:
            sp = measures.convexity_split(e.values["train_loss"], *e.coords, e.values["eig_min"], e.values["eig_max"])
            split_rows.append(rows[-1][:2] + [sp.nonconvex, sp.convex, sp.median_nonconvex, sp.median_convex,
                                              sp.rank_biserial])
    panels = [(f"depth {st['role']['depth']}, {'short' if st['role']['shortcut'] else 'no short'}", d)
              for st, d in sorted(loss, key=lambda p: (not p[0]["role"]["shortcut"], p[0]["role"]["depth"]))]
    fig = draw.contours(s, panels, "skip_surfaces", "train loss surfaces with and without shortcuts")
    if fig:
        s.lines += ["Train loss, filter-normalized random directions (shared log-spaced contour levels):", "", fig, ""]
    eig_panels = [(t, eig.get((st["role"]["depth"], st["role"]["shortcut"]))) for t, (st, _) in
                  zip([p[0] for p in panels], sorted(loss, key=lambda p: (not p[0]["role"]["shortcut"], p[0]["role"]["depth"])))]
    eig_fig = draw.eig_maps(s, eig_panels)
    if eig_fig:
        s.lines += ["|lambda_min / lambda_max| of the Hessian (0: locally convex-looking; 1 clipped):", "", eig_fig, ""]
    s.lines += table(["depth", "shortcuts", "train loss at center", "test error", "largest train loss on the grid",
                      "roughness", "non-convex fraction", "grid max-rise", "median clipped abs(eig_min/eig_max)"],
                     rows) + [""]
    s.lines += [ROUGHNESS_NOTE, "", MAX_RISE_NOTE.format(f=RADIUS_FRACTION), "", EIG_RATIO_NOTE, ""]
    weak = untrained({f"depth {k[0]} {'short' if k[1] else 'no short'}": row[2] for k, row in zip(rough_of, rows)})
    chaos = {"roughness": rough_of, "non-convex fraction": nonconvex}
    for measure in MEASURES_2D:
        skip_verdict(s, measure, chaos[measure], weak)
    for measure in MEASURES_2D:
        eig_verdict(s, measure, chaos[measure], ratio, weak)
    if split_rows:
        s.lines += ["", f"{EXPLORATORY}: {SPLIT_NOTE}", ""]
        s.lines += table(["depth", "shortcuts", "non-convex points", "convex points", "median ratio, non-convex",
                          "median ratio, convex", "rank-biserial r"], split_rows)


def width_section(s: Section) -> None:
    loss = sorted(s.steps("loss2d"), key=lambda p: p[0]["role"]["width"])
    rows, rough_of, nonconvex = [], {}, {}
    for st, d in loss:
        if d is None:
            continue
        v = d.values["train_loss"]
        w = st["role"]["width"]
        rough_of[w], nonconvex[w] = rough(v), measures.nonconvex_fraction(v, *d.coords)
        rows.append([f"x{w}", str(st["role"]["depth"]), d.at_center("train_loss"), 1 - d.at_center("test_acc"),
                     float(np.nanmax(v)), rough_of[w], nonconvex[w]])
    fig = draw.contours(s, [(f"width x{st['role']['width']}, depth {st['role']['depth']}, no short", d)
                               for st, d in loss], "width_surfaces", "narrow vs wide no-shortcut ResNet")
    if fig:
        s.lines += ["Train loss, filter-normalized random directions (shared contour levels):", "", fig, ""]
    s.lines += table(["width", "depth", "train loss at center", "test error", "largest train loss on the grid",
                      "roughness", "non-convex fraction"], rows)
    s.lines += ["", ROUGHNESS_NOTE, ""]
    weak = untrained({f"width x{row[0][1:]}": row[2] for row in rows})
    chaos = {"roughness": rough_of, "non-convex fraction": nonconvex}
    for measure in MEASURES_2D:
        width_verdict(s, measure, chaos[measure], weak)


def batch_section(s: Section) -> None:
    steps = s.steps("loss1d")
    data = {(st["role"]["wd"], st["role"]["large"], st["role"]["norm"]): (st, d) for st, d in steps}
    wds = sorted({k[0] for k in data})
    rows, rise, err = [], {}, {}
    for (wd, large, norm), (st, d) in sorted(data.items()):
        if d is None:
            continue
        x = d.coords[0]
        radius = RADIUS_FRACTION * float(np.max(np.abs(x)))
        v = d.values["train_loss"]
        rise[(wd, large, norm)] = measures.grid_max_rise(v, d.coords, radius)
        err[(wd, large)] = 1 - d.at_center("test_acc")
        rows.append([str(st["role"]["batch"]), fmt(wd), norm, d.at_center("train_loss"), err[(wd, large)],
                     rise[(wd, large, norm)], measures.curvature_1d(v, x, radius), d.weight_norm])
    weak = untrained({f"batch {st['role']['batch']} wd {fmt(k[0])}": d.at_center("train_loss")
                      for k, (st, d) in data.items() if d is not None and k[2] == "filter"})
    fig = draw.batch_lines(s, data, wds)
    if fig:
        s.lines += ["Train (solid) and test (dashed) loss along one random direction, with and without filter "
                    "normalization:", "", fig, ""]
    s.lines += table(["batch", "weight decay", "norm", "train loss at center", "test error", "grid max-rise",
                      "curvature", "weight norm"], rows)
    s.lines += ["", MAX_RISE_NOTE.format(f=RADIUS_FRACTION) + f" Curvature uses the same points (within "
                f"{RADIUS_FRACTION} x the half-width); weight norm is that of the conv/linear weights (from the "
                "filter-normalized direction).", ""]
    batch_verdicts(s, rise, err, wds, weak)


def trajectory_section(s: Section) -> None:
    steps = sorted(s.steps("pca2d"), key=lambda p: p[0]["role"]["wd"])
    rows, evs, walks = [], [], []
    for st, d in steps:
        if d is None or not d.trajectory:
            continue
        t = d.trajectory
        ev = t.get("explained_variance", [])
        e1 = ev[0] if len(ev) > 0 else float("nan")
        e2 = ev[1] if len(ev) > 1 else float("nan")
        res = np.asarray(t.get("residual", []), dtype=np.float64)
        x, y = np.asarray(t.get("x", []), dtype=np.float64), np.asarray(t.get("y", []), dtype=np.float64)
        # distance of each checkpoint from the final model: in-plane part and residual are orthogonal
        dist = np.sqrt(x**2 + y**2 + res**2) if res.size == x.size else np.empty(0)
        rel = float(np.max(res) / np.max(dist)) if dist.size and np.max(dist) > 0 else float("nan")
        step_norms = t.get("step_norms")  # the run's own step sizes (files written before they were stored: none)
        walk_mean, walk_q95 = measures.random_walk_explained(len(x), trials=RANDOM_WALK_TRIALS,
                                                             step_norms=step_norms)
        evs.append(e1 + e2)
        walks.append((walk_mean, walk_q95))
        rows.append([fmt(st["role"]["wd"]), e1, e2, e1 + e2, walk_mean, walk_q95, len(x),
                     float(np.max(res)) if res.size else float("nan"), rel, d.at_center("train_loss")])
    fig = draw.contours(s, [(f"SGD, wd {fmt(st['role']['wd'])}", d) for st, d in steps], "trajectory_paths",
                           "training paths on the PCA plane", path=True)
    if fig:
        s.lines += ["Train loss on the plane of the first two PCA components (weight units, not filter-normalized), "
                    "the projected path in red:", "", fig, ""]
    s.lines += table(["weight decay", "PC1 explained", "PC2 explained", "PC1+PC2", "random walk: mean",
                      "random walk: 95th pct", "checkpoints", "max residual off the plane",
                      "max residual / max distance to final", "train loss at center"], rows) + [""]
    s.lines += [f"Random walk: PC1+PC2 of the same centered PCA over {RANDOM_WALK_TRIALS} seeded random walks with "
                "as many points, each step in an isotropic random direction with the length of the run's own step "
                "between the same two checkpoints (so the walk follows the run's learning-rate schedule; a long "
                "walk of equal Gaussian steps gives 0.76, Antognini and Sohl-Dickstein 2018): a path is "
                "low-dimensional only if it explains more than such a walk does.", ""]
    trajectory_verdict(s, evs, walks)


SECTIONS = {"skip": skip_section, "batch": batch_section, "width": width_section, "trajectory": trajectory_section}
TITLES = {"skip": "Skip connections and depth", "batch": "Small vs large batch, weight decay, filter normalization",
          "width": "Width", "trajectory": "Training trajectories"}


def render(out_dir: str, figures: str, rel_figures: str) -> str:
    """The report's markdown; figures are written into `figures` (linked as `rel_figures`/NAME.png).

    Raises UserError if `out_dir` holds no experiment.
    """
    import matplotlib

    matplotlib.use("Agg")
    os.makedirs(figures, exist_ok=True)
    found = [n for n in NAMES if os.path.isfile(os.path.join(out_dir, n, "manifest.json"))]
    if not found:
        raise UserError(f"--out-dir {out_dir} holds no experiment: run landscape-mpi experiments run all first")
    lines = ["# Findings: the paper's claims, checked by experiment", "",
             "Generated by `landscape-mpi experiments report` from the experiments' HDF5 files alone; do not edit by "
             "hand. Claims: docs/method.md#the-papers-claims (Li et al. 2018). Definitions of the numbers: "
             "`landscape_mpi/experiments/measures.py`; thresholds of the verdicts: `landscape_mpi/experiments/verdicts.py`.",
             ""]
    summary = []
    for name in found:
        s = Section(out_dir, name, figures, rel_figures)
        SECTIONS[name](s)
        m = s.manifest
        lines += [f"## {TITLES[name]}", "", f"Claim: {m['claim']}", "",
                  f"Scale `{m['scale']}`; models: " + "; ".join(f"`{r['name']}` ({r['label']})" for r in m["runs"]) + ".",
                  "", *s.lines, ""]
        if s.notes:
            lines += ["Not computed, or not completely:", "", *[f"- {n}" for n in s.notes], ""]
        summary += [line for line in s.lines if line.startswith("- **")]
    lines[4:4] = ["## Verdicts", "", *summary, ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(out_dir: str, out: str, figures: str) -> str:
    """Write the report to `out` and its figures into `figures`; returns the markdown."""
    rel = os.path.relpath(figures, os.path.dirname(os.path.abspath(out)))
    text = render(out_dir, figures, rel)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    return text
