"""The verdicts of the findings report: each claim judged from the numbers by stated thresholds (the constants
below) as reproduced, not reproduced, or inconclusive at this scale. Claims: docs/method.md#the-papers-claims.

A verdict function takes the report's section (anything with ``verdict(claim, verdict, reason)``) and the numbers
(`measures`, read from the files by `surface_data`), and records one line per claim. Numbers added after the
results were seen get no verdict: the report shows them under the `EXPLORATORY` label.
"""

from __future__ import annotations

import numpy as np

from landscape_mpi.experiments import measures

#: skip: the deepest no-shortcut surface must be this many times rougher than the deepest with shortcuts, and
#: than the shallowest no-shortcut one, for "reproduced".
ROUGHER = 1.5
#: width: the wide net's roughness at most 1/WIDER of the narrow one's for "reproduced".
WIDER = 1.5
#: eig ratio (per map: median of the ratio clipped to [0, 1]) vs a chaos measure: Spearman correlation over at
#: least EIG_MIN_MODELS models.
EIG_RHO, EIG_MIN_MODELS = 0.5, 4
#: batch: Spearman correlation of the grid max-rise and test error over the four models.
TRACK_RHO = 0.8
#: trajectory: the first two PCA components explain at least this fraction ("most") of the variance.
EXPLAINED = 0.5
#: ... and more than the 95th percentile of a random walk with as many points (measures.random_walk_explained).
RANDOM_WALK_TRIALS = 200
#: grid max-rise and curvature radius, as a fraction of the grid's half-width (filter norm: 0.5).
RADIUS_FRACTION = 0.5
#: a model whose train loss at the center is above this (half the loss of chance-level guessing on 10 classes,
#: ln 10 / 2) did not train; a comparison involving it is inconclusive.
UNTRAINED_LOSS = float(np.log(10) / 2)

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive at this scale"
#: The label of a number added after the results were seen: shown, never judged by a threshold.
EXPLORATORY = "Exploratory (added after the results were seen; no verdict)"

#: The two measures of a 2D surface's chaos every "smoother" claim is judged by, each in its own verdict (they can
#: disagree: roughness is normalized by the grid's loss range, which a loss exploding at the grid's edge
#: dominates; the non-convex fraction only counts where the surface curves down).
MEASURES_2D = ("roughness", "non-convex fraction")


def fmt(v: float) -> str:
    """Deterministic number format: 4 significant digits, n/a for NaN."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "n/a"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{v:.4g}"


def untrained(models: dict[str, float]) -> str | None:
    """The reason a comparison is inconclusive if a model (label -> train loss at center) did not train."""
    bad = [f"{label} (train loss {fmt(v)})" for label, v in sorted(models.items())
           if not np.isfinite(v) or v > UNTRAINED_LOSS]
    if not bad:
        return None
    return f"not trained enough to compare: {', '.join(bad)} > {fmt(UNTRAINED_LOSS)} (ln 10 / 2)."


def skip_verdict(s, measure: str, m: dict, weak: str | None) -> None:
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


def eig_verdict(s, measure: str, m: dict, ratio: dict, weak: str | None) -> None:
    """The eigenvalue-ratio claim: the Spearman correlation of one chaos measure and the per-map median of the
    clipped ratio (`ratio`: key -> measures.eig_ratio_median)."""
    claim = f"|lambda_min/lambda_max| is larger where the landscape is chaotic ({measure})"
    keys = [k for k in m if np.isfinite(m[k]) and np.isfinite(ratio.get(k, float("nan")))]
    rho = measures.spearman([m[k] for k in keys], [ratio[k] for k in keys])
    if weak:  # eigenvalues away from a minimum (an untrained net) say nothing about the minimizer's landscape
        s.verdict(claim, INCONCLUSIVE,
                  weak + f" (Spearman correlation of {measure} and median clipped ratio over {len(keys)} models: "
                  f"{fmt(rho)}.)")
    elif len(keys) < EIG_MIN_MODELS:
        s.verdict(claim, INCONCLUSIVE,
                  f"eigenvalue maps of {len(keys)} models (at least {EIG_MIN_MODELS} needed for a rank correlation).")
    else:
        v = REPRODUCED if rho >= EIG_RHO else (NOT_REPRODUCED if rho <= 0 else INCONCLUSIVE)
        s.verdict(claim, v, f"Spearman correlation of {measure} and median clipped ratio over {len(keys)} models: "
                  f"{fmt(rho)} "
                  f"(threshold {EIG_RHO}).")


def width_verdict(s, measure: str, m: dict, weak: str | None) -> None:
    """The width claim judged by one chaos measure `m` (width multiplier -> value)."""
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


def batch_verdicts(s, sharp: dict, err: dict, wds: list[float], weak: str | None) -> None:
    """The three batch claims from the grid max-rise ((wd, large, norm) -> value) and test error ((wd, large) -> value)."""
    # (a) small batch wider than large batch, filter-normalized, in each weight-decay setting
    ok = [(wd, sharp.get((wd, False, "filter")), sharp.get((wd, True, "filter"))) for wd in wds]
    ok = [(wd, a, b) for wd, a, b in ok if a is not None and b is not None and np.isfinite(a) and np.isfinite(b)]
    wins = [wd for wd, a, b in ok if a < b]
    detail = "; ".join(f"wd {fmt(wd)}: small {fmt(a)} vs large {fmt(b)}" for wd, a, b in ok)
    if len(ok) < 2 or weak:
        s.verdict("Small-batch minima are wider (filter-normalized)", INCONCLUSIVE, weak or "a surface is missing.")
    else:
        v = REPRODUCED if len(wins) == len(ok) else (NOT_REPRODUCED if not wins else INCONCLUSIVE)
        s.verdict("Small-batch minima are wider (filter-normalized)", v, f"grid max-rise {detail}.")
    # (b) sharpness (here: the grid max-rise) tracks test error
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
        s.verdict("Sharpness tracks test error", v, f"Spearman correlation of the filter-normalized grid max-rise and "
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


def trajectory_verdict(s, evs: list[float], walks: list[tuple[float, float]]) -> None:
    """The trajectory claim from PC1+PC2 per path and the random walk's (mean, 95th percentile) per path."""
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
