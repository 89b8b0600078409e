"""The MPI pipeline under a real mpiexec with 1, 2 and 3 ranks (oversubscribed on 2 cores).

Each run is wrapped in a timeout: a hang fails the test instead of stalling CI. Signals are sent at moments
the test makes with the fault points' gates (the ranks hold at a stage until the test releases them), not after
sleeps, so the tests hold on a loaded machine.
"""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from conftest import (
    ONE_POINT_AT_A_TIME,
    ROOT,
    Job,
    assert_same_results,
    cli,
    env,
    kill_job,
    mpi_flavor,
    mpiexec,
    rank_pids,
    read_results,
    run,
    wait_for_files,
)

pytestmark = pytest.mark.timeout(600)
DIGITS = ["--model", "digits_cnn", "--dataset", "digits", "--threads", "1"]
METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")
#: The line a rank prints when it catches a stop signal (landscape_mpi/runtime/lifecycle.py).
CAUGHT = r"rank {} caught {}"


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
    # One point per call and 0.05 s each: rank 0 then needs 54 x 0.05 / n s of work at least, in which every
    # other rank asks for work once. Without it, on a loaded machine rank 0 once took all 54 points (two groups
    # of 27 in one forward each) before rank 1 was scheduled: the files were identical, but nothing showed it
    # was a 2-rank run.
    p = run(mpiexec(n) + cli("surface", *args, "--out", str(out)), timeout=300, LANDSCAPE_MPI_TEST_DELAY="0.05")
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
    hold the others back. The delays are sleeps inside the points, long against the compute (a few ms),
    so CPU load beside the test moves the ratio little; the bounds still tell 3x from an even split."""
    out = tmp_path / "slow.h5"
    run(mpiexec(3) + cli("surface", *DIGITS, "--checkpoint", digits_ckpt, "--x=-1:1:20", "--y=-1:1:15",
                         "--samples", "20", "--splits", "train", "--out", str(out)),
        timeout=300, LANDSCAPE_MPI_TEST_DELAY=f"0.04,{slow}:0.12")
    counts = np.bincount(read_results(out)["rank"].ravel(), minlength=3)
    assert counts.sum() == 300
    fast = [r for r in range(3) if r != slow]
    for r in fast:
        assert 1.8 <= counts[r] / counts[slow] <= 4.5, counts
    assert 0.7 <= counts[fast[0]] / counts[fast[1]] <= 1.4, counts


def _launch(cmd, **extra):
    return subprocess.Popen(cmd, cwd=ROOT, env=env(**extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


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
                       LANDSCAPE_MPI_TEST_DELAY="0.5")
        # Random moments are the point of this test (a kill may land anywhere, start-up included), so this is
        # the one deliberate sleep; nothing asserted depends on where it lands. `kills >= 3` holds on any
        # machine: the whole grid is 54 x 0.5 / 3 = 9 s of work, and the kills of attempts 1 and 2 (at most
        # 5 s each, start-up included) leave it unfinished. (With 0.03 s per point, once start-up got 3 s
        # faster, an idle machine finished the grid before the second kill.)
        time.sleep(rng.uniform(0.5, 5.0) if attempt else 1.0)
        if proc.poll() is not None:
            break
        kill_job(proc)
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
    out, gate = tmp_path / "term.h5", tmp_path / "gate"
    # rank 0 (the coordinator, which always evaluates) holds after its first point: no more work is handed out
    # until the test releases it, so the grid is unfinished when the signals arrive, on any machine
    with Job(mpiexec(3) + cli("surface", *args, "--out", str(out), "--flush-seconds", "0.1"),
             LANDSCAPE_MPI_TEST_GATE=f"mid_run:{gate}", **ONE_POINT_AT_A_TIME) as job:
        wait_for_files([f"{gate}.reached.0"])
        pids = rank_pids(job.proc.pid)
        assert len(pids) == 3, pids
        for pid in pids:  # as SLURM's scancel signals every task
            os.kill(pid, signal.SIGTERM)
        for r in range(3):
            job.wait_for_line(CAUGHT.format(r, "SIGTERM"))
        gate.touch()
        assert job.wait(120) == 75, job.stderr
    err = job.stderr
    assert "Rerun the same command to resume" in err
    r = read_results(out)
    computed = sum(int(x) for x in re.findall(r"^ *rank +\d+ .*? (\d+) points ", err, flags=re.M))
    assert computed == r["done"].sum() < r["done"].size  # every finished point was written
    run(mpiexec(3) + cli("surface", *args, "--out", str(out)), timeout=300)
    assert_same_results(ref, out)


def test_sigusr1_to_mpiexec_is_forwarded(tmp_path, reference):
    """SLURM's warning signal sent to Open MPI's mpiexec (as a batch script forwards it) reaches the ranks.

    It failed on a loaded machine when it waited for points and then looked for "caught SIGUSR1" from rank 0:
    a worker could catch it first and the message then named no signal. Now rank 0 holds after its first point
    until the test has seen a rank report the signal, and any rank's report counts."""
    if mpi_flavor() != "openmpi":
        pytest.skip("Open MPI's mpiexec forwards SIGUSR1 to the ranks")
    args, _ = reference
    out, gate = tmp_path / "usr1.h5", tmp_path / "gate"
    with Job(mpiexec(3) + cli("surface", *args, "--out", str(out)), LANDSCAPE_MPI_TEST_GATE=f"mid_run:{gate}",
             **ONE_POINT_AT_A_TIME) as job:
        wait_for_files([f"{gate}.reached.0"])
        job.proc.send_signal(signal.SIGUSR1)
        job.wait_for_line(CAUGHT.format(0, "SIGUSR1"))
        gate.touch()
        assert job.wait(120) == 75, job.stderr
    assert "Rerun the same command to resume" in job.stderr


