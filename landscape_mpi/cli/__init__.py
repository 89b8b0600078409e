"""Command line: `landscape-mpi surface | info | train | demo | models`.

Argument parsing ends here: commands build a typed config and hand it to library code. A user mistake
(`UserError`) becomes one line on stderr and exit code 2; see errors.py for every exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from landscape_mpi import __version__
from landscape_mpi.config.surface import (BN_MODES, DEVICES, DIR_FORMATS, DIR_SPACES, DIRECTION_KINDS, IGNORES, IO_MODES,
                                  LOSSES, NORMS, ORDERS, PRECISIONS, Axis, RunOptions, SurfaceConfig)
from landscape_mpi.config.errors import EXIT_COMPLETE, EXIT_RESUMABLE, UserError
from landscape_mpi.runtime.lifecycle import agree, run_main


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        raise UserError(f"{message} (see: {self.prog} --help)")


# --------------------------------------------------------------------------------------- surface
def add_surface_args(p: argparse.ArgumentParser, demo: bool = False) -> None:
    g = p.add_argument_group("model and data")
    if not demo:
        g.add_argument("--model", required=True, help="zoo name (landscape-mpi models) or package.module:factory")
        g.add_argument("--checkpoint", required=True, help="trained model: a state_dict or a dict holding one")
        g.add_argument("--dataset", default="digits", help="digits (embedded), mnist1d (generated offline), cifar10, or "
                                                           "package.module:factory "
                                                           "where factory(split) returns a torch Dataset")
        g.add_argument("--data-root", help="folder holding cifar-10-batches-py/ (never downloaded)")
    g.add_argument("--samples", type=int, help="evaluate on a deterministic subset of N samples per split")
    g.add_argument("--splits", default="train,test", help="train, test or train,test (default)")
    g.add_argument("--loss", default="ce", choices=LOSSES, help="ce: cross-entropy (default); mse: softmax vs one-hot")
    g.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="fp32 (default; TF32 off), tf32 (TensorFloat-32 on GPUs) or bf16 (autocast)")
    g.add_argument("--bn", default="eval", choices=BN_MODES,
                   help="eval: BatchNorm running statistics (default); recalibrate: re-estimated at every point")
    g.add_argument("--bn-samples", type=int, help="training samples that re-estimate BatchNorm (--bn recalibrate)")
    g.add_argument("--metrics", default="loss",
                   help="loss (loss and accuracy, default) or loss,eig (also the Hessian's max/min eigenvalue)")
    g.add_argument("--eig-tol", type=float, default=1e-3, help="relative tolerance of eig (default 1e-3)")
    g = p.add_argument_group("grid and directions")
    if not demo:
        g.add_argument("--x", default="-1:1:51", help="x axis min:max:num (default -1:1:51; write --x=-1:1:51)")
        g.add_argument("--y", help="y axis min:max:num for a 2D surface")
        g.add_argument("--z", help="z axis min:max:num for a 3D volume")
        g.add_argument("--x-target", help="checkpoint theta_2: x direction is theta_2 - theta* (interpolation)")
        g.add_argument("--y-target", help="checkpoint theta_3: y direction is theta_3 - theta*")
        g.add_argument("--same-dir", action="store_true", help="use dy = dx")
        g.add_argument("--directions", default="random", choices=DIRECTION_KINDS,
                       help="random (default), pca (--trajectory), hessian (--hessian-file), file (--dir-file)")
        g.add_argument("--trajectory", help="glob of a training run's checkpoints, e.g. 'run/epoch_*.pt' (pca)")
        g.add_argument("--hessian-file", help="a file of landscape-mpi hessian: its top two eigenvectors (hessian)")
        g.add_argument("--dir-file", help="an HDF5 file holding directions (file)")
        g.add_argument("--dir-format", default="native", choices=DIR_FORMATS,
                       help="native: /directions/<axis>/<key> (a surface file); reference: the paper's code's file")
    g.add_argument("--norm", default="filter", choices=NORMS, help="normalization of random directions (default filter)")
    g.add_argument("--ignore", default="biasbn", choices=IGNORES,
                   help="biasbn: no perturbation of biases and BatchNorm (default); none: d = w there")
    g.add_argument("--dir-space", choices=DIR_SPACES,
                   help="weights: parameters (default); states: state_dict incl. BatchNorm running stats "
                        "(default with --x-target: interpolating running statistics gives correct losses)")
    g.add_argument("--seed", type=int, default=0, help="seed of the random directions and the --samples subset")
    g = p.add_argument_group("run")
    g.add_argument("--out", required=not demo, help="the surface file (.h5); an existing one is resumed")
    g.add_argument("--overwrite", action="store_true",
                   help="start over; the old file stays until the new surface is complete (built in FILE.h5.new)")
    g.add_argument("--device", default="auto", choices=DEVICES, help="auto (default): this rank's GPU if any, else CPU")
    g.add_argument("--io", default="single", choices=IO_MODES,
                   help="single: one rank writes (default); collective: every rank writes through parallel HDF5")
    g.add_argument("--threads", type=int,
                   help="torch CPU threads per rank (default: the rank's CPU set, or cores / ranks on the node)")
    g.add_argument("--batch-size", type=int, help="evaluation batch size (default: chosen for the device); "
                                                  "changes no value, may differ on resume")
    g.add_argument("--engine", default="auto",
                   choices=("auto", "eager", "folded", "channels_last", "compiled", "batched"),
                   help="evaluation engine: auto (default) or one forced by name (benchmarks, tests); same values")
    g.add_argument("--order", default="coarse", choices=ORDERS,
                   help="coarse: center, corners, then finer sub-grids (default); rows: flat index order")
    g.add_argument("--chunk-size", type=int, default=0, help="points per assignment (default 0: automatic)")
    g.add_argument("--flush-seconds", type=float, default=1.0, help="write results at least this often (default 1)")
    g.add_argument("--progress-seconds", type=float, default=30.0,
                   help="in a batch log, one progress line this often (default 30)")


def parse_metrics(spec: str) -> bool:
    """``--metrics loss`` or ``loss,eig``: returns whether eig is asked for."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts or any(p not in ("loss", "acc", "eig") for p in parts):
        raise UserError(f"--metrics {spec}: choose loss or loss,eig")
    return "eig" in parts


