"""Fault injection: a failure on one rank, at any stage of a run, ends every rank promptly with that rank's
message, under Open MPI, MPICH and SLURM; a user error under MPI is one line and exit 2 within seconds.

The failures come from landscape_mpi/runtime/faults.py (`LANDSCAPE_MPI_TEST_FAIL_AT=STAGE:RANK`): rank RANK raises
`InjectedFault("test hook: rank R fails at stage S")` when it reaches STAGE. What is checked, for rank 0 (the
coordinator and writer) and rank 2 (a worker) at every stage:
- the job ends with a non-zero exit that is neither "complete" (0), "user error" (2) nor "resumable" (75);
- stderr names the failing rank and carries its message: ``rank R: `` and then (possibly after a traceback)
  ``test hook: rank R fails at stage S``;
- every process of the job (launcher and ranks) is gone within 30 s of that message: no rank is left
  waiting in a collective for the one that failed.
A hang fails the test after 60 s (the whole job is then killed) instead of stalling the suite.
"""

import re
import subprocess
import sys
import time

import pytest

from conftest import ROOT, Job, mpiexec, processes_with, wait_for_text, wait_until

pytestmark = pytest.mark.timeout(900)
STAGES = ("context", "lock", "preflight", "file", "engine", "writer_open", "first_point", "mid_run", "close")
MPICH = ROOT / ".venv-mpich" / "bin"
#: Seconds from the failing rank's message to the end of every process of the job.
END_WITHIN = 30
#: Seconds after which a job that has not ended is a hang (killed, and the test fails).
HANG = 60


@pytest.fixture(scope="module")
def mlp_ckpt(tmp_path_factory) -> str:
    """digits_mlp, one epoch: the cheapest zoo model with real data (the faults do not depend on the values)."""
    from landscape_mpi.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("digits_mlp")
    return train(TrainConfig(model="digits_mlp", out_dir=str(out), epochs=1, batch_size=64, lr=0.05), quiet=True)


def surface_args(ckpt: str, out) -> list[str]:
    # 9 points handed out one at a time, so that every rank (rank 2 included) gets points to fail on; the eager
    # engine: no start-up tuning of a faster one (the values do not matter here)
    return ["surface", "--model", "digits_mlp", "--dataset", "digits", "--checkpoint", ckpt, "--x=-1:1:3",
            "--y=-1:1:3", "--samples", "50", "--threads", "1", "--chunk-size", "1", "--engine", "eager",
            "--out", str(out)]


def launcher(mpi: str) -> list[str]:
    if mpi == "openmpi":
        return mpiexec(3) + [sys.executable, "-m", "landscape_mpi"]
    if not (MPICH / "mpiexec").exists():
        pytest.skip("no .venv-mpich (scripts/install.sh makes it)")
    return [str(MPICH / "mpiexec"), "-n", "3", str(MPICH / "python"), "-m", "landscape_mpi"]


def hooks_for(stage: str, rank: int) -> dict:
    hooks = {"LANDSCAPE_MPI_TEST_FAIL_AT": f"{stage}:{rank}"}
    if rank != 0 and stage in ("first_point", "mid_run"):
        # Rank 2 must be handed a point before ranks 0 and 1 have finished all 9: they take 0.2 s per batch
        # (sleeping), rank 2 none; rank 2 asks for work as soon as set-up ends, a few ms after the others.
        hooks["LANDSCAPE_MPI_TEST_DELAY"] = f"0.2,{rank}:0"
    return hooks


def message_pattern(stage: str, rank: int) -> re.Pattern:
    """``rank R: `` (the lifecycle's prefix, from the rank that failed or from rank 0 speaking for every rank
    after an agree-or-fail step), then the hook's message, possibly after a traceback."""
    return re.compile(rf"rank {rank}: .*?test hook: rank {rank} fails at stage {stage}\b", re.S)


def assert_ends_promptly(job: Job, stage: str, rank: int, needle: str) -> None:
    t_fail, _ = job.wait_for_line(rf"test hook: rank {rank} fails at stage {stage}\b", timeout=300)
    try:
        job.proc.wait(timeout=HANG)
    except subprocess.TimeoutExpired:
        job.wait(0)  # kills the whole job and fails with its stderr
    gone = wait_until(lambda: not processes_with(needle), HANG, f"every process of the job ({needle}) to end")
    t_end = time.monotonic()
    job.wait(30)
    err = job.stderr
    assert gone and t_end - t_fail < END_WITHIN, f"{t_end - t_fail:.1f} s from the failure to the end\n{err[-4000:]}"
    assert job.proc.returncode not in (0, 2, 75), f"exit {job.proc.returncode}\n{err[-4000:]}"
    assert message_pattern(stage, rank).search(err), err[-4000:]


