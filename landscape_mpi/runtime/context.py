"""Discover the launch (MPI or not), this rank's place on its node, and its device.

Everything else receives the resulting `RunContext`: its communicator (mpi4py's COMM_WORLD, or `comm.SELF` for
a process started without an MPI launcher) and its fault points (`faults.NO_FAULTS` unless a test set them);
nothing else imports mpi4py at module level or reads the test variables.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from landscape_mpi.config.errors import UserError
from landscape_mpi.runtime.comm import SELF
from landscape_mpi.runtime.faults import NO_FAULTS, Faults
from landscape_mpi.runtime.sharing import node_comm

# Variables that MPI launchers set in every rank's environment.
_MPI_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK", "MPI_LOCALNRANKS", "HYDRA_CONTROL_FD")


@dataclass
class RunContext:
    """Where this process stands: its rank among `size`, its place on its node, and its device."""

    comm: object
    """The run's communicator: mpi4py's COMM_WORLD under an MPI launcher, else `comm.SELF` (one rank)."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    """This rank's index among the ranks on its node (an MPI shared-memory split)."""
    local_size: int = 1
    host: str = ""
    device: torch.device = torch.device("cpu")
    threads: int = 1
    faults: Faults = NO_FAULTS
    """This rank's fault points (`Faults.from_environment`): `NO_FAULTS` outside the test suite."""

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
    Threads: `threads` if given, else `default_threads` (OMP_NUM_THREADS, SLURM_CPUS_PER_TASK, the CPU set).

    Collective under MPI (a node split and one allgather), and agree-or-fail: if choosing the device fails on
    any rank (`--device cuda` on a node whose GPU is missing), every rank raises the same error naming that
    rank and its host, so no rank is left waiting in a later collective. With `--device auto`, rank 0 prints
    a warning when some ranks found no GPU while others use one (the CPU ranks would be the slow ones).

    Raises:
        UserError: a launch mistake (srun without a PMI plugin; no GPU for --device cuda in a single process).
        lifecycle.AgreedError: under MPI, raised on every rank when choosing the device failed on some rank,
            naming that rank and its host (`internal` for a GPU that cannot be selected, else a user error).
        RuntimeError: in a single process, a GPU that cannot be selected.
    """
    comm = _mpi_comm() if launched_under_mpi() else SELF
    rank, size = comm.Get_rank(), comm.Get_size()
    cpus = _affinity()
    node = node_comm(comm)
    local_rank, local_size = node.Get_rank(), node.Get_size()
    node_cpus = node.allgather(cpus)  # which ranks of this node share a CPU set
    if node is not comm:
        node.Free()
    slurm_tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS", "1") or 1)
    if size == 1 and slurm_tasks > 1:
        raise UserError(f"srun started {slurm_tasks} tasks but MPI sees 1 rank each: add --mpi=pmix (Open MPI) "
                        f"or --mpi=pmi2 (MPICH) to srun, or launch with mpirun inside the allocation")

    host = socket.gethostname()
    dev, error = torch.device("cpu"), None
    try:
        dev = choose_device(device, local_rank)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
    except UserError as exc:
        error = ("user", str(exc))
    except Exception as exc:  # noqa: BLE001  (a broken GPU on one rank must reach every rank)
        error = ("internal", f"{type(exc).__name__}: {exc}")
    ranks = comm.allgather((dev.type, host, error))
    failed = [(r, h, e) for r, (_, h, e) in enumerate(ranks) if e is not None]
    if failed:
        r, h, (kind, message) = failed[0]
        if size == 1:
            raise (UserError if kind == "user" else RuntimeError)(message)
        from landscape_mpi.runtime.lifecycle import AgreedError  # every rank raises it: rank 0 prints it once

        raise AgreedError(f"rank {r} ({h}): {message}", internal=(kind == "internal"))
    warning = device_warning(device, [(kind, h) for kind, h, _ in ranks])
    if warning and rank == 0:
        print(f"landscape-mpi: warning: {warning}", file=sys.stderr, flush=True)

    threads = threads or default_threads(cpus, node_cpus)
    torch.set_num_threads(threads)
    return RunContext(comm, rank, size, local_rank, local_size, host, dev, threads, Faults.from_environment(rank))


def choose_device(device: str, local_rank: int) -> torch.device:
    """GPU `local_rank % visible GPUs` for auto/cuda when CUDA is available, else the CPU.

    With one GPU per task (CUDA_VISIBLE_DEVICES set per rank by the scheduler) every rank gets cuda:0, its own.

    Raises:
        UserError: `device` is "cuda" and this process sees no CUDA GPU.
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible to this rank "
                        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
                        f"use --device cpu or request GPUs from the scheduler")
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def device_warning(option: str, ranks: Sequence[tuple[str, str]]) -> str | None:
    """The warning for `--device auto` when some ranks landed on the CPU while others have a GPU, else None.

    `ranks[r]` is (device type, host) of rank r. A CPU rank among GPU ranks is usually a node whose GPUs are
    not visible (CUDA_VISIBLE_DEVICES, a missing --gpus-per-task, a broken driver) and is many times slower.
    """
    if option != "auto":
        return None
    cpu = [r for r, (kind, _) in enumerate(ranks) if kind == "cpu"]
    if not cpu or len(cpu) == len(ranks):
        return None
    hosts = sorted({ranks[r][1] for r in cpu})
    shown = ", ".join(map(str, cpu[:8])) + (f" and {len(cpu) - 8} more" if len(cpu) > 8 else "")
    return (f"--device auto: rank(s) {shown} on {', '.join(hosts[:4])} found no GPU and run on the CPU while "
            f"{len(ranks) - len(cpu)} rank(s) use GPUs; they will be the slow ones. Check the GPUs those "
            f"nodes expose (CUDA_VISIBLE_DEVICES, --gpus-per-task), or pass --device cuda to stop instead")


def _affinity() -> frozenset[int]:
    """The CPUs this process may run on (its affinity mask; every CPU where the OS has no masks)."""
    try:
        return frozenset(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return frozenset(range(os.cpu_count() or 1))


def default_threads(cpus: frozenset[int] | None = None, node_cpus: Sequence[frozenset[int]] | None = None,
                    environ: Mapping[str, str] | None = None) -> int:
    """torch CPU threads for this rank, in order of precedence:

    1. OMP_NUM_THREADS, when set: the user (or the site) chose;
    2. SLURM_CPUS_PER_TASK, when set: the cores SLURM allocated to this task (at most the CPUs it may use);
    3. this rank's CPU set (`cpus`, its affinity mask) as it is, when it is its own: a launcher or SLURM bound
       the rank (`--bind-to core`, `--cpu-bind`), so the set is already this rank's share;
    4. the same set divided among the ranks of this node that share it (`node_cpus`: every node-local rank's
       set): unbound ranks all see the node's (or the allocation's) cores, and split them.

    Comparing the sets of the node's ranks, rather than the set with the node's core count, keeps a container
    or a cgroup (where an unbound rank's set is smaller than the machine) from counting as a binding.
    """
    env = os.environ if environ is None else environ
    cpus = _affinity() if cpus is None else cpus
    node_cpus = [cpus] if node_cpus is None else node_cpus
    for name, cap in (("OMP_NUM_THREADS", None), ("SLURM_CPUS_PER_TASK", len(cpus))):
        value = env.get(name, "").strip().split(",")[0]
        if value.isdigit() and int(value) > 0:
            return min(int(value), cap) if cap else int(value)
    sharing = sum(1 for other in node_cpus if other == cpus)
    return max(1, len(cpus) // max(1, sharing))
