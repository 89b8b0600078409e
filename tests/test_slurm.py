"""jobs/ against a real single-node SLURM on localhost (scripts/local-slurm.sh, started here if needed).

The job scripts run unchanged; sbatch options on the command line only shrink them to this 2-core node
(2 tasks, 1 CPU each, --overcommit); the node advertises 2 GPUs without devices, so --gpus-per-task works
and the ranks fall back to the CPU.
"""

import os
import re
import shutil
import subprocess
import sys
import time

import h5py
import pytest

from conftest import BIN, ROOT, assert_same_results, cli, env, read_results, run, wait_for_points

pytestmark = pytest.mark.timeout(900)
SHRINK = ["--ntasks-per-node=2", "--cpus-per-task=1", "--overcommit", "--time=00:20:00"]
DIGITS = ["--model", "digits_cnn", "--dataset", "digits", "--threads", "1", "--samples", "150"]


def slurm_up() -> bool:
    p = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return p.returncode == 0 and re.search(r"idle|mixed|allocated", p.stdout) is not None


@pytest.fixture(scope="module")
def slurm():
    if shutil.which("sbatch") is None:
        pytest.skip("SLURM is not installed (apt-get install slurm-wlm munge; scripts/install.sh does)")
    if not slurm_up():
        if os.geteuid() != 0:
            pytest.skip("SLURM is not running and starting it needs root")
        subprocess.run(["bash", str(ROOT / "scripts" / "local-slurm.sh"), "start"], check=True, timeout=120,
                       capture_output=True)
    assert slurm_up()


MPICH_BIN = ROOT / ".venv-mpich" / "bin"


def job_env(launcher="srun --mpi=pmix", **extra):
    venv = MPICH_BIN if launcher.endswith("pmi2") else BIN  # srun --mpi=pmi2 goes with MPICH
    e = env(ENV_SETUP=f"source {venv / 'activate'}", LAUNCHER=launcher, **extra)
    # Open MPI's mpirun as root and oversubscribed (only for LAUNCHER=mpirun on this test node)
    e.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")
    return e


def sbatch(script, args, workdir, sbatch_opts=(), **extra):
    p = subprocess.run(["sbatch", "--parsable", *SHRINK, *sbatch_opts, str(ROOT / "jobs" / script), *args],
                       capture_output=True, text=True, cwd=workdir, env=job_env(**extra), check=True)
    return p.stdout.strip().split(";")[0]


