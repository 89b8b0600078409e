"""A rank's placement (landscape_mpi/runtime/groups.py): the group of ranks it evaluates a point with, a group of
one with --ranks-per-point 1, and what the surface job asks of it. Unit tests, in this process, with a recording
communicator; the groups of 2 under MPI (placement, engine, schedule) are in test_groups.py.

Oracles: the sends a leader must make, written out by hand; the grid's coordinates by nested loops."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest

from landscape_mpi.runtime.comm import SELF
from landscape_mpi.runtime.groups import ALONE, END, POINTS, TAG_GROUP, Followers, RankGroup, alone, make_groups, place


class Recorder:
    """A group communicator that records what is sent (`SelfComm` has no send: a group of one must not send)."""

    def __init__(self, size: int) -> None:
        self.size, self.sent = size, []

    def Get_size(self) -> int:
        return self.size

    def send(self, obj, dest: int, tag: int) -> None:
        self.sent.append((dest, tag, obj))


def test_a_rank_alone_is_a_group_of_one_led_by_itself():
    world = SimpleNamespace(Get_rank=lambda: 3, Get_size=lambda: 5)
    group = alone(world)
    assert (group.comm, group.rank, group.size, group.index, group.leaders) == (SELF, 0, 1, 3, world)
    assert group.is_leader and not group.shards
    assert group.where() == "5 rank(s)"  # the scheduler talks to every rank of the run
    assert (ALONE.size, ALONE.leaders, ALONE.index) == (1, SELF, 0)


@pytest.mark.parametrize("size, mode, shards", [(1, "shard", False), (1, "data", False), (2, "shard", True),
                                                (2, "data", False), (4, "shard", True)])
def test_only_a_group_of_two_or_more_in_shard_mode_shards(size, mode, shards):
    assert RankGroup(Recorder(size), 0, size, 0, SELF, mode=mode).shards is shards


def test_a_leader_names_the_points_to_each_follower_and_a_follower_or_a_rank_alone_to_none():
    comm = Recorder(3)
    leader = Followers(RankGroup(comm, 0, 3, 0, Recorder(2)))
    leader.points(np.array([4, 7]))
    leader.end("complete")
    assert [(dest, tag, kind) for dest, tag, (kind, _) in comm.sent] == [
        (1, TAG_GROUP, POINTS), (2, TAG_GROUP, POINTS), (1, TAG_GROUP, END), (2, TAG_GROUP, END)]
    assert all(np.array_equal(value, [4, 7]) and value.dtype == np.int64 for _, _, (kind, value) in comm.sent
               if kind == POINTS)
    assert [value for _, _, (kind, value) in comm.sent if kind == END] == ["complete", "complete"]
    follower_comm = Recorder(3)
    follower = Followers(RankGroup(follower_comm, 1, 3, 0, None))
    follower.points(np.array([4]))
    follower.end("complete")
    assert follower_comm.sent == []
    alone_one = Followers(alone(SELF))  # SELF has no send: any send would raise AttributeError
    alone_one.points(np.array([1, 2]))
    alone_one.end("stopped")


def test_placing_a_rank_alone_needs_no_mpi(monkeypatch):
    """--ranks-per-point 1: no node split, no process group, no mpi4py (a single process never loads MPI)."""
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # any import of mpi4py now raises ImportError
    ctx = SimpleNamespace(comm=SELF, rank=0, size=1, device=SimpleNamespace(type="cpu"))
    group = place(ctx, 1, "data", 5.0)
    assert group.size == 1 and group.is_leader and group.leaders is SELF and not group.shards
    with pytest.raises(ImportError):  # the check above can fail: making groups of 2 does import it
        make_groups(SELF, SELF, 2)


def test_flat_indices_map_to_the_files_coordinates():
    from landscape_mpi.surface.run import GridEvaluator

    coords = [np.linspace(-1, 1, 3), np.array([0.0, 0.25, 0.5, 2.0])]
    grid = SimpleNamespace(coords=coords, shape=(3, 4))
    flats = np.array([0, 5, 11, 3, 8])
    got = GridEvaluator.coefficients(grid, flats)
    want = []
    for flat in flats:  # C order: the last axis runs fastest
        i, j = divmod(int(flat), 4)
        want.append([coords[0][i], coords[1][j]])
    assert got.shape == (5, 2) and np.array_equal(got, np.array(want))
