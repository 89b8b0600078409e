"""Fault injection and synchronization points for the test suite: one `Faults` object per process.

The environment is read once, where the run context is made (`Faults.from_environment`, called by
`context.make_context` and by the commands that train without one); the object then travels with the context
(`RunContext.faults`) to every place that has a fault point, the way the communicator does. Without a
`LANDSCAPE_MPI_TEST_*` variable it is `NO_FAULTS`, whose every method returns at once. The points let tests
*wait for events* (a file the program writes, a file the test releases) instead of time windows, and fail a
chosen rank at a chosen stage of a run (docs/testing.md#test-hooks-the-landscape_mpi_test_-variables).

Variables:

``LANDSCAPE_MPI_TEST_FAIL_AT="STAGE:RANK[,STAGE:RANK...]"``
    rank RANK raises `InjectedFault` when it reaches STAGE (RANK ``*``: every rank).
``LANDSCAPE_MPI_TEST_GATE="STAGE:PATH"``
    every rank that reaches STAGE creates ``PATH.reached.<rank>`` and then waits until PATH exists (the test
    creates it). Lets a test signal or kill a job at an exact moment. (``batch:K:PATH``, ``train_step:K:PATH``.)
    The coordinator (rank 0) keeps serving the other ranks while it waits (`serve_while_held`), so that a gate
    inside rank 0's point does not keep the others from getting theirs: every rank can be held inside a point.
    A held rank that catches a stop signal creates ``PATH.stopped.<rank>`` (holding the signal's name): the event
    a test waits for before it releases the gate, seen whatever the launcher does with the rank's output.
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
from collections.abc import Callable, Mapping

from landscape_mpi.runtime.lifecycle import STOP, write_whole

FAIL_AT = "LANDSCAPE_MPI_TEST_FAIL_AT"
GATE = "LANDSCAPE_MPI_TEST_GATE"
FAIL_POINTS = "LANDSCAPE_MPI_TEST_FAIL"
DELAY = "LANDSCAPE_MPI_TEST_DELAY"
BATCH_DELAY = "LANDSCAPE_MPI_TEST_BATCH_DELAY"
ALL = (FAIL_AT, GATE, FAIL_POINTS, DELAY, BATCH_DELAY)

STAGES = ("context", "lock", "preflight", "file", "engine", "writer_open", "first_point", "mid_run", "close")


class InjectedFault(RuntimeError):
    """Raised at a fault point; never a user error, so it exercises the internal-failure path."""


def _delay(spec: str, rank: int) -> float:
    """Seconds for `rank` from ``"S"`` or ``"S,R:S2"`` (S2 on rank R, S on the others)."""
    delay = 0.0
    for part in filter(None, spec.split(",")):
        if ":" in part:
            r, s = part.split(":")
            if int(r) == rank:
                return float(s)
        else:
            delay = float(part)
    return delay


class Faults:
    """The fault points of one rank, parsed once from the `LANDSCAPE_MPI_TEST_*` variables.

    `enabled` is False only for `NO_FAULTS` (no variable set): every method then returns at once.
    """

    def __init__(self, rank: int = 0, environ: Mapping[str, str] | None = None) -> None:
        env = {} if environ is None else environ
        self.rank = rank
        self.enabled = any(env.get(v) for v in ALL)
        #: the stages where this rank raises
        self.fail_at = set()
        for part in filter(None, env.get(FAIL_AT, "").split(",")):
            stage, _, r = part.rpartition(":")
            if r in ("*", str(rank)):
                self.fail_at.add(stage)
        #: (stage, path) of the gate, or None
        self.gate: tuple[str, str] | None = None
        spec = env.get(GATE, "")
        if spec:
            head, _, path = spec.partition(":")
            if head in ("batch", "train_step"):  # batch:K:PATH, train_step:K:PATH
                k, _, path = path.partition(":")
                head = f"{head}:{k}"
            self.gate = (head, path)
        fail = env.get(FAIL_POINTS, "")
        #: the number of points after which this rank raises, or None
        self.fail_after = int(fail.split(":")[1]) if fail and int(fail.split(":")[0]) == rank else None
        self.delay = _delay(env.get(DELAY, ""), rank)
        self.batch_delay = _delay(env.get(BATCH_DELAY, ""), rank)
        #: one point per evaluator call while per-point faults are set
        self.single_points = bool(env.get(DELAY) or env.get(FAIL_POINTS))
        #: called while this rank waits at the gate (the coordinator's `Master.serve`), or None
        self._while_held: Callable[[], object] | None = None

    @classmethod
    def from_environment(cls, rank: int, environ: Mapping[str, str] | None = None) -> Faults:
        """This rank's fault points from `environ` (default: the process's environment); `NO_FAULTS` when no
        `LANDSCAPE_MPI_TEST_*` variable is set."""
        env = os.environ if environ is None else environ
        if not any(env.get(v) for v in ALL):
            return NO_FAULTS
        return cls(rank, env)

    def reached(self, stage: str) -> None:
        """Called by the run at every stage; fails or waits there if a test asked for it."""
        if not self.enabled:
            return
        if stage in self.fail_at:
            raise InjectedFault(f"test hook: rank {self.rank} fails at stage {stage}")
        if self.gate is not None and self.gate[0] == stage:
            path = self.gate[1]
            write_whole(f"{path}.reached.{self.rank}", str(os.getpid()))  # a test that sees the file reads the pid
            stopped = False
            while not os.path.exists(path):
                if self._while_held is not None:
                    self._while_held()
                if STOP.requested and not stopped:  # the stop signal reached this held rank: a file says so
                    write_whole(f"{path}.stopped.{self.rank}", STOP.signal_name)
                    stopped = True
                time.sleep(0.01)

    def serve_while_held(self, serve: Callable[[], object] | None) -> None:
        """Call `serve` while this rank waits at the gate (the coordinator serving the other ranks' requests, as
        it does between its evaluation batches); None: just wait."""
        if self.enabled:
            self._while_held = serve

    def batch_hooks(self) -> BatchHooks:
        """Fresh per-batch and per-point hooks of this rank (their counters start at 0)."""
        return BatchHooks(self)


class BatchHooks:
    """The per-batch and per-point fault points of one rank, composed into the evaluator's callbacks."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self.enabled = faults.enabled
        self.single_points = faults.single_points
        self.batches = 0
        self.points = 0

    def on_batch(self) -> None:
        if not self.enabled:
            return
        self.batches += 1
        if self.faults.batch_delay:
            time.sleep(self.faults.batch_delay)
        self.faults.reached(f"batch:{self.batches}")

    def before_points(self, n: int) -> None:
        if not self.enabled:
            return
        fail_after = self.faults.fail_after
        if fail_after is not None and self.points >= fail_after:
            raise InjectedFault(f"test hook: rank {self.faults.rank} fails after {fail_after} points")
        self.faults.reached("first_point" if self.points == 0 else "point")
        if self.faults.delay:
            time.sleep(self.faults.delay * n)

    def after_points(self, n: int) -> None:
        if not self.enabled:
            return
        first = self.points == 0
        self.points += n
        if first:
            self.faults.reached("mid_run")


#: No fault points: what every production run carries.
NO_FAULTS = Faults()
