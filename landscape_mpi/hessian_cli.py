"""`landscape-mpi hessian`: Hessian analyses of one or several checkpoints into one HDF5 file.

This module holds the subcommand's arguments (`add_parser`), its typed config (`HessianConfig`) and its
orchestration (`run_hessian`), which reads top to bottom in the order things happen:
  1. discover ranks and devices; resolve the checkpoint glob; check --out;
  2. every rank builds the model and loads the full evaluation set(s) (each keeps its shard for products);
  3. per checkpoint (one row): loss, top-k eigenpairs, lambda_min, Hutchinson trace, SLQ density (rank 0 drives,
     the others serve products), then adaptive sharpness (every rank, deterministic perturbations);
  4. rank 0 writes the file complete under a temporary name and renames it; every rank exits with the same code.
The math is in landscape_mpi/hessian.py, the file layout in landscape_mpi/hessian_store.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import re
import sys
import time
from dataclasses import dataclass

from landscape_mpi.config import DEVICES, LOSSES, SPLITS
from landscape_mpi.errors import EXIT_COMPLETE, UserError

PRECISIONS = ("float32", "float64")
GLOB_CHARS = "*?["


@dataclass(frozen=True)
class HessianConfig:
    """Everything that determines the numbers in a Hessian file (stored in it as JSON)."""

    model: str
    """Zoo name or package.module:factory."""
    checkpoint: str
    """A checkpoint path, or a glob ('DIR/epoch_*.pt'): one row per matching file."""
    out: str
    """The Hessian file (.h5)."""
    dataset: str = "digits"
    data_root: str | None = None
    samples: int | None = None
    """A deterministic subset of N samples per split (seeded by `seed`); None: all."""
    splits: tuple[str, ...] = ("train",)
    """The loss is the mean over the samples of all these splits together."""
    loss: str = "ce"
    batch_size: int = 1024
    """Samples per double-backprop batch (memory: about 3x a forward pass of this many samples)."""
    precision: str = "float32"
    """float32: the model as trained; float64: model and data cast to float64 (exact comparisons, CPU)."""
    top_k: int = 5
    """Number of largest eigenvalues (ARPACK which='LA')."""
    store_vectors: int = 2
    """Eigenvectors stored per row (the largest ones), at most top_k; 2 for --directions hessian."""
    tol: float = 1e-6
    """ARPACK relative tolerance of each eigenvalue."""
    maxiter: int = 1000
    """ARPACK restart limit per eigsh call."""
    trace_probes: int = 100
    """Rademacher probes of the Hutchinson trace (0: no trace)."""
    slq_runs: int = 10
    """Stochastic Lanczos quadrature runs (0: no density)."""
    slq_steps: int = 80
    """Lanczos steps per SLQ run (at most the number of parameters)."""
    slq_sigma: float = 0.01
    """Gaussian broadening of the density, as a fraction of the spectrum's width (max - min Ritz value)."""
    slq_grid: int = 2000
    """Density grid points."""
    adaptive_rho: float = 0.05
    """Relative perturbation size per filter of the adaptive sharpness."""
    adaptive_samples: int = 20
    """Random perturbations of the adaptive sharpness (0: none)."""
    seed: int = 0
    """Seeds the --samples subset, ARPACK's start vector, the probes and the perturbations."""
    overwrite: bool = False
    """Replace an existing --out (how to run, not a setting of the numbers: not stored)."""

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise UserError(f"--loss {self.loss}: choose one of {', '.join(LOSSES)}")
        if not self.splits or any(s not in SPLITS for s in self.splits):
            raise UserError(f"--splits {','.join(self.splits)}: choose train, test or train,test")
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision {self.precision}: choose one of {', '.join(PRECISIONS)}")
        positive = {"--batch-size": self.batch_size, "--top-k": self.top_k, "--maxiter": self.maxiter,
                    "--slq-steps": self.slq_steps, "--slq-grid": self.slq_grid}
        for option, value in positive.items():
            if value < 1:
                raise UserError(f"{option} {value}: must be at least 1")
        for option, value in {"--trace-probes": self.trace_probes, "--slq-runs": self.slq_runs,
                              "--adaptive-samples": self.adaptive_samples}.items():
            if value < 0:
                raise UserError(f"{option} {value}: must be 0 (skip) or more")
        if self.samples is not None and self.samples < 1:
            raise UserError(f"--samples {self.samples}: must be at least 1")
        if not 0 <= self.store_vectors <= self.top_k:
            raise UserError(f"--store-vectors {self.store_vectors}: must be between 0 and --top-k {self.top_k}")
        if not (self.tol >= 0 and self.slq_sigma > 0 and self.adaptive_rho > 0):
            raise UserError("--tol must be >= 0, --slq-sigma and --adaptive-rho > 0")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["splits"] = list(self.splits)
        del d["overwrite"]
        return d


