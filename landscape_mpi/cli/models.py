"""`landscape-mpi models`: the model zoo, one name and its dataset per line."""

from __future__ import annotations

import argparse

from landscape_mpi.config.errors import EXIT_COMPLETE


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list the model zoo")
    p.set_defaults(func=cmd_models)


def cmd_models(a: argparse.Namespace) -> int:
    from landscape_mpi.models import ZOO

    for name, (_, dataset) in ZOO.items():
        print(f"{name:<20} {dataset}")
    return EXIT_COMPLETE
