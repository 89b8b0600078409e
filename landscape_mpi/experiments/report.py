"""The findings report: ``docs/findings.md`` and its figures, generated from the experiments' HDF5 files only.

Every number in the report is read from a surface file (`measures` turns arrays into numbers); the experiments'
``manifest.json`` only says which file plays which role. Formatting is deterministic (fixed significant digits,
sorted order, no dates), so two runs on the same files give the same text. Each claim gets a verdict from
stated thresholds (the constants below): reproduced, not reproduced, or inconclusive at this scale.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import h5py
import numpy as np

from landscape_mpi.config.errors import UserError
from landscape_mpi.experiments import measures
from landscape_mpi.experiments.definitions import NAMES

#: skip: the deepest no-shortcut surface must be this many times rougher than the deepest with shortcuts, and
#: than the shallowest no-shortcut one, for "reproduced".
ROUGHER = 1.5
#: width: the wide net's roughness at most 1/WIDER of the narrow one's for "reproduced".
WIDER = 1.5
#: eig ratio vs roughness: Spearman correlation over at least EIG_MIN_MODELS models.
EIG_RHO, EIG_MIN_MODELS = 0.5, 4
#: batch: Spearman correlation of sharpness and test error over the four models.
TRACK_RHO = 0.8
#: trajectory: the first two PCA components explain at least this fraction ("most") of the variance.
EXPLAINED = 0.5
#: ... and more than the 95th percentile of a random walk with as many points (measures.random_walk_explained).
RANDOM_WALK_TRIALS = 200
#: epsilon-sharpness and curvature radius, as a fraction of the grid's half-width (filter norm: 0.5).
RADIUS_FRACTION = 0.5
#: a model whose train loss at the center is above this (half the loss of chance-level guessing on 10 classes,
#: ln 10 / 2) did not train; a comparison involving it is inconclusive.
UNTRAINED_LOSS = float(np.log(10) / 2)

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive at this scale"

#: The two measures of a 2D surface's chaos every "smoother" claim is judged by, each in its own verdict (they can
#: disagree: roughness is normalized by the grid's loss range, which a loss exploding at the grid's edge
#: dominates; the non-convex fraction only counts where the surface curves down).
MEASURES_2D = ("roughness", "non-convex fraction")


@dataclass
class SurfaceData:
    """What the report reads from one surface file; values are NaN where a point is not done."""

    path: str
    done: np.ndarray
    """bool, grid-shaped: the points computed."""
    coords: list[np.ndarray]
    values: dict[str, np.ndarray]
    config: dict
    trajectory: dict | None
    weight_norm: float
    """||w|| over the tensors of dim >= 2, from the filter-normalized x direction (NaN for other norms)."""

    @property
    def center(self) -> tuple[int, ...]:
        return measures.center_index(self.coords)

    def at_center(self, metric: str) -> float:
        v = self.values.get(metric)
        return float(v[self.center]) if v is not None else float("nan")


def read_surface(path: str) -> SurfaceData:
    """Read a surface file: the done mask first, then the values (the file contract), the trajectory if any."""
    with h5py.File(path, "r", locking=False) as f:
        done = f["results/done"][()].astype(bool)
        values = {}
        for name in sorted(f["results"]):
            if name in ("done", "rank", "seconds", "eig_iters"):
                continue
            v = f["results"][name][()].astype(np.float64)
            v[~done] = np.nan
            values[name] = v
        axes = json.loads(f.attrs["axes"]) if "axes" in f.attrs else sorted(f["coords"])
        coords = [f["coords"][a][()] for a in axes]
        config = json.loads(f.attrs["config"])
        trajectory = None
        if "trajectory" in f:
            t = f["trajectory"]
            trajectory = {k: t[k][()] for k in ("x", "y", "epochs", "residual") if k in t}
            trajectory["explained_variance"] = [float(v) for v in np.atleast_1d(t.attrs.get("explained_variance", []))]
        wn = float("nan")
        if config.get("norm") == "filter" and "directions/x" in f:
            # filter normalization scales each filter of d to the norm of that filter of w: ||d|| = ||w||
            wn = float(np.sqrt(sum(float(np.sum(np.asarray(d[()], dtype=np.float64) ** 2))
                                   for d in f["directions/x"].values() if d.ndim >= 2)))
    return SurfaceData(path, done, coords, values, config, trajectory, wn)


def fmt(v: float) -> str:
    """Deterministic number format: 4 significant digits, n/a for NaN."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "n/a"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{v:.4g}"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in r) + " |" for r in rows]
    return out


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