# ------------------------------------------------------------------------------------- checkpoints
def _natural_key(path: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def resolve_checkpoints(spec: str) -> list[str]:
    """The checkpoint files: `spec` itself, or every file matching it if it is a glob (natural name order)."""
    if not any(c in spec for c in GLOB_CHARS):
        if not os.path.isfile(spec):
            raise UserError(f"--checkpoint {spec}: no such file; give the path of a saved model (torch.save)")
        return [spec]
    paths = sorted((p for p in glob.glob(spec) if os.path.isfile(p)), key=_natural_key)
    if not paths:
        raise UserError(f"--checkpoint {spec}: the pattern matches no file; check the folder and quote the "
                        f"pattern so that the shell does not expand it")
    return paths


def checkpoint_epoch(path: str, index: int) -> tuple[float, str]:
    """(epoch, where it came from): the checkpoint dict's "epoch", else the last number in the file name, else
    the index of the checkpoint in the list."""
    import torch  # here, not at the top: `landscape-mpi info` builds this parser and must not import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # read_state_dict reports an unreadable file with a proper message
        obj = None
    if isinstance(obj, dict) and "epoch" in obj:
        value = obj["epoch"]
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), "checkpoint"
    numbers = re.findall(r"\d+", os.path.splitext(os.path.basename(path))[0])
    if numbers:
        return float(numbers[-1]), "file name"
    return float(index), "index"


