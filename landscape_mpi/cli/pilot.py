"""`landscape-mpi experiments pilot`: the paper's setting piloted on this device, and the device-hours it needs.

    landscape-mpi experiments pilot --data-root DIR [--out-dir paper-pilot] [--epochs 3] [--models M,...]
    landscape-mpi experiments pilot --reduced --device cpu     # stand-ins on random data (the path, on a CPU)
"""

from __future__ import annotations

import argparse
import os
import sys

from landscape_mpi.config.errors import EXIT_COMPLETE
from landscape_mpi.config.options import add_options, from_args
from landscape_mpi.config.pilot import ExperimentsPilot


def add_pilot_parser(esub: argparse._SubParsersAction) -> None:
    """Register `pilot` under the `experiments` subcommand."""
    p = esub.add_parser("pilot", help="time the paper set's trainings, surface points and Hessian products on this "
                                      "device; estimate its device-hours")
    add_options(p, ExperimentsPilot)
    p.set_defaults(func=cmd_pilot)


def cmd_pilot(a: argparse.Namespace) -> int:
    from landscape_mpi.experiments.pilot import PILOT_JSON, PILOT_MD, run_pilot

    o = from_args(ExperimentsPilot, a)
    models = [m.strip() for m in o.models.split(",") if m.strip()] if o.models else None
    run_pilot(o.out_dir, o.device, o.data_root, epochs=o.epochs, train_samples=o.train_samples, samples=o.samples,
              eig_samples=o.eig_samples, points=o.points, eig_points=o.eig_points,
              hessian_samples=o.hessian_samples, models=models, reduced=o.reduced)
    print(f"wrote {os.path.join(o.out_dir, PILOT_JSON)} and {os.path.join(o.out_dir, PILOT_MD)}", file=sys.stderr)
    return EXIT_COMPLETE
