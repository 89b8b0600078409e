"""Master/worker scheduling of grid points across MPI ranks.

Rank 0 is the coordinator *and* evaluates points itself: between two of its own points, and between the
evaluation batches of a point (`Master.tick`), it serves every pending request and writes due results, so no
rank (and no GPU) sits idle as a pure coordinator and a long point delays neither. Workers keep `PREFETCH` chunk
requests in flight, so they always hold the next chunk while computing the current one, and a faster rank
simply asks more often: dynamic load balancing with no collective per point. Every wait is a poll with a
short sleep (`Waiter`), never a busy spin, so an idle rank uses no CPU core.

Messages (point-to-point, pickled; MPI keeps their order between two ranks):
    worker -> master  RESULTS (results, wants_more)   finished points; wants_more asks for one chunk
    worker -> master  DONE    (stats, stopped)        the worker ends (stopped: it caught a stop signal)
    worker -> master  ERROR   message                 an exception: the master writes what it has, aborts
    master -> worker  WORK    [flat indices]          one chunk; [] means there is no more work
    master -> worker  STOP                            stop after the point in progress
    master -> worker  FINAL   status                  the run is over; every rank exits with this status
"""

from __future__ import annotations

import math
import signal
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

TAG_RESULTS, TAG_DONE, TAG_ERROR, TAG_WORK, TAG_STOP, TAG_FINAL = range(11, 17)
PREFETCH = 2
MAX_AUTO_CHUNK = 16
STATUS_COMPLETE, STATUS_STOPPED = "complete", "stopped"

#: (flat grid index, metric values, seconds the evaluation took)
PointResult = tuple[int, tuple[float, ...], float]


