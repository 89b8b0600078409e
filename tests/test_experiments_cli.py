"""`landscape-mpi experiments list | run --task N --scale S | report --figures`, and the job scripts that run them
(jobs/submit_experiments.sh, jobs/experiment_array.sbatch, jobs/experiment_report.sbatch) under the session's own
local SLURM. One tiny array task is run once by the CLI (the module's fixture); the SLURM array reuses its
finished training, so only the other task trains.

Oracles: the experiment definitions as written in docs/reproducing.md (the width experiment: a x1 and a x4 net
without shortcuts, one array task each; every scale has one task per training run of width), the files each
task must make and no other, and the in-process run's values for the same surface computed under srun.
"""

from __future__ import annotations

import os
import re
import subprocess

import h5py
import pytest

from conftest import ROOT, assert_same_results, cli, one_line_error, run
from test_slurm import SHRINK, _time, job, job_env, wait_job

pytestmark = pytest.mark.timeout(900)

#: width at the tiny scale (docs/reproducing.md): task 0 the x1 net, task 1 the x4 net, one surface each.
WIDTH = {0: ("resnet1d_8_noshort_w1_e1_s11", "d8_noshort_w1_s11_d21"),
         1: ("resnet1d_8_noshort_w4_e1_s11", "d8_noshort_w4_s11_d21")}


def _tasks(listing: str) -> dict[str, int]:
    """Array tasks per experiment, read from `experiments list`."""
    counts, current = {}, None
    for line in listing.splitlines():
        m = re.match(r"(\w+): ", line)
        if m and not line.startswith(" "):
            current = m.group(1)
            counts[current] = 0
        elif current and re.match(r"  task \d+: ", line):
            counts[current] += 1
    return counts


def test_list_names_every_task_and_counts_them():
    listing = run(cli("experiments", "list", "--scale", "tiny")).stdout
    assert listing.startswith("scale tiny: training seeds 11; direction seeds 21"), listing
    tasks = _tasks(listing)
    assert set(tasks) == {"skip", "batch", "width", "trajectory"} and tasks["width"] == 2, tasks
    for name, n in tasks.items():  # --count (what jobs/submit_experiments.sh sizes its arrays with) agrees
        assert run(cli("experiments", "list", "--scale", "tiny", "--count", name)).stdout.strip() == str(n)
    for task, (net, surface) in WIDTH.items():
        assert re.search(rf"  task {task}: {net} \(.*\) -> {surface}$", listing, flags=re.M), listing
    # the small scale has three training seeds: three times the width nets (one task per net)
    assert run(cli("experiments", "list", "--scale", "small", "--count", "width")).stdout.strip() == "6"


def test_an_unknown_scale_is_one_line_naming_the_choices(tmp_path):
    p = run(cli("experiments", "run", "width", "--scale", "huge", "--out-dir", str(tmp_path)), check_rc=2)
    assert "huge" in p.stderr and "tiny" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    one_line_error(run(cli("experiments", "list", "--scale", "huge"), check_rc=2), "tiny")
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def task_run(tmp_path_factory):
    """`experiments run width --scale tiny --task 0`: the x1 net's training and its one surface."""
    out = tmp_path_factory.mktemp("width")
    p = run(cli("experiments", "run", "width", "--scale", "tiny", "--task", "0", "--out-dir", str(out),
                "--device", "cpu"), timeout=600)
    return out, p.stderr


def test_one_array_task_trains_its_net_and_computes_its_surface_only(task_run):
    out, log = task_run
    net, surface = WIDTH[0]
    assert sorted(p.name for p in (out / "runs").iterdir()) == [net], log
    assert (out / "runs" / net / "final.pt").exists()
    assert sorted(p.name for p in (out / "width").glob("*.h5")) == [f"{surface}.h5"], log
    with h5py.File(out / "width" / f"{surface}.h5", "r") as f:
        assert f["results/done"][()].all()
    assert f"training {net}" in log and "experiment width (tiny): complete in" in log, log


