"""The findings report: ``docs/findings.md`` and its figures, generated from the experiments' HDF5 files only.

Every number in the report is read from a surface file (`surface_data` reads it through the files layer,
`measures` turns arrays into numbers); the experiments' ``manifest.json`` only says which file plays which role
(condition, training seed, direction seed). A model's number is the mean over its direction seeds; a condition's
is shown as mean ± sd [min, max] over its training seeds with n, and a per-seed table beside it. Each claim gets a
verdict from the rules of `rules` (version printed in the report), applied by `verdicts`: reproduced, not
reproduced, or inconclusive at this scale; `figures` draws one representative seed, named in the caption.
Formatting is deterministic (fixed significant digits, sorted order, no dates), so two runs on the same files give
the same text.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from landscape_mpi.config.errors import UserError
from landscape_mpi.experiments import figures as draw
from landscape_mpi.experiments import measures, rules
from landscape_mpi.experiments.definitions import NAMES
from landscape_mpi.experiments.rules import MEASURES_2D, RADIUS_FRACTION, RANDOM_WALK_TRIALS, TRAIN_LOSS_TARGET, fmt
from landscape_mpi.experiments.surface_data import SurfaceData, read_hessian_numbers, read_surface
from landscape_mpi.experiments.verdicts import (
    EXPLORATORY,
    batch_verdicts,
    eig_verdict,
    skip_verdict,
    trajectory_verdict,
    width_verdict,
)
from landscape_mpi.numbers.sharpness import (
    grid_max_rise,
    median_clipped_ratio,
    quadratic_curvature,
    roughness,
    within_radius,
)


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in r) + " |" for r in rows]
    return out


def nan_if_none(v: float | None) -> float:
    """A number of landscape_mpi/numbers, NaN where it is not computable (the report's tables and verdicts use
    NaN); an infinite value (a diverged point) stays infinite."""
    return float("nan") if v is None else float(v)


def rough(values: np.ndarray) -> float:
    return nan_if_none(roughness(values))


def max_rise(values: np.ndarray, coords: list[np.ndarray], radius: float) -> float:
    """`sharpness.grid_max_rise` (info's and compare's number, with the same rule for a diverged point)."""
    return nan_if_none(grid_max_rise(values, coords, radius).value)


def curvature_within(values: np.ndarray, x: np.ndarray, radius: float) -> float:
    """`sharpness.quadratic_curvature` of a 1D line over its points within `radius` of the center."""
    keep = within_radius([x], radius)
    return nan_if_none(quadratic_curvature(x[keep] - x[int(np.argmin(np.abs(x)))], values[keep])["value"])


# ------------------------------------------------------------------------------------------- seeds
@dataclass(frozen=True)
class Spread:
    """A condition's numbers over its training seeds (each the mean over that model's direction seeds)."""

    mean: float
    sd: float
    """ddof 1; NaN for one seed."""
    lo: float
    hi: float
    n: int

    def cell(self) -> str:
        if self.n == 0:
            return "n/a"
        if self.n == 1:
            return fmt(self.mean)
        return f"{fmt(self.mean)} ± {fmt(self.sd)} [{fmt(self.lo)}, {fmt(self.hi)}]"


def spread(values: Sequence[float]) -> Spread:
    """Over the values that are not NaN (not computed); an infinite one (a diverged point) makes the mean and the
    largest value infinite and the sd undefined."""
    v = np.asarray([x for x in values if x is not None and not np.isnan(x)], dtype=np.float64)
    nan = float("nan")
    if v.size == 0:
        return Spread(nan, nan, nan, nan, 0)
    with np.errstate(invalid="ignore"):  # inf - inf in the sd: NaN, printed n/a
        sd = float(np.std(v, ddof=1)) if v.size > 1 else nan
    return Spread(float(v.mean()), sd, float(v.min()), float(v.max()), int(v.size))


class Records:
    """Numbers per file: (condition, training seed, direction seed) -> {measure: value}."""

    def __init__(self) -> None:
        self.rows: list[tuple[object, int, int | None, dict[str, float]]] = []

    def add(self, cond: object, seed: int, dseed: int | None, values: dict[str, float]) -> None:
        self.rows.append((cond, seed, dseed, values))

    def conditions(self) -> list[object]:
        return sorted({c for c, _, _, _ in self.rows}, key=_order)

    def per_seed(self, measure: str) -> dict[object, dict[int, float]]:
        """condition -> training seed -> the mean of `measure` over the model's direction seeds (NaN, not
        computed, is left out, and a model without any value; an infinite value, a diverged point, is kept: the
        mean is infinite and the verdict rules leave that seed out, saying so in n)."""
        acc: dict[object, dict[int, list[float]]] = {}
        for c, t, _, v in self.rows:
            x = v.get(measure)
            if x is not None and not np.isnan(x):
                acc.setdefault(c, {}).setdefault(t, []).append(float(x))
        return {c: {t: float(np.mean(xs)) for t, xs in sorted(seeds.items())} for c, seeds in acc.items()}

    def direction_seeds(self, cond: object, seed: int) -> int:
        return len({d for c, t, d, _ in self.rows if c == cond and t == seed})

    def seeds(self, cond: object) -> list[int]:
        return sorted({t for c, t, _, _ in self.rows if c == cond})


def _order(key: object) -> tuple:
    """Sort key for conditions holding None, bools and numbers."""
    items = key if isinstance(key, tuple) else (key,)
    return tuple((0, "") if x is None else (1, x) if isinstance(x, str) else (2, float(x)) for x in items)


def condition_means(per_seed: dict[object, dict[int, float]]) -> dict[object, float]:
    return {c: float(np.mean(list(v.values()))) for c, v in per_seed.items() if v}


def unit_spearman(x: dict[object, dict[int, float]], y: dict[object, dict[int, float]]) -> float:
    """Spearman rho over models (condition x training seed) with both numbers: descriptive, no p-value."""
    pairs = [(x[c][t], y[c][t]) for c in x if c in y for t in x[c] if t in y[c]]
    return measures.spearman([p[0] for p in pairs], [p[1] for p in pairs])


def summary_rows(rec: Records, labels: Callable[[object], list[str]], columns: Sequence[str]) -> list[list[str]]:
    """One row per condition: its labels, n (training seeds), then mean ± sd [min, max] of each measure (with its
    own n where fewer seeds have it)."""
    per = {m: rec.per_seed(m) for m in columns}
    rows = []
    for c in rec.conditions():
        n = len(rec.seeds(c))
        cells = []
        for m in columns:
            sp = spread(per[m].get(c, {}).values())
            cells.append(sp.cell() + (f" (n = {sp.n})" if 0 < sp.n < n else ""))
        rows.append(labels(c) + [str(n)] + cells)
    return rows


def seed_rows(rec: Records, labels: Callable[[object], list[str]], columns: Sequence[str],
              target: bool = True) -> list[list[object]]:
    """One row per model (condition x training seed): labels, seed, then (with `target`) its direction seeds and
    the train-loss target reached or not, then each measure's mean over the direction seeds."""
    per = {m: rec.per_seed(m) for m in columns}
    loss = rec.per_seed("train_loss")
    rows = []
    for c in rec.conditions():
        for t in rec.seeds(c):
            row: list[object] = labels(c) + [str(t)]
            if target:
                v = loss.get(c, {}).get(t, float("nan"))
                row += [str(rec.direction_seeds(c, t)),
                        "n/a" if not np.isfinite(v) else "yes" if v <= TRAIN_LOSS_TARGET else "no"]
            rows.append(row + [per[m].get(c, {}).get(t, float("nan")) for m in columns])
    return rows