class StopFlag:
    """Set by SIGTERM, SIGINT or SIGUSR1 (SLURM's warning signal): finish the point in progress, then stop.

    A second SIGINT interrupts at once (KeyboardInterrupt), for an impatient Ctrl-C.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def install(self) -> "StopFlag":
        for s in self.SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def uninstall(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


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

    def line(self) -> str:
        rate = self.points / self.busy_seconds if self.busy_seconds > 0 else float("nan")
        return (f"  rank {self.rank:>4}  {self.host[:20]:<20} {self.device:<8} {self.points:>8} points "
                f"{self.busy_seconds:>9.1f} s busy {self.wall_seconds:>9.1f} s wall {self.cpu_seconds:>8.1f} s cpu "
                f"{rate:>9.2f} points/s")


@dataclass
class Outcome:
    status: str
    computed: int
    stats: list[RankStats] = field(default_factory=list)
    stop_reason: str = ""


class ResultSink:
    """Where finished points go: `add` them, `flush` them to the file at least every `flush_seconds`."""

    def __init__(self, write: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], None] | None,
                 n_metrics: int, flush_seconds: float = 1.0) -> None:
        self._write = write
        self.n_metrics = n_metrics
        self.flush_seconds = flush_seconds
        self.pending: list[tuple[int, tuple[float, ...], int, float]] = []
        self.last_flush = time.monotonic()

    def add(self, results: Sequence[PointResult], rank: int) -> None:
        self.pending.extend((flat, values, rank, sec) for flat, values, sec in results)

    def maybe_flush(self) -> None:
        if self.pending and time.monotonic() - self.last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.pending or self._write is None:
            self.pending.clear()
            return
        batch, self.pending = self.pending, []
        flat = np.array([p[0] for p in batch], dtype=np.int64)
        values = np.array([p[1] for p in batch], dtype=np.float64).reshape(len(batch), self.n_metrics)
        ranks = np.array([p[2] for p in batch], dtype=np.int32)
        seconds = np.array([p[3] for p in batch], dtype=np.float64)
        self._write(flat, values, ranks, seconds)


def timed(evaluate: Callable[[int], Sequence[float]], flat: int) -> PointResult:
    t0 = time.perf_counter()
    values = tuple(float(v) for v in evaluate(flat))
    return flat, values, time.perf_counter() - t0


class Master:
    """Rank 0: hands out chunks on demand, evaluates points itself in between, collects every result."""

    def __init__(self, comm, todo: Sequence[int], evaluate: Callable[[int], Sequence[float]], sink: ResultSink,
                 stop: StopFlag, chunk_size: int = 0, on_progress: Callable[[int], None] | None = None,
                 worker_results_to_sink: bool = True, stats: RankStats | None = None,
                 evaluates: bool = True) -> None:
        self.comm = comm
        self.size = comm.Get_size() if comm is not None else 1
        self.todo = deque(int(i) for i in todo)
        self.n_todo = len(self.todo)
        self.evaluate = evaluate
        self.sink = sink
        self.stop = stop
        self.chunk_size = chunk_size
        self.on_progress = on_progress or (lambda n: None)
        self.worker_results_to_sink = worker_results_to_sink
        self.stats = {0: stats or RankStats(0)}
        self.stopping = False
        self.stop_reason = ""
        self.computed = 0
        self.workers_running = self.size - 1
        # evaluates=False: a dedicated coordinator that only serves (used by the benchmark); a single process
        # always evaluates.
        self.evaluates = evaluates or self.size == 1

    def next_chunk(self) -> list[int]:
        if self.stopping or not self.todo:
            return []
        # Guided self-scheduling: large chunks while much is left, single points towards the end.
        n = self.chunk_size or max(1, min(MAX_AUTO_CHUNK, math.ceil(len(self.todo) / (4 * self.size))))
        return [self.todo.popleft() for _ in range(min(n, len(self.todo)))]

    def begin_stop(self, reason: str) -> None:
        if self.stopping:
            return
        self.stopping, self.stop_reason = True, reason
        for r in range(1, self.size):  # workers finish the point in progress, then report and end
            self.comm.send(None, dest=r, tag=TAG_STOP)

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
                    if self.worker_results_to_sink:
                        self.sink.add(results, src)
                    self.computed += len(results)
                    self.on_progress(len(results))
                if wants_more:
                    self.comm.send(self.next_chunk(), dest=src, tag=TAG_WORK)
            elif tag == TAG_DONE:
                stats, stopped = msg
                self.stats[src] = stats
                self.workers_running -= 1
                if stopped:
                    self.begin_stop(f"rank {src} caught a stop signal")
            elif tag == TAG_ERROR:
                self.fail(f"rank {src} failed:\n{msg}")
        return served

    def tick(self) -> None:
        """Called between evaluation batches of rank 0's own points: serve workers, write due results."""
        if self.comm is not None:
            self.serve()
        self.sink.maybe_flush()

    def fail(self, message: str) -> None:
        """Write what is finished, print the message, end every rank."""
        try:
            self.sink.flush()
        finally:
            print(f"landscape-mpi: error: {message}", file=sys.stderr, flush=True)
            self.comm.Abort(1)

    def run(self) -> Outcome:
        t0, cpu0 = time.perf_counter(), time.process_time()
        own = self.stats[0]
        waiter = Waiter()
        try:
            while True:
                if self.comm is not None and self.serve():
                    waiter.reset()
                if self.stop.requested:
                    self.begin_stop(f"rank 0 caught {self.stop.signal_name}")
                if self.evaluates and not self.stopping and self.todo:
                    result = timed(self.evaluate, self.todo.popleft())
                    own.points += 1
                    own.busy_seconds += result[2]
                    self.sink.add([result], 0)
                    self.computed += 1
                    self.on_progress(1)
                    self.sink.maybe_flush()
                    continue
                if self.workers_running == 0 and (self.evaluates or not self.todo or self.stopping):
                    break
                self.sink.maybe_flush()
                waiter.pause()
            self.sink.flush()
        except BaseException:
            if self.comm is None:
                self.sink.flush()
                raise
            self.fail(f"rank 0 failed:\n{traceback.format_exc()}")
        own.wall_seconds = time.perf_counter() - t0
        own.cpu_seconds = time.process_time() - cpu0
        # Complete only if every point came back (chunks handed to a worker that stopped did not).
        status = STATUS_COMPLETE if self.computed == self.n_todo else STATUS_STOPPED
        for r in range(1, self.size):
            self.comm.send(status, dest=r, tag=TAG_FINAL)
        stats = [self.stats[r] for r in sorted(self.stats)]
        return Outcome(status, self.computed, stats, self.stop_reason)