# ------------------------------------------------------------------------------------- the run
def run_hessian(cfg: HessianConfig, ctx) -> int:
    """Compute every row and write the file (rank 0). Collective over ctx.comm; returns the exit code."""
    import torch

    from landscape_mpi import hessian as hs
    from landscape_mpi import hessian_store
    from landscape_mpi.data import EvalSet, load_eval_set
    from landscape_mpi.models import build_model, checkpoint_sha256, load_checkpoint
    from landscape_mpi.store import check_out_path, package_versions
    from landscape_mpi.lifecycle import agree

    def on_every_rank(step):  # agree-or-fail: a failure on one rank ends every rank with the same message
        return agree(ctx.comm, step, ctx.rank)

    def log(message: str) -> None:
        if ctx.is_master:
            print(f"landscape-mpi hessian: {message}", file=sys.stderr, flush=True)

    # 1. inputs and output
    def check_inputs() -> list[str]:
        paths = resolve_checkpoints(cfg.checkpoint)
        if ctx.is_master:
            check_out_path(cfg.out)
            if os.path.exists(cfg.out) and not cfg.overwrite:
                raise UserError(f"--out {cfg.out} exists; add --overwrite to replace it or choose another --out")
        return paths

    paths = on_every_rank(check_inputs)
    dtype = torch.float64 if cfg.precision == "float64" else torch.float32

    # 2. model and data on every rank
    def load() -> tuple:
        model = build_model(cfg.model)
        space = hs.ParamSpace.of(model)
        if cfg.top_k >= space.n:
            raise UserError(f"--top-k {cfg.top_k}: must be less than the number of parameters ({space.n})")
        data = [load_eval_set(cfg.dataset, s, cfg.data_root, cfg.samples, cfg.seed) for s in cfg.splits]
        data = [EvalSet(d.name, d.inputs.to(ctx.device, dtype), d.labels.to(ctx.device), d.indices) for d in data]
        return model, space, data

    model, space, data = on_every_rank(load)
    n_samples = sum(len(d) for d in data)
    log(f"{len(paths)} checkpoint(s), {space.n} parameters, {n_samples} samples ({','.join(cfg.splits)}), "
        f"{ctx.size} rank(s), {cfg.precision} on {ctx.device}")

    # 3. one row per checkpoint
    rows = []
    for index, path in enumerate(paths):
        start = time.perf_counter()
        def load_row() -> tuple[str, float, str]:
            load_checkpoint(model, path)  # names missing / mis-shaped keys if the checkpoint does not fit
            return (checkpoint_sha256(path), *checkpoint_epoch(path, index))

        sha, epoch, epoch_source = on_every_rank(load_row)
        model.to(device=ctx.device, dtype=dtype)
        op = hs.HessianOperator(model, data, cfg.loss, cfg.batch_size, ctx.comm)
        loss = op.mean_loss()

        def task(matvec: hs.Matvec) -> tuple:
            top = hs.extreme_eigenpairs(matvec, op.n, cfg.top_k, "LA", cfg.tol, cfg.maxiter, cfg.seed)
            bottom = hs.extreme_eigenpairs(matvec, op.n, 1, "SA", cfg.tol, cfg.maxiter, cfg.seed)
            trace = hs.hutchinson_trace(matvec, op.n, cfg.trace_probes, cfg.seed + 1) if cfg.trace_probes else None
            density = (hs.slq_density(matvec, op.n, cfg.slq_runs, cfg.slq_steps, cfg.slq_sigma, cfg.slq_grid,
                                      cfg.seed + 2) if cfg.slq_runs else None)
            return top, bottom, trace, density

        result = hs.drive(op, task)
        adaptive = (hs.adaptive_sharpness(op, cfg.adaptive_rho, cfg.adaptive_samples, cfg.seed)
                    if cfg.adaptive_samples else None)
        if not ctx.is_master:
            continue
        top, bottom, trace, density = result
        row = hessian_store.HessianRow(
            checkpoint=path, sha256=sha, epoch=epoch, epoch_source=epoch_source, loss=loss,
            seconds=time.perf_counter() - start, eigenvalues=top.values, products_top=top.products,
            lambda_min=float(bottom.values[0]), products_min=bottom.products,
            eigenvectors=[space.split(top.vectors[:, j]) for j in range(cfg.store_vectors)],
            trace=None if trace is None else {"estimate": trace.estimate, "stderr": trace.stderr,
                                              "samples": trace.samples, "products": trace.products},
            density=None if density is None else {k: getattr(density, k) for k in
                                                  ("grid", "values", "nodes", "weights", "run_means", "sigma",
                                                   "products")},
            adaptive=None if adaptive is None else {"sharpness": adaptive.mean, "stderr": adaptive.stderr,
                                                    "values": adaptive.values})
        rows.append(row)
        products = top.products + bottom.products + (trace.products if trace else 0) + \
            (density.products if density else 0)
        log(f"row {index + 1}/{len(paths)} epoch {epoch:g}: loss {loss:.6g}, lambda_max {top.values[0]:.6g}, "
            f"lambda_min {row.lambda_min:.6g}" + (f", trace {trace.estimate:.6g} +- {trace.stderr:.2g}" if trace else "")
            + (f", adaptive sharpness {adaptive.mean:.4g}" if adaptive else "")
            + f" ({products} Hessian-vector products, {row.seconds:.1f} s)")

    # 4. the file
    def write() -> None:
        if ctx.is_master:
            attrs = {"model": cfg.model, "loss": cfg.loss, "splits": ",".join(cfg.splits),
                     "samples": -1 if cfg.samples is None else cfg.samples, "n_params": space.n,
                     "n_samples": n_samples, "precision": cfg.precision, "bn_mode": "eval",
                     "ranks": ctx.size, "eigenvector_convention": hs.EIGENVECTOR_CONVENTION,
                     "parameter_names": "\n".join(space.names)}
            hessian_store.write_hessian_file(cfg.out, rows, cfg.to_dict(), attrs,
                                             package_versions())

    on_every_rank(write)
    log(f"complete: {cfg.out}")
    return EXIT_COMPLETE


