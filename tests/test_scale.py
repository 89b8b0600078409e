"""Cluster scale (issue 9): collective write phases, coarse-to-fine order, stops within a batch, inputs read
once per node, a torch-free `info`, large todo lists. Expected values come from single-process runs."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import (
    ROOT,
    Job,
    assert_same_results,
    cli,
    env,
    kill_job,
    mpiexec,
    read_results,
    run,
    wait_for_files,
    wait_for_points,
)

METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")


@pytest.fixture(scope="module")
def grid(tmp_path_factory, digits_ckpt):
    """A 9x7 surface of one process: the reference of every other launch."""
    args = ["--model", "digits_cnn", "--checkpoint", digits_ckpt, "--x=-1:1:9", "--y=-1:1:7", "--samples", "80",
            "--threads", "1"]
    ref = tmp_path_factory.mktemp("scale") / "ref.h5"
    run(cli("surface", *args, "--out", str(ref)))
    return args, ref


def phases(stderr: str) -> list[int]:
    line = [ln for ln in stderr.splitlines() if "collective write phases per rank" in ln]
    assert line, stderr
    return json.loads(line[-1].split("per rank: ")[1])


@pytest.mark.parametrize("n,hooks", [(2, {}), (3, {"LANDSCAPE_MPI_TEST_DELAY": "0.01,2:0.03"}), (4, {})])
def test_collective_equals_one_process_and_every_rank_joins_every_phase(tmp_path, grid, n, hooks):
    args, ref = grid
    out = tmp_path / "c.h5"
    p = run(mpiexec(n) + cli("surface", *args, "--io", "collective", "--flush-seconds", "0.02", "--out", str(out)),
            **hooks)
    assert_same_results(ref, out)
    counts = phases(p.stderr)
    assert len(counts) == n and len(set(counts)) == 1 and counts[0] >= 1, counts


def test_collective_with_more_ranks_than_points(tmp_path, digits_ckpt):
    args = ["--model", "digits_cnn", "--checkpoint", digits_ckpt, "--x=-1:1:2", "--samples", "40"]
    ref, out = tmp_path / "ref.h5", tmp_path / "c.h5"
    run(cli("surface", *args, "--out", str(ref)))
    p = run(mpiexec(3) + cli("surface", *args, "--io", "collective", "--out", str(out)))
    assert_same_results(ref, out)
    assert len(set(phases(p.stderr))) == 1


def test_sigkill_during_collective_phases_four_times_then_resume(tmp_path, grid):
    """Kills land at random progress (k more points done, k random), not at random times: no time window. Four
    kills of three ranks (tests/test_mpi.py kills single-file writers at random moments too)."""
    args, ref = grid
    out = tmp_path / "killed.h5"
    ref_r = read_results(ref)
    rng = random.Random(7)
    done = 0
    for _ in range(4):
        proc = subprocess.Popen(
            mpiexec(3) + cli("surface", *args, "--io", "collective", "--flush-seconds", "0.01", "--out", str(out)),
            cwd=ROOT, env=env(LANDSCAPE_MPI_TEST_DELAY="0.05"), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        target = min(done + rng.randint(2, 8), 60)
        wait_for_points(out, target, timeout=300)
        kill_job(proc)
        r = read_results(out)  # the file opens after every kill ...
        mask = r["done"].astype(bool)
        for k in METRICS:  # ... and every point marked done holds the uninterrupted run's value
            assert np.array_equal(r[k][mask], ref_r[k][mask]), k
        done = int(mask.sum())
    run(mpiexec(2) + cli("surface", *args, "--io", "collective", "--out", str(out)))
    assert_same_results(ref, out)


# ------------------------------------------------------------------------------------------- order
def test_coarse_to_fine_order_covers_the_grid_early():
    from landscape_mpi.runtime.scheduler import point_order

    shape = (101, 101)
    order = point_order(shape, np.zeros(shape, bool), "coarse")
    assert sorted(order.tolist()) == list(range(101 * 101))  # every point exactly once
    assert order[0] == np.ravel_multi_index((50, 50), shape)  # the center first
    corners = {np.ravel_multi_index(c, shape) for c in ((0, 0), (0, 100), (100, 0), (100, 100))}
    assert corners <= set(order[1:9].tolist())  # then the corners
    done = np.zeros(101 * 101, bool)
    done[order[:1020]] = True  # stopped at 10%
    blocks = done.reshape(shape)[:100, :100].reshape(10, 10, 10, 10).any(axis=(1, 3))
    assert blocks.all(), np.argwhere(~blocks)
    rows = point_order(shape, np.zeros(shape, bool), "rows")
    assert rows.tolist() == list(range(101 * 101))


def test_partial_coarse_file_is_drawn_whole_with_fill_missing(tmp_path):
    out = tmp_path / "p.h5"
    ck = tmp_path / "mlp"
    run(cli("train", "--model", "digits_mlp", "--out-dir", str(ck), "--epochs", "1"))
    p = run(cli("surface", "--model", "digits_mlp", "--checkpoint", str(ck / "final.pt"), "--x=-1:1:21",
                "--y=-1:1:21", "--samples", "20", "--splits", "train", "--out", str(out)),
            check_rc=1, LANDSCAPE_MPI_TEST_FAIL="0:44")  # 10% of 441 points
    assert "test hook" in p.stderr
    done = read_results(out)["done"].astype(bool)
    assert done.sum() == 44
    assert done[:20, :20].reshape(4, 5, 4, 5).any(axis=(1, 3)).all()  # every 5x5 block has a point
    figs = tmp_path / "figs"
    run([sys.executable, "-m", "plotting", str(out), "--kind", "contourf", "--fill-missing", "--out", str(figs)])
    assert list(figs.glob("*contourf*.png"))


# ---------------------------------------------------------------------------------------- prompt stop
def test_sigusr1_during_a_long_point_abandons_it_within_a_batch(tmp_path, digits_ckpt):
    """A point of 20 batches per split: the job is held at its 3rd batch (a gate the test releases after the
    signal), and stops at the next batch boundary: exit 75, the point not done, one point abandoned."""
    out, gate = tmp_path / "s.h5", tmp_path / "gate"
    job = Job(cli("surface", "--model", "digits_cnn", "--checkpoint", digits_ckpt, "--x=-1:1:3", "--samples",
                  "100", "--batch-size", "5", "--engine", "eager", "--out", str(out)),
              LANDSCAPE_MPI_TEST_GATE=f"batch:3:{gate}")
    wait_for_files([f"{gate}.reached.0"], timeout=300)
    job.proc.send_signal(signal.SIGUSR1)
    gate.write_text("go")
    assert job.wait(timeout=120) == 75, job.stderr
    assert read_results(out)["done"].sum() == 0
    assert "1 abandoned" in job.stderr, job.stderr


# ---------------------------------------------------------------------------------------- per node
#: Installed in every rank (sitecustomize): logs each checkpoint the rank opens (audit event "open") and each
#: HDF5 file it opens by path (h5py.File wrapped), with the mode. No help from the code under test.
OPEN_LOGGER = """
import os, sys
_rank = os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "x"))
_log = open(os.path.join({log_dir!r}, "rank" + _rank), "a")
def _hook(event, args):
    if event == "open" and isinstance(args[0], str) and args[0].endswith(".pt"):
        _log.write("checkpoint " + args[0] + "\\n"); _log.flush()
