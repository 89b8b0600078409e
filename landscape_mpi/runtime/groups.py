"""Where each rank evaluates (--ranks-per-point G): its placement, the group of ranks it evaluates a point with.

Every rank has a placement (`place`). With G = 1 it is a group of one (`alone`), as `comm.SELF` is the
communicator of a process run alone, so the jobs have no "no group" branch. With G > 1 the world is split into
groups of G ranks on one node, and each group evaluates a point together (the model sharded over the group, or
the split divided among it: `landscape_mpi.engine.group`). A group's first rank, the leader, is the group's
voice: the leaders form the communicator the master/worker scheduler runs on (`leaders`; with G = 1 every rank
is a leader and `leaders` is the run's communicator), so the master hands points to groups, and the leader
writes. The other members (followers) wait for their leader's next command (`Followers`, `follow`).

Inside a group, the tensors travel over a torch.distributed process group (gloo on CPU, NCCL on GPU) built
from the MPI launch: the leader opens a TCP store on the loopback address (a group never leaves its node), the
members join it, and every collective has the `--group-timeout`, so a member that died cannot leave the others
waiting forever (and `mpiexec` ends the job when a rank dies). The MPI group communicator carries the
commands (which points, or the end and the run's status).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import numpy as np

from landscape_mpi.config.errors import UserError
from landscape_mpi.runtime.comm import SELF
from landscape_mpi.runtime.lifecycle import agree
from landscape_mpi.runtime.sharing import node_comm

TAG_GROUP = 31
#: Commands a leader sends its followers.
POINTS, END = "points", "end"


@dataclass
class RankGroup:
    """This rank's placement: the group of ranks it evaluates each point with, its rank in it, the leaders'
    communicator, and how the model is spread over the group (`mode`, --group-mode)."""

    comm: object
    """The group's communicator (`comm.SELF` for a group of one)."""
    rank: int
    size: int
    index: int
    """The group's number (0 holds world rank 0, the master)."""
    leaders: object | None
    """The communicator of the groups' leaders (None on a follower): the ranks the scheduler talks to."""
    backend: str = ""
    mode: str = "shard"

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    @property
    def shards(self) -> bool:
        """Each member holds only its rows of the model (--group-mode shard in a group of 2 or more)."""
        return self.size > 1 and self.mode == "shard"

    def where(self) -> str:
        """Who evaluates the points, for the log (on a leader): "N rank(s)" or "N group(s) of G ranks"."""
        n = self.leaders.Get_size()
        return f"{n} rank(s)" if self.size == 1 else f"{n} group(s) of {self.size} ranks"


def alone(comm) -> RankGroup:
    """The placement of a rank that evaluates its points by itself (--ranks-per-point 1): a group of one,
    whose leader is the rank itself and whose leaders are every rank of `comm`."""
    return RankGroup(SELF, 0, 1, comm.Get_rank(), comm)


#: The placement of a process that evaluates alone (a default for library calls outside a job).
ALONE = alone(SELF)


def place(ctx, ranks_per_point: int, mode: str = "shard", timeout_s: float = 600.0, node=None) -> RankGroup:
    """This rank's placement in the run `ctx` (a `context.RunContext`): `alone` for --ranks-per-point 1, else
    its group of `ranks_per_point` ranks of its node, with the group's torch.distributed process group
    (`init_process_group`; `close_process_group` at the end of the job). `node`: the node's communicator if
    the caller has one (`sharing.node_comm`). Collective over ctx.comm; a node whose ranks do not divide into
    groups ends every rank with one line (agree-or-fail)."""
    if ranks_per_point == 1:
        return alone(ctx.comm)
    node = node if node is not None else node_comm(ctx.comm)
    ranks_per_node = ctx.comm.allgather(node.Get_size())
    agree(ctx.comm, lambda: check_layout(ranks_per_node, ranks_per_point), ctx.rank)
    group = make_groups(ctx.comm, node, ranks_per_point, mode)
    init_process_group(group, ctx.device.type, timeout_s)
    return group


def check_layout(ranks_per_node: list[int], size: int) -> None:
    """UserError unless every node's ranks (`ranks_per_node`, one entry per rank) divide into groups of `size`."""
    bad = sorted({c for c in ranks_per_node if c % size})
    if bad:
        raise UserError(f"--ranks-per-point {size}: a group stays on one node, and a node runs {bad[0]} rank(s); "
                        f"launch a multiple of {size} ranks per node (e.g. mpiexec --map-by ppr:{size}:node)")


def make_groups(comm, node, size: int, mode: str = "shard") -> RankGroup:
    """Split `comm` (the world) into groups of `size` consecutive ranks of one node (`node`: the node's
    communicator; `check_layout` passed). Collective over `comm`."""
    from mpi4py import MPI

    local, per_node = node.Get_rank(), node.Get_size()
    # colour: (first world rank of the node, block of the node) -> groups numbered in world order
    node_first = node.allreduce(comm.Get_rank(), op=MPI.MIN)
    colour = node_first * per_node + local // size
    group = comm.Split(colour, key=comm.Get_rank())
    rank = group.Get_rank()
    leaders = comm.Split(0 if rank == 0 else MPI.UNDEFINED, key=comm.Get_rank())
    index = group.bcast(leaders.Get_rank() if rank == 0 else None, root=0)
    return RankGroup(group, rank, size, index, leaders if rank == 0 else None, mode=mode)


def init_process_group(group: RankGroup, device_type: str, timeout_s: float) -> str:
    """The torch.distributed default process group of this rank's group (gloo on CPU, NCCL on CUDA), from the
    MPI group: a TCP store on the leader's loopback address. Returns the backend's name."""
    import torch.distributed as dist

    backend = "nccl" if device_type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    if group.is_leader:
        store = dist.TCPStore("127.0.0.1", 0, group.size, is_master=True, timeout=timeout, wait_for_workers=False)
        group.comm.bcast(store.port, root=0)
    else:
        port = group.comm.bcast(None, root=0)
        store = dist.TCPStore("127.0.0.1", port, group.size, is_master=False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=group.rank, world_size=group.size, timeout=timeout)
    group.backend = backend
    return backend


def close_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


class Followers:
    """The leader's side: tell the group's other members which points to evaluate, or that the run ended
    (nothing to tell in a group of one, nor from a follower)."""

    def __init__(self, group: RankGroup) -> None:
        self.group = group
        self.ranks = range(1, group.size) if group.is_leader else range(0)

    def points(self, flats: np.ndarray) -> None:
        for r in self.ranks:
            self.group.comm.send((POINTS, np.asarray(flats, dtype=np.int64)), dest=r, tag=TAG_GROUP)

    def end(self, status: str) -> None:
        for r in self.ranks:
            self.group.comm.send((END, status), dest=r, tag=TAG_GROUP)


def follow(group: RankGroup, evaluate, stopped_exception: type[BaseException], pause) -> str:
    """A follower's loop: evaluate the points the leader names (with the group: `evaluate(flats)`), until the
    leader sends the end; returns the run's status. A stop the group agreed on mid-point (`stopped_exception`)
    abandons the point, as on the leader. `pause()` waits a little between two polls (no busy spin)."""
    from mpi4py import MPI

    while True:
        while not group.comm.Iprobe(source=0, tag=TAG_GROUP):
            pause()
        kind, value = group.comm.recv(source=0, tag=TAG_GROUP, status=MPI.Status())
        if kind == END:
            return value
        try:
            evaluate(value)
        except stopped_exception:
            pass