def untrained(models: dict[str, float]) -> str | None:
    """The reason a comparison is inconclusive if a model (label -> train loss at center) did not train."""
    bad = [f"{label} (train loss {fmt(v)})" for label, v in sorted(models.items())
           if not np.isfinite(v) or v > UNTRAINED_LOSS]
    if not bad:
        return None
    return f"not trained enough to compare: {', '.join(bad)} > {fmt(UNTRAINED_LOSS)} (ln 10 / 2)."


def _contours(section: Section, panels: list[tuple[str, SurfaceData]], stem: str, alt: str,
              metric: str = "train_loss", path: bool = False) -> str | None:
    """Side-by-side contour plots with shared log-spaced levels."""
    panels = [(t, d) for t, d in panels if d is not None and d.values.get(metric) is not None
              and len(d.coords) == 2 and np.isfinite(d.values[metric]).any()]
    if not panels:
        return None
    import matplotlib.pyplot as plt

    finite = [d.values[metric][np.isfinite(d.values[metric])] for _, d in panels]
    lo = max(min(float(v.min()) for v in finite), 1e-6)
    hi = max(min(float(v.max()) for v in finite), lo * 1.01)  # the smallest maximum: every panel uses the range
    levels = np.geomspace(lo, hi, 25)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), squeeze=False)
    for ax, (title, d) in zip(axes[0], panels):
        x, y = d.coords
        v = d.values[metric]
        if len(x) > 1 and len(y) > 1:
            ax.contour(x, y, v.T, levels=levels, cmap="viridis", linewidths=0.8)  # v[i, j] is at (x[i], y[j])
        ax.plot([0], [0], "k+")
        if path and d.trajectory:
            t = d.trajectory
            ax.plot(t["x"], t["y"], "r.-", markersize=4, linewidth=1)
        ax.set_title(title, fontsize=8)
        ax.set_aspect("equal")
    fig.tight_layout()
    return section.figure(fig, stem, alt)


# ------------------------------------------------------------------------------------------- sections
def skip_section(s: Section) -> None:
    loss = s.steps("loss2d")
    eig = {(st["role"]["depth"], st["role"]["shortcut"]): d for st, d in s.steps("eig2d")}
    rows, rough, nonconvex, ratio = [], {}, {}, {}
    for st, d in sorted(loss, key=lambda p: (p[0]["role"]["depth"], not p[0]["role"]["shortcut"])):
        key = (st["role"]["depth"], st["role"]["shortcut"])
        if d is None:
            continue
        v = d.values["train_loss"]
        x, y = d.coords
        rough[key] = measures.roughness(v)
        nonconvex[key] = measures.nonconvex_fraction(v, x, y)
        e = eig.get(key)
        ratio[key] = (measures.eig_ratio_mean(e.values["eig_min"], e.values["eig_max"])
                      if e is not None and "eig_min" in e.values else float("nan"))
        rows.append([str(key[0]), "yes" if key[1] else "no", d.at_center("train_loss"), 1 - d.at_center("test_acc"),
                     float(np.nanmax(v)), rough[key], nonconvex[key],
                     measures.eps_sharpness(v, d.coords, RADIUS_FRACTION * float(np.max(np.abs(x)))), ratio[key]])
    panels = [(f"depth {st['role']['depth']}, {'short' if st['role']['shortcut'] else 'no short'}", d)
              for st, d in sorted(loss, key=lambda p: (not p[0]["role"]["shortcut"], p[0]["role"]["depth"]))]
    fig = _contours(s, panels, "skip_surfaces", "train loss surfaces with and without shortcuts")
    if fig:
        s.lines += ["Train loss, filter-normalized random directions (shared log-spaced contour levels):", "", fig, ""]
    eig_panels = [(t, eig.get((st["role"]["depth"], st["role"]["shortcut"]))) for t, (st, _) in
                  zip([p[0] for p in panels], sorted(loss, key=lambda p: (not p[0]["role"]["shortcut"], p[0]["role"]["depth"])))]
    eig_fig = _eig_maps(s, eig_panels)
    if eig_fig:
        s.lines += ["|lambda_min / lambda_max| of the Hessian (0: locally convex-looking; 1 clipped):", "", eig_fig, ""]
    s.lines += table(["depth", "shortcuts", "train loss at center", "test error", "largest train loss on the grid",
                      "roughness", "non-convex fraction", "eps-sharpness", "mean abs(eig_min/eig_max)"], rows) + [""]
    s.lines += [ROUGHNESS_NOTE, ""]
    weak = untrained({f"depth {k[0]} {'short' if k[1] else 'no short'}": row[2] for k, row in zip(rough, rows)})
    chaos = {"roughness": rough, "non-convex fraction": nonconvex}
    for measure in MEASURES_2D:
        _skip_verdict(s, measure, chaos[measure], weak)
    for measure in MEASURES_2D:
        _eig_verdict(s, measure, chaos[measure], ratio, weak)