# ------------------------------------------------------------------------------------------- section
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
        roles = [s["role"] for s in self.manifest["surfaces"]]
        self.train_seeds = _unique(r.get("train_seed") for r in roles)
        self.direction_seeds = _unique(r.get("direction_seed") for r in roles)

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

    def hessians(self) -> list[tuple[dict, tuple[dict[str, float], dict] | None]]:
        """(step, (numbers, stored settings)) for every Hessian step of the manifest; None (and a note why) when its
        file is missing (a Hessian file is written whole: it exists only complete)."""
        out = []
        for h in self.manifest.get("hessians", []):
            path = os.path.join(self.dir, f"{h['name']}.h5")
            if os.path.isfile(path):
                out.append((h, read_hessian_numbers(path)))
                continue
            self.notes.append(f"`{h['name']}` missing: run `landscape-mpi experiments run {self.name}`.")
            out.append((h, None))
        return out

    def representative(self, steps: list[tuple[dict, SurfaceData | None]]) -> tuple[int | None, int | None]:
        """The (training seed, direction seed) the figures draw: the first of each (in the scale's order) whose
        files exist."""
        have = {(st["role"].get("train_seed"), st["role"].get("direction_seed")) for st, d in steps if d is not None}
        for t in self.train_seeds + [None]:
            for d in self.direction_seeds + [None]:
                if (t, d) in have:
                    return t, d
        return (None, None)

    def figure(self, fig, stem: str, alt: str) -> str:
        path = os.path.join(self.figures, f"{stem}.png")
        fig.savefig(path, dpi=80, metadata={"Software": None})
        import matplotlib.pyplot as plt

        plt.close(fig)
        return f"![{alt}]({self.rel_figures}/{stem}.png)"

    def verdict(self, claim: str, verdict: str, reason: str) -> None:
        self.lines.append(f"- **{claim}: {verdict}.** {reason}")


