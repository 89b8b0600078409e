"""`landscape-mpi experiments run | report | list`: the paper's findings, reproduced and reported.

    landscape-mpi experiments run NAME|all [--tiny | --scale tiny|quick|small|small-v3|paper] [--out-dir DIR]
                                   [--device D] [--launcher "mpiexec -n 8"] [--task I] [--data-root DIR]
    landscape-mpi experiments report [--out-dir DIR] [--out docs/findings.md] [--figures docs/findings]
    landscape-mpi experiments list [--scale S]
"""

from __future__ import annotations

import argparse
import shlex
import sys

from landscape_mpi.config.errors import EXIT_COMPLETE, EXIT_FAILURE
from landscape_mpi.config.experiments import ExperimentsList, ExperimentsReport, ExperimentsRun
from landscape_mpi.config.options import add_options, from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the `experiments` subcommand on the main parser's subparsers."""
    p = sub.add_parser("experiments", help="the paper's findings: run the experiments, write the report")
    esub = p.add_subparsers(dest="experiments_command", required=True, parser_class=type(p))

    r = esub.add_parser("run", help="train and compute the surfaces of one experiment or all (resumable)")
    add_options(r, ExperimentsRun)
    r.set_defaults(func=cmd_run)

    g = esub.add_parser("report", help="write the findings report from the experiments' HDF5 files")
    add_options(g, ExperimentsReport)
    g.set_defaults(func=cmd_report)

    ls = esub.add_parser("list", help="list the seeds, the experiments, their array tasks, training runs, surfaces "
                                          "and Hessian steps")
    add_options(ls, ExperimentsList)
    ls.set_defaults(func=cmd_list)

    from landscape_mpi.cli.pilot import add_pilot_parser

    add_pilot_parser(esub)


def cmd_run(a: argparse.Namespace) -> int:
    from landscape_mpi.experiments import experiments
    from landscape_mpi.experiments.runner import StepFailed, run_experiment

    o = from_args(ExperimentsRun, a)
    scale = o.scale_name
    launcher = shlex.split(o.launcher) if o.launcher else None
    from landscape_mpi.experiments.path_definitions import is_path_name

    if is_path_name(o.name):  # the path findings (issue 27): their own definitions and runner
        from landscape_mpi.experiments.path_runner import run_paths

        return run_paths(o.name, scale, o.out_dir, o.device, launcher, o.data_root, o.task)
    for exp in experiments(o.name, scale):
        try:
            seconds = run_experiment(exp, o.out_dir, o.device, launcher, o.data_root, o.task)
        except StepFailed as exc:
            print(f"landscape-mpi experiments: {exc}", file=sys.stderr, flush=True)
            return exc.code if exc.code else EXIT_FAILURE
        print(f"experiment {exp.name} ({scale}): complete in {seconds:.1f} s -> {o.out_dir}/{exp.name}/",
              file=sys.stderr, flush=True)
    return EXIT_COMPLETE


def cmd_report(a: argparse.Namespace) -> int:
    import os

    from landscape_mpi.experiments.report import write_report

    o = from_args(ExperimentsReport, a)
    figures = o.figures or os.path.join(os.path.dirname(o.out) or ".", "findings")
    write_report(o.out_dir, o.out, figures)
    print(f"wrote {o.out} and figures in {figures}/", file=sys.stderr)
    return EXIT_COMPLETE


def cmd_list(a: argparse.Namespace) -> int:
    from landscape_mpi.experiments import experiment, experiments

    o = from_args(ExperimentsList, a)
    if o.count:
        print(len(experiment(o.count, o.scale).tasks()))
        return EXIT_COMPLETE
    from landscape_mpi.experiments.definitions import SCALE_SETTINGS

    s = SCALE_SETTINGS[o.scale]
    print(f"scale {o.scale}: training seeds {', '.join(map(str, s.train_seeds))}; direction seeds "
          f"{', '.join(map(str, s.direction_seeds))}"
          + (f" (eigenvalue maps {', '.join(map(str, s.eig_direction_seeds))})" if s.eig_direction_seeds else ""))
    for exp in experiments("all", o.scale):
        print(f"{exp.name}: {exp.claim}")
        for i, group in enumerate(exp.tasks()):
            for j, r in enumerate(group):
                steps = [s.name for s in exp.surfaces if s.run == r.name] + [
                    h.name for h in exp.hessians if h.run == r.name]
                head = f"  task {i}: " if j == 0 else " " * len(f"  task {i}: ")
                print(f"{head}{r.name} ({r.label}) -> {', '.join(steps) or '(trained for the surfaces above)'}")
    return EXIT_COMPLETE
