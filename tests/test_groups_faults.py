"""Groups of ranks per point: faults, stops and resumes (a killed job, a member killed or failing), on CPU
with gloo.

Oracles: the uninterrupted one-process run (a resumed file must equal it); the end of every process of the job,
waited for as an event (the 30 s bound is the requirement, not a sleep).
"""

# ruff: noqa: F811  (the fixtures imported from group_helpers are the tests' arguments)
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import (
    ROOT,
    Job,
    cli,
    kill_job,
    mpi_flavor,
    mpiexec,
    processes_with,
    rank_pids,
    run,
    wait_for_points,
    wait_until,
)
from group_helpers import LM_ARGS, assert_equal_to_reference, contents, gpt_ckpt, lm_reference  # noqa: F401  (fixtures)

sys.path.insert(0, str(ROOT / "benchmarks"))
import stress_stops  # noqa: E402

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


def test_sigkill_of_one_group_member_ends_every_rank_naming_it(tmp_path, gpt_ckpt):
    out = tmp_path / "member.h5"
    with Job(mpiexec(4) + cli("surface", *LM_ARGS, "--checkpoint", gpt_ckpt, "--out", str(out),
                              "--ranks-per-point", "2", "--flush-seconds", "0.05", "--chunk-size", "1",
                              "--group-timeout", "20"),
             LANDSCAPE_MPI_TEST_DELAY="0.3") as job:
        wait_for_points(out, 1)
        pids = {stress_stops.world_rank(p): p for p in rank_pids(job.proc.pid)}
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


@pytest.mark.parametrize("mpi, way", [("openmpi", "every"), ("openmpi", "mpiexec"), ("openmpi", "follower"),
                                      ("mpich", "mpiexec")])
def test_sigterm_inside_every_groups_point_stops_with_75_and_resumes(tmp_path, gpt_ckpt, lm_reference, mpi, way):
    """benchmarks/stress_stops.py's try, once per way (its table is in docs/mpi.md): 4 ranks in 2 groups of
    2, launched through jobs/launch.sh as the job scripts launch, every rank held inside a point; SIGTERM to every
    process (as SLURM sends it), to mpiexec alone (Open MPI's sleeps and SIGKILLs, MPICH's forwards), or to the
    second group's follower alone. The job ends within STOP_SECONDS, its exit code (the ranks' choice, through the
    helper) is 75 whatever the launcher returned, the grid is unfinished, and the resumed file equals the
    uninterrupted run's."""
    found = stress_stops.mpis(ROOT)
    if mpi not in found:
        pytest.skip(f"no {mpi} here (scripts/install.sh makes .venv and .venv-mpich)")
    t = stress_stops.one_try(found[mpi], way, gpt_ckpt, tmp_path / "try")
    assert t.ok, f"{t.problems}\n{t.log[-4000:]}"
    assert t.job_rc == 75 and t.seconds < stress_stops.STOP_SECONDS
    if way != "follower":  # the launcher was signalled: what it returns itself (docs/mpi.md)
        assert t.launcher_rc == {"openmpi": 1, "mpich": 75}[mpi], t.log[-3000:]
    run(cli("surface", *LM_ARGS, "--checkpoint", gpt_ckpt, "--out", t.out))  # resumed by one process
    assert_equal_to_reference(t.out, lm_reference)
