"""The communicator of a process that runs alone: MPI.COMM_SELF's behaviour without MPI.

A run without an MPI launcher gets `SELF` as its communicator (`context.make_context`), so the code that
exchanges values between ranks is the same for one process and for many: a gather of one value is a list of
that value, a broadcast returns what the root passed, a reduction copies. Nothing here imports mpi4py, so a
single process (and `landscape-mpi info`) never loads MPI. Only the calls the package makes are provided, with
mpi4py's names and signatures; where a size of 1 changes what a run does (no peers to serve, no MPI_Abort
needed), the code asks ``comm.Get_size() == 1`` explicitly.
"""

from __future__ import annotations

import os


class SelfComm:
    """A communicator of one rank (rank 0 of size 1), as mpi4py's MPI.COMM_SELF behaves for these calls."""

    def Get_rank(self) -> int:
        return 0

    def Get_size(self) -> int:
        return 1

    # lower-case: Python objects (pickled under MPI)
    def bcast(self, obj, root: int = 0):
        return obj

    def gather(self, obj, root: int = 0) -> list:
        return [obj]

    def allgather(self, obj) -> list:
        return [obj]

    def allreduce(self, obj, op=None):
        return obj

    def barrier(self) -> None:
        pass

    # upper-case: buffers (numpy arrays)
    def Bcast(self, buf, root: int = 0) -> None:
        """The root's buffer is everyone's: nothing to do."""

    def Allreduce(self, sendbuf, recvbuf, op=None) -> None:
        """The reduction over one rank: a copy of `sendbuf` into `recvbuf` (any op)."""
        recvbuf[...] = sendbuf

    def Barrier(self) -> None:
        pass

    # communicators
    def Split(self, color: int = 0, key: int = 0) -> SelfComm:
        return self

    def Split_type(self, split_type=None, key: int = 0, info=None) -> SelfComm:
        return self

    def Free(self) -> None:
        """COMM_SELF-like: nothing to free (callers free only what they split)."""

    def Abort(self, errorcode: int = 1) -> None:
        """End this process at once with `errorcode`, as MPI_Abort ends a job of one rank."""
        os._exit(errorcode)

    def as_mpi(self):
        """mpi4py's MPI.COMM_SELF, for what needs a real communicator (parallel HDF5 under --io collective).
        Imports mpi4py, and so initializes MPI."""
        from mpi4py import MPI

        return MPI.COMM_SELF

    def __repr__(self) -> str:
        return "SelfComm()"


#: The communicator of every process that was not started by an MPI launcher.
SELF = SelfComm()


def mpi_communicator(comm):
    """`comm` as an mpi4py communicator: itself if it is one, MPI.COMM_SELF for `SELF` (imports mpi4py)."""
    return comm.as_mpi() if isinstance(comm, SelfComm) else comm