class Worker:
    """Ranks 1..n-1: ask for chunks, evaluate, send results back; stop on a signal or the master's STOP."""

    def __init__(self, comm, evaluate: Callable[[int], Sequence[float]], stop: StopFlag,
                 local_sink: ResultSink | None = None, stats: RankStats | None = None,
                 report_seconds: float = 1.0) -> None:
        self.comm = comm
        self.rank = comm.Get_rank()
        self.evaluate = evaluate
        self.stop = stop
        self.local_sink = local_sink
        self.stats = stats or RankStats(self.rank)
        self.report_seconds = report_seconds

    def run(self) -> str:
        from mpi4py import MPI

        comm, status = self.comm, MPI.Status()
        t0, cpu0 = time.perf_counter(), time.process_time()
        chunks: deque[list[int]] = deque()
        current: deque[int] = deque()
        outstanding, no_more, master_stop = 0, False, False
        finished: list[PointResult] = []
        last_report = time.monotonic()
        waiter = Waiter()

        def report(wants_more: bool) -> None:
            nonlocal finished, outstanding, last_report
            if self.local_sink is not None:  # collective I/O: on disk before the master counts it done
                self.local_sink.add(finished, self.rank)
                self.local_sink.flush()
            comm.send((finished, wants_more), dest=0, tag=TAG_RESULTS)
            outstanding += int(wants_more)
            finished, last_report = [], time.monotonic()

        try:
            for _ in range(PREFETCH):
                report(True)
            while True:
                while comm.Iprobe(source=0, tag=MPI.ANY_TAG, status=status):
                    tag = status.Get_tag()
                    msg = comm.recv(source=0, tag=tag)
                    if tag == TAG_WORK:
                        outstanding -= 1
                        if msg:
                            chunks.append(msg)
                        else:
                            no_more = True
                    elif tag == TAG_STOP:
                        master_stop = True
                if self.stop.requested or master_stop:
                    break
                if not current and chunks:
                    current = deque(chunks.popleft())
                if current:
                    waiter.reset()
                    result = timed(self.evaluate, current.popleft())
                    self.stats.points += 1
                    self.stats.busy_seconds += result[2]
                    finished.append(result)
                    if not current:  # chunk finished: report it and ask for the next one
                        report(not no_more)
                    elif time.monotonic() - last_report >= self.report_seconds:
                        report(False)  # a long chunk: do not hold finished points back
                    continue
                if no_more and outstanding == 0:
                    break
                waiter.pause()
            if finished:
                report(False)
            self.stats.wall_seconds = time.perf_counter() - t0
            self.stats.cpu_seconds = time.process_time() - cpu0
            comm.send((self.stats, self.stop.requested), dest=0, tag=TAG_DONE)
            return self._await_final()
        except BaseException:
            comm.send(traceback.format_exc(), dest=0, tag=TAG_ERROR)
            # The master aborts the job; if it cannot (it died too), abort from here after a grace period.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                time.sleep(0.01)
            comm.Abort(1)
            raise

    def _await_final(self) -> str:
        from mpi4py import MPI

        status, waiter = MPI.Status(), Waiter()
        while True:
            if self.comm.Iprobe(source=0, tag=MPI.ANY_TAG, status=status):
                msg = self.comm.recv(source=0, tag=status.Get_tag())
                if status.Get_tag() == TAG_FINAL:
                    return msg
                waiter.reset()
                continue  # answers to requests still in flight when this worker ended
            waiter.pause()
