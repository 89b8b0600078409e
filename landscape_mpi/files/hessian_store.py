"""The Hessian file's writer (numpy and h5py only: no torch); its reader is landscape_mpi/files/reader.py.

Layout: `contract.HESSIAN_SCHEMA`, the one schema (docs/file-format.md's table is generated from it): R rows, one
per checkpoint, each analysis a group that is absent when skipped.

The file is written complete under a temporary name, then renamed onto its path: it is never seen half written.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass, field

import h5py
import numpy as np

from landscape_mpi.config.errors import UserError
from landscape_mpi.files import contract
from landscape_mpi.files.contract import ADAPTIVE, BLOCKS, CHECKPOINTS, DENSITY, EIGEN, EIGENVECTORS, TRACE
from landscape_mpi.files.store import fresh_temporary, fsync_file, fsync_folder


@dataclass
class HessianRow:
    """Everything computed for one checkpoint (arrays are numpy; None where the analysis was not asked for)."""

    checkpoint: str
    sha256: str
    epoch: float
    epoch_source: str
    loss: float
    seconds: float
    eigenvalues: np.ndarray
    products_top: int
    lambda_min: float
    products_min: int
    eigenvectors: list[dict[str, np.ndarray]] = field(default_factory=list)
    trace: dict | None = None
    """estimate, stderr, samples, products."""
    density: dict | None = None
    """grid, values, nodes, weights, run_means, sigma, products."""
    adaptive: dict | None = None
    """sharpness, stderr, values."""
    blocks: dict | None = None
    """Per diagonal block (--blocks): top, products, trace, trace_stderr (arrays over the blocks)."""


def _stack(rows: list[HessianRow], part: str, key: str) -> np.ndarray:
    return np.stack([np.asarray(getattr(r, part)[key]) for r in rows])


def write_hessian_file(path: str, rows: list[HessianRow], config: dict, attrs: dict, versions: dict,
                       blocks: list[tuple[str, int]] | None = None) -> None:
    """Write the whole file under a temporary name, then rename it onto `path` (replacing any old file).

    `config`: every setting (stored as JSON and the main ones as attributes); `attrs`: further root attributes;
    `blocks`: (name, size) of each diagonal block of --blocks (the rows' `blocks` hold their numbers).
    Raises UserError if the folder cannot be written.
    """
    tmp = fresh_temporary(path)
    str_dt = h5py.string_dtype()
    try:
        with h5py.File(tmp, "w", libver="earliest") as f:
            f.attrs[contract.FILE_KIND_ATTR] = contract.KIND_HESSIAN
            f.attrs[contract.SCHEMA_VERSION_ATTR] = contract.SCHEMA_VERSION
            f.attrs[contract.CONFIG_ATTR] = json.dumps(config, sort_keys=True)
            f.attrs["versions"] = json.dumps(versions)
            f.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            f.attrs["rows"] = len(rows)
            for k, v in attrs.items():
                f.attrs[k] = v

            g = f.create_group(CHECKPOINTS)
            g.create_dataset("path", data=np.array([r.checkpoint for r in rows], dtype=object), dtype=str_dt)
            g.create_dataset("sha256", data=np.array([r.sha256 for r in rows], dtype=object), dtype=str_dt)
            g.create_dataset("epoch", data=np.array([r.epoch for r in rows], dtype=np.float64))
            g["epoch"].attrs["epoch_source"] = json.dumps([r.epoch_source for r in rows])
            g.create_dataset("loss", data=np.array([r.loss for r in rows], dtype=np.float64))
            g.create_dataset("seconds", data=np.array([r.seconds for r in rows], dtype=np.float64))

            g = f.create_group(EIGEN)
            g.create_dataset("values", data=np.stack([np.asarray(r.eigenvalues, dtype=np.float64) for r in rows]))
            g["values"].attrs["which"] = "LA"
            g.create_dataset("lambda_min", data=np.array([r.lambda_min for r in rows], dtype=np.float64))
            g["lambda_min"].attrs["which"] = "SA"
            g.create_dataset("products_top", data=np.array([r.products_top for r in rows], dtype=np.int64))
            g.create_dataset("products_min", data=np.array([r.products_min for r in rows], dtype=np.int64))
            g.attrs["tol"] = config["tol"]
            g.attrs["maxiter"] = config["maxiter"]
            g.attrs["solver"] = "scipy.sparse.linalg.eigsh (ARPACK), seeded start vector"

            g = f.create_group(EIGENVECTORS)
            g.attrs["convention"] = attrs.get("eigenvector_convention", "")
            for i, r in enumerate(rows):
                rg = g.create_group(f"row_{i:03d}")
                for j, vec in enumerate(r.eigenvectors):
                    vg = rg.create_group(str(j))
                    vg.attrs["eigenvalue"] = float(r.eigenvalues[j])
                    for name, a in vec.items():
                        vg.create_dataset(name, data=np.asarray(a, dtype=np.float64))

            if rows[0].trace is not None:
                g = f.create_group(TRACE)
                for key in ("estimate", "stderr", "samples", "products"):
                    g.create_dataset(key, data=_stack(rows, "trace", key))
                g.attrs["probes"] = config["trace_probes"]
                g.attrs["distribution"] = "rademacher"
            if rows[0].density is not None:
                g = f.create_group(DENSITY)
                for key in ("grid", "values", "nodes", "weights", "run_means", "sigma", "products"):
                    g.create_dataset(key, data=_stack(rows, "density", key))
                g.attrs["runs"] = config["slq_runs"]
                g.attrs["steps"] = config["slq_steps"]
                g.attrs["sigma_rel"] = config["slq_sigma"]
                g.attrs["probe"] = "unit Rademacher vector (entries +-1/sqrt(n))"
            if rows[0].adaptive is not None:
                g = f.create_group(ADAPTIVE)
                for key in ("sharpness", "stderr", "values"):
                    g.create_dataset(key, data=_stack(rows, "adaptive", key))
                g.attrs["rho"] = config["adaptive_rho"]
                g.attrs["samples"] = config["adaptive_samples"]
                g.attrs["seed"] = config["seed"]
                g.attrs["definition"] = ("mean over samples of loss(theta + delta) - loss(theta), delta_i = rho * "
                                         "||w_i|| * g_i / ||g_i|| per output filter i, g Gaussian; biases and "
                                         "BatchNorm not perturbed")
            if blocks:
                g = f.create_group(BLOCKS)
                g.create_dataset("name", data=np.array([b for b, _ in blocks], dtype=object), dtype=str_dt)
                g.create_dataset("size", data=np.array([s for _, s in blocks], dtype=np.int64))
                for key in ("top", "products", "trace", "trace_stderr"):
                    g.create_dataset(key, data=_stack(rows, "blocks", key))
                g.attrs["map"] = config["blocks"]
                g.attrs["definition"] = ("diagonal blocks C_bb of the operator: top eigenvalue by ARPACK 'LA' on "
                                         "C_bb v_b; trace from the whole Hutchinson run's probes, z_b . (C z)_b")
        fsync_file(tmp)  # the data on disk before the name points at it (a crash leaves old file or new)
        os.replace(tmp, path)
        fsync_folder(path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise UserError(f"--out {path}: cannot write the Hessian file ({exc}); choose another --out") from None
