"""The chunked fast engines (landscape_mpi/engine/chunked.py, group_chunked.py): streamed splits (--stream-data, an
iterable dataset) and a group of ranks per point in data mode, each batch read once for a chunk of grid points.

Oracle: the eager engine, one point at a time, on the same split collated in memory (`StreamedSplit.materialize`):
losses to relative 1e-5, the same hit counts. The path is asserted (the engine's name, not the eager fallback), and
the reads are counted by the dataset itself (tests/chunk_toys.py): one pass per chunk of points, not one per point,
and never more than a batch of items alive at once.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

import chunk_toys
from conftest import mpiexec, run
from landscape_mpi.data.stream import open_streamed
from landscape_mpi.directions.base import random_direction, space_keys
from landscape_mpi.engine import make_engine
from landscape_mpi.models import build_model

CPU = torch.device("cpu")
#: 5 points, in chunks of at most CHUNK: a whole chunk and one of a single point (which a per-point forward
#: evaluates on the folded model's own tensors, not a stacked copy).
COORDS = np.random.default_rng(3).uniform(-1.0, 1.0, (5, 2))
CHUNK = 4
BATCH = 8


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """At most CHUNK points per chunk (the memory budget's cap, `engine.MAX_GROUP`, is 32)."""
    import landscape_mpi.engine

    monkeypatch.setattr(landscape_mpi.engine, "MAX_GROUP", CHUNK)


def quiet(_: str) -> None:
    pass


def digits_setup():
    """digits_cnn with BatchNorm statistics far from 0/1 and directions that move BatchNorm too (its fold is redone
    at every point), on the counting images."""
    torch.manual_seed(0)
    model = build_model("digits_cnn").eval()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(0.5 + 1.5 * torch.rand(m.num_features, generator=g))
    state = model.state_dict()
    dirs = [random_direction(state, space_keys(model, "states"), g, "filter", "none") for _ in range(2)]
    return model, dirs


def oracle(model, dirs, splits, loss="ce") -> np.ndarray:
    memory = [s.materialize() for s in splits]
    return make_engine(model, dirs, memory, loss=loss, device=CPU, kind="eager", batch_size=16,
                       log=quiet).evaluate(COORDS)


def assert_matches(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    np.testing.assert_allclose(got[:, 0::2], want[:, 0::2], rtol=1e-5, atol=0)
    n = chunk_toys.N_ITEMS
    np.testing.assert_array_equal(np.rint(got[:, 1::2] * n), np.rint(want[:, 1::2] * n))


@pytest.mark.parametrize("kind, name", [("auto", "streamed+batched"), ("folded", "streamed+folded"),
                                        ("channels_last", "streamed+folded+channels_last")])
def test_streamed_batches_are_read_once_per_chunk_and_match_eager(kind, name):
    model, dirs = digits_setup()
    splits = [open_streamed("chunk_toys:images", "train", None, 0),
              open_streamed("chunk_toys:image_stream", "test", None, 0)]  # map-style and iterable
    want = oracle(model, dirs, splits)
    assert chunk_toys.Images.most_alive == chunk_toys.N_ITEMS  # the control: the in-memory split holds every item
    chunk_toys.Images.reset()
    lines: list[str] = []
    engine = make_engine(model, dirs, splits, loss="ce", device=CPU, kind=kind, batch_size=BATCH, log=lines.append)
    assert engine.name == name and engine.group_size == CHUNK, lines
    assert not any("eager" in line for line in lines), lines
    traced = chunk_toys.Images.reads  # the two samples make_engine traces the model with
    assert traced == 2
    got = engine.evaluate(COORDS)
    # two chunks (4 + 1 points): each split read twice, not 5 times
    assert chunk_toys.Images.reads - traced == 2 * 2 * chunk_toys.N_ITEMS
    assert 0 < chunk_toys.Images.most_alive <= BATCH  # one batch alive at a time
    assert_matches(got, want)


def test_a_task_of_its_own_sums_on_streamed_tokens_matches_eager():
    import task_toys

    model = task_toys.make_lm()
    g = torch.Generator().manual_seed(2)
    dirs = [random_direction(model.state_dict(), space_keys(model, "weights"), g, "filter", "biasbn")
            for _ in range(2)]
    splits = [open_streamed("stream_toys:token_stream", s, 13, 0) for s in ("train", "test")]
    want = oracle(model, dirs, splits, loss=task_toys_task())
    lines: list[str] = []
    engine = make_engine(model, dirs, splits, loss=task_toys_task(), device=CPU, batch_size=4, log=lines.append)
    assert engine.name == "streamed+batched", lines
    np.testing.assert_allclose(engine.evaluate(COORDS), want, rtol=1e-5, atol=1e-7)


def task_toys_task():
    from landscape_mpi.tasks import make_task

    return make_task("lm", "ce")


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.fc(x.flatten(1))
        return -self.fc(x.flatten(1))


def test_a_model_the_fast_path_cannot_trace_falls_back_to_eager_with_the_reason():
    torch.manual_seed(0)
    model = Untraceable()
    g = torch.Generator().manual_seed(1)
    dirs = [random_direction(model.state_dict(), space_keys(model, "weights"), g, "filter", "biasbn")]
    splits = [open_streamed("chunk_toys:images", "test", None, 0)]
    lines: list[str] = []
    engine = make_engine(model, dirs, splits, loss="ce", device=CPU, batch_size=BATCH, log=lines.append)
    assert engine.name == "eager"
    assert any("evaluation data is streamed" in line and "torch.fx cannot trace" in line for line in lines), lines


GROUP_SCRIPT = r"""
import json, sys
import numpy as np, torch, torch.distributed as dist
from mpi4py import MPI
import chunk_toys
from test_engine_stream import COORDS, digits_setup
from landscape_mpi.data.stream import open_streamed
from landscape_mpi.engine import make_engine
from landscape_mpi.runtime.groups import RankGroup, init_process_group
from landscape_mpi.runtime.lifecycle import StopRequested
import landscape_mpi.engine
landscape_mpi.engine.MAX_GROUP = 4  # chunks of 4 points and 1 (test_engine_stream.CHUNK)

comm = MPI.COMM_WORLD
group = RankGroup(comm, comm.Get_rank(), comm.Get_size(), 0, comm if comm.Get_rank() == 0 else None, mode="data")
init_process_group(group, "cpu", 120)
model, dirs = digits_setup()
out = {}
for what, kind in (("memory", "auto"), ("streamed", "auto"), ("folded", "folded")):
    splits = [open_streamed("chunk_toys:images", s, None, 0) for s in ("train", "test")]
    if what != "streamed":
        splits = [s.materialize() for s in splits]
    chunk_toys.Images.reset()
    lines = []
    engine = make_engine(model, dirs, splits, loss="ce", device=torch.device("cpu"), kind=kind, batch_size=8,
                         log=lines.append, group=group, stop=StopRequested)
    before = chunk_toys.Images.reads
    values = engine.evaluate(COORDS)
    out[what] = {"name": engine.name, "lines": lines, "values": values.tolist(),
                 "reads": chunk_toys.Images.reads - before, "most_alive": chunk_toys.Images.most_alive}
with open(f"{sys.argv[1]}.{comm.Get_rank()}.json", "w") as f:
    json.dump(out, f)
dist.destroy_process_group()
import os; MPI.Finalize(); os._exit(0)  # gloo's threads can abort a finalizing interpreter (tests/test_groups.py)
"""


def test_a_group_in_data_mode_divides_each_batch_and_matches_eager(tmp_path):
    model, dirs = digits_setup()
    splits = [open_streamed("chunk_toys:images", s, None, 0) for s in ("train", "test")]
    want = oracle(model, dirs, splits)
    script = tmp_path / "group.py"
    script.write_text(GROUP_SCRIPT)
    run([*mpiexec(2), sys.executable, str(script), str(tmp_path / "g")], timeout=300)
    ranks = [json.loads((tmp_path / f"g.{r}.json").read_text()) for r in range(2)]
    for what, name in (("memory", "group-data+batched"), ("streamed", "group-data+batched"),
                       ("folded", "group-data+folded")):
        for r in ranks:
            assert r[what]["name"] == name, r[what]["lines"]
            assert_matches(np.array(r[what]["values"]), want)
        assert ranks[0][what]["values"] == ranks[1][what]["values"], what  # the group's sums, the same everywhere
    # streamed: each member read its rows of every batch, once per chunk (2 chunks x 2 splits), one batch at a time
    shares = [r["streamed"]["reads"] for r in ranks]
    assert sum(shares) == 2 * 2 * chunk_toys.N_ITEMS and min(shares) > 0, shares
    assert all(0 < r["streamed"]["most_alive"] <= BATCH for r in ranks)