def surface_config(a: argparse.Namespace) -> SurfaceConfig:
    # A target direction implies the states space unless --dir-space says otherwise (docs/method.md#directions:
    # with BatchNorm, interpolating the running statistics too is what gives the target's loss at a = 1).
    dir_space = a.dir_space or ("states" if (a.x_target or a.y_target) else "weights")
    return SurfaceConfig(
        model=a.model, checkpoint=a.checkpoint, dataset=a.dataset, data_root=a.data_root, samples=a.samples,
        splits=tuple(s.strip() for s in a.splits.split(",") if s.strip()), loss=a.loss,
        x=Axis.parse(a.x, "x"), y=Axis.parse(a.y, "y") if a.y else None, z=Axis.parse(a.z, "z") if a.z else None,
        norm=a.norm, ignore=a.ignore, dir_space=dir_space, x_target=a.x_target, y_target=a.y_target,
        same_dir=a.same_dir, seed=a.seed, directions=a.directions, trajectory=a.trajectory,
        hessian_file=a.hessian_file, dir_file=a.dir_file, dir_format=a.dir_format, precision=a.precision,
        bn=a.bn, bn_samples=a.bn_samples, eig=parse_metrics(a.metrics), eig_tol=a.eig_tol)


def run_options(a: argparse.Namespace) -> RunOptions:
    return RunOptions(out=a.out, overwrite=a.overwrite, device=a.device, io=a.io, threads=a.threads,
                      batch_size=a.batch_size, engine=a.engine, order=a.order, chunk_size=a.chunk_size,
                      flush_seconds=a.flush_seconds, progress_seconds=a.progress_seconds)


def cmd_surface(a: argparse.Namespace) -> int:
    from landscape_mpi.surface.run import run_surface

    return run_surface(surface_config(a), run_options(a))


