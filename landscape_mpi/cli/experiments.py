"""`landscape-mpi experiments run | report | list`: the paper's findings, reproduced and reported.

    landscape-mpi experiments run NAME|all [--tiny | --scale tiny|quick|small|paper] [--out-dir DIR] [--device D]
                                  [--launcher "mpiexec -n 8"] [--task I] [--data-root DIR]
    landscape-mpi experiments report [--out-dir DIR] [--out docs/findings.md] [--figures docs/findings]
    landscape-mpi experiments list [--scale S]
"""

from __future__ import annotations

import argparse
import shlex
import sys

from landscape_mpi.config.errors import EXIT_COMPLETE, EXIT_FAILURE

DEFAULT_OUT_DIR = "experiments-out"
#: the scales of landscape_mpi.experiments.definitions.SCALES, repeated here so that building the parser does not
#: import the experiments package (torch, h5py) for every landscape-mpi command
SCALES = ("tiny", "quick", "small", "paper")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the `experiments` subcommand on the main parser's subparsers."""
    p = sub.add_parser("experiments", help="the paper's findings: run the experiments, write the report")
    esub = p.add_subparsers(dest="experiments_command", required=True, parser_class=type(p))

    r = esub.add_parser("run", help="train and compute the surfaces of one experiment or all (resumable)")
    r.add_argument("name", help="skip, batch, width, trajectory, a comma-separated list, or all")
    r.add_argument("--scale", default="small", choices=SCALES,
                   help="tiny: CI-sized; quick: the small set reduced to about an hour on 2 cores; small: MNIST-1D "
                        "on a few CPU cores (default); paper: CIFAR-10 (--data-root)")
    r.add_argument("--tiny", action="store_true", help="the same as --scale tiny")
    r.add_argument("--out-dir", default=DEFAULT_OUT_DIR, help=f"where runs and surface files go (default {DEFAULT_OUT_DIR})")
    r.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    r.add_argument("--launcher", default="", help="run each surface under this launcher, e.g. 'mpiexec -n 8' or "
                                                 "'srun --kill-on-bad-exit=1 --mpi=pmix' (default: in this process)")
    r.add_argument("--task", type=int, help="only training run number TASK and its surfaces (a SLURM array index)")
    r.add_argument("--data-root", help="folder holding cifar-10-batches-py/ (paper scale)")
    r.set_defaults(func=cmd_run)

    g = esub.add_parser("report", help="write the findings report from the experiments' HDF5 files")
    g.add_argument("--out-dir", default=DEFAULT_OUT_DIR, help="the experiments' folder (as given to run)")
    g.add_argument("--out", default="docs/findings.md", help="the report (markdown; default docs/findings.md)")
    g.add_argument("--figures", help="folder for the figures (default: findings/ beside --out)")
    g.set_defaults(func=cmd_report)

    ls = esub.add_parser("list", help="list the experiments, their training runs (array tasks) and surfaces")
    ls.add_argument("--scale", default="small", choices=SCALES)
    ls.add_argument("--count", help="print only the number of training runs (array tasks) of this experiment")
    ls.set_defaults(func=cmd_list)


def cmd_run(a: argparse.Namespace) -> int:
    from landscape_mpi.experiments import experiments
    from landscape_mpi.experiments.runner import StepFailed, run_experiment

    scale = "tiny" if a.tiny else a.scale
    launcher = shlex.split(a.launcher) if a.launcher else None
    for exp in experiments(a.name, scale):
        try:
            seconds = run_experiment(exp, a.out_dir, a.device, launcher, a.data_root, a.task)
        except StepFailed as exc:
            print(f"landscape-mpi experiments: {exc}", file=sys.stderr, flush=True)
            return exc.code if exc.code else EXIT_FAILURE
        print(f"experiment {exp.name} ({scale}): complete in {seconds:.1f} s -> {a.out_dir}/{exp.name}/",
              file=sys.stderr, flush=True)
    return EXIT_COMPLETE


def cmd_report(a: argparse.Namespace) -> int:
    import os

    from landscape_mpi.experiments.report import write_report

    figures = a.figures or os.path.join(os.path.dirname(a.out) or ".", "findings")
    write_report(a.out_dir, a.out, figures)
    print(f"wrote {a.out} and figures in {figures}/", file=sys.stderr)
    return EXIT_COMPLETE


def cmd_list(a: argparse.Namespace) -> int:
    from landscape_mpi.experiments import experiment, experiments

    if a.count:
        print(len(experiment(a.count, a.scale).runs))
        return EXIT_COMPLETE
    for exp in experiments("all", a.scale):
        print(f"{exp.name}: {exp.claim}")
        for i, r in enumerate(exp.runs):
            steps = [s.name for s in exp.surfaces if s.run == r.name]
            print(f"  task {i}: {r.name} ({r.label}) -> {', '.join(steps)}")
    return EXIT_COMPLETE
