"""What a surface file computed with ``--tolerance`` (sequential estimates, docs/method.md#sequential-estimates)
says about its own precision, without torch: the rule, the samples read and the standard errors (`info`), and
the uncertainty of the sharpness numbers computed from the estimates (`sharpness_uncertainty`).

The sharpness numbers of such a file are computed from the estimates exactly as from exact values; next to them
this module reports how far the estimates' errors could move them, at `Z` standard errors:
- the center's standard error and the grid max-rise's, ``sqrt(se(at)^2 + se(center)^2)``: the two estimates
  read the same samples in the same order (common random numbers), so their errors are positively correlated
  and the standard error of the difference is at most this (equality for independent errors);
- each basin fraction's range: the share of the done points whose estimate is below the level even Z standard
  errors higher (low), or Z standard errors lower (high); the center's own error is not included.
"""

from __future__ import annotations

import json
import math

import numpy as np

from landscape_mpi.files import contract, reader

#: Standard errors either side of an estimate in the reported ranges (about 95% for a normal error).
Z = 2.0


def sequential_rule(attrs: dict) -> dict | None:
    """The file's stopping rule (root attribute ``sequential``), None for a file of exact full passes."""
    text = attrs.get(contract.SEQUENTIAL_ATTR)
    return json.loads(text) if text else None


def describe_estimates(path: str) -> dict | None:
    """For `info`: None for a file of exact full passes; else the rule and per split, over the done points: the
    samples read (mean, min, max, of the split's total where recorded), the points that read the whole split,
    and the loss's relative standard error se/|loss| (median, max)."""
    with reader.open_surface(path) as f:
        rule = sequential_rule(f.attrs)
        if rule is None:
            return None
        done = f.done()
        splits = [s for s in f.config.get("splits", contract.SPLITS) if f.has(f"results/{s}_samples")]
        out: dict = {"rule": {k: rule[k] for k in ("tolerance", "min_samples", "block", "order_seed") if k in rule},
                     "splits": {}}
        sizes = rule.get("split_samples", {})
        for split in splits:
            samples = f.raw(f"{split}{contract.SAMPLES_SUFFIX}")[done].astype(np.float64)
            loss = f.values(f"{split}_loss", done)[done]
            se = f.values(f"{split}_loss{contract.SE_SUFFIX}", done)[done]
            with np.errstate(divide="ignore", invalid="ignore"):
                rel = se / np.abs(loss)
            rel = rel[np.isfinite(rel)]
            total = sizes.get(split)
            entry = {"points": int(samples.size), "split_samples": total,
                     "samples_mean": float(samples.mean()) if samples.size else None,
                     "samples_min": int(samples.min()) if samples.size else None,
                     "samples_max": int(samples.max()) if samples.size else None,
                     "whole_split": int((samples >= total).sum()) if (total and samples.size) else None,
                     "read_fraction": float(samples.sum() / (total * samples.size)) if (total and samples.size)
                     else None,
                     "relative_se_median": float(np.median(rel)) if rel.size else None,
                     "relative_se_max": float(rel.max()) if rel.size else None}
            out["splits"][split] = entry
    return out


def estimate_lines(est: dict) -> list[str]:
    """`describe_estimates`'s dict as `info`'s text lines."""
    r = est["rule"]
    lines = [f"  estimates  sequential: se(loss) <= {r['tolerance']:g} x |loss|, at least {r['min_samples']} "
             f"samples in blocks of {r['block']}, order seed {r['order_seed']}"]
    for split, e in est["splits"].items():
        if not e["points"]:
            lines.append(f"    {split}: no point done yet")
            continue
        of = f" of {e['split_samples']}" if e["split_samples"] else ""
        share = f" ({100 * e['read_fraction']:.1f}% of full passes)" if e["read_fraction"] is not None else ""
        whole = f"; {e['whole_split']} point(s) read it all" if e["whole_split"] is not None else ""
        rel = e["relative_se_median"]
        lines.append(f"    {split}: samples read {e['samples_mean']:.0f}{of} on average "
                     f"({e['samples_min']}..{e['samples_max']}){share}{whole}; se/|loss| median "
                     + ("-" if rel is None else f"{rel:.3g}") + ", max "
                     + ("-" if e["relative_se_max"] is None else f"{e['relative_se_max']:.3g}"))
    return lines


def sharpness_uncertainty(path: str, metric: str, values: np.ndarray, done: np.ndarray,
                          center: tuple[int, ...], rise_at: tuple[int, ...] | None,
                          levels: list[float]) -> dict | None:
    """How far the estimates' standard errors could move the sharpness numbers of `metric` (see the module
    docstring); None where the file holds no standard error of `metric` (exact full passes)."""
    name = f"{metric}{contract.SE_SUFFIX}"
    with reader.open_surface(path) as f:
        if sequential_rule(f.attrs) is None or not f.has(f"results/{name}"):
            return None
        se = f.values(name, done)
    se_c = float(se[center])
    out: dict = {"z": Z, "center_se": None if math.isnan(se_c) else se_c, "max_rise_se": None, "basin": []}
    if rise_at is not None and math.isfinite(se_c):
        out["max_rise_se"] = float(math.hypot(se[rise_at], se_c))
    l0 = values[center]
    n_done = int(done.sum())
    for level in levels:
        if not (np.isfinite(l0) and n_done):
            out["basin"].append({"level": level, "fraction_low": None, "fraction_high": None})
            continue
        thr = l0 + level
        ok = done & np.isfinite(values) & np.isfinite(se)
        out["basin"].append({"level": level, "fraction_low": int((ok & (values + Z * se <= thr)).sum()) / n_done,
                             "fraction_high": int((ok & (values - Z * se <= thr)).sum()) / n_done})
    return out