# ------------------------------------------------------------------------------------------ info
def cmd_info(a: argparse.Namespace) -> int:
    # No torch and no MPI on this path: store and sharpness import neither (a login node answers at once).
    from landscape_mpi.files.store import read_summary

    s = read_summary(a.file)
    done = int(s.done.sum())
    ranges = {}
    for name, values in s.metrics.items():
        v = values[s.done]
        finite = v[np.isfinite(v)]
        ranges[name] = {"min": float(finite.min()) if finite.size else None,
                        "max": float(finite.max()) if finite.size else None,
                        "nonfinite": int(v.size - finite.size)}
    ranks, counts = np.unique(s.ranks[s.done], return_counts=True)
    info = {"file": a.file, "schema_version": int(s.attrs["schema_version"]), "shape": list(s.shape),
            "done": done, "total": int(s.done.size), "complete": done == s.done.size, "config": s.config,
            "metrics": ranges, "points_per_rank": {str(int(r)): int(c) for r, c in zip(ranks, counts)},
            "checkpoint": s.attrs.get("checkpoint"), "checkpoint_sha256": s.attrs.get("checkpoint_sha256"),
            "created": s.attrs.get("created"), "versions": json.loads(s.attrs.get("versions", "{}"))}
    try:
        from landscape_mpi.analysis.sharpness import sharpness_for_info

        info["sharpness"] = sharpness_for_info(a.file)
    except UserError as exc:
        info["sharpness"] = {"unavailable": str(exc)}
    if a.json:
        print(json.dumps(info, indent=2))
        return EXIT_COMPLETE
    c = s.config
    axes = "  ".join(f"{n}={c[n]}" for n in ("x", "y", "z") if c.get(n))
    print(f"{a.file}  (schema {info['schema_version']}, created {info['created']})")
    print(f"  model      {c['model']}  checkpoint {info['checkpoint']}")
    print(f"  data       {c['dataset']}  splits {','.join(c['splits'])}  samples {c['samples'] or 'all'}  loss {c['loss']}")
    print(f"  directions norm={c['norm']} ignore={c['ignore']} space={c['dir_space']} seed={c['seed']}"
          + (f" x-target={c['x_target']}" if c.get("x_target") else "") + (" same-dir" if c.get("same_dir") else ""))
    print(f"  grid       {axes}  ({'x'.join(map(str, s.shape))})")
    print(f"  progress   {done}/{info['total']} points done" + ("  (complete)" if info["complete"] else ""))
    for name, r in ranges.items():
        extra = f"  ({r['nonfinite']} NaN/inf)" if r["nonfinite"] else ""
        if r["min"] is None:
            print(f"  {name:<11}no finite values yet{extra}")
        else:
            print(f"  {name:<11}{r['min']:.6g} .. {r['max']:.6g}{extra}")
    sharp = info.get("sharpness") or {}
    if "unavailable" not in sharp:
        from landscape_mpi.analysis.sharpness import format_sharpness

        for metric, numbers in sharp.items():
            print(f"  sharpness of {metric}:")
            for line in format_sharpness(numbers):
                print(f"    {line}")
    return EXIT_COMPLETE


# ----------------------------------------------------------------------------------------- train
def cmd_train(a: argparse.Namespace) -> int:
    import torch

    from landscape_mpi.runtime.lifecycle import say
    from landscape_mpi.training.train import TrainConfig, TrainingStopped, train

    cfg = TrainConfig(model=a.model, out_dir=a.out_dir, dataset=a.dataset, data_root=a.data_root, samples=a.samples,
                      epochs=a.epochs, batch_size=a.batch_size, optimizer=a.optimizer, lr=a.lr, momentum=a.momentum,
                      weight_decay=a.weight_decay, schedule=a.schedule, augment=not a.no_augment, seed=a.seed,
                      save_every_iters=a.save_every_iters)
    device = None if a.device == "auto" else torch.device(a.device)
    try:
        final = train(cfg, device)
    except TrainingStopped as exc:
        say(f"landscape-mpi train: {exc} (exit {EXIT_RESUMABLE})")
        return EXIT_RESUMABLE
    print(f"saved checkpoints epoch_000.pt .. epoch_{cfg.epochs:03d}.pt and {final}", file=sys.stderr)
    return EXIT_COMPLETE


