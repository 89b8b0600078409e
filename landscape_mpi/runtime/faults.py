"""Fault injection and synchronization points for the test suite, read from the environment.

Nothing here runs unless a `LANDSCAPE_MPI_TEST_*` variable is set; production runs pay one dictionary lookup
per stage. The hooks let tests *wait for events* (a file the program writes, a file the test releases)
instead of time windows, and fail a chosen rank at a chosen stage of a run.

Variables (documented in README.md, "Testing"):

``LANDSCAPE_MPI_TEST_FAIL_AT="STAGE:RANK[,STAGE:RANK...]"``
    rank RANK raises `InjectedFault` when it reaches STAGE (RANK ``*``: every rank).
``LANDSCAPE_MPI_TEST_GATE="STAGE:PATH"``
    every rank that reaches STAGE creates ``PATH.reached.<rank>`` and then waits until PATH exists (the test
    creates it). Lets a test signal or kill a job at an exact moment.
``LANDSCAPE_MPI_TEST_FAIL="R:N"``
    rank R raises after evaluating N points.
``LANDSCAPE_MPI_TEST_DELAY="S"`` or ``"S,R:S2"``
    every point sleeps S seconds (S2 on rank R) before it is evaluated: a slow rank.
``LANDSCAPE_MPI_TEST_BATCH_DELAY="S"`` or ``"S,R:S2"``
    every evaluation batch sleeps S seconds: long points made of many batches.
With FAIL or DELAY set, a rank evaluates one point per call (no groups of points), so that "after N points"
and "S seconds per point" are exact.

Stages, in the order a surface run reaches them: ``context`` (ranks and device discovered), ``lock``,
``preflight`` (model, data, one forward), ``file`` (rank 0 creates or checks the file), ``engine`` (directions
loaded, evaluator built), ``writer_open``, ``first_point`` (before a rank's first point), ``mid_run`` (after a
rank's first point), ``batch:K`` (after the K-th evaluation batch of the rank, counted from 1), ``close``
(before the writer closes). Training (`landscape-mpi train`, the demo's training) reaches ``train_step:K`` after
its K-th optimizer step (GATE only).
"""

from __future__ import annotations

import os
import time

FAIL_AT = "LANDSCAPE_MPI_TEST_FAIL_AT"
GATE = "LANDSCAPE_MPI_TEST_GATE"
FAIL_POINTS = "LANDSCAPE_MPI_TEST_FAIL"
DELAY = "LANDSCAPE_MPI_TEST_DELAY"
BATCH_DELAY = "LANDSCAPE_MPI_TEST_BATCH_DELAY"
ALL = (FAIL_AT, GATE, FAIL_POINTS, DELAY, BATCH_DELAY)

STAGES = ("context", "lock", "preflight", "file", "engine", "writer_open", "first_point", "mid_run", "close")


class InjectedFault(RuntimeError):
    """Raised by a test hook; never a user error, so it exercises the internal-failure path."""


def active() -> bool:
    return any(os.environ.get(v) for v in ALL)


def reached(stage: str, rank: int) -> None:
    """Called by the run at every stage; fails or waits there if a test asked for it."""
    spec = os.environ.get(FAIL_AT, "")
    for part in filter(None, spec.split(",")):
        s, _, r = part.rpartition(":")
        if s == stage and r in ("*", str(rank)):
            raise InjectedFault(f"test hook: rank {rank} fails at stage {stage}")
    gate = os.environ.get(GATE, "")
    if gate:
        head, _, path = gate.partition(":")
        if head in ("batch", "train_step"):  # batch:K:PATH, train_step:K:PATH
            k, _, path = path.partition(":")
            head = f"{head}:{k}"
        if head == stage:
            with open(f"{path}.reached.{rank}", "w") as f:
                f.write(str(os.getpid()))
            while not os.path.exists(path):
                time.sleep(0.01)


def delay_for(variable: str, rank: int) -> float:
    """Seconds this rank sleeps per point (DELAY) or per batch (BATCH_DELAY)."""
    spec = os.environ.get(variable, "")
    delay = 0.0
    for part in filter(None, spec.split(",")):
        if ":" in part:
            r, s = part.split(":")
            if int(r) == rank:
                return float(s)
        else:
            delay = float(part)
    return delay


def fail_after_points(rank: int) -> int | None:
    spec = os.environ.get(FAIL_POINTS, "")
    if spec and int(spec.split(":")[0]) == rank:
        return int(spec.split(":")[1])
    return None


class BatchHooks:
    """The per-batch and per-point hooks of one rank, composed into the evaluator's callbacks."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.delay = delay_for(DELAY, rank)
        self.batch_delay = delay_for(BATCH_DELAY, rank)
        self.fail_after = fail_after_points(rank)
        #: one point per evaluator call while per-point hooks are set
        self.single_points = bool(os.environ.get(DELAY) or os.environ.get(FAIL_POINTS))
        self.batches = 0
        self.points = 0
        self.enabled = active()

    def on_batch(self) -> None:
        if not self.enabled:
            return
        self.batches += 1
        if self.batch_delay:
            time.sleep(self.batch_delay)
        reached(f"batch:{self.batches}", self.rank)

    def before_points(self, n: int) -> None:
        if not self.enabled:
            return
        if self.fail_after is not None and self.points >= self.fail_after:
            raise InjectedFault(f"test hook: rank {self.rank} fails after {self.fail_after} points")
        reached("first_point" if self.points == 0 else "point", self.rank)
        if self.delay:
            time.sleep(self.delay * n)

    def after_points(self, n: int) -> None:
        if not self.enabled:
            return
        first = self.points == 0
        self.points += n
        if first:
            reached("mid_run", self.rank)