def test_the_same_task_again_computes_nothing_and_tiny_is_scale_tiny(task_run):
    out, _ = task_run
    files = [p for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"]
    before = {p: os.path.getmtime(p) for p in files}
    p = run(cli("experiments", "run", "width", "--tiny", "--task", "0", "--out-dir", str(out)))
    assert "training" not in p.stderr and "landscape-mpi surface" not in p.stderr, p.stderr
    assert before == {q: os.path.getmtime(q) for q in before}


def test_report_puts_its_figures_where_asked(task_run, tmp_path):
    out, _ = task_run
    report, figures = tmp_path / "r" / "findings.md", tmp_path / "figs"
    report.parent.mkdir()
    p = run(cli("experiments", "report", "--out-dir", str(out), "--out", str(report), "--figures", str(figures)))
    assert f"wrote {report} and figures in {figures}/" in p.stderr, p.stderr
    made = sorted(x.name for x in figures.iterdir())
    assert "width_surfaces.png" in made, made
    assert (figures / "width_surfaces.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (report.parent / "findings").exists()  # not the default folder beside --out
    text = report.read_text()
    # the task's net is in the table, the other task's surface is named missing, and the figure link resolves
    assert "## Width" in text and "| x1 | 8 | 1 |" in text and f"`{WIDTH[1][1]}` missing" in text, text[-3000:]
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert [(report.parent / x).resolve() for x in links] == [(figures / "width_surfaces.png").resolve()], links


def test_submit_experiments_runs_each_task_under_srun_then_the_report(slurm, task_run, tmp_path):
    """jobs/submit_experiments.sh at the tiny scale: the width array (2 tasks, each surface under the scripts'
    default srun --mpi=pmix on 2 ranks), then the report job once both succeeded (SLURM's own start and end times).
    Task 0's training is the fixture's (a finished training is not redone); its surface under srun equals the
    in-process one."""
    done, _ = task_run
    out = tmp_path / "findings"
    out.mkdir()
    os.symlink(done / "runs", out / "runs")
    p = subprocess.run(["bash", str(ROOT / "jobs" / "submit_experiments.sh"), "width"], capture_output=True, text=True,
                       cwd=tmp_path, check=True, timeout=120,
                       env={**job_env(), "SCALE": "tiny", "OUT_DIR": str(out), "ARRAY_SBATCH_OPTS": " ".join(SHRINK),
                            "REPORT_SBATCH_OPTS": "--cpus-per-task=1"})
    ids = dict(re.findall(r"(ARRAY_JOBS|REPORT_JOB)=(\d+)", p.stdout))
    assert "experiment width: array job" in p.stdout and "(2 tasks)" in p.stdout, p.stdout
    report = wait_job(ids["REPORT_JOB"], timeout=800)
    lines = subprocess.run(["scontrol", "show", "job", "-o", ids["ARRAY_JOBS"]], capture_output=True,
                           text=True).stdout.splitlines()
    tasks = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in lines if line.strip()]
    assert sorted(t["ArrayTaskId"] for t in tasks) == ["0", "1"] and all(t["JobState"] == "COMPLETED" for t in tasks)
    assert _time(report, "StartTime") >= max(_time(t, "EndTime") for t in tasks), (report, tasks)
    logs = {i: (tmp_path / f"landscape-experiment-{ids['ARRAY_JOBS']}_{i}.out").read_text() for i in ("0", "1")}
    assert "training" not in logs["0"] and f"training {WIDTH[1][0]}" in logs["1"], logs
    for log in logs.values():
        assert "on 2 rank(s)" in log, log
    assert_same_results(done / "width" / f"{WIDTH[0][1]}.h5", out / "width" / f"{WIDTH[0][1]}.h5")
    with h5py.File(out / "width" / f"{WIDTH[1][1]}.h5", "r") as f:
        assert f["results/done"][()].all()
    text = (out / "findings.md").read_text()
    assert "| x1 | 8 | 1 |" in text and "| x4 | 8 | 1 |" in text and "missing" not in text, text[-3000:]
    assert (out / "findings" / "width_surfaces.png").exists()
    assert job(ids["REPORT_JOB"])["ExitCode"] == "0:0"
