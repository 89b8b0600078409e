"""`CompareOptions` (`landscape-mpi compare`) and the defaults of the sharpness numbers it reports (the numbers
themselves: landscape_mpi/numbers/sharpness.py, which reads these defaults from here)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from landscape_mpi.config.errors import UserError
from landscape_mpi.config.options import option

#: Radius of the grid max-rise disk (ball in 3D), in the file's (filter-normalized) coordinates.
DEFAULT_RADIUS = 0.25
#: Basin levels: loss increases over the center's loss.
DEFAULT_LEVELS = (0.1, 0.5, 1.0)


def parse_levels(spec: str) -> tuple[float, ...]:
    """``0.1,0.5,1`` -> ``(0.1, 0.5, 1.0)`` (blanks dropped)."""
    try:
        return tuple(float(v) for v in spec.split(",") if v.strip())
    except ValueError:
        raise UserError(f"--levels {spec}: expected comma-separated numbers, e.g. 0.1,0.5,1") from None


def format_levels(levels: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in levels)


@dataclass(frozen=True)
class CompareOptions:
    """`landscape-mpi compare`: one table of sharpness numbers, one row per surface file."""

    files: tuple[str, ...] = option(help="surface files (.h5); partial files are measured over their done points",
                                    positional=True)
    metric: str = option("train_loss", help="the metric: train_loss, test_loss, ...")
    radius: float | None = option(None, help=f"grid max-rise radius (sampled lower bound of eps-sharpness) in grid "
                                             f"coordinates (default {DEFAULT_RADIUS:g}, or the largest grid step of "
                                             f"the files if larger)")
    levels: tuple[float, ...] = option(DEFAULT_LEVELS, help="basin levels: loss increases over the center's loss",
                                       parse=parse_levels, format=format_levels)
    json: bool = option(False, help="machine-readable output: a list of one dict per file")