sys.addaudithook(_hook)
import h5py
class _Logged(h5py.File):
    def __init__(self, name, mode="r", *args, **kwargs):
        if isinstance(name, (str, os.PathLike)):
            _log.write("h5 " + str(mode) + " " + os.path.basename(os.fspath(name)) + "\\n"); _log.flush()
        super().__init__(name, mode, *args, **kwargs)
h5py.File = _Logged
"""


def opens_per_rank(log_dir) -> dict[str, list[str]]:
    return {p.name: [line for line in p.read_text().split("\n") if line] for p in log_dir.iterdir()}


def test_inputs_are_read_by_one_rank_per_node(tmp_path, grid, digits_ckpt):
    """Every rank logs the files it opens; 3 ranks on one node. Only rank 0 reads the checkpoint and opens the
    surface file: a new file is written once (under its temporary name) and opened once more, to write; a resumed
    one is opened once to read (summary, directions, coordinates) and once to write. The other ranks get the
    directions and coordinates from rank 0 (one reading rank per node) and never open the file."""
    args, ref = grid
    hook_dir, log_dir = tmp_path / "hook", tmp_path / "log"
    hook_dir.mkdir()
    log_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(OPEN_LOGGER.format(log_dir=str(log_dir)))
    out = tmp_path / "s.h5"
    path = os.pathsep.join([str(hook_dir), str(ROOT / "tests"), str(ROOT)])
    run(mpiexec(3) + cli("surface", *args, "--out", str(out)), PYTHONPATH=path)
    assert_same_results(ref, out)  # rank 0 evaluates with what it wrote, the others with what it read back
    logs = opens_per_rank(log_dir)
    assert set(logs) == {"rank0", "rank1", "rank2"}, logs
    h5 = [line for line in logs["rank0"] if line.startswith("h5 ")]
    assert len(h5) == 2 and h5[0].startswith("h5 w s.h5.tmp-") and h5[1] == "h5 r+ s.h5", logs
    assert any(line.startswith("checkpoint ") for line in logs["rank0"]), logs
    for rank in ("rank1", "rank2"):
        assert not any(line.startswith(("h5 ", "checkpoint ")) for line in logs[rank]), logs

    import h5py
    with h5py.File(out, "r+") as f:  # a partial file, as a stopped run leaves it
        f["results/done"][4:, :] = 0
    for p in log_dir.iterdir():
        p.unlink()
    run(mpiexec(3) + cli("surface", *args, "--out", str(out)), PYTHONPATH=path)
    assert_same_results(ref, out)
    logs = opens_per_rank(log_dir)
    assert [line for line in logs["rank0"] if line.startswith("h5 ")] == ["h5 r s.h5", "h5 r+ s.h5"], logs
    assert any(line.startswith("checkpoint ") for line in logs["rank0"]), logs
    for rank in ("rank1", "rank2"):
        assert not any(line.startswith(("h5 ", "checkpoint ")) for line in logs[rank]), logs


def test_one_process_opens_its_file_once_to_read_and_once_to_write(tmp_path, grid, monkeypatch):
    """In-process, h5py.File wrapped: a new surface is created (its temporary file written once) and opened once
    to write; a resume opens it once to read and once to write; `info` opens it for reading only."""
    import h5py

    from landscape_mpi.cli import main

    args, ref = grid
    opened: list[tuple[str, str]] = []
    real = h5py.File

    class Logged(real):
        def __init__(self, name, mode="r", *a, **k):
            if isinstance(name, (str, os.PathLike)):
                opened.append((os.path.basename(os.fspath(name)).split(".tmp-")[0], str(mode)))
            super().__init__(name, mode, *a, **k)

    out = tmp_path / "s.h5"
    monkeypatch.setattr(h5py, "File", Logged)
    assert main(["surface", *args, "--out", str(out)]) == 0
    assert opened == [("s.h5", "w"), ("s.h5", "r+")], opened
    with real(out, "r+") as f:
        f["results/done"][:, 3:] = 0
    opened.clear()
    assert main(["surface", *args, "--out", str(out)]) == 0
    assert opened == [("s.h5", "r"), ("s.h5", "r+")], opened
    assert_same_results(ref, out)
    opened.clear()
    assert main(["surface", *args, "--out", str(out)]) == 0  # complete: read once, nothing written
    assert opened == [("s.h5", "r")], opened


# ---------------------------------------------------------------------------------------- readers
def test_info_imports_neither_torch_nor_mpi(tmp_path, grid):
    _, ref = grid
    code = ("import sys, json; from landscape_mpi.cli import main; rc = main(['info', sys.argv[1], '--json']); "
            "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules, 'mpi': 'mpi4py.MPI' in sys.modules}), "
            "file=sys.stderr)")
    p = run([sys.executable, "-c", code, str(ref)])
    result = json.loads(p.stderr.strip().splitlines()[-1])
    assert result == {"rc": 0, "torch": False, "mpi": False}, p.stderr


def test_todo_of_a_201_cubed_grid(tmp_path):
    """8.1 M points: the order is one int64 array (no Python object per point)."""
    import tracemalloc

    from landscape_mpi.runtime.scheduler import Todo, point_order

    shape = (201, 201, 201)
    done = np.zeros(shape, bool)
    tracemalloc.start()
    order = point_order(shape, done, "coarse")
    todo = Todo(order)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert order.dtype == np.int64 and len(todo) == 201 ** 3
    assert peak < 200e6, peak
    assert len(todo.take(16)) == 16 and len(todo) == 201 ** 3 - 16