def _skip_verdict(s: Section, measure: str, m: dict, weak: str | None) -> None:
    """The skip claim judged by one chaos measure `m` ((depth, shortcut) -> value, larger = more chaotic)."""
    claim = f"Skip connections keep deep landscapes smooth ({measure})"
    depths = sorted({k[0] for k in m})
    deep, shallow = (depths[-1], depths[0]) if depths else (None, None)
    r = lambda k: m.get(k, float("nan"))  # noqa: E731
    if weak:
        s.verdict(claim, INCONCLUSIVE, weak)
    elif not depths or not (np.isfinite(r((deep, True))) and np.isfinite(r((deep, False)))):
        s.verdict(claim, INCONCLUSIVE, "the surfaces are missing.")
    elif r((deep, False)) <= r((deep, True)):
        s.verdict(claim, NOT_REPRODUCED, f"at depth {deep} the no-shortcut surface's {measure} is not larger "
                  f"({fmt(r((deep, False)))} vs {fmt(r((deep, True)))} with shortcuts).")
    elif len(depths) > 1 and r((deep, False)) >= ROUGHER * r((deep, True)) and r((deep, False)) >= ROUGHER * r((shallow, False)):
        s.verdict(claim, REPRODUCED, f"at depth {deep} the no-shortcut {measure} {fmt(r((deep, False)))} is >= "
                  f"{ROUGHER}x that with shortcuts ({fmt(r((deep, True)))}) and >= {ROUGHER}x that at depth "
                  f"{shallow} ({fmt(r((shallow, False)))}).")
    else:
        s.verdict(claim, INCONCLUSIVE,
                  f"no-shortcut {measure} {fmt(r((deep, False)))} vs {fmt(r((deep, True)))} with shortcuts at depth {deep}"
                  + (f", {fmt(r((shallow, False)))} at depth {shallow}" if len(depths) > 1 else ", one depth only")
                  + f": below the {ROUGHER}x threshold or no depth trend to test.")


def _eig_verdict(s: Section, measure: str, m: dict, ratio: dict, weak: str | None) -> None:
    """The eigenvalue-ratio claim: the Spearman correlation of one chaos measure and the mean ratio."""
    claim = f"|lambda_min/lambda_max| is larger where the landscape is chaotic ({measure})"
    keys = [k for k in m if np.isfinite(m[k]) and np.isfinite(ratio.get(k, float("nan")))]
    rho = measures.spearman([m[k] for k in keys], [ratio[k] for k in keys])
    if weak:  # eigenvalues away from a minimum (an untrained net) say nothing about the minimizer's landscape
        s.verdict(claim, INCONCLUSIVE,
                  weak + f" (Spearman correlation of {measure} and mean ratio over {len(keys)} models: {fmt(rho)}.)")
    elif len(keys) < EIG_MIN_MODELS:
        s.verdict(claim, INCONCLUSIVE,
                  f"eigenvalue maps of {len(keys)} models (at least {EIG_MIN_MODELS} needed for a rank correlation).")
    else:
        v = REPRODUCED if rho >= EIG_RHO else (NOT_REPRODUCED if rho <= 0 else INCONCLUSIVE)
        s.verdict(claim, v, f"Spearman correlation of {measure} and mean ratio over {len(keys)} models: {fmt(rho)} "
                  f"(threshold {EIG_RHO}).")