def job(jobid) -> dict:
    out = subprocess.run(["scontrol", "show", "job", "-o", jobid], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_job(jobid, states=("COMPLETED",), timeout=400, start_now=True):
    """Wait until the job reaches one of `states`; a requeued job is released at once (SLURM otherwise
    holds it about 2 minutes)."""
    deadline = time.time() + timeout
    held_since = None
    while time.time() < deadline:
        info = job(jobid)
        state = info.get("JobState", "")
        if state in states:
            return info
        if state in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY") and state not in states:
            raise AssertionError(f"job {jobid} ended {state}: {info}")
        if start_now and state == "PENDING" and info.get("Reason") == "BeginTime":
            # Released a few seconds after the requeue: at once, SLURM may start it while the previous run's
            # credential is still revoked ("Killing non-startable batch job").
            held_since = held_since or time.time()
            if time.time() - held_since > 5:
                subprocess.run(["scontrol", "update", f"JobId={jobid}", "StartTime=now"], capture_output=True)
        else:
            held_since = None
        time.sleep(1)
    raise AssertionError(f"job {jobid} not in {states} after {timeout} s: {job(jobid)}")


@pytest.fixture(scope="module")
def direct(tmp_path_factory, digits_ckpt):
    out = tmp_path_factory.mktemp("direct") / "direct.h5"
    args = [*DIGITS, "--checkpoint", digits_ckpt, "--x=-1:1:8", "--y=-1:1:5"]
    run(cli("surface", *args, "--out", str(out)))
    return args, out


@pytest.mark.parametrize("launcher", ["srun --mpi=pmix", "mpirun", "srun --mpi=pmi2"])
def test_surface_job_equals_direct_run_then_exits_at_once(slurm, tmp_path, direct, launcher):
    """Open MPI under srun (PMIx) and under mpirun, MPICH under srun (PMI-2)."""
    if launcher.endswith("pmi2") and not (MPICH_BIN / "python").exists():
        pytest.skip("no .venv-mpich (scripts/install.sh makes it)")
    args, ref = direct
    out = tmp_path / "job.h5"
    jobid = sbatch("surface_node.sbatch", [*args, "--out", str(out)], tmp_path, launcher=launcher)
    wait_job(jobid)
    log = (tmp_path / f"landscape-{jobid}.out").read_text()
    assert "on 2 rank(s)" in log, log
    assert_same_results(ref, out)
    # the same job again on a complete grid: exits at once, computes nothing, changes nothing
    before = out.read_bytes()
    t0 = time.time()
    again = sbatch("surface_node.sbatch", [*args, "--out", str(out)], tmp_path, launcher=launcher)
    wait_job(again)
    assert "complete: nothing to compute" in (tmp_path / f"landscape-{again}.out").read_text()
    assert out.read_bytes() == before and time.time() - t0 < 60


def _runs(log):
    """(points done at start, points computed) of each start of the job, from its log."""
    starts = [int(m) for m in re.findall(r"resuming .*?: (\d+)/\d+ points done", log)]
    computed = [sum(int(x) for x in re.findall(r"rank +\d+ .*? (\d+) points ", block))
                for block in log.split("per-rank summary:")[1:]]
    return starts, computed


def test_preemption_signal_requeues_resumes_and_completes(slurm, tmp_path, direct):
    args, ref = direct
    out = tmp_path / "pre.h5"
    jobid = sbatch("surface_preemptible.sbatch", [*args, "--out", str(out)], tmp_path,
                   LANDSCAPE_MPI_TEST_DELAY="0.3")
    wait_for_points(out, 5, timeout=200)
    # what --signal=B:USR1@N does before the time limit (and a preemption warning): USR1 to the batch shell
    subprocess.run(["scancel", "--batch", "--signal=USR1", jobid], check=True)
    info = wait_job(jobid, timeout=500)
    assert int(info["Restarts"]) == 1
    log = (tmp_path / f"landscape-{jobid}.out").read_text()
    assert "caught SIGUSR1" in log and "requeueing job" in log and "grid complete" in log, log
    starts, computed = _runs(log)
    total = read_results(ref)["done"].size
    assert len(computed) == 2 and len(starts) == 1, log
    assert starts[0] == computed[0] > 0  # every point computed before the signal was kept ...
    assert computed[1] == total - starts[0]  # ... and none was computed again
    assert_same_results(ref, out)


def test_time_limit_warning_signal_from_slurm(slurm, tmp_path, direct):
    """A real time limit: --time=1 with --signal=B:USR1@35: SLURM itself signals, the job requeues."""
    args, ref = direct
    out = tmp_path / "tl.h5"
    jobid = sbatch("surface_preemptible.sbatch", [*args, "--out", str(out)], tmp_path,
                   sbatch_opts=["--time=1", "--signal=B:USR1@35"], LANDSCAPE_MPI_TEST_DELAY="2.5")
    info = wait_job(jobid, timeout=600)
    log = (tmp_path / f"landscape-{jobid}.out").read_text()
    assert int(info["Restarts"]) >= 1 and "caught SIGUSR1" in log, log
    assert_same_results(ref, out)


def test_user_error_is_not_requeued(slurm, tmp_path, direct):
    jobid = sbatch("surface_preemptible.sbatch", ["--model", "nope", "--checkpoint", "x.pt", "--out",
                                                  str(tmp_path / "e.h5")], tmp_path)
    info = wait_job(jobid, states=("FAILED",))
    assert int(info["Restarts"]) == 0
    assert "user error: not requeueing" in (tmp_path / f"landscape-{jobid}.out").read_text()


def test_sweep_array_then_dependent_plot_job(slurm, tmp_path, digits_ckpt):
    ckdir = os.path.dirname(digits_ckpt)
    listing = tmp_path / "checkpoints.txt"
    listing.write_text(f"{ckdir}/epoch_001.pt\n{ckdir}/final.pt\n")
    p = subprocess.run(["bash", str(ROOT / "jobs" / "submit_sweep.sh"), *DIGITS, "--x=-1:1:5", "--y=-1:1:4"],
                       capture_output=True, text=True, cwd=tmp_path, check=True,
                       env={**job_env(), "CHECKPOINT_LIST": str(listing), "OUT_DIR": str(tmp_path / "sweep"),
                            "ARRAY_SBATCH_OPTS": " ".join(SHRINK)})
    ids = dict(re.findall(r"(ARRAY_JOB|PLOT_JOB)=(\d+)", p.stdout))
    plot = wait_job(ids["PLOT_JOB"], timeout=600)
    assert f"afterok:{ids['ARRAY_JOB']}" in plot.get("Dependency", "") or plot["JobState"] == "COMPLETED"
    figs = tmp_path / "sweep" / "figures"
    made = sorted(x.name for x in figs.iterdir())
    stem = os.path.basename(ckdir)
    for name in (f"{stem}_epoch_001", f"{stem}_final"):
        assert f"{name}_train_loss_contour.png" in made and f"{name}_train_loss.vtp" in made
        with h5py.File(tmp_path / "sweep" / f"{name}.h5", "r") as f:
            assert f["results/done"][()].all()
    assert "compare_train_loss.png" in made
    assert os.path.getsize(figs / "compare_train_loss.png") > 10_000


def test_srun_without_pmi_plugin_is_refused_with_the_fix(slurm, tmp_path, digits_ckpt):
    p = subprocess.run(["srun", "-n", "2", "--overcommit", "--mpi=none", sys.executable, "-m", "landscape_mpi",
                        "surface", *DIGITS, "--checkpoint", digits_ckpt, "--x=-1:1:3", "--out", str(tmp_path / "s.h5")],
                       capture_output=True, text=True, env=job_env(), cwd=tmp_path, timeout=120)
    assert p.returncode != 0
    assert "add --mpi=pmix (Open MPI) or --mpi=pmi2 (MPICH)" in p.stderr
    assert not (tmp_path / "s.h5").exists()
