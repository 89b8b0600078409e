"""Groups of ranks per point: faults, stops and resumes (a killed job, a member killed or failing), on CPU
with gloo.

Oracles: the uninterrupted one-process run (a resumed file must equal it); the end of every process of the job,
waited for as an event (the 30 s bound is the requirement, not a sleep).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from conftest import (ROOT, Job, cli, kill_job, mpi_flavor, mpiexec, processes_with, rank_pids, run, wait_for_files,
                      wait_for_points, wait_until)
from group_helpers import LM_ARGS, assert_equal_to_reference, contents, gpt_ckpt, lm_reference  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(900)


def test_a_file_started_with_groups_killed_resumes_with_one_rank(tmp_path, gpt_ckpt, lm_reference):
    out = tmp_path / "killed.h5"
    cmd = mpiexec(4) + cli("surface", *LM_ARGS, "--checkpoint", gpt_ckpt, "--out", str(out), "--ranks-per-point",
                           "2", "--flush-seconds", "0.05", "--chunk-size", "1")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "LANDSCAPE_MPI_TEST_DELAY": "0.3",
                                                         "PYTHONPATH": str(ROOT / "tests")})
    try:
        wait_for_points(out, 2)
    finally:
        kill_job(proc)
    got, _ = contents(out)
    assert 2 <= got["done"].sum() < got["done"].size, got["done"]
    run(cli("surface", *LM_ARGS, "--checkpoint", gpt_ckpt, "--out", str(out)))  # G = 1, one process
    assert_equal_to_reference(out, lm_reference)


def test_a_failing_group_member_ends_every_rank_with_its_message(tmp_path, gpt_ckpt):
    """A follower (world rank 3) raises in the middle of the run: its message, then every rank ends (no member
    left in a gloo collective)."""
    out = tmp_path / "fail.h5"
    with Job(mpiexec(4) + cli("surface", *LM_ARGS, "--checkpoint", gpt_ckpt, "--out", str(out),
                              "--ranks-per-point", "2", "--chunk-size", "1", "--group-timeout", "20"),
             LANDSCAPE_MPI_TEST_FAIL_AT="mid_run:3") as job:
        t_fail, _ = job.wait_for_line(r"test hook: rank 3 fails at stage mid_run", timeout=300)
        try:
            job.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            job.wait(0)
        gone = wait_until(lambda: not processes_with(str(out)), 60, "every rank to end")
        elapsed = time.monotonic() - t_fail
        job.wait(30)
    assert gone and elapsed < 30, f"{elapsed:.1f} s\n{job.stderr[-3000:]}"
    assert job.proc.returncode not in (0, 2, 75), job.stderr[-3000:]
    assert "rank 3: " in job.stderr, job.stderr[-3000:]


def world_rank_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    except OSError:
        return None
    for key in (b"OMPI_COMM_WORLD_RANK", b"PMI_RANK", b"PMIX_RANK"):
        if key in environ:
            return int(environ[key])
    return None


def test_sigkill_of_one_group_member_ends_every_rank_naming_it(tmp_path, gpt_ckpt):
    out = tmp_path / "member.h5"
    with Job(mpiexec(4) + cli("surface", *LM_ARGS, "--checkpoint", gpt_ckpt, "--out", str(out),
                              "--ranks-per-point", "2", "--flush-seconds", "0.05", "--chunk-size", "1",
                              "--group-timeout", "20"),
             LANDSCAPE_MPI_TEST_DELAY="0.3") as job:
        wait_for_points(out, 1)
        pids = {world_rank_of(p): p for p in rank_pids(job.proc.pid)}
        assert sorted(pids) == [0, 1, 2, 3], pids
        os.kill(pids[3], signal.SIGKILL)  # the follower of the second group
        t_kill = time.monotonic()
        try:
            job.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            job.wait(0)  # a hang: kills the job and fails with its stderr
        gone = wait_until(lambda: not processes_with(str(out)), 60, "every rank to end")
        elapsed = time.monotonic() - t_kill
        job.wait(30)
    assert gone and elapsed < 30, f"{elapsed:.1f} s\n{job.stderr[-3000:]}"
    assert job.proc.returncode not in (0, 2, 75), job.stderr[-3000:]
    named = {"openmpi": "rank 3 with PID", "mpich": "RANK 3 PID"}[mpi_flavor()]
    assert named in job.stderr, job.stderr[-3000:]


#: "one follower" passes too (docs/mpi.md) and is left out of CI for its time: add it here to run it.
SIGNALLED = ["every rank"]


@pytest.mark.parametrize("signalled", SIGNALLED)
def test_sigterm_inside_a_point_stops_every_group_resumable(tmp_path, gpt_ckpt, lm_reference, signalled):
    """SIGTERM while the first group is inside a point (its two ranks held after their 2nd batch; the second
    group wherever it is): the groups agree on the stop at a batch boundary, every rank exits 75, and the file
    resumes to the uninterrupted run's values. With "one follower", a signal to the follower alone (world rank 1)
    stops the job the same way: the follower's flag reaches its leader through the group's per-batch agreement
    (run by hand: add it to SIGNALLED)."""
    out, gate = tmp_path / "term.h5", tmp_path / "gate"
    with Job(mpiexec(4) + cli("surface", *LM_ARGS, "--checkpoint", gpt_ckpt, "--out", str(out),
                              "--ranks-per-point", "2", "--flush-seconds", "0.05", "--chunk-size", "1",
                              "--group-timeout", "120"),
             LANDSCAPE_MPI_TEST_GATE=f"batch:2:{gate}") as job:
        # only the first group is waited for: the coordinator (rank 0) holds at the gate, so it may not yet have
        # handed the second group a point
        wait_for_files([f"{gate}.reached.0", f"{gate}.reached.1"])
        pids = {world_rank_of(p): p for p in rank_pids(job.proc.pid)}
        assert sorted(pids) == [0, 1, 2, 3], pids
        targets = [0, 1, 2, 3] if signalled == "every rank" else [1]
        for r in targets:
            os.kill(pids[r], signal.SIGTERM)
        for r in targets:  # the handlers ran: the signal reached each process (an event, not a time window)
            job.wait_for_line(rf"rank {r} caught SIGTERM")
        gate.touch()
        assert job.wait(300) == 75, job.stderr[-3000:]
    assert "Rerun the same command to resume" in job.stderr
    got, _ = contents(out)
    assert not got["done"].all(), got["done"]  # stopped inside the grid, not after it
    run(cli("surface", *LM_ARGS, "--checkpoint", gpt_ckpt, "--out", str(out)))  # resumed by one process
    assert_equal_to_reference(out, lm_reference)
