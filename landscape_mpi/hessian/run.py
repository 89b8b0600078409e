"""`landscape-mpi hessian`: Hessian analyses of one or several checkpoints into one HDF5 file.

The orchestration (`run_hessian`) reads top to bottom in the order things happen:
  1. discover ranks and devices; resolve the checkpoint glob; check --out;
  2. every rank builds the model and loads the full evaluation set(s) (each keeps its shard for products);
  3. per checkpoint (one row): loss, top-k eigenpairs, lambda_min, Hutchinson trace, SLQ density (rank 0 drives,
     the others serve products), then the average adaptive rise (every rank, deterministic perturbations);
  4. rank 0 writes the file complete under a temporary name and renames it; every rank exits with the same code.
The math is in landscape_mpi/curvature/hessian.py, the file layout in landscape_mpi/files/hessian_store.py.
"""

from __future__ import annotations

import glob
import os
import re
import sys
import time

import torch

from landscape_mpi.config.errors import EXIT_COMPLETE, UserError
from landscape_mpi.config.hessian import HessianConfig
from landscape_mpi.curvature import blocks as blk
from landscape_mpi.curvature import hessian as hs
from landscape_mpi.curvature import krylov
from landscape_mpi.curvature.operators import check_curvature, make_operator
from landscape_mpi.data.datasets import EvalSet, load_eval_set, map_inputs
from landscape_mpi.files import hessian_store
from landscape_mpi.files.contract import EIGENVECTOR_CONVENTION
from landscape_mpi.files.store import check_out_path, package_versions
from landscape_mpi.models import build_model, checkpoint_sha256, load_checkpoint, natural_key
from landscape_mpi.runtime.groups import close_process_group, place
from landscape_mpi.runtime.lifecycle import agree
from landscape_mpi.tasks import make_task

GLOB_CHARS = "*?["


def resolve_checkpoints(spec: str) -> list[str]:
    """The checkpoint files: `spec` itself, or every file matching it if it is a glob (natural name order)."""
    if not any(c in spec for c in GLOB_CHARS):
        if not (os.path.isfile(spec) or os.path.isdir(spec)):  # a folder: save_pretrained (models.weight_file)
            raise UserError(f"--checkpoint {spec}: no such file; give the path of a saved model (torch.save)")
        return [spec]
    paths = sorted((p for p in glob.glob(spec) if os.path.isfile(p)), key=natural_key)
    if not paths:
        raise UserError(f"--checkpoint {spec}: the pattern matches no file; check the folder and quote the "
                        f"pattern so that the shell does not expand it")
    return paths


def checkpoint_epoch(path: str, index: int, stored: dict) -> tuple[float, str]:
    """(epoch, where it came from): the checkpoint dict's "epoch" (`stored`: its top-level entries, as
    `load_checkpoint(..., meta=)` read them with the weights: the file is read once), else the last number in the
    file name, else the index of the checkpoint in the list."""
    if "epoch" in stored:
        value = stored["epoch"]
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), "checkpoint"
    numbers = re.findall(r"\d+", os.path.splitext(os.path.basename(path))[0])
    if numbers:
        return float(numbers[-1]), "file name"
    return float(index), "index"


