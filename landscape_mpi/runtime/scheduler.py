"""Master/worker scheduling of grid points across MPI ranks.

Rank 0 is the coordinator *and* evaluates points itself: between two of its own groups of points, and between
the evaluation batches of a group (`Master.tick`), it serves every pending request and writes due results, so no
rank (and no GPU) sits idle as a pure coordinator and a long point delays neither. Workers keep `PREFETCH` chunk
requests in flight, so they always hold the next chunk while computing the current one, and a faster rank
simply asks more often: dynamic load balancing with no collective per point. Every wait is a poll with a
short sleep (`Waiter`), never a busy spin, so an idle rank uses no CPU core.

The points still to do are one int64 array with a cursor (`Todo`), in coarse-to-fine order by default
(`point_order`): a partial file is a low-resolution picture of the whole surface at every moment. An adaptive
grid hands them out in rounds (`Master`'s `refill`): once every point of a round has come back, `refill` gives
the next round (chosen from the values, which `on_results` sees); a worker that asks while the round's last
points are being computed waits for the next round's chunk instead of being told that there is no more work.

A rank evaluates a chunk in groups of the evaluator's `group_size` points (several grid points per forward
for small models). A stop (signal, or the master's STOP) abandons the group in progress at the next batch
boundary (`StopRequested` from the evaluator's batch callback); its points are recomputed on resume.

Writing. ``--io single``: workers send finished points to rank 0, which writes them at least every
`flush_seconds`. ``--io collective``: every rank keeps its own finished points; at least every `flush_seconds`
rank 0 announces a collective write phase (PHASE), every rank joins at its next batch boundary and writes its
points (possibly none) in the same collective calls; a last phase follows the end of the work.

Messages (point-to-point, pickled, sent without blocking; MPI keeps their order between two ranks):
    worker -> master  RESULTS (results, wants_more)   finished points; wants_more asks for one chunk
    worker -> master  DONE    (stats, stopped)        the worker ends (stopped: it caught a stop signal)
    worker -> master  ERROR   message                 an exception: the master writes what it has, aborts
    master -> worker  WORK    int64 array             one chunk; empty means there is no more work
    master -> worker  STOP                            abandon the group in progress and stop
    master -> worker  PHASE   number                  join collective write phase `number`
    master -> worker  FINAL   status                  the run is over; every rank exits with this status
"""

from __future__ import annotations

import math
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from landscape_mpi.runtime.lifecycle import StopFlag, StopRequested, abort_after_grace, say

TAG_RESULTS, TAG_DONE, TAG_ERROR, TAG_WORK, TAG_STOP, TAG_FINAL, TAG_PHASE = range(11, 18)
PREFETCH = 2
MAX_AUTO_CHUNK = 16
STATUS_COMPLETE, STATUS_STOPPED = "complete", "stopped"

#: (flat grid index, column values, seconds the evaluation took)
PointResult = tuple[int, tuple[float, ...], float]


class PointEvaluator(Protocol):
    group_size: int
    on_batch: Callable[[float], None] | None

    def __call__(self, flats: np.ndarray) -> np.ndarray:
        """Values (len(flats), columns) of the grid points with these flat indices."""


# ------------------------------------------------------------------------------------------ order
def axis_levels(n: int) -> np.ndarray:
    """Refinement level of each index of an axis of `n` points: 0 for both ends, 1 for the middle, 2 for the
    middles of the two halves, and so on (recursive bisection), so that levels <= L form a nearly uniform
    sub-grid of 2^L + 1 points."""
    levels = np.full(n, -1, dtype=np.int8)
    if n == 1:
        levels[0] = 0
        return levels
    levels[[0, n - 1]] = 0
    intervals, level = [(0, n - 1)], 1
    while intervals:
        nxt = []
        for lo, hi in intervals:
            if hi - lo < 2:
                continue
            mid = (lo + hi) // 2
            levels[mid] = level
            nxt += [(lo, mid), (mid, hi)]
        intervals, level = nxt, level + 1
    return levels


