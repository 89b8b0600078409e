"""`InfoOptions` (`landscape-mpi info`: a surface file's summary)."""

from __future__ import annotations

from dataclasses import dataclass

from landscape_mpi.config.options import option


@dataclass(frozen=True)
class InfoOptions:
    """`landscape-mpi info FILE [--json]`."""

    file: str = option(help="a surface file (.h5), complete or being written", positional=True)
    json: bool = option(False, help="machine-readable output")
