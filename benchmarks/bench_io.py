"""Write throughput of a whole run with a zero-cost evaluator: `--io single` against `--io collective`.

    mpiexec --allow-run-as-root --oversubscribe --bind-to none -n 4 \
        .venv/bin/python benchmarks/bench_io.py --points 1000000 --io collective [--flush-seconds 0.5] [--json]

Every rank runs the real `Master` / `Worker` of landscape_mpi.runtime.scheduler and the real `ResultWriter` of
landscape_mpi.files.store on a real surface file (4 value columns, as a default train+test surface); evaluating a
point costs nothing (`ZeroCost`), so the run measures what the scheduler and the writer cost per point:
the ceiling of a job whose points were free. The file is created by rank 0 with
`store.create_surface_file` and a tiny fake direction (nothing about the model matters here).

Reported (rank 0, one line of JSON with --json, else a sentence):
    points/s    points / wall seconds of the scheduled run (first assignment to the last write, every rank)
    bytes/s     bytes of result data written / the same seconds: per point, 4 columns x 8 bytes plus
                done (1) + rank (4) + seconds (8) = 45 bytes (raw dataset bytes; HDF5 and MPI-IO overheads
                such as read-modify-write or collective-buffering copies are not counted)
    startup_s   rank 0's start-up: `point_order` + `Todo` (the list of points to do) plus the writer's open
                (a collective open under --io collective); file creation is reported apart (`create_s`)
    peak_rss_mb rank 0's peak resident memory (getrusage ru_maxrss) at the end, and at start (`rss0_mb`,
                after the imports and before the points list), so the run's own growth is the difference
At the end rank 0 reads the done mask back and checks that every point is marked done exactly once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np
from mpi4py import MPI

from landscape_mpi.config.surface import Axis, SurfaceConfig
from landscape_mpi.files import reader, store
from landscape_mpi.runtime import scheduler as sched
from landscape_mpi.runtime.lifecycle import StopFlag

#: Raw bytes written per point by ResultWriter.write: 4 float64 value columns, done uint8, rank int32,
#: seconds float64.
BYTES_PER_POINT = 4 * 8 + 1 + 4 + 8


class ZeroCost:
    """A point evaluator that costs nothing: zeros for the 4 columns of a train+test loss surface."""

    group_size = 1
    on_batch = None

    def __call__(self, flats: np.ndarray) -> np.ndarray:
        return np.zeros((len(flats), 4))


def grid_shape(points: int) -> tuple[int, int]:
    """A 2D grid of exactly `points` points, as square as the factors allow (10^6 -> 1000 x 1000)."""
    nx = int(math.isqrt(points))
    while points % nx:
        nx -= 1
    return nx, points // nx


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=int, default=10000, help="grid points (a 2D grid of exactly this many)")
    p.add_argument("--io", choices=("single", "collective"), default="single")
    p.add_argument("--flush-seconds", type=float, default=0.5)
    p.add_argument("--order", choices=("coarse", "rows"), default="coarse")
    p.add_argument("--chunk-size", type=int, default=0, help="0: automatic (guided), as a real run")
    p.add_argument("--dir", default=None, help="folder for the surface file (default: a fresh temporary one)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    rss0 = peak_rss_mb()
    folder = a.dir or (tempfile.mkdtemp(prefix="bench_io_") if rank == 0 else None)
    folder = comm.bcast(folder, root=0)
    path = os.path.join(folder, f"bench_io_{size}r_{a.points}p_{a.io}.h5")
    nx, ny = grid_shape(a.points)
    config = SurfaceConfig(model="m", checkpoint="c", x=Axis(-1.0, 1.0, nx), y=Axis(-1.0, 1.0, ny))
    columns = store.result_columns(config)
    if len(columns) != 4:  # ZeroCost and BYTES_PER_POINT assume the default train+test loss/acc columns
        raise SystemExit(f"bench_io: expected 4 result columns, the config has {columns}")

    create_s = 0.0
    if rank == 0:
        t = time.perf_counter()
        fake = {"w": np.zeros((2, 2), np.float32)}
        # package_versions() imports torch (about 700 MB resident) only to record its version; a real run has
        # torch loaded anyway, but here it would hide the scheduler's and writer's own memory in ru_maxrss.
        store.package_versions = lambda: {"benchmark": "bench_io (torch not imported)"}
        store.create_surface_file(path, config, {"x": fake, "y": fake}, {}, {})
        create_s = time.perf_counter() - t
    comm.barrier()

    # Start-up as a real run has it: rank 0 builds the points list, the writer opens.
    t_start = time.perf_counter()
    todo = None
    order_s = 0.0
    if rank == 0:
        summary = reader.read_summary(path, with_values=False, with_ranks=False)
        t = time.perf_counter()
        todo = sched.point_order(summary.shape, summary.done, a.order)
        order_s = time.perf_counter() - t
    t = time.perf_counter()
    if a.io == "collective":
        writer = store.ResultWriter(path, columns, "collective", comm)
    else:
        writer = store.ResultWriter(path, columns, "single") if rank == 0 else None
    open_s = time.perf_counter() - t
    startup_s = time.perf_counter() - t_start
    sink = sched.ResultSink(writer.write if writer else None, len(columns), a.flush_seconds)

    evaluator, stop = ZeroCost(), StopFlag()
    comm.barrier()
    t0 = time.perf_counter()
    if rank == 0:
        outcome = sched.Master(comm, todo, evaluator, sink, stop, a.chunk_size,
                               collective=a.io == "collective").run()
        status = outcome.status
    else:
        status = sched.Worker(comm, evaluator, stop, sink if a.io == "collective" else None,
                              report_seconds=a.flush_seconds).run()
    wall = time.perf_counter() - t0  # rank 0 returns after its last write (and the last collective phase)
    writes = writer.writes if writer is not None else 0
    all_writes = comm.gather(writes, root=0)
    if writer is not None:
        writer.close()
    comm.barrier()

    if rank == 0:
        final = reader.read_summary(path, with_values=False)
        done, ranks = final.done, final.ranks
        if not (done == 1).all() or status != sched.STATUS_COMPLETE:
            raise SystemExit(f"bench_io: {int((done == 1).sum())} of {a.points} points marked done, status {status}")
        per_rank = np.bincount(ranks.ravel(), minlength=size).tolist()
        report = {
            "ranks": size, "points": a.points, "grid": [nx, ny], "io": a.io, "flush_seconds": a.flush_seconds,
            "order": a.order, "wall_s": wall, "points_per_s": a.points / wall,
            "bytes_per_s": a.points * BYTES_PER_POINT / wall, "bytes_written": a.points * BYTES_PER_POINT,
            "startup_s": startup_s, "point_order_s": order_s, "open_s": open_s, "create_s": create_s,
            "rss0_mb": rss0, "peak_rss_mb": peak_rss_mb(), "writes_per_rank": all_writes,
            "points_per_rank": per_rank, "cpu_s_rank0": outcome.stats[0].cpu_seconds,
            "load_avg": list(os.getloadavg()), "cores": os.cpu_count(),
        }
        if a.json:
            print(json.dumps(report), flush=True)
        else:
            print(f"{size} ranks, io={a.io}: {a.points} points ({nx}x{ny}) in {wall:.2f} s = "
                  f"{report['points_per_s']:,.0f} points/s, {report['bytes_per_s'] / 1e6:.2f} MB/s; start-up "
                  f"{startup_s:.3f} s (order {order_s:.3f} s, open {open_s:.3f} s); rank 0 peak RSS "
                  f"{report['peak_rss_mb']:.0f} MB (at start {rss0:.0f} MB); writes per rank {all_writes}",
                  file=sys.stderr, flush=True)
        if a.dir is None:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            os.remove(path)


if __name__ == "__main__":
    main()