def _unique(values) -> list:
    out = []
    for v in values:
        if v is not None and v not in out:
            out.append(v)
    return out


def _seed_caption(t: int | None, d: int | None) -> str:
    parts = ([f"training seed {t}"] if t is not None else []) + ([f"direction seed {d}"] if d is not None else [])
    return "one representative model: " + ", ".join(parts) if parts else "no file"


SPREAD_NOTE = ("Each cell: mean ± sd [min, max] over the condition's n training seeds, each seed's number being the "
               "mean over its direction seeds; the per-seed table below gives those. Train loss and test error are "
               "at the center (the trained model) on the surface's evaluation subset; \"target\": train loss <= "
               f"{TRAIN_LOSS_TARGET:g} (rules.TRAIN_LOSS_TARGET).")
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
#: Commit that added the exploratory within-map split.
SPLIT_COMMIT = "71fb083"


def _center(d: SurfaceData) -> dict[str, float]:
    return {"train_loss": d.at_center("train_loss"), "test_err": 1 - d.at_center("test_acc")}


# ------------------------------------------------------------------------------------------- sections
def skip_section(s: Section) -> None:
    loss = s.steps("loss2d")
    eig = s.steps("eig2d")
    key = lambda st: (st["role"]["depth"], st["role"]["shortcut"])  # noqa: E731
    seeds = lambda st: (st["role"].get("train_seed", 0), st["role"].get("direction_seed"))  # noqa: E731
    rec, split = Records(), Records()
    for st, d in loss:
        if d is None:
            continue
        v = d.values["train_loss"]
        x, y = d.coords
        rec.add(key(st), *seeds(st), {**_center(d), "max_loss": float(np.nanmax(v)), "roughness": rough(v),
                                      "non-convex fraction": measures.nonconvex_fraction(v, x, y),
                                      "max_rise": max_rise(v, d.coords, RADIUS_FRACTION * float(np.max(np.abs(x))))})
    for st, e in eig:
        if e is None or "eig_min" not in e.values or "eig_max" not in e.values:
            continue
        ratio, _ = median_clipped_ratio(e.values["eig_min"], e.values["eig_max"])
        rec.add(key(st), *seeds(st), {"ratio": nan_if_none(ratio)})
        if "train_loss" in e.values:
            sp = measures.convexity_split(e.values["train_loss"], *e.coords, e.values["eig_min"], e.values["eig_max"])
            split.add(key(st), *seeds(st), {"nonconvex": sp.nonconvex, "convex": sp.convex,
                                            "median_nonconvex": sp.median_nonconvex, "median_convex": sp.median_convex,
                                            "r": sp.rank_biserial})
    t, dseed = s.representative(loss)
    order = lambda p: (not p[0]["role"]["shortcut"], p[0]["role"]["depth"])  # noqa: E731
    chosen = sorted([p for p in loss if seeds(p[0]) == (t, dseed)], key=order)
    panels = [(f"depth {st['role']['depth']}, {'short' if st['role']['shortcut'] else 'no short'}", d)
              for st, d in chosen]
    fig = draw.contours(s, panels, "skip_surfaces", "train loss surfaces with and without shortcuts")
    if fig:
        s.lines += [f"Train loss, filter-normalized random directions (shared log-spaced contour levels); "
                    f"{_seed_caption(t, dseed)}:", "", fig, ""]
    te, de = s.representative(eig)
    eig_by = {key(st): e for st, e in eig if seeds(st) == (te, de)}
    eig_fig = draw.eig_maps(s, [(title, eig_by.get(key(st))) for (title, _), (st, _) in zip(panels, chosen)])
    if eig_fig:
        s.lines += [f"|lambda_min / lambda_max| of the Hessian (0: locally convex-looking; 1 clipped); "
                    f"{_seed_caption(te, de)}:", "", eig_fig, ""]
    labels = lambda c: [str(c[0]), "yes" if c[1] else "no"]  # noqa: E731
    cols = ["train_loss", "test_err", "max_loss", "roughness", "non-convex fraction", "max_rise", "ratio"]
    names = ["train loss", "test error", "largest train loss on the grid", "roughness", "non-convex fraction",
             "grid max-rise", "median clipped abs(eig_min/eig_max)"]
    s.lines += table(["depth", "shortcuts", "n", *names], summary_rows(rec, labels, cols)) + [""]
    s.lines += [SPREAD_NOTE, "", "Per training seed (means over direction seeds):", ""]
    s.lines += table(["depth", "shortcuts", "training seed", "direction seeds", "target", *names],
                     seed_rows(rec, labels, cols)) + [""]
    s.lines += [ROUGHNESS_NOTE, "", MAX_RISE_NOTE.format(f=RADIUS_FRACTION), "", EIG_RATIO_NOTE, ""]
    train_loss = rec.per_seed("train_loss")
    ratio = rec.per_seed("ratio")
    for measure in MEASURES_2D:
        skip_verdict(s, measure, rec.per_seed(measure), train_loss)
    for measure in MEASURES_2D:
        chaos = rec.per_seed(measure)
        both = {c: len(set(chaos.get(c, {})) & set(ratio.get(c, {}))) for c in chaos}
        eig_verdict(s, measure, condition_means(chaos), condition_means(ratio), both, unit_spearman(chaos, ratio),
                    train_loss)
    if split.rows:
        s.lines += ["", f"{EXPLORATORY}, added in commit {SPLIT_COMMIT}: {SPLIT_NOTE}", ""]
        s.lines += table(["depth", "shortcuts", "n", "non-convex points", "convex points", "median ratio, non-convex",
                          "median ratio, convex", "rank-biserial r"],
                         summary_rows(split, labels, ["nonconvex", "convex", "median_nonconvex", "median_convex", "r"]))


