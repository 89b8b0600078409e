"""Inputs read once per node: one rank of each node reads from the (shared) file system, the node's other ranks
receive the result over the node's shared-memory communicator.

N ranks per node would otherwise read the checkpoint, the evaluation data and the directions N times each,
which on a parallel file system under a large job is the slowest part of the start-up. Bytes read per node are
then independent of the ranks per node (docs/mpi.md#ranks-scheduling-devices).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import TypeVar

from landscape_mpi.config.errors import UserError

T = TypeVar("T")


def node_comm(comm):
    """The communicator of this rank's node (an MPI shared-memory split); `comm` itself when it has one rank
    (no split, and no mpi4py import, for a single process). Free it only if it is not `comm`."""
    if comm.Get_size() == 1:
        return comm
    from mpi4py import MPI

    return comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())


class Shared:
    """What the node's reading rank read, or the failure it met: `get()` returns the one or raises the other."""

    def __init__(self, kind: str, value) -> None:
        self.kind, self.value = kind, value

    def get(self):
        if self.kind == "user":
            raise UserError(self.value)
        if self.kind == "internal":
            raise RuntimeError(f"the node's reading rank failed: {self.value}")
        return self.value


def share_per_node(node, read: Callable[[], T]) -> Shared:
    """Run `read` on the node's first rank and hand the outcome to the node's other ranks; never raises.

    A collective of the node: call it where every rank of the node is sure to arrive, never inside an
    agree-or-fail step's body (a rank that failed before it would be waited for forever); raise the outcome
    with `Shared.get()` inside the step instead. Large results travel with mpi4py's pkl5 (no 2 GiB limit).
    """
    def attempt() -> Shared:
        try:
            return Shared("ok", read())
        except UserError as exc:
            return Shared("user", str(exc))
        except Exception as exc:  # noqa: BLE001  (the node's other ranks must hear of it)
            return Shared("internal", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")

    if node.Get_size() == 1:  # the reading rank is alone on its node: nothing to hand over
        return attempt()
    from mpi4py.util import pkl5

    pnode = pkl5.Intracomm(node)
    if node.Get_rank() == 0:
        shared = attempt()
        pnode.bcast((shared.kind, shared.value), root=0)
        return shared
    return Shared(*pnode.bcast(None, root=0))