# ------------------------------------------------------------------------------------- arguments
def add_parser(sub) -> None:
    """Add the `hessian` subcommand to the subparsers `sub` of landscape-mpi."""
    p = sub.add_parser("hessian", help="Hessian eigenvalues, trace, spectral density and adaptive sharpness of "
                                       "checkpoints, into an HDF5 file")
    g = p.add_argument_group("model and data")
    g.add_argument("--model", required=True, help="zoo name (landscape-mpi models) or package.module:factory")
    g.add_argument("--checkpoint", required=True,
                   help="a checkpoint, or a quoted glob 'DIR/epoch_*.pt': one row per file")
    g.add_argument("--dataset", default="digits", help="digits (embedded), cifar10, or package.module:factory")
    g.add_argument("--data-root", help="folder holding cifar-10-batches-py/ (never downloaded)")
    g.add_argument("--samples", type=int, help="a deterministic subset of N samples per split")
    g.add_argument("--splits", default="train", help="train (default), test or train,test (pooled)")
    g.add_argument("--loss", default="ce", choices=LOSSES, help="ce (default) or mse, as in surface")
    g.add_argument("--batch-size", type=int, default=1024, help="samples per double-backprop batch (default 1024)")
    g.add_argument("--precision", default="float32", choices=PRECISIONS,
                   help="float32 (default) or float64 (model and data cast: slower, for exact comparisons)")
    g = p.add_argument_group("analyses")
    g.add_argument("--top-k", type=int, default=5, help="largest eigenvalues to compute (default 5)")
    g.add_argument("--store-vectors", type=int, default=2, help="eigenvectors stored per row (default 2, <= top-k)")
    g.add_argument("--tol", type=float, default=1e-6, help="ARPACK relative eigenvalue tolerance (default 1e-6)")
    g.add_argument("--maxiter", type=int, default=1000, help="ARPACK restart limit per eigsh call (default 1000)")
    g.add_argument("--trace-probes", type=int, default=100, help="Hutchinson Rademacher probes (default 100; 0: skip)")
    g.add_argument("--slq-runs", type=int, default=10, help="stochastic Lanczos quadrature runs (default 10; 0: skip)")
    g.add_argument("--slq-steps", type=int, default=80, help="Lanczos steps per SLQ run (default 80)")
    g.add_argument("--slq-sigma", type=float, default=0.01,
                   help="density broadening as a fraction of the spectrum's width (default 0.01)")
    g.add_argument("--slq-grid", type=int, default=2000, help="density grid points (default 2000)")
    g.add_argument("--adaptive-rho", type=float, default=0.05,
                   help="adaptive sharpness: relative perturbation size per filter (default 0.05)")
    g.add_argument("--adaptive-samples", type=int, default=20,
                   help="adaptive sharpness: random perturbations (default 20; 0: skip)")
    g.add_argument("--seed", type=int, default=0, help="seeds the subset, start vectors, probes, perturbations")
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="the Hessian file (.h5)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    g.add_argument("--device", default="auto", choices=DEVICES, help="auto (default): this rank's GPU if any")
    g.add_argument("--threads", type=int, help="torch CPU threads per rank (default: cores / ranks on the node)")
    p.set_defaults(func=cmd_hessian)


def config_from_args(a: argparse.Namespace) -> HessianConfig:
    return HessianConfig(
        model=a.model, checkpoint=a.checkpoint, out=a.out, dataset=a.dataset, data_root=a.data_root,
        samples=a.samples, splits=tuple(s.strip() for s in a.splits.split(",") if s.strip()), loss=a.loss,
        batch_size=a.batch_size, precision=a.precision, top_k=a.top_k, store_vectors=a.store_vectors, tol=a.tol,
        maxiter=a.maxiter, trace_probes=a.trace_probes, slq_runs=a.slq_runs, slq_steps=a.slq_steps,
        slq_sigma=a.slq_sigma, slq_grid=a.slq_grid, adaptive_rho=a.adaptive_rho,
        adaptive_samples=a.adaptive_samples, seed=a.seed, overwrite=a.overwrite)


def cmd_hessian(a: argparse.Namespace) -> int:
    from landscape_mpi.context import make_context

    cfg = config_from_args(a)
    # An exception escaping here on one rank of several ends the whole job (lifecycle.run_main, via cli.main).
    return run_hessian(cfg, make_context(a.device, a.threads))