def _eig_maps(s: Section, panels: list[tuple[str, SurfaceData | None]]) -> str | None:
    panels = [(t, d) for t, d in panels if d is not None and "eig_min" in d.values and "eig_max" in d.values]
    if not panels:
        return None
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0), squeeze=False)
    for ax, (title, d) in zip(axes[0], panels):
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.abs(d.values["eig_min"] / d.values["eig_max"])
        x, y = d.coords
        im = ax.imshow(np.clip(ratio.T, 0, 1), origin="lower", extent=(x[0], x[-1], y[0], y[-1]), vmin=0, vmax=1,
                       cmap="magma")
        ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8)
    return s.figure(fig, "skip_eig_ratio", "abs(lambda_min/lambda_max) maps")


def width_section(s: Section) -> None:
    loss = sorted(s.steps("loss2d"), key=lambda p: p[0]["role"]["width"])
    rows, rough, nonconvex = [], {}, {}
    for st, d in loss:
        if d is None:
            continue
        v = d.values["train_loss"]
        w = st["role"]["width"]
        rough[w], nonconvex[w] = measures.roughness(v), measures.nonconvex_fraction(v, *d.coords)
        rows.append([f"x{w}", str(st["role"]["depth"]), d.at_center("train_loss"), 1 - d.at_center("test_acc"),
                     float(np.nanmax(v)), rough[w], nonconvex[w]])
    fig = _contours(s, [(f"width x{st['role']['width']}, depth {st['role']['depth']}, no short", d) for st, d in loss],
                    "width_surfaces", "narrow vs wide no-shortcut ResNet")
    if fig:
        s.lines += ["Train loss, filter-normalized random directions (shared contour levels):", "", fig, ""]
    s.lines += table(["width", "depth", "train loss at center", "test error", "largest train loss on the grid",
                      "roughness", "non-convex fraction"], rows)
    s.lines += ["", ROUGHNESS_NOTE, ""]
    weak = untrained({f"width x{row[0][1:]}": row[2] for row in rows})
    chaos = {"roughness": rough, "non-convex fraction": nonconvex}
    for measure in MEASURES_2D:
        _width_verdict(s, measure, chaos[measure], weak)


def _width_verdict(s: Section, measure: str, m: dict, weak: str | None) -> None:
    claim = f"Wider networks are smoother ({measure})"
    widths = sorted(m)
    if len(widths) < 2 or not all(np.isfinite(m[w]) for w in widths):
        s.verdict(claim, INCONCLUSIVE, "a surface is missing.")
        return
    narrow, wide = m[widths[0]], m[widths[-1]]
    if weak:
        s.verdict(claim, INCONCLUSIVE, weak)
    elif wide >= narrow:
        s.verdict(claim, NOT_REPRODUCED, f"{measure} x{widths[-1]} {fmt(wide)} >= x{widths[0]} {fmt(narrow)}.")
    elif wide * WIDER <= narrow:
        s.verdict(claim, REPRODUCED, f"{measure} x{widths[-1]} {fmt(wide)} <= x{widths[0]} {fmt(narrow)} / {WIDER}.")
    else:
        s.verdict(claim, INCONCLUSIVE,
                  f"{measure} x{widths[-1]} {fmt(wide)} < x{widths[0]} {fmt(narrow)}, but by less than {WIDER}x.")