def point_order(shape: tuple[int, ...], done: np.ndarray, order: str = "coarse") -> np.ndarray:
    """Flat indices of the points not done, in the order they are handed out (int64).

    ``rows``: flat index order. ``coarse``: the center first, then by refinement level (the corners, then the
    3^d grid, then successively finer strided sub-grids; within a level in flat order). A 201^3 grid costs
    about 80 MB and under a second here.
    """
    todo_mask = ~np.asarray(done, dtype=bool).ravel()
    if order == "rows":
        return np.flatnonzero(todo_mask).astype(np.int64)
    level = np.zeros(shape, dtype=np.int8)
    for axis, n in enumerate(shape):
        view = [1] * len(shape)
        view[axis] = n
        np.maximum(level, axis_levels(n).reshape(view), out=level)
    level = level.ravel()
    center = np.ravel_multi_index(tuple(n // 2 for n in shape), shape)
    level[center] = -1  # the center (theta* on a symmetric grid) first of all
    if todo_mask.all():  # a new grid: the sort's own result is the order (one int64 array)
        return np.argsort(level, kind="stable").astype(np.int64, copy=False)
    within = np.argsort(level[todo_mask], kind="stable")
    return np.flatnonzero(todo_mask)[within].astype(np.int64, copy=False)


class Todo:
    """The points still to hand out: an int64 array and a cursor (no per-point Python objects)."""

    def __init__(self, points: np.ndarray) -> None:
        self.points = np.asarray(points, dtype=np.int64)
        self.cursor = 0

    def __len__(self) -> int:
        return len(self.points) - self.cursor

    def take(self, n: int) -> np.ndarray:
        chunk = self.points[self.cursor:self.cursor + n]
        self.cursor += len(chunk)
        return chunk


# ------------------------------------------------------------------------------------------ helpers
class Waiter:
    """Non-busy wait: a few quick polls, then sleeps growing from 50 us to 2 ms between polls."""

    def __init__(self) -> None:
        self.idle = 0

    def reset(self) -> None:
        self.idle = 0

    def pause(self) -> None:
        self.idle += 1
        if self.idle > 20:
            time.sleep(min(2e-3, 5e-5 * 2 ** min(self.idle - 20, 6)))


class Outbox:
    """Non-blocking sends whose requests are kept until complete (no reliance on eager buffering)."""

    def __init__(self, comm) -> None:
        self.comm = comm
        self.pending: list = []

    def send(self, obj, dest: int, tag: int) -> None:
        self.pending.append(self.comm.isend(obj, dest=dest, tag=tag))
        if len(self.pending) > 64:
            self.progress()

    def progress(self) -> None:
        self.pending = [r for r in self.pending if not r.Test()]

    def drain(self, deadline_s: float = 60.0) -> None:
        end = time.monotonic() + deadline_s
        waiter = Waiter()
        while self.pending and time.monotonic() < end:
            self.progress()
            waiter.pause()


@dataclass
class RankStats:
    rank: int
    host: str = ""
    device: str = ""
    points: int = 0
    busy_seconds: float = 0.0
    """Seconds spent evaluating points."""
    wall_seconds: float = 0.0
    """Seconds from the start of scheduling to this rank's end."""
    cpu_seconds: float = 0.0
    """CPU time of the process over the same span (waiting costs none: see `Waiter`)."""
    abandoned: int = 0
    """Points abandoned at a stop (recomputed on resume)."""
    write_phases: int = 0
    """Collective write phases this rank took part in (--io collective: equal on every rank)."""

    def line(self) -> str:
        rate = self.points / self.busy_seconds if self.busy_seconds > 0 else float("nan")
        extra = f" {self.write_phases} write phases" if self.write_phases else ""
        extra += f" {self.abandoned} abandoned" if self.abandoned else ""
        return (f"  rank {self.rank:>4}  {self.host[:20]:<20} {self.device:<8} {self.points:>8} points "
                f"{self.busy_seconds:>9.1f} s busy {self.wall_seconds:>9.1f} s wall {self.cpu_seconds:>8.1f} s cpu "
                f"{rate:>9.2f} points/s{extra}")


@dataclass
class Outcome:
    status: str
    computed: int
    stats: list[RankStats] = field(default_factory=list)
    stop_reason: str = ""


class ResultSink:
    """Where finished points go: `add` them, `flush` them to the file at least every `flush_seconds`."""

    def __init__(self, write: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], None] | None,
                 n_columns: int, flush_seconds: float = 1.0) -> None:
        self._write = write
        self.n_columns = n_columns
        self.flush_seconds = flush_seconds
        self.pending: list[tuple[int, tuple[float, ...], int, float]] = []
        self.last_flush = time.monotonic()

    def add(self, results, rank: int) -> None:
        self.pending.extend((flat, values, rank, sec) for flat, values, sec in results)

    def due(self) -> bool:
        return time.monotonic() - self.last_flush >= self.flush_seconds

    def maybe_flush(self) -> None:
        if self.pending and self.due():
            self.flush()

    def flush(self, collective: bool = False) -> None:
        """Write what is pending; with `collective`, write even nothing (every rank takes part)."""
        self.last_flush = time.monotonic()
        if self._write is None or (not self.pending and not collective):
            self.pending.clear()
            return
        batch, self.pending = self.pending, []
        flat = np.array([p[0] for p in batch], dtype=np.int64)
        values = np.array([p[1] for p in batch], dtype=np.float64).reshape(len(batch), self.n_columns)
        ranks = np.array([p[2] for p in batch], dtype=np.int32)
        seconds = np.array([p[3] for p in batch], dtype=np.float64)
        self._write(flat, values, ranks, seconds)