@pytest.mark.parametrize("failing_rank", [2, 0])
def test_exception_on_one_rank_ends_job_with_message(tmp_path, reference, failing_rank):
    """A rank that raises after 4 points ends every rank within 30 s of its message; what was finished is in
    the file with the uninterrupted run's values. (Per stage and under MPICH and SLURM: test_faults.py.)"""
    args, ref = reference
    out = tmp_path / "fail.h5"
    with Job(mpiexec(3) + cli("surface", *args, "--out", str(out), "--chunk-size", "1"),
             LANDSCAPE_MPI_TEST_FAIL=f"{failing_rank}:4") as job:
        t_fail, _ = job.wait_for_line(f"test hook: rank {failing_rank} fails after 4 points", timeout=300)
        rc = job.wait(120)
        t_end = time.monotonic()
    assert rc not in (0, 2, 75), job.stderr
    assert t_end - t_fail < 30, f"{t_end - t_fail:.1f} s from the failure to the end of the job"
    r = read_results(out)
    mask = r["done"].astype(bool)
    assert mask.any() and np.array_equal(r["train_loss"][mask], read_results(ref)["train_loss"][mask])


def test_idle_ranks_do_not_spin(tmp_path):
    """While the workers take 1.5 s for their points, the coordinator, its own short points (0.3 s) done, waits:
    it must use little CPU doing so. Which rank gets which point depends on when the workers' first requests
    arrive; on a loaded machine rank 0 may do every point itself and never wait. The test needs the event "rank
    0 waited at least 1 s" to have happened: it runs the job until it has (at most 5 times), then checks the CPU
    time of that wait."""
    cmd = mpiexec(3) + [sys.executable, str(ROOT / "benchmarks" / "bench_scheduler.py"), "--points", "3",
                        "--chunk-size", "1", "--sleep", "1.5,0:0.3", "--json"]
    attempts = []
    for _ in range(5):
        report = json.loads(run(cmd, timeout=120).stdout.strip().splitlines()[-1])
        master = report["stats"][0]
        waiting = master["wall_seconds"] - master["busy_seconds"]
        attempts.append(master)
        if waiting >= 1.0:
            break
    else:
        raise AssertionError(f"rank 0 never waited 1 s for its workers in 5 runs: {attempts}")
    assert master["cpu_seconds"] < 0.25 * waiting, master


def test_io_collective_equals_single(tmp_path, reference):
    import h5py as h

    if not h.get_config().mpi:
        pytest.skip("h5py without parallel HDF5 (h5py.get_config().mpi is False)")
    args, ref = reference
    out = tmp_path / "coll.h5"
    run(mpiexec(3) + cli("surface", *args, "--out", str(out), "--io", "collective"), timeout=300)
    assert_same_results(ref, out)


def test_io_collective_without_parallel_h5py_is_a_clear_error(tmp_path, reference, monkeypatch):
    import h5py as h

    from landscape_mpi.config.errors import UserError
    from landscape_mpi.surface.run import check_collective_io

    monkeypatch.setattr(h, "get_config", lambda: type("C", (), {"mpi": False})())
    with pytest.raises(UserError, match="parallel HDF5.*--io single"):
        check_collective_io()
