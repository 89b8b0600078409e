"""`landscape-mpi align --model M --checkpoint-a A --checkpoint-b B --out perm.h5`: weight matching of B's
hidden units to A's (landscape_mpi/alignment, docs/alignment.md); `Permutation.load(file).apply(state)` applies
the file to a state_dict."""

from __future__ import annotations

import argparse

from landscape_mpi.config.align import AlignConfig
from landscape_mpi.config.errors import EXIT_COMPLETE
from landscape_mpi.config.options import add_options, from_args


def cmd_align(a: argparse.Namespace) -> int:
    from landscape_mpi.alignment.run import align

    perm = align(from_args(AlignConfig, a))
    info, sweeps = perm.info, perm.info["sweeps"]
    print(f"{a.out}: {info['groups']} permutation groups ({sum(perm.spec.sizes.values())} units), {sweeps} "
          f"sweep{'s' if sweeps != 1 else ''}; summed inner products {info['objective_before']:.6g} -> "
          f"{info['objective_after']:.6g}")
    return EXIT_COMPLETE


def add_parser(sub) -> None:
    """Register `align` on the CLI's subparsers (called from landscape_mpi/cli/__init__.py); its options are the
    fields of `AlignConfig` (landscape_mpi/config/align.py)."""
    s = sub.add_parser("align", help="neuron alignment: weight matching of checkpoint B's units to A's")
    add_options(s, AlignConfig)
    s.set_defaults(func=cmd_align)