@pytest.mark.parametrize("rank", [0, 2])
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("mpi", ["openmpi", "mpich"])
def test_failure_on_one_rank_ends_every_rank(tmp_path, mlp_ckpt, mpi, stage, rank):
    out = tmp_path / "fault.h5"
    with Job(launcher(mpi) + surface_args(mlp_ckpt, out), **hooks_for(stage, rank)) as job:
        assert_ends_promptly(job, stage, rank, str(out))


def test_failure_under_slurm_ends_the_job(slurm, tmp_path, mlp_ckpt):
    """The scripts' own launcher (srun --mpi=pmix --kill-on-bad-exit=1) with the test node's two tasks, the
    worker (rank 1) failing after its first point: the job ends FAILED within 30 s of the message, with the
    message in its log and nothing left running. (Three tasks do not fit this 2-CPU, 2-GPU test node.)"""
    from test_slurm import job, sbatch

    out = tmp_path / "fault.h5"
    args = surface_args(mlp_ckpt, out)[1:]
    jobid = sbatch("surface_node.sbatch", args, tmp_path, **hooks_for("mid_run", 1))
    log = tmp_path / f"landscape-{jobid}.out"
    wait_for_text(log, r"test hook: rank 1 fails at stage mid_run", timeout=300)
    t_fail = time.monotonic()
    info = wait_until(lambda: (lambda i: i if i.get("JobState") in ("FAILED", "COMPLETED", "CANCELLED") else None)(
        job(jobid)), HANG, f"job {jobid} to end", poll=0.25)
    wait_until(lambda: not processes_with(str(out)), HANG, "every task of the job to end")
    elapsed = time.monotonic() - t_fail
    text = log.read_text()
    assert info["JobState"] == "FAILED", (info, text)
    assert elapsed < END_WITHIN, f"{elapsed:.1f} s\n{text}"
    assert message_pattern("mid_run", 1).search(text), text


@pytest.mark.parametrize("mpi", ["openmpi", "mpich"])
def test_demo_with_unwritable_out_dir_is_a_user_error_on_every_rank(tmp_path, mpi):
    """The README's MPI demo command with an --out-dir that cannot be created (a path through a regular file:
    unwritable even for root): exit 2, one line naming --out-dir, nothing trained or written, within seconds."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out_dir = blocker / "demo"
    t0 = time.monotonic()
    with Job(launcher(mpi) + ["demo", "--out-dir", str(out_dir), "--threads", "1"]) as job:
        rc = job.wait(HANG)
    elapsed = time.monotonic() - t0
    err = job.stderr
    assert rc == 2, f"exit {rc}\n{err[-4000:]}"
    errors = [line for line in err.splitlines() if "landscape-mpi" in line and "error" in line]
    assert len(errors) == 1 and "--out-dir" in errors[0] and "Traceback" not in err, err[-4000:]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a_file"]  # nothing trained, nothing written
    assert elapsed < HANG


def test_coordinator_failure_waits_the_grace_before_mpi_abort(monkeypatch, capsys):
    """Rank 0's own failure (Master.fail) writes what is finished, prints its message, and only then, after
    lifecycle.ABORT_GRACE_SECONDS, calls MPI_Abort: without the wait MPICH's launcher lost the message (an idle
    run of test_failure_on_one_rank_ends_every_rank[mpich-mid_run-0]). A fake communicator records the order."""
    import time as time_module

    import numpy as np

    from landscape_mpi.runtime import lifecycle
    from landscape_mpi.runtime.scheduler import Master

    events = []

    class FakeComm:
        def Get_size(self):
            return 3

        def Abort(self, code):
            events.append(("abort", code))

    class Sink:
        def flush(self):
            events.append(("flush",))

    monkeypatch.setattr(time_module, "sleep", lambda s: events.append(("sleep", s)))
    master = Master(FakeComm(), np.arange(9, dtype=np.int64), None, Sink(), lifecycle.StopFlag())
    master.fail("boom", "detail line")
    assert events == [("flush",), ("sleep", lifecycle.ABORT_GRACE_SECONDS), ("abort", 1)], events
    assert "landscape-mpi: rank 0: error: boom\ndetail line" in capsys.readouterr().err