def evaluate_group(evaluate: PointEvaluator, flats: np.ndarray) -> list[PointResult]:
    """Evaluate a group of points; seconds are the group's time shared equally among its points."""
    t0 = time.perf_counter()
    values = np.asarray(evaluate(flats), dtype=np.float64)
    seconds = (time.perf_counter() - t0) / len(flats)
    return [(int(f), tuple(float(v) for v in row), seconds) for f, row in zip(flats, values)]


def auto_chunk(left: int, size: int, group: int) -> int:
    """Guided self-scheduling: large chunks while much is left, single groups towards the end."""
    n = max(1, min(MAX_AUTO_CHUNK, math.ceil(left / (4 * size))))
    return max(group, n - n % group) if group > 1 else n


# ------------------------------------------------------------------------------------------ master
class Master:
    """Rank 0: hands out chunks on demand, evaluates points itself in between, collects every result.

    With a communicator of one rank (`comm.SELF`, or an MPI job of one rank) there is nobody to serve: rank 0
    evaluates every point alone, and a failure is raised to the caller (no MPI_Abort).
    """

    def __init__(self, comm, todo: np.ndarray, evaluate: PointEvaluator, sink: ResultSink,
                 stop: StopFlag, chunk_size: int = 0, on_progress: Callable[[int], None] | None = None,
                 collective: bool = False, stats: RankStats | None = None,
                 on_tick: Callable[[float], None] | None = None,
                 refill: Callable[[], np.ndarray] | None = None,
                 on_results: Callable[[list[PointResult]], None] | None = None) -> None:
        """`refill` (an adaptive grid): the next round's points once every point handed out has come back
        (empty: no more); `on_results`: sees every finished point (rank 0's and the workers'), in arrival order."""
        self.comm = comm
        self.size = comm.Get_size()
        #: other ranks to serve (False: evaluates alone, without touching MPI)
        self.has_workers = self.size > 1
        self.todo = Todo(todo)
        self.n_todo = len(self.todo)
        self.evaluate = evaluate
        self.group = max(1, getattr(evaluate, "group_size", 1))
        # a small grid is shared by every rank rather than taken by the first groups
        self.group = min(self.group, max(1, math.ceil(len(self.todo) / self.size)))
        self.sink = sink
        self.stop = stop
        self.chunk_size = chunk_size
        self.on_progress = on_progress or (lambda n: None)
        self.on_tick = on_tick
        self.collective = collective
        self.stats = {0: stats or RankStats(0)}
        self.stopping = False
        self.stop_reason = ""
        self.computed = 0
        self.workers_running = self.size - 1
        self.outbox = Outbox(comm)
        self.phase = 0
        self.refill = refill
        self.on_results = on_results or (lambda results: None)
        self.exhausted = refill is None  # no more points will come (a regular grid: the todo is all there is)
        self.evaluator_group = max(1, getattr(evaluate, "group_size", 1))
        self.waiting: list[int] = []  # workers whose request waits for the next round

    def next_chunk(self) -> np.ndarray | None:
        """The next chunk for a worker; None: none now, but the next round will have points (ask again then)."""
        if self.stopping or (not len(self.todo) and self.exhausted):
            return np.empty(0, dtype=np.int64)
        if not len(self.todo):
            return None
        left = len(self.todo)
        # At most an n-th of what is left: a worker keeps PREFETCH requests in flight, and two full groups of a
        # small grid handed to rank 1 of 2 ranks were the whole grid, leaving rank 0 (and rank 2...) nothing.
        n = self.chunk_size or min(auto_chunk(left, self.size, self.group), math.ceil(left / self.size))
        return self.todo.take(n)

    def answer(self, rank: int) -> None:
        """Send a worker its next chunk, or keep it waiting for the next round."""
        chunk = self.next_chunk()
        if chunk is None:
            self.waiting.append(rank)
        else:
            self.outbox.send(chunk, dest=rank, tag=TAG_WORK)

    def next_round(self) -> None:
        """Every point handed out has come back: the next round's points (`refill`), to rank 0 and the waiting
        workers; none: the run's last points are done, and the waiting workers are told so."""
        points = np.asarray(self.refill(), dtype=np.int64) if not self.stopping else np.empty(0, dtype=np.int64)
        self.exhausted = not len(points)
        self.todo = Todo(points)
        self.n_todo += len(points)
        self.group = min(self.evaluator_group, max(1, math.ceil(len(points) / self.size)))
        waiting, self.waiting = self.waiting, []
        for rank in waiting:
            self.answer(rank)

    def begin_stop(self, reason: str) -> None:
        if self.stopping:
            return
        self.stopping, self.stop_reason = True, reason
        self.stop.request(reason)
        for r in range(1, self.size):  # workers abandon the group in progress, report and end
            self.outbox.send(None, dest=r, tag=TAG_STOP)

    def serve(self) -> bool:
        """Handle every pending message; True if there was any."""
        from mpi4py import MPI

        status = MPI.Status()
        served = False
        while self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status):
            served = True
            src, tag = status.Get_source(), status.Get_tag()
            msg = self.comm.recv(source=src, tag=tag)
            if tag == TAG_RESULTS:
                results, wants_more = msg
                if results:
                    if not self.collective:
                        self.sink.add(results, src)
                    self.computed += len(results)
                    self.on_progress(len(results))
                if results:
                    self.on_results(results)
                if wants_more:
                    self.answer(src)
            elif tag == TAG_DONE:
                stats, stopped = msg
                self.stats[src] = stats
                self.workers_running -= 1
                if stopped:
                    self.begin_stop(f"rank {src} caught a stop signal")
            elif tag == TAG_ERROR:
                self.fail(f"rank {src} failed (its message is above)", msg)
        self.outbox.progress()
        return served

    def write_phase(self) -> None:
        """Announce and join a collective write phase (--io collective), or write due results (single)."""
        if not self.collective:
            self.sink.maybe_flush()
            return
        self.phase += 1
        for r in range(1, self.size):
            self.outbox.send(self.phase, dest=r, tag=TAG_PHASE)
        self.sink.flush(collective=True)
        self.stats[0].write_phases += 1

    def tick(self, fraction: float = 0.0) -> None:
        """Called between evaluation batches of rank 0's own points: serve workers, write due results, and
        abandon the group in progress if a stop was asked for."""
        if self.has_workers:
            self.serve()
        if self.sink.due():
            self.write_phase()
        if self.on_tick is not None:
            self.on_tick(fraction)
        self.stop.check()

    def fail(self, message: str, detail: str = "") -> None:
        """Write what is finished (single io), print the message, end every rank."""
        try:
            if not self.collective:
                self.sink.flush()
        finally:
            say(f"landscape-mpi: rank 0: error: {message}\n{detail}".rstrip())
            if self.has_workers:
                abort_after_grace(self.comm, 1)

    def run(self) -> Outcome:
        t0, cpu0 = time.perf_counter(), time.process_time()
        own = self.stats[0]
        waiter = Waiter()
        try:
            while True:
                if self.has_workers and self.serve():
                    waiter.reset()
                if self.stop.requested:
                    self.begin_stop(f"rank 0 caught {self.stop.signal_name}")
                if not self.stopping and not self.exhausted and not len(self.todo) and self.computed == self.n_todo:
                    self.next_round()
                if not self.stopping and len(self.todo):
                    flats = self.todo.take(self.group)
                    try:
                        results = evaluate_group(self.evaluate, flats)
                    except StopRequested:
                        own.abandoned += len(flats)
                        continue
                    own.points += len(results)
                    own.busy_seconds += sum(r[2] for r in results)
                    self.sink.add(results, 0)
                    self.on_results(results)
                    self.computed += len(results)
                    self.on_progress(len(results))
                    if self.sink.due():
                        self.write_phase()
                    continue
                if self.workers_running == 0:
                    break
                if self.sink.due():
                    self.write_phase()
                waiter.pause()
            if self.collective:
                self.write_phase()  # the last phase: every rank writes what it still holds
            else:
                self.sink.flush()
        except BaseException:
            if not self.has_workers:  # alone: write what is finished and let the caller report it
                if not self.collective:
                    self.sink.flush()
                raise
            self.fail("rank 0 failed", traceback.format_exc())
        own.wall_seconds = time.perf_counter() - t0
        own.cpu_seconds = time.process_time() - cpu0
        # Complete only if every point came back (chunks handed to a worker that stopped did not).
        status = STATUS_COMPLETE if self.computed == self.n_todo and self.exhausted else STATUS_STOPPED
        for r in range(1, self.size):
            self.outbox.send(status, dest=r, tag=TAG_FINAL)
        self.outbox.drain()
        stats = [self.stats[r] for r in sorted(self.stats)]
        return Outcome(status, self.computed, stats, self.stop_reason)


