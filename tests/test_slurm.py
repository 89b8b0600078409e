"""jobs/ against a real single-node SLURM on localhost (the session's own, started by conftest's `slurm`
fixture with scripts/local-slurm.sh and stopped at the end).

The job scripts run unchanged; sbatch options on the command line only shrink them to this 2-core node
(2 tasks, 1 CPU each, --overcommit); the node advertises 2 GPUs without devices, so --gpus-per-task works
and the ranks fall back to the CPU. Moments that matter (a signal while points are being computed) are made
with the fault points' gates that the test releases once the event it waits for happened, never with time windows.
"""

import os
import re
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from conftest import (
    BIN,
    ONE_POINT_AT_A_TIME,
    ROOT,
    assert_same_results,
    cli,
    env,
    read_results,
    run,
    wait_for_files,
    wait_for_text,
)

pytestmark = pytest.mark.timeout(900)
SHRINK = ["--ntasks-per-node=2", "--cpus-per-task=1", "--overcommit", "--time=00:20:00"]
DIGITS = ["--model", "digits_cnn", "--dataset", "digits", "--threads", "1", "--samples", "150"]
#: The line a rank prints when it catches a stop signal (landscape_mpi/runtime/lifecycle.py).
CAUGHT = r"rank \d+ caught {}"


MPICH_BIN = ROOT / ".venv-mpich" / "bin"


def job_env(launcher=None, **extra):
    """The submission environment: ENV_SETUP activates the test's virtualenv (.venv-mpich for srun --mpi=pmi2);
    LAUNCHER only when a test chooses one (else the script's own default, as a user gets it)."""
    venv = MPICH_BIN if launcher and "pmi2" in launcher else BIN
    e = env(ENV_SETUP=f"source {venv / 'activate'}", LAUNCHER=launcher, **extra)
    # Open MPI's mpirun as root and oversubscribed (only for LAUNCHER=mpirun on this test node)
    e.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")
    return e


def sbatch(script, args, workdir, sbatch_opts=(), launcher=None, **extra):
    p = subprocess.run(["sbatch", "--parsable", *SHRINK, *sbatch_opts, str(ROOT / "jobs" / script), *args],
                       capture_output=True, text=True, cwd=workdir, env=job_env(launcher, **extra), check=True)
    return p.stdout.strip().split(";")[0]