def batch_section(s: Section) -> None:
    steps = s.steps("loss1d")
    data = {(st["role"]["wd"], st["role"]["large"], st["role"]["norm"]): (st, d) for st, d in steps}
    wds = sorted({k[0] for k in data})
    rows, sharp, err = [], {}, {}
    for (wd, large, norm), (st, d) in sorted(data.items()):
        if d is None:
            continue
        x = d.coords[0]
        radius = RADIUS_FRACTION * float(np.max(np.abs(x)))
        v = d.values["train_loss"]
        sharp[(wd, large, norm)] = measures.eps_sharpness(v, d.coords, radius)
        err[(wd, large)] = 1 - d.at_center("test_acc")
        rows.append([str(st["role"]["batch"]), fmt(wd), norm, d.at_center("train_loss"), err[(wd, large)],
                     sharp[(wd, large, norm)], measures.curvature_1d(v, x, radius), d.weight_norm])
    weak = untrained({f"batch {st['role']['batch']} wd {fmt(k[0])}": d.at_center("train_loss")
                      for k, (st, d) in data.items() if d is not None and k[2] == "filter"})
    _batch_figure(s, data, wds)
    s.lines += table(["batch", "weight decay", "norm", "train loss at center", "test error", "eps-sharpness",
                      "curvature", "weight norm"], rows)
    s.lines += ["", f"eps-sharpness and curvature use the points within {RADIUS_FRACTION} x the grid's half-width of "
                "the center; weight norm is that of the conv/linear weights (from the filter-normalized direction).", ""]
    # (a) small batch wider than large batch, filter-normalized, in each weight-decay setting
    ok = [(wd, sharp.get((wd, False, "filter")), sharp.get((wd, True, "filter"))) for wd in wds]
    ok = [(wd, a, b) for wd, a, b in ok if a is not None and b is not None and np.isfinite(a) and np.isfinite(b)]
    wins = [wd for wd, a, b in ok if a < b]
    detail = "; ".join(f"wd {fmt(wd)}: small {fmt(a)} vs large {fmt(b)}" for wd, a, b in ok)
    if len(ok) < 2 or weak:
        s.verdict("Small-batch minima are wider (filter-normalized)", INCONCLUSIVE, weak or "a surface is missing.")
    else:
        v = REPRODUCED if len(wins) == len(ok) else (NOT_REPRODUCED if not wins else INCONCLUSIVE)
        s.verdict("Small-batch minima are wider (filter-normalized)", v, f"eps-sharpness {detail}.")
    # (b) sharpness tracks test error
    keys = [(wd, large) for wd in wds for large in (False, True)
            if np.isfinite(sharp.get((wd, large, "filter"), float("nan"))) and np.isfinite(err.get((wd, large), float("nan")))]
    rho = measures.spearman([sharp[(k[0], k[1], "filter")] for k in keys], [err[k] for k in keys])
    if weak:
        s.verdict("Sharpness tracks test error", INCONCLUSIVE, weak)
    elif len(keys) < 4 or not np.isfinite(rho):
        s.verdict("Sharpness tracks test error", INCONCLUSIVE, f"{len(keys)} models with both numbers"
                  + ("" if np.isfinite(rho) else " or no rank variation") + ".")
    else:
        v = REPRODUCED if rho >= TRACK_RHO else (NOT_REPRODUCED if rho <= 0 else INCONCLUSIVE)
        s.verdict("Sharpness tracks test error", v, f"Spearman correlation of filter-normalized eps-sharpness and "
                  f"test error over {len(keys)} models: {fmt(rho)} (threshold {TRACK_RHO}).")
    # (c) without normalization, weight decay flips the comparison
    wd = max(wds) if wds else None
    vals = [sharp.get((wd, large, norm), float("nan")) for norm in ("filter", "none") for large in (False, True)]
    if weak:
        s.verdict("Without filter normalization, weight decay flips the comparison", INCONCLUSIVE, weak)
    elif wd is None or wd == 0 or not all(np.isfinite(vals)):
        s.verdict("Without filter normalization, weight decay flips the comparison", INCONCLUSIVE, "a surface is missing.")
    else:
        f_small, f_large, n_small, n_large = vals
        same = (f_small < f_large) == (n_small < n_large)
        s.verdict("Without filter normalization, weight decay flips the comparison", NOT_REPRODUCED if same else REPRODUCED,
                  f"with weight decay {fmt(wd)}: filter-normalized small {fmt(f_small)} vs large {fmt(f_large)}; "
                  f"unnormalized small {fmt(n_small)} vs large {fmt(n_large)} "
                  f"({'the same order' if same else 'the order flips'}).")


