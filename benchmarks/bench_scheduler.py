"""How many point assignments per second the coordinator serves, with a zero-cost evaluator.

    mpiexec -n 16 python benchmarks/bench_scheduler.py --points 200000 [--chunk-size 1] [--json]

Every rank runs the real `Master` / `Worker` of landscape_mpi.runtime.scheduler; evaluating a point costs nothing
(the evaluator returns at once) and results go to a sink that drops them, so the figure is the coordinator's own
ceiling: assignments/s = points / seconds from the first assignment to the last result. Rank 0 evaluates points
between serving requests, as in a real run; the points it evaluates itself are left out of the "handed out to
workers" figure. `--sleep S` (or `R:S`, rank R only, or `S,R:S2`: S2 on rank R, S on the others) makes
evaluation sleep that many seconds per point instead (used by tests to check that waiting ranks do not spin a
core: a coordinator whose own points are short waits for the workers' long ones).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from mpi4py import MPI

from landscape_mpi.runtime import scheduler as sched
from landscape_mpi.runtime.lifecycle import StopFlag


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--points", type=int, default=100000)
    p.add_argument("--chunk-size", type=int, default=0, help="0: automatic (guided)")
    p.add_argument("--sleep", default="",
                   help="S: every rank sleeps S seconds per point; R:S: only rank R; S,R:S2: S2 on rank R, S elsewhere")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    delay = 0.0
    for part in filter(None, a.sleep.split(",")):
        if ":" not in part:
            delay = float(part)
        elif int(part.split(":")[0]) == rank:
            delay = float(part.split(":")[1])
            break

    class ZeroCost:
        """A free evaluator (the scheduler's interface: groups of flat indices in, (K, 2) values out)."""

        group_size = 1
        on_batch = None

        def __call__(self, flats: np.ndarray) -> np.ndarray:
            if delay:
                time.sleep(delay * len(flats))
            return np.zeros((len(flats), 2))

    evaluate = ZeroCost()
    stop = StopFlag()
    comm.barrier()
    t0 = time.perf_counter()
    if rank == 0:
        sink = sched.ResultSink(None, 2)
        outcome = sched.Master(comm, np.arange(a.points, dtype=np.int64), evaluate, sink, stop, a.chunk_size).run()
        seconds = time.perf_counter() - t0
        served = a.points - outcome.stats[0].points  # points the master handed to other ranks
        report = {"ranks": comm.Get_size(), "points": a.points, "chunk_size": a.chunk_size, "seconds": seconds,
                  "assignments_per_s": a.points / seconds, "served_to_workers_per_s": served / seconds,
                  "status": outcome.status, "stats": [vars(s) for s in outcome.stats]}
        if a.json:
            print(json.dumps(report))
        else:
            print(f"{report['ranks']} ranks, chunk {a.chunk_size or 'auto'}: {a.points} points in {seconds:.2f} s "
                  f"= {report['assignments_per_s']:,.0f} points/s in all, {report['served_to_workers_per_s']:,.0f}/s "
                  f"handed out to workers", file=sys.stderr)
    else:
        sched.Worker(comm, evaluate, stop).run()


if __name__ == "__main__":
    main()