def run_hessian(cfg: HessianConfig, ctx, ranks_per_point: int = 1, group_timeout: float = 600.0) -> int:
    """Compute every row and write the file (rank 0). Collective over ctx.comm; returns the exit code.

    `ranks_per_point` > 1: the model sharded over every rank of the job (one group: it must be the number of
    ranks), products by finite differences of sharded gradients (curvature/sharded_hessian.py)."""
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
    if ranks_per_point > 1:
        def check_group() -> None:
            if ranks_per_point != ctx.size:
                raise UserError(f"--ranks-per-point {ranks_per_point}: hessian shards the model over all the job's "
                                f"ranks; launch {ranks_per_point} ranks (now {ctx.size}) or drop --ranks-per-point")
            if cfg.curvature != "hessian":
                raise UserError(f"--curvature {cfg.curvature}: a sharded model (--ranks-per-point) gives Hessian "
                                f"products only; drop --ranks-per-point or use --curvature hessian")
            if cfg.adaptive_samples:
                raise UserError(f"--ranks-per-point {ranks_per_point}: the average adaptive rise is computed on an "
                                f"unsharded model; add --adaptive-samples 0")

        on_every_rank(check_group)
    group = place(ctx, ranks_per_point, "shard", group_timeout)  # alone, or one group: every rank of the job
    if group.shards:
        log(f"the model sharded over {group.size} ranks ({group.backend}), products by central differences of "
            f"sharded gradients")
    dtype = torch.float64 if cfg.precision == "float64" else torch.float32

    # 2. model and data on every rank
    def load() -> tuple:
        model = build_model(cfg.model, cfg.task)
        space = hs.ParamSpace.of(model)
        if cfg.top_k >= space.n:
            raise UserError(f"--top-k {cfg.top_k}: must be less than the number of parameters ({space.n})")
        if cfg.blocks != "none":
            blk.parameter_blocks(space.names, space.sizes, cfg.blocks)  # a map that names no parameter: refused
        data = [load_eval_set(cfg.dataset, s, cfg.data_root, cfg.samples, cfg.seed) for s in cfg.splits]
        # real-valued tensors in the model's dtype (token ids stay integers)
        def to_device(t: torch.Tensor) -> torch.Tensor:
            return t.to(ctx.device, dtype if t.is_floating_point() else None)

        data = [EvalSet(d.name, map_inputs(d.inputs, to_device),
                        d.labels.to(ctx.device, dtype if d.labels.is_floating_point() else None)
                        if d.labels is not None else None, d.indices) for d in data]
        return model, space, data

    model, space, data = on_every_rank(load)
    def make_objective():  # the task whose mean loss is measured, and whether it has the chosen operator
        task = make_task(cfg.task, cfg.loss)
        check_curvature(task, cfg.curvature)
        return task

    objective = on_every_rank(make_objective)
    n_samples = sum(len(d) for d in data)
    blocks = blk.parameter_blocks(space.names, space.sizes, cfg.blocks) if cfg.blocks != "none" else []
    log(f"{len(paths)} checkpoint(s), {space.n} parameters, {n_samples} samples ({','.join(cfg.splits)}), "
        f"{ctx.size} rank(s), {cfg.precision} on {ctx.device}")

    # 3. one row per checkpoint
    rows = []
    for index, path in enumerate(paths):
        start = time.perf_counter()
        def load_row(path: str = path, index: int = index) -> tuple[str, float, str]:
            stored: dict = {}
            load_checkpoint(model, path, meta=stored)  # names missing / mis-shaped keys if it does not fit
            return (checkpoint_sha256(path), *checkpoint_epoch(path, index, stored))

        sha, epoch, epoch_source = on_every_rank(load_row)
        model.to(device=ctx.device, dtype=dtype)
        if not group.shards:  # every rank holds the model and divides the samples
            op = make_operator(model, data, objective, cfg.curvature, cfg.batch_size, ctx.comm, cfg.fisher_seed)
        else:
            from landscape_mpi.curvature.sharded_hessian import ShardedHessianOperator

            op = on_every_rank(lambda: ShardedHessianOperator(model, data, objective, cfg.batch_size, group.comm,
                                                              ctx.device))
        loss = op.mean_loss()

        def task(matvec: krylov.Matvec, op=op) -> tuple:
            top = krylov.extreme_eigenpairs(matvec, op.n, cfg.top_k, "LA", cfg.tol, cfg.maxiter, cfg.seed)
            # a PSD operator's lambda_min is >= 0, often a many-fold 0 that ARPACK cannot resolve: not asked (NaN)
            bottom = (None if getattr(op, "psd", False) else
                      krylov.extreme_eigenpairs(matvec, op.n, 1, "SA", cfg.tol, cfg.maxiter, cfg.seed))
            recorder = blk.BlockTraceRecorder(matvec, blocks)  # the blocks' traces from the whole run's probes
            recorder.recording = True
            trace = (krylov.hutchinson_trace(recorder, op.n, cfg.trace_probes, cfg.seed + 1) if cfg.trace_probes
                     else None)
            recorder.recording = False
            density = (krylov.slq_density(matvec, op.n, cfg.slq_runs, cfg.slq_steps, cfg.slq_sigma, cfg.slq_grid,
                                      cfg.seed + 2) if cfg.slq_runs else None)
            per_block = None
            if blocks:
                tops, products = blk.block_tops(matvec, op.n, blocks, cfg.tol, cfg.maxiter, cfg.seed)
                traces, stderrs = recorder.traces()
                per_block = {"top": tops, "products": products, "trace": traces, "trace_stderr": stderrs}
            return top, bottom, trace, density, per_block

        result = hs.drive(op, task)
        adaptive = (hs.adaptive_sharpness(op, cfg.adaptive_rho, cfg.adaptive_samples, cfg.seed)
                    if cfg.adaptive_samples else None)
        if not ctx.is_master:
            continue
        top, bottom, trace, density, per_block = result
        row = hessian_store.HessianRow(
            checkpoint=path, sha256=sha, epoch=epoch, epoch_source=epoch_source, loss=loss,
            seconds=time.perf_counter() - start, eigenvalues=top.values, products_top=top.products,
            lambda_min=float("nan") if bottom is None else float(bottom.values[0]),
            products_min=0 if bottom is None else bottom.products,
            eigenvectors=[space.split(top.vectors[:, j]) for j in range(cfg.store_vectors)],
            trace=None if trace is None else {"estimate": trace.estimate, "stderr": trace.stderr,
                                              "samples": trace.samples, "products": trace.products},
            density=None if density is None else {k: getattr(density, k) for k in
                                                  ("grid", "values", "nodes", "weights", "run_means", "sigma",
                                                   "products")},
            adaptive=None if adaptive is None else {"sharpness": adaptive.mean, "stderr": adaptive.stderr,
                                                    "values": adaptive.values},
            blocks=per_block)
        rows.append(row)
        products = top.products + (bottom.products if bottom else 0) + (trace.products if trace else 0) + \
            (density.products if density else 0) + (int(per_block["products"].sum()) if per_block else 0)
        log(f"row {index + 1}/{len(paths)} epoch {epoch:g}: loss {loss:.6g}, lambda_max {top.values[0]:.6g}, "
            f"lambda_min {row.lambda_min:.6g}"
            + (f", trace {trace.estimate:.6g} +- {trace.stderr:.2g}" if trace else "")
            + (f", average adaptive rise {adaptive.mean:.4g}" if adaptive else "")
            + f" ({products} {cfg.curvature}-vector products, {row.seconds:.1f} s)")

    # 4. the file
    def write() -> None:
        if ctx.is_master:
            # "loss": classify's --loss; another task's loss is its own (named by the task)
            attrs = {"model": cfg.model, "task": cfg.task, "curvature": cfg.curvature,
                     "loss": cfg.loss if cfg.task == "classify" else cfg.task,
                     "splits": ",".join(cfg.splits),
                     "samples": -1 if cfg.samples is None else cfg.samples, "n_params": space.n,
                     "n_samples": n_samples, "precision": cfg.precision, "bn_mode": "eval",
                     "ranks": ctx.size, "eigenvector_convention": EIGENVECTOR_CONVENTION,
                     "parameter_names": "\n".join(space.names)}
            hessian_store.write_hessian_file(cfg.out, rows, cfg.to_dict(), attrs,
                                             package_versions(),
                                             blocks=[(b.name, len(b.index)) for b in blocks])

    on_every_rank(write)
    close_process_group()  # gloo's threads must not outlive the interpreter
    log(f"complete: {cfg.out}")
    return EXIT_COMPLETE