def job(jobid) -> dict:
    out = subprocess.run(["scontrol", "show", "job", "-o", jobid], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def node_idle() -> bool:
    """The node runs nothing and has finished cleaning up after the last job (no COMPLETING)."""
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.strip()
    return out == "idle"


def wait_job(jobid, states=("COMPLETED",), timeout=600, start_now=True):
    """Wait until the job reaches one of `states`. A requeued job (SLURM holds it about 2 minutes) is released
    as soon as the node has finished cleaning up after its previous run: SLURM refuses to start a job whose
    previous run's credential was revoked in the same second or later ("Job credential revoked", the job then
    ends FAILED), and the revocation happens while the node completes the old run."""
    deadline = time.monotonic() + timeout
    idle_second = None
    while time.monotonic() < deadline:
        info = job(jobid)
        state = info.get("JobState", "")
        if state in states:
            return info
        if state in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"):
            raise AssertionError(f"job {jobid} ended {state}: {info}")
        if start_now and state == "PENDING" and info.get("Reason") == "BeginTime":
            if idle_second is None and node_idle():
                idle_second = int(time.time())
            # SLURM's times have one-second resolution: release in a later second than the one the node was
            # seen idle in, so the new credential is strictly younger than the revocation.
            if idle_second is not None and time.time() >= idle_second + 2:
                subprocess.run(["scontrol", "update", f"JobId={jobid}", "StartTime=now"], capture_output=True)
                idle_second = None
        else:
            idle_second = None
        time.sleep(0.5)
    raise AssertionError(f"job {jobid} not in {states} after {timeout} s: {job(jobid)}")


@pytest.fixture(scope="module")
def direct(tmp_path_factory, digits_ckpt):
    out = tmp_path_factory.mktemp("direct") / "direct.h5"
    args = [*DIGITS, "--checkpoint", digits_ckpt, "--x=-1:1:8", "--y=-1:1:5"]
    run(cli("surface", *args, "--out", str(out)))
    return args, out


@pytest.mark.parametrize("script, launcher", [("surface_node.sbatch", None), ("surface_multinode.sbatch", "mpirun"),
                                              ("surface_node.sbatch", "srun --mpi=pmi2 --kill-on-bad-exit=1")])
def test_surface_job_equals_direct_run_then_exits_at_once(slurm, tmp_path, direct, script, launcher):
    """Open MPI under srun (PMIx: the scripts' default launcher) and under mpirun (the several-node script, on one
    node here), MPICH under srun (PMI-2)."""
    if launcher and "pmi2" in launcher and not (MPICH_BIN / "python").exists():
        pytest.skip("no .venv-mpich (scripts/install.sh makes it)")
    args, ref = direct
    out = tmp_path / "job.h5"
    nodes = ["--nodes=1"]  # the several-node script asks for 4: this cluster has one
    jobid = sbatch(script, [*args, "--out", str(out)], tmp_path, nodes, launcher=launcher)
    wait_job(jobid)
    log = (tmp_path / f"landscape-{jobid}.out").read_text()
    assert "on 2 rank(s)" in log, log
    assert_same_results(ref, out)
    # the same job again on a complete grid: computes nothing, changes nothing
    before = out.read_bytes()
    again = sbatch(script, [*args, "--out", str(out)], tmp_path, nodes, launcher=launcher)
    wait_job(again)
    again_log = (tmp_path / f"landscape-{again}.out").read_text()
    assert "complete: nothing to compute" in again_log and "per-rank summary" not in again_log, again_log
    assert out.read_bytes() == before


def _runs(log):
    """(points done at start, points computed) of each start of the job, from its log."""
    starts = [int(m) for m in re.findall(r"resuming .*?: (\d+)/\d+ points done", log)]
    computed = [sum(int(x) for x in re.findall(r"rank +\d+ .*? (\d+) points ", block))
                for block in log.split("per-rank summary:")[1:]]
    return starts, computed


def test_preemption_signal_requeues_resumes_and_completes(slurm, tmp_path, direct):
    args, ref = direct
    out, gate = tmp_path / "pre.h5", tmp_path / "gate"
    # every rank holds after its first point until the test releases the gate: the grid cannot be finished
    # before the signal, however slow or fast the machine
    jobid = sbatch("surface_preemptible.sbatch", [*args, "--out", str(out)], tmp_path,
                   LANDSCAPE_MPI_TEST_GATE=f"mid_run:{gate}", **ONE_POINT_AT_A_TIME)
    log = tmp_path / f"landscape-{jobid}.out"
    wait_for_files([f"{gate}.reached.0"])
    # what --signal=B:USR1@N does before the time limit (and a preemption warning): USR1 to the batch shell
    subprocess.run(["scancel", "--batch", "--signal=USR1", jobid], check=True)
    wait_for_text(log, CAUGHT.format("SIGUSR1"))  # the script forwarded it and a rank has it
    gate.touch()
    info = wait_job(jobid)
    # 1 requeue; one more where SLURM aborted the restarted step's launch (srun returned 0, the script saw the
    # grid incomplete and counted a failed run: seen on a loaded machine)
    assert int(info["Restarts"]) >= 1
    text = log.read_text()
    assert "requeueing job" in text and "grid complete" in text, text
    assert int(info["Restarts"]) == 1 + text.count("is not complete: counting a failed run"), text
    starts, computed = _runs(text)
    total = read_results(ref)["done"].size
    assert len(computed) == 2 and len(starts) == 1, text
    assert starts[0] == computed[0] > 0  # every point computed before the signal was kept ...
    assert computed[1] == total - starts[0]  # ... and none was computed again
    assert_same_results(ref, out)


@pytest.mark.timeout(1500)
def test_time_limit_warning_signal_from_slurm(slurm, tmp_path, direct):
    """A real time limit: SLURM itself sends the warning signal, the job requeues and completes.

    `--signal=B:USR1@30` with `--time=2`: SLURM checks time limits periodically and may signal up to a minute
    *earlier* than asked (sbatch(1)), so anywhere from the start of the job (set-up included: the batch script
    traps first and the ranks catch stop signals from their first line) to 30 s before the limit. The ranks
    hold after their first point until the signal has reached one of them, so the first run cannot finish
    before it; a run that gets the signal during set-up requeues too."""
    args, ref = direct
    out, gate = tmp_path / "tl.h5", tmp_path / "gate"
    jobid = sbatch("surface_preemptible.sbatch", [*args, "--out", str(out)], tmp_path,
                   sbatch_opts=["--time=2", "--signal=B:USR1@30"], LANDSCAPE_MPI_TEST_GATE=f"mid_run:{gate}",
                   **ONE_POINT_AT_A_TIME)
    log = tmp_path / f"landscape-{jobid}.out"
    wait_for_text(log, CAUGHT.format("SIGUSR1"), timeout=300)
    gate.touch()
    info = wait_job(jobid, timeout=800)
    text = log.read_text()
    assert int(info["Restarts"]) >= 1 and "requeueing job" in text and "grid complete" in text, text
    assert_same_results(ref, out)


def test_user_error_is_not_requeued(slurm, tmp_path, direct):
    jobid = sbatch("surface_preemptible.sbatch", ["--model", "nope", "--checkpoint", "x.pt", "--out",
                                                  str(tmp_path / "e.h5")], tmp_path)
    info = wait_job(jobid, states=("FAILED",))
    assert int(info["Restarts"]) == 0 and info["ExitCode"].startswith("2:"), info
    assert "user error: not requeueing" in (tmp_path / f"landscape-{jobid}.out").read_text()


def test_a_user_error_is_not_requeued_when_srun_returns_a_signal(tmp_path):
    """srun --kill-on-bad-exit ends a step's other ranks as soon as one exits with 2, and then returns their
    SIGTERM's code, 143 (seen in CI: the job was requeued once). The script must take the code the ranks wrote
    to $LANDSCAPE_MPI_EXIT_FILE. Run by bash outside SLURM: the launcher runs the real landscape-mpi, then
    returns 143 as srun did; scontrol records any requeue."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/bin/bash\necho "$@" >> "$SCONTROL_CALLS"\n')
    killing = tmp_path / "srun_that_killed.sh"
    killing.write_text('#!/bin/bash\n"$@"\nexit 143\n')
    for f in (bin_dir / "scontrol", killing):
        f.chmod(0o755)
    calls = tmp_path / "scontrol.calls"
    e = job_env(str(killing), SLURM_JOB_ID="7", SLURM_NTASKS="1", SLURM_JOB_NODELIST="here", SLURM_SUBMIT_DIR=tmp_path,
                SCONTROL_CALLS=calls, PATH=f"{bin_dir}{os.pathsep}{env()['PATH']}")
    p = subprocess.run(["bash", str(ROOT / "jobs" / "surface_preemptible.sbatch"), "--model", "nope",
                        "--checkpoint", "x.pt", "--out", str(tmp_path / "e.h5")],
                       capture_output=True, text=True, cwd=tmp_path, env=e, timeout=300)
    assert "unknown model" in p.stdout + p.stderr, p.stdout + p.stderr  # the real landscape-mpi ran
    assert "the launcher returned 143" in p.stdout, p.stdout
    assert p.returncode == 2 and "user error: not requeueing" in p.stdout, p.stdout
    assert not calls.exists()  # no requeue
    assert not list(tmp_path.glob(".landscape-job-7.*"))  # neither an exit file nor a failure count left


def test_sigterm_to_every_process_of_a_plain_job_ends_it_with_75(slurm, tmp_path, direct):
    """What SLURM does on preemption or `scancel`: SIGTERM to the batch shell and to every process of the job
    (`scancel --full`), srun included. srun, itself sent SIGTERM, SIGKILLs the ranks at once and returns 137;
    the ranks write 75 as soon as they catch the signal, and jobs/launch.sh (jobs/surface_node.sbatch) ends the
    job with 75 whichever process was first: resumable, and the resumed file equals the direct run."""
    args, ref = direct
    out, gate = tmp_path / "term.h5", tmp_path / "gate"
    jobid = sbatch("surface_node.sbatch", [*args, "--out", str(out)], tmp_path,
                   LANDSCAPE_MPI_TEST_GATE=f"mid_run:{gate}", **ONE_POINT_AT_A_TIME)
    log = tmp_path / f"landscape-{jobid}.out"
    wait_for_files([f"{gate}.reached.0", f"{gate}.reached.1"])  # both ranks inside the grid
    subprocess.run(["scancel", "--full", "--signal=TERM", jobid], check=True)
    wait_for_text(log, r"caught SIGTERM: the ranks finish")  # the batch shell has it
    gate.touch()  # ranks that outlived srun's SIGKILL go on to their batch boundary
    info = wait_job(jobid, states=("FAILED", "COMPLETED"))
    text = log.read_text()
    assert info["ExitCode"] == "75:0" and "landscape-mpi exited with 75" in text, (info, text)
    srun = re.search(r"the launcher returned (\d+)", text)  # logged only when it differs from 75
    print(f"srun --mpi=pmix, every process of the job sent SIGTERM: srun returned {srun.group(1) if srun else 75}")
    assert not read_results(out)["done"].all()
    run(cli("surface", *args, "--out", str(out)))
    assert_same_results(ref, out)


def test_launch_helper_takes_the_ranks_code_whenever_the_launcher_fails(tmp_path):
    """jobs/launch.sh by itself: a launcher that returns anything but 0 gives way to the code the ranks wrote to
    $LANDSCAPE_MPI_EXIT_FILE (a signalled mpiexec returns 1, srun 143); 0 is trusted; no file or a garbled one
    keeps the launcher's code; a stop signal before the launch is 75 without launching."""
    # writes its first argument as the ranks' code (if any), exits with the second; "term" after the code: it
    # first sends SIGTERM to the script (what SLURM does to the batch shell) and waits until the trap has run
    fake = tmp_path / "launcher.sh"
    fake.write_text('#!/bin/bash\n[ -n "$1" ] && echo "$1" > "$LANDSCAPE_MPI_EXIT_FILE"\n'
                    'echo ran >> launched\nset -- "$1" $2\n'
                    'if [ "$3" = term ]; then kill -TERM $PPID; trap "exit $2" USR1; while :; do sleep 0.05; done; fi\n'
                    'exit "$2"\n')
    fake.chmod(0o755)

    def launch(chosen, launcher_rc, before=""):
        script = (f'{before}source {ROOT / "jobs" / "launch.sh"}; landscape_launch {fake} "$@"; '
                  'echo "launcher=$LANDSCAPE_LAUNCHER_RC job=$LANDSCAPE_RC"; exit "$LANDSCAPE_RC"')
        p = subprocess.run(["bash", "-c", script, "x", chosen, str(launcher_rc)], capture_output=True, text=True,
                           cwd=tmp_path, env=env(), timeout=60)
        m = re.search(r"launcher=(\d+) job=(\d+)", p.stdout)
        assert m and int(m.group(2)) == p.returncode, p.stdout + p.stderr
        assert not list(tmp_path.glob(".landscape-job-*")), p.stdout  # the exit file is removed
        return int(m.group(1)), p.returncode, p.stdout

    assert launch("75", 1)[:2] == (1, 75)      # Open MPI's mpiexec, itself signalled
    assert launch("75", 143)[:2] == (143, 75)  # srun --kill-on-bad-exit ended the others
    assert launch("2", 143)[:2] == (143, 2)    # a user error
    assert launch("75", 0)[:2] == (0, 0)       # the launcher's 0 is trusted
    assert launch("", 137)[:2] == (137, 137)   # killed before any rank chose
    assert launch("7x", 1)[:2] == (1, 1)       # not a code
    # the script caught a stop signal during the launch and no rank chose (srun SIGKILLed them): 75, resumable
    assert launch("", "137 term")[:2] == (137, 75)
    assert launch("2", "143 term")[:2] == (143, 2)  # a rank's own choice still comes first
    assert launch("", 137)[:2] == (137, 137)  # no signal: the launcher's code
    assert "the launcher returned 1; the ranks chose exit 75" in launch("75", 1)[2]
    ran = (tmp_path / "launched").read_text().count("ran")
    rc, code, out = launch("0", 0, before='LANDSCAPE_STOP_SIGNAL=SIGTERM; ')  # caught while the script set up
    assert (rc, code) == (75, 75) and (tmp_path / "launched").read_text().count("ran") == ran, out


def test_launch_in_python_takes_the_ranks_code_and_a_signalled_rank_writes_75_at_once(tmp_path):
    """`lifecycle.launch`, which the experiments runner uses for its --launcher steps, follows jobs/launch.sh's
    rule; and a rank writes 75 the moment it catches a stop signal, so a launcher that SIGKILLs it afterwards
    (Open MPI's mpiexec, itself signalled) cannot lose the code."""
    from landscape_mpi.runtime.lifecycle import EXIT_FILE, launch

    fake = tmp_path / "launcher.sh"
    fake.write_text('#!/bin/bash\n[ -n "$1" ] && echo "$1" > "$LANDSCAPE_MPI_EXIT_FILE"\nexit "$2"\n')
    fake.chmod(0o755)
    assert [launch([str(fake), chosen, rc]) for chosen, rc in (("75", "1"), ("2", "143"), ("75", "0"), ("", "137"))] \
        == [75, 2, 0, 137]
    exit_file = tmp_path / "exit"
    code = ("import os, signal, time\n"
            "from landscape_mpi.runtime.lifecycle import STOP\n"
            "STOP.install()\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "time.sleep(0.2)\n"
            "os._exit(9)  # killed before it could choose a code at the end\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=env(**{EXIT_FILE: exit_file}))
    assert p.returncode == 9 and "caught SIGTERM" in p.stderr, p.stderr
    assert exit_file.read_text() == "75\n"


def _time(info, field) -> float:
    return time.mktime(time.strptime(info[field], "%Y-%m-%dT%H:%M:%S"))


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
    # The order, from SLURM's own records: every array task ended (COMPLETED) before the plotting job started.
    out = subprocess.run(["scontrol", "show", "job", "-o", ids["ARRAY_JOB"]], capture_output=True, text=True).stdout
    tasks = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.strip()]
    assert sorted(t["ArrayTaskId"] for t in tasks) == ["0", "1"], tasks
    assert all(t["JobState"] == "COMPLETED" for t in tasks), tasks
    assert _time(plot, "StartTime") >= max(_time(t, "EndTime") for t in tasks), (plot, tasks)
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
    p = subprocess.run(["srun", "-n", "2", "--overcommit", "--mpi=none", "--kill-on-bad-exit=1", sys.executable,
                        "-m", "landscape_mpi", "surface", *DIGITS, "--checkpoint", digits_ckpt, "--x=-1:1:3",
                        "--out", str(tmp_path / "s.h5")],
                       capture_output=True, text=True, env=job_env(), cwd=tmp_path, timeout=120)
    assert p.returncode != 0
    assert "add --mpi=pmix (Open MPI) or --mpi=pmi2 (MPICH)" in p.stderr
    assert not (tmp_path / "s.h5").exists()


def test_sharded_job_one_group_per_node_equals_direct_run(slurm, tmp_path, direct):
    """jobs/surface_sharded.sbatch on this one node: its 2 tasks form one group (--ranks-per-point = tasks per
    node), the model sharded over them; values as the direct one-process run's (a group adds its float64
    sums in another order: losses to 1e-6 relative, accuracies identical)."""
    args, ref = direct
    out = tmp_path / "sharded.h5"
    jobid = sbatch("surface_sharded.sbatch", [*args, "--out", str(out)], tmp_path, sbatch_opts=["--nodes=1"])
    wait_job(jobid)
    log = (tmp_path / f"landscape-{jobid}.out").read_text()
    assert "groups of 2" in log and "1 group(s) of 2 ranks per point, --group-mode shard" in log, log
    got, want = read_results(out), read_results(ref)
    assert got["done"].all()
    for k in ("train_loss", "test_loss"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=0, err_msg=k)
    for k in ("train_acc", "test_acc"):
        assert np.array_equal(got[k], want[k]), k
