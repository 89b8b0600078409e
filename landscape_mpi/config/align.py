"""`AlignConfig`: the options of `landscape-mpi align` (neuron alignment by weight matching, docs/alignment.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from landscape_mpi.config.options import literal_values, option

Unsupported = Literal["error", "leave"]
UNSUPPORTED: tuple[Unsupported, ...] = literal_values(Unsupported)


@dataclass(frozen=True)
class AlignConfig:
    """Weight matching of checkpoint B's hidden units to checkpoint A's; the permutation goes to `out`."""

    model: str = option(help="zoo name (landscape-mpi models) or package.module:factory, as in surface")
    checkpoint_a: str = option(help="checkpoint A, the reference: its units stay where they are")
    checkpoint_b: str = option(help="checkpoint B, whose units are permuted to match A's")
    out: str = option(help="the permutation file (.h5) to write (docs/alignment.md#the-permutation-file)")
    dataset: str = option("digits", help="the data of one example batch that the model is traced on (the groups "
                                         "come from that forward pass): digits, mnist1d, cifar10, text or "
                                         "package.module:factory")
    data_root: str | None = option(None, help="folder holding cifar-10-batches-py/ (never downloaded)")
    seed: int = option(0, help="seed of the order in which weight matching visits the groups")
    max_sweeps: int = option(100, help="weight matching stops after a sweep without improvement or after this "
                                       "many sweeps")
    unsupported: Unsupported = option("error", help="an operation the aligner does not understand on a hidden "
                                                    "axis: error (one line naming the module) or leave (those "
                                                    "units stay unpermuted)")
