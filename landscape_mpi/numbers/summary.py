"""What `landscape-mpi info` says about a surface file, as a dict (torch-free and MPI-free: a login node answers
at once)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from landscape_mpi.config.errors import UserError
from landscape_mpi.files.reader import read_summary


def describe(path: str) -> dict[str, Any]:
    """The file's config, shape, points done (in all and per rank), the finite range and the count of NaN/inf of
    every metric over the done points, provenance (checkpoint, its sha256, creation time, versions) and its
    sharpness numbers (docs/method.md#sharpness-numbers; ``{"unavailable": reason}`` where they cannot be had).

    Raises UserError if `path` is not a readable surface file.
    """
    s = read_summary(path)
    done = int(s.done.sum())
    ranges = {}
    for name, values in s.metrics.items():
        v = values[s.done]
        finite = v[np.isfinite(v)]
        ranges[name] = {"min": float(finite.min()) if finite.size else None,
                        "max": float(finite.max()) if finite.size else None,
                        "nonfinite": int(v.size - finite.size)}
    ranks, counts = np.unique(s.ranks[s.done], return_counts=True)
    info = {"file": path, "schema_version": int(s.attrs["schema_version"]), "shape": list(s.shape),
            "done": done, "total": int(s.done.size), "complete": done == s.done.size, "config": s.config,
            "metrics": ranges, "points_per_rank": {str(int(r)): int(c) for r, c in zip(ranks, counts)},
            "checkpoint": s.attrs.get("checkpoint"), "checkpoint_sha256": s.attrs.get("checkpoint_sha256"),
            "created": s.attrs.get("created"), "versions": json.loads(s.attrs.get("versions", "{}"))}
    from landscape_mpi.numbers.estimates import describe_estimates

    estimates = describe_estimates(path)
    if estimates is not None:  # --tolerance: the rule, samples read and standard errors
        info["estimates"] = estimates
    from landscape_mpi.numbers.refinement import describe_adaptive

    adaptive = describe_adaptive(path)
    if adaptive is not None:  # --adaptive: coverage, rounds; complete when the refinement is over
        info["adaptive"] = adaptive
        info["complete"] = bool(adaptive["finished"])
    try:
        from landscape_mpi.numbers.sharpness import sharpness_for_info

        info["sharpness"] = sharpness_for_info(path)
    except UserError as exc:
        info["sharpness"] = {"unavailable": str(exc)}
    return info
