"""Discover the launch (MPI or not), this rank's place on its node, and its device.

Everything else receives the resulting `RunContext`; nothing else imports mpi4py at module level.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch

from landscape_mpi.errors import UserError

# Variables that MPI launchers set in every rank's environment.
_MPI_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK", "MPI_LOCALNRANKS", "HYDRA_CONTROL_FD")


@dataclass
class RunContext:
    """Where this process stands: its rank among `size`, its place on its node, and its device."""

    comm: object | None
    """The MPI communicator (mpi4py COMM_WORLD), or None for a plain single process."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    """This rank's index among the ranks on its node (an MPI shared-memory split)."""
    local_size: int = 1
    host: str = ""
    device: torch.device = torch.device("cpu")
    threads: int = 1

    @property
    def is_master(self) -> bool:
        return self.rank == 0


def launched_under_mpi() -> bool:
    """True if an MPI launcher started this process (or LANDSCAPE_MPI=1 forces MPI)."""
    forced = os.environ.get("LANDSCAPE_MPI", "").strip().lower()
    if forced in ("0", "off", "no"):
        return False
    if forced in ("1", "on", "yes"):
        return True
    return any(v in os.environ for v in _MPI_ENV)


def _mpi_comm():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise UserError(f"launched under MPI but mpi4py cannot be imported ({exc}); pip install mpi4py "
                        f"(built for this MPI) or run without mpiexec") from None
    return MPI.COMM_WORLD


def make_context(device: str = "auto", threads: int | None = None) -> RunContext:
    """Build the context: ranks from MPI (if launched under it), device from the node-local rank.

    The GPU is chosen by the node-local rank (not the global rank), modulo the GPUs this process sees, so
    CUDA_VISIBLE_DEVICES and one-GPU-per-task allocations (where each rank sees exactly one) both work.
    CPU ranks split the node's cores between them unless `threads` is given.
    """
    comm = _mpi_comm() if launched_under_mpi() else None
    rank, size, local_rank, local_size = 0, 1, 0, 1
    if comm is not None:
        from mpi4py import MPI

        rank, size = comm.Get_rank(), comm.Get_size()
        node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
        local_rank, local_size = node.Get_rank(), node.Get_size()
        node.Free()
    slurm_tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS", "1") or 1)
    if size == 1 and slurm_tasks > 1:
        raise UserError(f"srun started {slurm_tasks} tasks but MPI sees 1 rank each: add --mpi=pmix (Open MPI) "
                        f"or --mpi=pmi2 (MPICH) to srun, or launch with mpirun inside the allocation")

    dev = choose_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    threads = threads or default_threads(local_size)
    torch.set_num_threads(threads)
    return RunContext(comm, rank, size, local_rank, local_size, socket.gethostname(), dev, threads)


def choose_device(device: str, local_rank: int) -> torch.device:
    """GPU `local_rank % visible GPUs` for auto/cuda when CUDA is available, else the CPU.

    With one GPU per task (CUDA_VISIBLE_DEVICES set per rank by the scheduler) every rank gets cuda:0, its own.
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible to this rank "
                        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
                        f"use --device cpu or request GPUs from the scheduler")
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def default_threads(local_size: int) -> int:
    """torch CPU threads per rank: this process's cores shared among the ranks on its node."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    # The affinity mask is the node's (or the allocation's) cores unless the launcher bound this rank.
    return max(1, cores // local_size)