def width_section(s: Section) -> None:
    loss = s.steps("loss2d")
    rec = Records()
    depth = {}
    for st, d in loss:
        if d is None:
            continue
        v = d.values["train_loss"]
        w = st["role"]["width"]
        depth[w] = st["role"]["depth"]
        rec.add(w, st["role"].get("train_seed", 0), st["role"].get("direction_seed"),
                {**_center(d), "max_loss": float(np.nanmax(v)), "roughness": rough(v),
                 "non-convex fraction": measures.nonconvex_fraction(v, *d.coords)})
    t, dseed = s.representative(loss)
    chosen = sorted([(st, d) for st, d in loss if (st["role"].get("train_seed"), st["role"].get("direction_seed"))
                     == (t, dseed)], key=lambda p: p[0]["role"]["width"])
    fig = draw.contours(s, [(f"width x{st['role']['width']}, depth {st['role']['depth']}, no short", d)
                            for st, d in chosen], "width_surfaces", "narrow vs wide no-shortcut ResNet")
    if fig:
        s.lines += ["Train loss, filter-normalized random directions (shared contour levels); "
                    f"{_seed_caption(t, dseed)}:",
                    "", fig, ""]
    labels = lambda w: [f"x{w}", str(depth.get(w, ""))]  # noqa: E731
    cols = ["train_loss", "test_err", "max_loss", "roughness", "non-convex fraction"]
    names = ["train loss", "test error", "largest train loss on the grid", "roughness", "non-convex fraction"]
    s.lines += table(["width", "depth", "n", *names], summary_rows(rec, labels, cols)) + [""]
    s.lines += [SPREAD_NOTE, "", "Per training seed (means over direction seeds):", ""]
    s.lines += table(["width", "depth", "training seed", "direction seeds", "target", *names],
                     seed_rows(rec, labels, cols)) + [""]
    s.lines += [ROUGHNESS_NOTE, ""]
    for measure in MEASURES_2D:
        width_verdict(s, measure, rec.per_seed(measure), rec.per_seed("train_loss"))