# ------------------------------------------------------------------------------------------ worker
class Worker:
    """Ranks 1..n-1: ask for chunks, evaluate, send results back; stop on a signal or the master's STOP."""

    def __init__(self, comm, evaluate: PointEvaluator, stop: StopFlag, local_sink: ResultSink | None = None,
                 stats: RankStats | None = None, report_seconds: float = 1.0) -> None:
        self.comm = comm
        self.rank = comm.Get_rank()
        self.evaluate = evaluate
        self.group = max(1, getattr(evaluate, "group_size", 1))
        self.stop = stop
        self.local_sink = local_sink  # --io collective: this rank's own points, written in phases
        self.stats = stats or RankStats(self.rank)
        self.report_seconds = report_seconds
        self.outbox = Outbox(comm)
        self.chunks: deque[np.ndarray] = deque()
        self.outstanding = 0
        self.no_more = False
        self.master_stop = False
        self.final: str | None = None

    def poll(self) -> None:
        """Handle every message from the master (work, stop, write phases, final)."""
        from mpi4py import MPI

        status = MPI.Status()
        while self.comm.Iprobe(source=0, tag=MPI.ANY_TAG, status=status):
            tag = status.Get_tag()
            msg = self.comm.recv(source=0, tag=tag)
            if tag == TAG_WORK:
                self.outstanding -= 1
                if len(msg):
                    self.chunks.append(msg)
                else:
                    self.no_more = True
            elif tag == TAG_STOP:
                self.master_stop = True
                self.stop.request("stop from rank 0")
            elif tag == TAG_PHASE:
                self.local_sink.flush(collective=True)
                self.stats.write_phases += 1
            elif tag == TAG_FINAL:
                self.final = msg
        self.outbox.progress()

    def tick(self, fraction: float = 0.0) -> None:
        """Between evaluation batches: join due write phases, abandon the group if a stop was asked for."""
        self.poll()
        self.stop.check()

    def run(self) -> str:
        t0, cpu0 = time.perf_counter(), time.process_time()
        current = np.empty(0, dtype=np.int64)
        finished: list[PointResult] = []
        last_report = time.monotonic()
        waiter = Waiter()

        def report(wants_more: bool) -> None:
            nonlocal finished, last_report
            if self.local_sink is not None:
                self.local_sink.add(finished, self.rank)
            self.outbox.send((finished, wants_more), dest=0, tag=TAG_RESULTS)
            self.outstanding += int(wants_more)
            finished, last_report = [], time.monotonic()

        try:
            for _ in range(PREFETCH):
                report(True)
            while True:
                self.poll()
                if self.stop.requested or self.master_stop:
                    break
                if not len(current) and self.chunks:
                    current = self.chunks.popleft()
                if len(current):
                    waiter.reset()
                    flats, current = current[:self.group], current[self.group:]
                    try:
                        results = evaluate_group(self.evaluate, flats)
                    except StopRequested:
                        self.stats.abandoned += len(flats)
                        break
                    self.stats.points += len(results)
                    self.stats.busy_seconds += sum(r[2] for r in results)
                    finished.extend(results)
                    if not len(current):  # chunk finished: report it and ask for the next one
                        report(not self.no_more)
                    elif time.monotonic() - last_report >= self.report_seconds:
                        report(False)  # a long chunk: do not hold finished points back
                    continue
                if self.no_more and self.outstanding == 0:
                    break
                waiter.pause()
            if finished:
                report(False)
            self.stats.wall_seconds = time.perf_counter() - t0
            self.stats.cpu_seconds = time.process_time() - cpu0
            self.outbox.send((self.stats, self.stop.requested and not self.master_stop), dest=0, tag=TAG_DONE)
            return self._await_final()
        except BaseException:
            detail = traceback.format_exc()
            say(f"landscape-mpi: rank {self.rank}: error: {detail}".rstrip())
            self.outbox.send(detail, dest=0, tag=TAG_ERROR)
            # The master writes what it has and aborts the job; if it cannot, abort from here after a grace period.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                self.outbox.progress()
                time.sleep(0.01)
            self.comm.Abort(1)
            raise

    def _await_final(self) -> str:
        waiter = Waiter()
        while self.final is None:
            before = self.stats.write_phases
            self.poll()  # answers to requests still in flight, and the last write phases
            if self.stats.write_phases != before:
                waiter.reset()
            waiter.pause()
        self.outbox.drain()
        return self.final