def _batch_figure(s: Section, data: dict, wds: list[float]) -> None:
    if not any(d is not None for _, d in data.values()):
        return
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 * len(wds), figsize=(3.2 * 2 * len(wds), 3.0), squeeze=False)
    for col, (wd, norm) in enumerate((wd, norm) for wd in wds for norm in ("filter", "none")):
        ax = axes[0][col]
        for large, color in ((False, "tab:blue"), (True, "tab:red")):
            st, d = data.get((wd, large, norm), (None, None))
            if d is None:
                continue
            label = f"batch {st['role']['batch']}"
            ax.plot(d.coords[0], d.values["train_loss"], "-", color=color, label=f"{label} train")
            if "test_loss" in d.values:
                ax.plot(d.coords[0], d.values["test_loss"], "--", color=color, label=f"{label} test")
        ax.set_yscale("log")
        ax.set_title(f"wd {fmt(wd)}, norm {norm}", fontsize=8)
        ax.legend(fontsize=6)
    fig.tight_layout()
    s.lines += ["Train (solid) and test (dashed) loss along one random direction, with and without filter "
                "normalization:", "", s.figure(fig, "batch_1d", "small vs large batch, 1D"), ""]


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
        walk_mean, walk_q95 = measures.random_walk_explained(len(x), trials=RANDOM_WALK_TRIALS)
        evs.append(e1 + e2)
        walks.append((walk_mean, walk_q95))
        rows.append([fmt(st["role"]["wd"]), e1, e2, e1 + e2, walk_mean, walk_q95, len(x),
                     float(np.max(res)) if res.size else float("nan"), rel, d.at_center("train_loss")])
    fig = _contours(s, [(f"SGD, wd {fmt(st['role']['wd'])}", d) for st, d in steps], "trajectory_paths",
                    "training paths on the PCA plane", path=True)
    if fig:
        s.lines += ["Train loss on the plane of the first two PCA components (weight units, not filter-normalized), "
                    "the projected path in red:", "", fig, ""]
    s.lines += table(["weight decay", "PC1 explained", "PC2 explained", "PC1+PC2", "random walk: mean",
                      "random walk: 95th pct", "checkpoints", "max residual off the plane",
                      "max residual / max distance to final", "train loss at center"], rows) + [""]
    s.lines += [f"Random walk: PC1+PC2 of the same centered PCA over {RANDOM_WALK_TRIALS} seeded isotropic Gaussian "
                "walks with as many points (a long walk gives 0.76, Antognini and Sohl-Dickstein 2018): a path is "
                "low-dimensional only if it explains more than a random walk does.", ""]
    if not evs or not all(np.isfinite(evs)):
        s.verdict("Trajectories lie in a low-dimensional space", INCONCLUSIVE, "the PCA surfaces are missing.")
        return
    detail = "; ".join(f"{fmt(e)} (random walk 95th percentile {fmt(q)})" for e, (_, q) in zip(evs, walks))
    if not all(e >= EXPLAINED for e in evs):
        v = NOT_REPRODUCED if not any(e >= EXPLAINED for e in evs) else INCONCLUSIVE
        s.verdict("Trajectories lie in a low-dimensional space", v,
                  f"PC1+PC2 explain {detail} of the variance (threshold {EXPLAINED}).")
    elif all(e > q for e, (_, q) in zip(evs, walks)):
        s.verdict("Trajectories lie in a low-dimensional space", REPRODUCED,
                  f"PC1+PC2 explain {detail} of the variance: above {EXPLAINED} and above a random walk.")
    else:
        s.verdict("Trajectories lie in a low-dimensional space", INCONCLUSIVE,
                  f"PC1+PC2 explain {detail} of the variance: above {EXPLAINED}, but a random walk with as many "
                  "points explains as much.")


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
             "`landscape_mpi/experiments/measures.py`; thresholds of the verdicts: `landscape_mpi/experiments/report.py`.",
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