def _variant_text(s: Section, variant: str | None) -> str:
    """How a batch condition's nets were trained, from the manifest's run configs."""
    for st in s.manifest["surfaces"]:
        role = st["role"]
        if role.get("kind") == "loss1d" and role.get("variant") == variant:
            cfg = s.runs[st["run"]]["config"]
            what = f"{cfg['epochs']} epochs, lr {fmt(cfg['lr'])}"
            return f"{variant} ({what})" if variant else what
    return variant or ""


def batch_section(s: Section) -> None:
    lines1d = s.steps("loss1d")
    rec = Records()
    variants = _unique(st["role"].get("variant") for st, _ in lines1d)
    wds = sorted({st["role"]["wd"] for st, _ in lines1d})
    for st, d in lines1d:
        if d is None:
            continue
        r = st["role"]
        x = d.coords[0]
        radius = RADIUS_FRACTION * float(np.max(np.abs(x)))
        v = d.values["train_loss"]
        suffix = "" if r["norm"] == "filter" else "_none"
        values = {f"rise{suffix}": max_rise(v, d.coords, radius), f"curvature{suffix}": curvature_within(v, x, radius)}
        if r["norm"] == "filter":
            values.update({**_center(d), "weight_norm": d.weight_norm})
        rec.add((r.get("variant"), r["wd"], bool(r["large"])), r.get("train_seed", 0), r.get("direction_seed"), values)
    t, dseed = s.representative(lines1d)
    chosen = {(st["role"].get("variant"), st["role"]["wd"], st["role"]["norm"]): d for st, d in lines1d
              if (st["role"].get("train_seed"), st["role"].get("direction_seed")) == (t, dseed)}
    fig = draw.batch_lines(s, chosen, wds, variants)
    if fig:
        s.lines += ["Train (solid) and test (dashed) loss along one random direction, with and without filter "
                    f"normalization; {_seed_caption(t, dseed)}:", "", fig, ""]
    labels = lambda c: [("large" if c[2] else "small"), _variant_text(s, c[0]), fmt(c[1])]  # noqa: E731
    cols = ["train_loss", "test_err", "rise", "curvature", "rise_none", "curvature_none", "weight_norm"]
    names = ["train loss", "test error", "grid max-rise (filter)", "curvature (filter)", "grid max-rise (none)",
             "curvature (none)", "weight norm"]
    s.lines += table(["batch", "training", "weight decay", "n", *names], summary_rows(rec, labels, cols)) + [""]
    s.lines += [SPREAD_NOTE, "", "Per training seed (means over direction seeds):", ""]
    s.lines += table(["batch", "training", "weight decay", "training seed", "direction seeds", "target", *names],
                     seed_rows(rec, labels, cols)) + [""]
    s.lines += [MAX_RISE_NOTE.format(f=RADIUS_FRACTION) + f" Curvature uses the same points (within "
                f"{RADIUS_FRACTION} x the half-width); weight norm is that of the conv/linear weights (from the "
                "filter-normalized direction). The large-batch nets are trained three ways where the scale has them: "
                "epochs (as many epochs and the same learning rate as the small batch, the paper's setting), steps "
                "(as many optimizer steps: epochs x the batch ratio) and lr (the learning rate x the batch ratio, "
                "no warm-up).", ""]
    hessian_table(s, rec, labels)
    interpolation(s, rec, variants, wds)
    err = rec.per_seed("test_err")
    rise = rec.per_seed("rise")
    both = {c: len(set(rise.get(c, {})) & set(err.get(c, {}))) for c in rise}
    batch_verdicts(s, rise, rec.per_seed("rise_none"), condition_means(err), both, unit_spearman(rise, err),
                   rec.per_seed("train_loss"), [v for v in variants if v is not None], wds)


