"""Command line: `landscape-mpi surface | info | train | demo | models | hessian | compare | experiments | align`.

One module per command (landscape_mpi/cli/<command>.py, each with ``add_parser(sub)``); this one only dispatches.
Options are declared once, as the fields of the config dataclasses (landscape_mpi/config/options.py): commands
build a typed config from the parsed arguments and hand it to library code. A user mistake (`UserError`) becomes
one line on stderr and exit code 2; see config/errors.py for every exit code.
"""

from __future__ import annotations

import argparse

from landscape_mpi import __version__
from landscape_mpi.config.errors import UserError
from landscape_mpi.runtime.lifecycle import run_main


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        raise UserError(f"{message} (see: {self.prog} --help)")


def build_parser() -> Parser:
    from landscape_mpi.cli import align, compare, demo, experiments, hessian, info, models, path, surface, train

    p = Parser(prog="landscape-mpi", description="Loss landscapes of neural networks, computed across MPI ranks.")
    p.add_argument("--version", action="version", version=f"landscape-mpi {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in (surface, path, info, train, demo, models, hessian, compare, experiments, align):
        command.add_parser(sub)
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
