"""The chunked fast engines against the plain per-point loop, for streamed splits and for a group of ranks per
point in data mode (landscape_mpi/engine/chunked.py, group_chunked.py): seconds per grid point, medians of
interleaved rounds.

    .venv/bin/python benchmarks/bench_engines_stream.py [--points 5] [--rounds 3] [--models digits_cnn,resnet20]
    mpiexec -n 2 .venv/bin/python benchmarks/bench_engines_stream.py --group   # one group of 2 ranks

One rank: the split is read in batches from a user dataset (`data.stream.open_streamed`, as --stream-data does);
"plain" is the engine a streamed split had before (`kind="eager"`: one point at a time, the split read again at
every point), "fast" is `kind="auto"` (each batch read once for a chunk of points: digits_cnn K points per forward,
resnet20 one folded channels-last forward per point). `--group` (under mpiexec, all ranks one group, data mode):
"plain" is `GroupEngine` (`kind="eager"`), "fast" `ChunkedGroupEngine` (`kind="auto"`), on the split in memory and
streamed. Data: digits_cnn on the embedded digits (1,437 train + 360 test), resnet20 on `--images` CIFAR-shaped
random images (values do not change the cost). `--read-us` adds a sleep per item read (a slow file system).
Each engine evaluates one point untimed first (warm-up). The fast and plain values are compared (max relative
loss difference). Prints the machine first, a markdown table last. Measure on an idle machine; numbers taken
under load are not results.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_engine import directions, grid, interleaved, machine  # noqa: E402

from landscape_mpi.data.datasets import load_eval_set  # noqa: E402
from landscape_mpi.data.stream import open_streamed  # noqa: E402
from landscape_mpi.engine import make_engine  # noqa: E402
from landscape_mpi.models import build_model  # noqa: E402

CPU = torch.device("cpu")
#: The dataset factories read these (a factory takes the split only).
IMAGES_ENV, READ_US_ENV = "BENCH_STREAM_IMAGES", "BENCH_STREAM_READ_US"


class SlowItems(Dataset):
    """A map-style dataset whose every item read sleeps `read_us` microseconds first."""

    def __init__(self, inner: Dataset, read_us: float) -> None:
        self.inner, self.read_us = inner, read_us

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i):
        if self.read_us > 0:
            time.sleep(self.read_us * 1e-6)
        return self.inner[i]


def digits_items(split: str) -> Dataset:
    s = load_eval_set("digits", split, None, None, 0)
    return SlowItems(TensorDataset(s.inputs, s.labels), float(os.environ.get(READ_US_ENV, "0")))


def cifar_shaped(split: str) -> Dataset:
    n = int(os.environ.get(IMAGES_ENV, "500"))
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    return SlowItems(TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)),
                     float(os.environ.get(READ_US_ENV, "0")))


FACTORIES = {"digits_cnn": "bench_engines_stream:digits_items", "resnet20": "bench_engines_stream:cifar_shaped"}


def cases(model_name: str, a, group=None) -> dict:
    """name -> (engine, splits) of one model: plain and fast, streamed (and in memory for a group)."""
    torch.manual_seed(0)
    model = build_model(model_name).eval()
    dirs = directions(model)
    splits = [open_streamed(FACTORIES[model_name], s, None, 0) for s in ("train", "test")]
    layouts = {"streamed": splits}
    if group is not None:
        layouts["in memory"] = [s.materialize() for s in splits]
    out = {}
    for layout, data in layouts.items():
        for how, kind in (("plain", "eager"), ("fast", "auto")):
            lines: list[str] = []
            extra = {} if group is None else {"group": group}
            engine = make_engine(model, dirs, data, loss="ce", device=CPU, batch_size=a.batch_size, kind=kind,
                                 log=lines.append, **extra)
            out[(model_name, layout, how)] = engine
    return out


def bench(a, group=None) -> list[str]:
    coords = grid(a.points)
    rows = []
    for model_name in a.models.split(","):
        engines = cases(model_name, a, group)
        values = {}

        def method(key, engines=engines, values=values):
            def f():
                values[key] = engines[key].evaluate(coords)
            return f

        print(f"{model_name}: " + "; ".join(f"{' '.join(k[1:])}: {e.name}" for k, e in engines.items()), flush=True)
        for e in engines.values():  # warm-up (vmap's and oneDNN's first calls), not timed
            e.evaluate(coords[:1])
        times = interleaved({k: method(k) for k in engines}, a.rounds)  # every member: the same order of collectives
        for layout in sorted({k[1] for k in engines}):
            plain, fast = (model_name, layout, "plain"), (model_name, layout, "fast")
            tp = statistics.median(t for t, _ in times[plain]) / len(coords)
            tf = statistics.median(t for t, _ in times[fast]) / len(coords)
            loss_p, loss_f = values[plain][:, 0::2], values[fast][:, 0::2]
            diff = float(np.max(np.abs(loss_f - loss_p) / np.abs(loss_p)))
            rows.append(f"| {model_name} | {layout} | {engines[plain].name} | {engines[fast].name} "
                        f"(K={engines[fast].group_size}) | {tp:.4f} | {tf:.4f} | {tp / tf if tf else 0:.2f}x | "
                        f"{diff:.1e} |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=5, help="grid points per axis (a 2D grid)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--models", default="digits_cnn,resnet20")
    p.add_argument("--images", type=int, default=500, help="CIFAR-shaped images per split (resnet20)")
    p.add_argument("--read-us", type=float, default=0.0, help="sleep per item read, microseconds")
    p.add_argument("--group", action="store_true", help="under mpiexec: all ranks one group, data mode")
    a = p.parse_args()
    os.environ[IMAGES_ENV], os.environ[READ_US_ENV] = str(a.images), str(a.read_us)
    if a.threads:
        torch.set_num_threads(a.threads)
    group = None
    if a.group:
        from mpi4py import MPI

        from landscape_mpi.runtime.groups import RankGroup, init_process_group

        comm = MPI.COMM_WORLD
        group = RankGroup(comm, comm.Get_rank(), comm.Get_size(), 0, comm if comm.Get_rank() == 0 else None,
                          mode="data")
        init_process_group(group, "cpu", 600)
        if group.rank != 0:  # the followers run the same rounds, quietly
            sys.stdout = open(os.devnull, "w")
    rank0 = group is None or group.rank == 0
    if rank0:
        print(machine(), flush=True)
        print(f"grid {a.points}x{a.points}, batch {a.batch_size}, read sleep {a.read_us} us per item, "
              f"{'one group of ' + str(group.size) + ' ranks (data mode)' if group else 'one rank'}", flush=True)
    rows = bench(a, group)
    if rank0:
        print("\n| model | data | plain engine | fast engine | plain s/point | fast s/point | speed-up | "
              "max rel. loss diff |\n|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))
    if group is not None:
        import torch.distributed as dist
        from mpi4py import MPI

        dist.destroy_process_group()
        MPI.Finalize()
        os._exit(0)  # gloo's threads can abort a finalizing interpreter (tests/test_groups.py)


if __name__ == "__main__":
    main()