HESSIAN_NOTE = ("Descriptive (no verdict; the rules of version 2 judge the grid max-rise): the Hessian of the train "
                "loss at each minimiser (`landscape-mpi hessian`, BatchNorm in eval mode, on the 1D lines' evaluation "
                "subset of the probe seed), beside the grid sharpness. lambda_max: the largest eigenvalue (ARPACK, "
                "relative tolerance {tol:g}); trace: Hutchinson's estimate over {probes} Rademacher probes; average "
                "adaptive rise: the mean loss rise over {samples} random perturbations of each filter by {rho:g} x its "
                "norm, a lower bound of ASAM's worst case, not its maximisation "
                "(docs/analyses.md#what-the-names-promise). A model's number is the mean over its {n} probe seed(s) "
                "({seeds}); the cells give mean ± sd [min, max] over training seeds.")


def hessian_table(s: Section, lines: Records, labels: Callable[[object], list[str]]) -> None:
    """The Hessian numbers of each batch condition beside its grid max-rise, train loss and test error."""
    steps = s.hessians()
    if not steps:
        return
    rec = Records()
    rec.rows = [row for row in lines.rows if "rise" in row[3]]  # the filter-normalized lines: loss, error, rise
    settings = None
    for h, got in steps:
        if got is None:
            continue
        r = h["role"]
        rec.add((r.get("variant"), r["wd"], bool(r["large"])), r.get("train_seed", 0), r.get("probe_seed"), got[0])
        settings = settings or got[1]
    if settings is None:
        return
    probes = _unique(h["role"].get("probe_seed") for h, got in steps if got is not None)
    s.lines += [HESSIAN_NOTE.format(tol=settings["tol"], probes=settings["trace_probes"],
                                    samples=settings["adaptive_samples"], rho=settings["adaptive_rho"],
                                    n=len(probes), seeds=", ".join(map(str, probes))), ""]
    cols = ["train_loss", "test_err", "rise", "lambda_max", "trace", "adaptive_rise"]
    names = ["train loss", "test error", "grid max-rise (filter)", "Hessian lambda_max", "Hessian trace",
             "average adaptive rise"]
    s.lines += table(["batch", "training", "weight decay", "n", *names], summary_rows(rec, labels, cols)) + [""]
    s.lines += ["Per training seed (grid max-rise: mean over direction seeds; Hessian numbers: mean over probe seeds):",
                ""]
    s.lines += table(["batch", "training", "weight decay", "training seed", *names],
                     seed_rows(rec, labels, cols, target=False)) + [""]


def interpolation(s: Section, lines: Records, variants: list, wds: list[float]) -> None:
    """The paper's weight-decay test: the line from the small-batch (a = 0) to the large-batch (a = 1) minimiser,
    with the weight norms of both (descriptive: no verdict)."""
    steps = s.steps("interp1d")
    if not steps:
        return
    rec = Records()
    norms = lines.per_seed("weight_norm")
    for st, d in steps:
        if d is None:
            continue
        r = st["role"]
        a = d.coords[0]
        i0, i1 = int(np.argmin(np.abs(a))), int(np.argmin(np.abs(a - 1)))
        tl = d.values["train_loss"]
        inner = (a >= -1e-9) & (a <= 1 + 1e-9)
        t = r.get("train_seed", 0)
        values = {"a_min": float(a[0]), "a_max": float(a[-1]), "train0": float(tl[i0]), "train1": float(tl[i1]),
                  "barrier": float(np.nanmax(tl[inner]) - max(tl[i0], tl[i1])),
                  "norm_small": norms.get((None, r["wd"], False), {}).get(t, float("nan")),
                  "norm_large": norms.get((r["variant"], r["wd"], True), {}).get(t, float("nan"))}
        if "test_loss" in d.values:
            values.update({"test0": float(d.values["test_loss"][i0]), "test1": float(d.values["test_loss"][i1])})
        if "test_acc" in d.values:
            values.update({"acc0": float(d.values["test_acc"][i0]), "acc1": float(d.values["test_acc"][i1])})
        rec.add((r["variant"], r["wd"]), t, None, values)
    t, _ = s.representative(steps)
    chosen = {(st["role"]["variant"], st["role"]["wd"]): d for st, d in steps if st["role"].get("train_seed") == t}
    fig = draw.interpolation_lines(s, chosen, wds, [v for v in variants if v is not None])
    s.lines += ["Descriptive (no verdict): the paper's weight-decay test. 1D linear interpolation theta(a) = (1 - a) "
                "theta_small + a theta_large between the small-batch (a = 0) and large-batch (a = 1) minimisers of "
                "the same training seed, over the whole state (BatchNorm statistics too, so both ends are the models "
                "themselves), a from -0.5 to 1.5 (an end moved in where an interpolated BatchNorm variance would turn "
                "negative: the a range column)" + (f"; {_seed_caption(t, None)}:" if fig else "."), ""]
    if fig:
        s.lines += [fig, ""]
    labels = lambda c: [str(c[0]), fmt(c[1])]  # noqa: E731
    cols = ["train0", "train1", "barrier", "test0", "test1", "acc0", "acc1", "norm_small", "norm_large", "a_min",
            "a_max"]
    names = ["train loss a=0", "train loss a=1", "barrier on [0, 1]", "test loss a=0", "test loss a=1",
             "test accuracy a=0", "test accuracy a=1", "weight norm, small batch", "weight norm, large batch",
             "a from", "a to"]
    s.lines += table(["large-batch training", "weight decay", "n", *names], summary_rows(rec, labels, cols)) + [""]
    s.lines += ["Barrier: the largest train loss on [0, 1] minus the larger of the two ends. Weight norms: of the "
                "conv/linear weights, from the filter-normalized 1D lines.", ""]


