"""Sharded groups that never hold the whole model (--ranks-per-point G --group-mode shard; surface.inputs.
streams_shards): the model built with its parameters on the meta device, theta* memory-mapped, directions made
and written tensor by tensor by the file step and read back row by row by each member.

Oracles: `build_directions` on the whole model (the plain path) for the streamed directions' bits; the peak
resident memory of the unsharded run of the same command (the whole-model path) for the memory; the one-rank
pre-flight's message for a model that does not fit the data.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import peak_memory
import shard_toys
from conftest import cli, mpiexec, run

pytestmark = pytest.mark.timeout(900)

SHARDS_LINE = "each rank builds only its shards"


def _config(**kw):
    from landscape_mpi.config.surface import Axis, SurfaceConfig

    base = dict(model="gpt_tiny", dataset="text", task="lm", checkpoint="unused.pt", splits=("test",),
                x=Axis.parse("-1:1:3", "x"), y=Axis.parse("-1:1:3", "y"))
    return SurfaceConfig(**{**base, **kw})


@pytest.mark.parametrize("extra", [{}, {"same_dir": True}, {"norm": "layer", "ignore": "none", "seed": 7}, "target"])
def test_streamed_directions_have_the_bits_of_the_whole_model_ones(tmp_path, extra):
    from landscape_mpi.directions.sources import build_directions, stream_directions
    from landscape_mpi.models import build_model, parameters_on_meta, read_state_dict

    torch.manual_seed(0)
    whole = build_model("gpt_tiny")
    ck = tmp_path / "gpt.pt"
    torch.save(whole.state_dict(), ck)
    if extra == "target":
        other = tmp_path / "other.pt"
        torch.manual_seed(1)
        torch.save(build_model("gpt_tiny").state_dict(), other)
        extra = {"y_target": str(other)}
    config = _config(checkpoint=str(ck), **extra)
    with parameters_on_meta():
        meta = build_model("gpt_tiny")
    assert {p.device.type for p in meta.parameters()} == {"meta"}  # nothing of the model was built for real
    streamed = stream_directions(config, meta, read_state_dict(str(ck), mmap=True))
    expected, _, _ = build_directions(config, whole, str(ck))
    assert list(streamed) == list(expected)
    for axis in expected:  # in the file step's order: x's tensors, then y's
        got = dict(streamed[axis].items())
        assert list(got) == list(expected[axis])
        for k, v in expected[axis].items():
            assert torch.equal(got[k], v), (axis, k)


#: Runs the CLI and, at exit, writes the process's peak resident memory to PEAKS_DIR/<rank> (a file: a line on
#: stderr from an exit handler can be lost once MPI has finalized and the launcher stopped forwarding).
def test_no_rank_of_a_sharded_group_holds_the_whole_model(tmp_path):
    """Peak memory per process, sampled by the process itself (tests/peak_memory.py: the anonymous memory, what
    the program allocated): a 256 MiB model, G = 2. The one-process run is the whole-model path: it holds
    theta*, its copy and two directions (4 model sizes, more while it sets up). Each member of a sharded group
    must stay more than two model sizes below it, which a rank that built the whole model would not (measured
    with --dir-space states, which still builds it on every rank; docs/mpi.md)."""
    torch.manual_seed(0)
    ck = tmp_path / "big.pt"
    torch.save(shard_toys.big_mlp().state_dict(), ck)
    model_mb = shard_toys.parameter_bytes() / 2**20
    base = ["surface", "--model", "shard_toys:big_mlp", "--dataset", "shard_toys:vectors", "--splits", "test",
            "--x=-1:1:2", "--y=-1:1:2", "--batch-size", "8", "--threads", "1", "--checkpoint", str(ck)]
    folders = {name: tmp_path / f"peaks-{name}" for name in ("one", "shards")}
    for folder in folders.values():
        folder.mkdir()
    run(peak_memory.command(*base, "--out", str(tmp_path / "one.h5")), timeout=600, PEAKS_DIR=folders["one"])
    shards = run([*mpiexec(2), *peak_memory.command(*base, "--out", str(tmp_path / "g2.h5"), "--ranks-per-point",
                                                    "2")], timeout=600, PEAKS_DIR=folders["shards"])
    assert SHARDS_LINE in shards.stderr, shards.stderr
    (ref,), got = peak_memory.peaks(folders["one"]), peak_memory.peaks(folders["shards"])
    print(f"peaks (MB): one process {ref}; G=2 shards {got}; model {model_mb:.0f}")
    assert len(got) == 2, got
    assert all(ref["anon"] - g["anon"] > 2 * model_mb for g in got), (ref, got, model_mb)
    assert all(g["anon"] <= 0.6 * ref["anon"] for g in got), (ref, got)  # the bound (measured 0.40x)
    from group_helpers import contents

    a, _ = contents(tmp_path / "one.h5")
    b, _ = contents(tmp_path / "g2.h5")
    np.testing.assert_allclose(b["test_loss"], a["test_loss"], rtol=1e-6)


def test_a_model_that_does_not_fit_the_data_is_one_line_in_a_sharded_group(tmp_path):
    """Without the whole model the pre-flight's forward runs on the meta device (shapes only): the same one line
    as the one-rank pre-flight, before any file exists."""
    torch.manual_seed(0)
    ck = tmp_path / "big.pt"
    torch.save(shard_toys.big_mlp().state_dict(), ck)
    out = tmp_path / "no.h5"
    p = run(mpiexec(2) + cli("surface", "--model", "shard_toys:big_mlp", "--dataset", "digits", "--samples", "16",
                             "--x=-1:1:2", "--checkpoint", str(ck), "--out", str(out), "--ranks-per-point", "2"),
            check_rc=None, timeout=600)
    errors = [line for line in p.stderr.splitlines() if "landscape-mpi" in line and "error" in line]
    assert p.returncode == 2 and errors and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert "--model shard_toys:big_mlp with --dataset digits" in errors[0], errors
    assert "choose a model built for this dataset" in errors[0], errors
    assert SHARDS_LINE in p.stderr and not out.exists()


def test_each_member_reads_the_rows_fsdp2_gives_it(tmp_path):
    """`shard_span` and the file's row reads against torch.chunk's cuts (what FSDP2's Shard(0) holds)."""
    from types import SimpleNamespace

    import h5py

    from landscape_mpi.engine.group import local_rows, shard_span
    from landscape_mpi.files import contract
    from landscape_mpi.files.reader import SurfaceFile

    for n in (0, 1, 5, 7, 8, 64):
        t = torch.arange(n * 3).reshape(n, 3)
        for size in (1, 2, 3, 4, 8):
            chunks = torch.chunk(t, size) if n else ()
            for rank in range(size):
                want = chunks[rank] if rank < len(chunks) else t[:0]
                lo, hi = shard_span(n, rank, size)
                assert torch.equal(t[lo:hi], want) and torch.equal(local_rows(t, rank, size), want), (n, size, rank)
    # the reader takes only those rows of each direction, 0-dim tensors whole
    path = tmp_path / "d.h5"
    w = np.arange(21, dtype=np.float32).reshape(7, 3)
    with h5py.File(path, "w") as f:
        g = f.create_group(f"{contract.DIRECTIONS}/x")
        g["w"], g["s"] = w, np.float32(2.5)
    with h5py.File(path, "r") as f:
        stored = SimpleNamespace(file=f)  # the reader's method on the file alone (no surface around it)
        for rank in range(3):
            rows = SurfaceFile.direction_rows(stored, ["x"], lambda n, rank=rank: shard_span(n, rank, 3))[0]
            np.testing.assert_array_equal(rows["w"], torch.chunk(torch.from_numpy(w), 3)[rank].numpy())
            assert rows["s"] == np.float32(2.5)
