"""Inputs read once per node: one rank of each node reads from the (shared) file system, the node's other ranks
receive the result over the node's shared-memory communicator.

N ranks per node would otherwise read the checkpoint, the evaluation data and the directions N times each,
which on a parallel file system under a large job is the slowest part of the start-up. Bytes read per node are
then independent of the ranks per node (README.md, "Running with MPI").
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import TypeVar

from landscape_mpi.errors import UserError

T = TypeVar("T")


def node_comm(comm):
    """The communicator of this rank's node (MPI shared-memory split), or None for a single process."""
    if comm is None or comm.Get_size() == 1:
        return None
    from mpi4py import MPI

    return comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())


def read_once_per_node(node, read: Callable[[], T]) -> T:
    """Run `read` on the node's first rank and hand its result to the node's other ranks.

    A failure of the reader reaches every rank of the node as the same exception type's message (a
    `UserError` stays a user error), so an agree-or-fail step around this call ends every rank together.
    Large results travel with mpi4py's pkl5 (no 2 GiB message limit).
    """
    if node is None or node.Get_size() == 1:
        return read()
    from mpi4py.util import pkl5

    pnode = pkl5.Intracomm(node)
    if node.Get_rank() == 0:
        try:
            payload = ("ok", read())
        except UserError as exc:
            payload = ("user", str(exc))
        except Exception as exc:  # noqa: BLE001  (the node's other ranks must hear of it)
            payload = ("internal", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        pnode.bcast(payload, root=0)
    else:
        payload = pnode.bcast(None, root=0)
    kind, value = payload
    if kind == "user":
        raise UserError(value)
    if kind == "internal":
        raise RuntimeError(f"the node's reading rank failed: {value}")
    return value