def trajectory_section(s: Section) -> None:
    steps = s.steps("pca2d")
    rec = Records()
    paths: dict[tuple[float, int], tuple[float, float]] = {}
    for st, d in steps:
        if d is None or not d.trajectory:
            continue
        tr = d.trajectory
        ev = tr.get("explained_variance", [])
        e1 = ev[0] if len(ev) > 0 else float("nan")
        e2 = ev[1] if len(ev) > 1 else float("nan")
        res = np.asarray(tr.get("residual", []), dtype=np.float64)
        x, y = np.asarray(tr.get("x", []), dtype=np.float64), np.asarray(tr.get("y", []), dtype=np.float64)
        # distance of each checkpoint from the final model: in-plane part and residual are orthogonal
        dist = np.sqrt(x**2 + y**2 + res**2) if res.size == x.size else np.empty(0)
        rel = float(np.max(res) / np.max(dist)) if dist.size and np.max(dist) > 0 else float("nan")
        step_norms = tr.get("step_norms")  # the run's own step sizes (files written before they were stored: none)
        if step_norms is None:
            s.notes.append(f"`{st['name']}` holds no step lengths (/trajectory/step_norms, written before they were "
                           "stored): its random walk takes equal steps, not the run's schedule.")
        walk_mean, walk_q95 = measures.random_walk_explained(len(x), trials=RANDOM_WALK_TRIALS,
                                                             step_norms=step_norms)
        wd, t = st["role"]["wd"], st["role"].get("train_seed", 0)
        paths[(wd, t)] = (e1 + e2, walk_q95)
        rec.add(wd, t, None, {"e1": e1, "e2": e2, "e12": e1 + e2, "walk_mean": walk_mean, "walk_q95": walk_q95,
                              "checkpoints": float(len(x)),
                              "residual": float(np.max(res)) if res.size else float("nan"),
                              "rel": rel, "train_loss": d.at_center("train_loss")})
    t, _ = s.representative(steps)
    fig = draw.contours(s, [(f"SGD, wd {fmt(st['role']['wd'])}", d) for st, d in
                            sorted(steps, key=lambda p: p[0]["role"]["wd"]) if st["role"].get("train_seed") == t],
                        "trajectory_paths", "training paths on the PCA plane", path=True)
    if fig:
        s.lines += ["Train loss on the plane of the first two PCA components (weight units, not filter-normalized), "
                    f"the projected path in red; {_seed_caption(t, None)}:", "", fig, ""]
    labels = lambda wd: [fmt(wd)]  # noqa: E731
    cols = ["e1", "e2", "e12", "walk_mean", "walk_q95", "checkpoints", "residual", "rel", "train_loss"]
    names = ["PC1 explained", "PC2 explained", "PC1+PC2", "random walk: mean", "random walk: 95th pct", "checkpoints",
             "max residual off the plane", "max residual / max distance to final", "train loss at center"]
    s.lines += table(["weight decay", "n", *names], summary_rows(rec, labels, cols)) + [""]
    s.lines += ["Per training seed:", ""]
    s.lines += table(["weight decay", "training seed", *names], seed_rows(rec, labels, cols, target=False)) + [""]
    s.lines += [f"Random walk: PC1+PC2 of the same centered PCA over {RANDOM_WALK_TRIALS} seeded random walks with "
                "as many points, each step in an isotropic random direction with the length of the run's own step "
                "between the same two checkpoints (so the walk follows the run's learning-rate schedule; a long "
                "walk of equal Gaussian steps gives 0.76, Antognini and Sohl-Dickstein 2018): a path is "
                "low-dimensional only if it explains more than such a walk does.", ""]
    trajectory_verdict(s, paths)


