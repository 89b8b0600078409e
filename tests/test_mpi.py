"""The MPI pipeline under a real mpiexec with 1, 2 and 3 ranks (oversubscribed on 2 cores).

Each run is wrapped in a timeout: a hang fails the test instead of stalling CI.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from conftest import (ROOT, assert_same_results, cli, env, mpi_flavor, mpiexec, read_results, run,
                      wait_for_points)

pytestmark = pytest.mark.timeout(600)
DIGITS = ["--model", "digits_cnn", "--dataset", "digits", "--threads", "1"]
METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, digits_ckpt):
    """An uninterrupted single-process run (no MPI at all) of a non-square grid."""
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    args = [*DIGITS, "--checkpoint", digits_ckpt, "--x=-1:1:9", "--y=-0.5:1:6", "--samples", "150"]
    run(cli("surface", *args, "--out", str(out)))
    return args, out


@pytest.mark.parametrize("n", [1, 2, 3])
def test_ranks_give_identical_files(tmp_path, reference, n):
    args, ref = reference
    out = tmp_path / f"n{n}.h5"
    p = run(mpiexec(n) + cli("surface", *args, "--out", str(out)), timeout=300)
    assert f"on {n} rank(s)" in p.stderr
    assert_same_results(ref, out)
    ranks = read_results(out)["rank"]
    assert set(np.unique(ranks)) == set(range(n))  # every rank evaluated points, rank 0 included


MPICH = ROOT / ".venv-mpich" / "bin"


@pytest.mark.skipif(not (MPICH / "mpiexec").exists(), reason="no .venv-mpich (scripts/install.sh makes it)")
def test_mpich_gives_identical_file(tmp_path, reference):
    """The same command under MPICH's hydra mpiexec (as root, oversubscribed, no flags needed)."""
    args, ref = reference
    out = tmp_path / "mpich.h5"
    p = run([str(MPICH / "mpiexec"), "-n", "3", str(MPICH / "python"), "-m", "landscape_mpi", "surface", *args,
             "--out", str(out)], timeout=300)
    assert "on 3 rank(s)" in p.stderr
    assert_same_results(ref, out)


@pytest.mark.parametrize("slow", [2, 0])
def test_slow_rank_gets_proportionally_fewer_points(tmp_path, digits_ckpt, slow):
    """A rank 3x slower ends with about a third of the points; a slow rank 0 (the coordinator) does not
    hold the others back."""
    out = tmp_path / "slow.h5"
    run(mpiexec(3) + cli("surface", *DIGITS, "--checkpoint", digits_ckpt, "--x=-1:1:20", "--y=-1:1:15",
                         "--samples", "20", "--splits", "train", "--out", str(out)),
        timeout=300, LANDSCAPE_MPI_TEST_DELAY=f"0.02,{slow}:0.06")
    counts = np.bincount(read_results(out)["rank"].ravel(), minlength=3)
    assert counts.sum() == 300
    fast = [r for r in range(3) if r != slow]
    for r in fast:
        assert 2.0 <= counts[r] / counts[slow] <= 4.5, counts
    assert 0.7 <= counts[fast[0]] / counts[fast[1]] <= 1.4, counts