# ------------------------------------------------------------------------------------------ demo
def cmd_demo(a: argparse.Namespace) -> int:
    from landscape_mpi.runtime.context import make_context
    from landscape_mpi.surface.run import run_surface
    from landscape_mpi.runtime.lifecycle import say
    from landscape_mpi.training.train import TrainConfig, TrainingStopped, train

    ctx = make_context(a.device, a.threads)
    out_dir = a.out_dir
    checkpoint = os.path.join(out_dir, "digits_cnn", "final.pt")

    def train_once() -> str | None:
        # Rank 0 trains while the others wait inside this agree-or-fail step: if training fails (an unwritable
        # --out-dir, say), every rank ends with its message instead of waiting in a barrier.
        if ctx.is_master and not os.path.isfile(checkpoint):
            print(f"landscape-mpi demo: training digits_cnn on the digits dataset -> {os.path.dirname(checkpoint)}/",
                  file=sys.stderr, flush=True)
            try:
                train(TrainConfig(model="digits_cnn", out_dir=os.path.dirname(checkpoint), epochs=a.epochs,
                                  batch_size=64, lr=0.05, weight_decay=5e-4, schedule="cosine", seed=0))
            except TrainingStopped as exc:
                return str(exc)
        return None

    stopped = agree(ctx.comm, train_once, ctx.rank)
    if ctx.comm is not None:
        stopped = ctx.comm.bcast(stopped, root=0)
    if stopped is not None:  # a stop signal during rank 0's training: its checkpoints resume it
        if ctx.is_master:
            say(f"landscape-mpi demo: {stopped} (exit {EXIT_RESUMABLE})")
        return EXIT_RESUMABLE
    a.model, a.checkpoint, a.dataset, a.data_root = "digits_cnn", checkpoint, "digits", None
    a.x = a.y = f"-1:1:{a.points}"
    a.z = a.x_target = a.y_target = a.trajectory = a.hessian_file = a.dir_file = None
    a.directions, a.dir_format = "random", "native"
    a.same_dir = False
    a.out = a.out or os.path.join(out_dir, "surface.h5")
    code = run_surface(surface_config(a), run_options(a), ctx)
    if ctx.is_master and code == EXIT_COMPLETE:
        print(f"\nThe demo surface is in {a.out}. Next:\n"
              f"  landscape-mpi info {a.out}\n"
              f"  landscape-plot {a.out} --out {os.path.join(out_dir, 'figures')}\n"
              f"  mpiexec -n 3 landscape-mpi demo --out-dir {out_dir} --overwrite   # the same on 3 MPI ranks",
              file=sys.stderr)
    return code


def cmd_models(a: argparse.Namespace) -> int:
    from landscape_mpi.models import ZOO

    for name, (_, dataset) in ZOO.items():
        print(f"{name:<20} {dataset}")
    return EXIT_COMPLETE


# ------------------------------------------------------------------------------------------ main
def build_parser() -> Parser:
    p = Parser(prog="landscape-mpi", description="Loss landscapes of neural networks, computed across MPI ranks.")
    p.add_argument("--version", action="version", version=f"landscape-mpi {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    s = sub.add_parser("surface", help="compute (or resume) a 1D/2D/3D loss surface into an HDF5 file")
    add_surface_args(s)
    s.set_defaults(func=cmd_surface)

    s = sub.add_parser("info", help="summarize a surface file: config, points done, value ranges")
    s.add_argument("file")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("train", help="train a zoo model, saving a checkpoint every epoch")
    s.add_argument("--model", required=True)
    s.add_argument("--out-dir", required=True, help="folder for epoch_NNN.pt and final.pt")
    s.add_argument("--dataset", default="digits", help="digits (default), mnist1d, cifar10 or package.module:factory")
    s.add_argument("--data-root")
    s.add_argument("--samples", type=int, help="train on a deterministic subset of N samples")
    s.add_argument("--epochs", type=int, default=10)
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    s.add_argument("--lr", type=float, default=0.1)
    s.add_argument("--momentum", type=float, default=0.9)
    s.add_argument("--weight-decay", type=float, default=5e-4)
    s.add_argument("--schedule", default="cosine", choices=("none", "step", "cosine"))
    s.add_argument("--no-augment", action="store_true", help="no random crop/flip (CIFAR-10)")
    s.add_argument("--save-every-iters", type=int, default=0,
                   help="also save iter_NNNNNNN.pt every N optimizer steps (trajectories at a finer grain)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto", choices=DEVICES)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("demo", help="the embedded default: train a small CNN on digits, compute a 2D surface")
    s.add_argument("--out-dir", default="landscape-demo", help="where the checkpoint and surface go (default ./landscape-demo)")
    s.add_argument("--points", type=int, default=21, help="grid points per axis (default 21)")
    s.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    add_surface_args(s, demo=True)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("models", help="list the model zoo")
    s.set_defaults(func=cmd_models)

    # Subcommands defined in their own modules: each module has add_parser(sub), one line per module here.
    from landscape_mpi.cli import hessian as hessian_cli
    hessian_cli.add_parser(sub)
    from landscape_mpi.cli import compare as compare_cli
    compare_cli.add_parser(sub)
    from landscape_mpi.cli import experiments as experiments_cli
    experiments_cli.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Stop signals are caught from here on; a user error is one line and exit 2; on a job of several ranks,
    anything that escapes on one rank ends every rank (see lifecycle.run_main)."""

    def body() -> int:
        args = build_parser().parse_args(argv)
        return args.func(args)

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