SECTIONS = {"skip": skip_section, "batch": batch_section, "width": width_section, "trajectory": trajectory_section}
TITLES = {"skip": "Skip connections and depth", "batch": "Small vs large batch, weight decay, filter normalization",
          "width": "Width", "trajectory": "Training trajectories"}


def _models_line(s: Section) -> str:
    """The experiment's models, one entry per condition: its label, training settings and run names (seeds)."""
    groups: dict[str, list[dict]] = {}
    for r in s.manifest["runs"]:
        groups.setdefault(re.sub(r"_s\d+$", "", r["name"]), []).append(r)
    parts = []
    for stem, runs in groups.items():
        cfg = runs[0]["config"]
        seeds = ", ".join(str(r["config"]["seed"]) for r in runs)
        extra = (f", warm-up {cfg['warmup_epochs']} epochs" if cfg.get("warmup_epochs") else "") + \
                (f", gradient norm clipped at {fmt(cfg['clip_grad_norm'])}" if cfg.get("clip_grad_norm") else "")
        parts.append(f"{runs[0]['label']} (`{stem}_s<seed>`, seeds {seeds}; {cfg['epochs']} epochs, batch "
                     f"{cfg['batch_size']}, lr {fmt(cfg['lr'])}{extra})")
    return "; ".join(parts)


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
    head = ["# Findings: the paper's claims, checked by experiment", "",
            "Generated by `landscape-mpi experiments report` from the experiments' HDF5 files alone; do not edit by "
            "hand. Claims: docs/method.md#the-papers-claims (Li et al. 2018). Definitions of the numbers: "
            "`landscape_mpi/experiments/measures.py`; the verdict rules: `landscape_mpi/experiments/rules.py` "
            f"(version {rules.RULES_VERSION}, listed below).", ""]
    body, summary, scales = [], [], []
    for name in found:
        s = Section(out_dir, name, figures, rel_figures)
        SECTIONS[name](s)
        m = s.manifest
        seeds = (f"training seeds {', '.join(map(str, s.train_seeds))}"
                 + (f"; direction seeds {', '.join(map(str, s.direction_seeds))}" if s.direction_seeds else ""))
        body += [f"## {TITLES[name]}", "", f"Claim: {m['claim']}", "",
                 f"Scale `{m['scale']}`; {seeds}. Models: {_models_line(s)}.", "", *s.lines, ""]
        if s.notes:
            body += ["Not computed, or not completely:", "", *[f"- {n}" for n in s.notes], ""]
        summary += [line for line in s.lines if line.startswith("- **")]
        scales += [m["scale"]] if m["scale"] not in scales else []
    head += [f"Scale: {', '.join(f'`{x}`' for x in scales)} (docs/reproducing.md#scales says what each holds).", ""]
    lines = head + ["## Verdicts", "", *summary, "", *rules.rules_section(), *body]
    return "\n".join(lines).rstrip() + "\n"


def write_report(out_dir: str, out: str, figures: str) -> str:
    """Write the report to `out` and its figures into `figures`; returns the markdown."""
    from landscape_mpi.experiments.path_report import report_text  # the path findings' section (issue 27)

    rel = os.path.relpath(figures, os.path.dirname(os.path.abspath(out)))
    text = report_text(out_dir, out, figures, rel, lambda: render(out_dir, figures, rel))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    return text