def _launch(cmd, **extra):
    return subprocess.Popen(cmd, cwd=ROOT, env=env(**extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _rank_pids(launcher_pid):
    """The landscape_mpi rank processes of a launch: descendants of mpiexec (children with Open MPI,
    grandchildren under MPICH's hydra proxy)."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                pass
    found, frontier = [], [launcher_pid]
    while frontier:
        children = [p for p, pp in parent.items() if pp in frontier]
        for p in children:
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    if b"landscape_mpi" in f.read():
                        found.append(p)
            except OSError:
                pass
        frontier = children
    return found


def _kill_job(proc):
    """SIGKILL the whole job at once: mpiexec and every rank (Open MPI puts ranks in process groups of their
    own, so killing mpiexec's group alone would leave rank 0 writing for a while)."""
    pids = [proc.pid, *_rank_pids(proc.pid)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)
    deadline = time.time() + 30
    while time.time() < deadline and any(os.path.exists(f"/proc/{p}") and not _zombie(p) for p in pids[1:]):
        time.sleep(0.05)


def _zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize("io", ["single", "collective"])
def test_sigkill_at_random_moments_then_resume(tmp_path, reference, io):
    if io == "collective" and not h5py.get_config().mpi:
        pytest.skip("h5py without parallel HDF5")
    args, ref = reference
    out = tmp_path / "killed.h5"
    ref_r = read_results(ref)
    rng = random.Random(1234)
    kills = 0
    for attempt in range(6 if io == "single" else 4):
        proc = _launch(mpiexec(3) + cli("surface", *args, "--out", str(out), "--flush-seconds", "0.02", "--io", io),
                       LANDSCAPE_MPI_TEST_DELAY="0.03")
        time.sleep(rng.uniform(0.5, 5.0) if attempt else 1.0)  # the first kill may land during start-up
        if proc.poll() is not None:
            break
        _kill_job(proc)
        kills += 1
        if out.exists():
            r = read_results(out)  # the file opens after every kill ...
            mask = r["done"].astype(bool)
            for k in METRICS:  # ... and every point marked done holds the uninterrupted run's value
                assert np.array_equal(r[k][mask], ref_r[k][mask]), k
    assert kills >= 3
    run(mpiexec(2) + cli("surface", *args, "--out", str(out), "--io", io), timeout=300)  # another rank count
    assert_same_results(ref, out)


def test_sigterm_to_ranks_stops_resumable_nothing_lost(tmp_path, reference):
    args, ref = reference
    out = tmp_path / "term.h5"
    proc = _launch(mpiexec(3) + cli("surface", *args, "--out", str(out), "--flush-seconds", "0.1"),
                   LANDSCAPE_MPI_TEST_DELAY="0.3")
    wait_for_points(out, 6)
    pids = _rank_pids(proc.pid)
    assert len(pids) == 3, pids
    for pid in pids:  # as SLURM's scancel signals every task
        os.kill(pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    assert "Rerun the same command to resume" in err
    r = read_results(out)
    computed = sum(int(line.split()[4]) for line in err.splitlines() if line.strip().startswith("rank "))
    assert computed == r["done"].sum() < r["done"].size  # every finished point was written
    run(mpiexec(3) + cli("surface", *args, "--out", str(out)), timeout=300)
    assert_same_results(ref, out)


def test_sigusr1_to_mpiexec_is_forwarded(tmp_path, reference):
    if mpi_flavor() != "openmpi":
        pytest.skip("Open MPI's mpiexec forwards SIGUSR1 to the ranks")
    args, _ = reference
    out = tmp_path / "usr1.h5"
    proc = _launch(mpiexec(3) + cli("surface", *args, "--out", str(out)), LANDSCAPE_MPI_TEST_DELAY="0.3")
    wait_for_points(out, 3)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    assert "caught SIGUSR1" in err


@pytest.mark.parametrize("failing_rank", [2, 0])
def test_exception_on_one_rank_ends_job_with_message(tmp_path, reference, failing_rank):
    args, ref = reference
    out = tmp_path / "fail.h5"
    proc = _launch(mpiexec(3) + cli("surface", *args, "--out", str(out)),
                   LANDSCAPE_MPI_TEST_DELAY="0.05", LANDSCAPE_MPI_TEST_FAIL=f"{failing_rank}:4")
    wait_for_points(out, 1)
    t_first = time.time()
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        _kill_job(proc)
        raise AssertionError("the job hung after an exception on one rank")
    assert proc.returncode not in (0, 75)
    assert time.time() - t_first < 30
    assert f"test hook: rank {failing_rank} fails after 4 points" in err
    r = read_results(out)
    mask = r["done"].astype(bool)
    assert mask.any() and np.array_equal(r["train_loss"][mask], read_results(ref)["train_loss"][mask])


def test_idle_ranks_do_not_spin(tmp_path):
    """While the workers take 3 s for their points, the coordinator waits: it must use little CPU doing so."""
    cmd = mpiexec(3) + [sys.executable, str(ROOT / "benchmarks" / "bench_scheduler.py"), "--points", "2",
                        "--chunk-size", "1", "--sleep", "1.5", "--dedicated", "--json"]
    report = json.loads(run(cmd, timeout=120).stdout.strip().splitlines()[-1])
    master = report["stats"][0]
    assert master["wall_seconds"] >= 1.4 and master["points"] == 0
    assert master["cpu_seconds"] < 0.25 * master["wall_seconds"], master


def test_io_collective_equals_single(tmp_path, reference):
    import h5py as h

    if not h.get_config().mpi:
        pytest.skip("h5py without parallel HDF5 (h5py.get_config().mpi is False)")
    args, ref = reference
    out = tmp_path / "coll.h5"
    run(mpiexec(3) + cli("surface", *args, "--out", str(out), "--io", "collective"), timeout=300)
    assert_same_results(ref, out)


def test_io_collective_without_parallel_h5py_is_a_clear_error(tmp_path, reference, monkeypatch):
    from landscape_mpi.errors import UserError
    from landscape_mpi.surface import check_collective_io
    import h5py as h

    monkeypatch.setattr(h, "get_config", lambda: type("C", (), {"mpi": False})())
    with pytest.raises(UserError, match="parallel HDF5.*--io single"):
        check_collective_io(None)
