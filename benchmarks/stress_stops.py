"""Stops in groups of ranks, tried the three ways a stop signal is delivered, under Open MPI and MPICH.

    python benchmarks/stress_stops.py [--tries 20] [--mpi openmpi,mpich] [--ways every,mpiexec,follower]

Each try is a 4-rank job in 2 groups of 2 (`--ranks-per-point 2`, `gpt_tiny` on the text corpus, a 3x3 grid),
launched the way the job scripts launch it: bash runs jobs/launch.sh's `landscape_launch mpiexec -n 4 ...`, which
forwards stop signals and makes the ranks' chosen exit code the job's. Every rank is held inside a point
(`LANDSCAPE_MPI_TEST_GATE=batch:2:GATE`: each rank writes GATE.reached.R after its 2nd batch and waits; the
coordinator keeps serving while it waits, so the second group gets its point too). Then SIGTERM goes to

  every     every process of the job: the shell, mpiexec (and MPICH's hydra proxy), every rank, as SLURM signals
            a job's processes on preemption or `scancel`;
  mpiexec   mpiexec alone (a user's `kill`, a wrapper's timeout);
  follower  world rank 3 alone (the second group's follower, which no coordinator talks to).

The try waits until the signal has reached the ranks (each one that got it says "rank R caught SIGTERM"; with
`mpiexec` alone, until one rank says so or the launcher ends), then releases the gate, and checks: the whole job
(every process) ends within STOP_SECONDS of the signal; the launcher's own exit code (recorded: what a signalled
launcher returns); the job's exit code through `landscape_launch` (the code the ranks chose, from
$LANDSCAPE_MPI_EXIT_FILE) is 75; the file is not complete. At the end every stopped file is resumed by one
process and must equal the uninterrupted one-process run (losses and perplexities to 1e-6 relative: a group adds
its float64 sums in another order; accuracies and directions identical). Prints one table; exit 1 if a try failed.
tests/test_groups_faults.py runs a few tries of each way with `one_try`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout this script belongs to
LAUNCH = ROOT / "jobs" / "launch.sh"
LM_ARGS = ["--model", "gpt_tiny", "--dataset", "text", "--task", "lm", "--x=-1:1:3", "--y=-1:1:3", "--samples", "20",
           "--batch-size", "6", "--threads", "1"]
GROUP_ARGS = ["--ranks-per-point", "2", "--flush-seconds", "0.05", "--chunk-size", "1", "--group-timeout", "120"]
WAYS = ("every", "mpiexec", "follower")
#: The job must be gone this many seconds after the signal (a stop at a batch boundary takes about one batch).
STOP_SECONDS = 30.0
#: The bash that launches like a job script: the helper's log on stdout, then the two codes.
SCRIPT = ('source "$0"; landscape_launch "$@"; '
          'echo "launcher=$LANDSCAPE_LAUNCHER_RC job=$LANDSCAPE_RC"; exit "$LANDSCAPE_RC"')


@dataclass(frozen=True)
class MPI:
    name: str
    python: str
    mpiexec: list[str]


def mpis(root: Path = ROOT) -> dict[str, MPI]:
    """The MPIs this checkout has: Open MPI with .venv (Debian's mpiexec), MPICH with .venv-mpich (PyPI's)."""
    found = {}
    venv = root / ".venv" / "bin"
    ompi = shutil.which("mpiexec", path=f"{venv}{os.pathsep}{os.environ.get('PATH', '')}")
    if (venv / "python").exists() and ompi:
        flags = ["--oversubscribe", "--bind-to", "none"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
        found["openmpi"] = MPI("openmpi", str(venv / "python"), [ompi, "-n", "4", *flags])
    mpich = root / ".venv-mpich" / "bin"
    if (mpich / "python").exists() and (mpich / "mpiexec").exists():
        found["mpich"] = MPI("mpich", str(mpich / "python"), [str(mpich / "mpiexec"), "-n", "4"])
    return found


@dataclass
class Try:
    mpi: str
    way: str
    launcher_rc: int | None = None
    job_rc: int | None = None
    seconds: float = float("nan")
    out: str = ""
    problems: list[str] = field(default_factory=list)
    log: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    return children


def descendants(pid: int) -> list[int]:
    tree, found, frontier = _children(), [], [pid]
    while frontier:
        frontier = [c for p in frontier for c in tree.get(p, [])]
        found += frontier
    return found


def world_rank(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"landscape_mpi" not in f.read():
                return None
    except OSError:
        return None
    for key in (b"OMPI_COMM_WORLD_RANK", b"PMI_RANK", b"PMIX_RANK"):
        if key in environ:
            return int(environ[key])
    return None


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(condition, timeout: float, poll: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True


class Lines:
    """A stream read line by line as it comes, in a thread."""

    def __init__(self, stream) -> None:
        self.t0 = time.monotonic()
        self.lines: list[str] = []
        self.stamped: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))
            self.stamped.append(f"{time.monotonic() - self.t0:6.1f} {self.lines[-1]}")

    def has(self, pattern: str) -> bool:
        return any(re.search(pattern, line) for line in list(self.lines))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def one_try(mpi: MPI, way: str, checkpoint: str, folder: Path, timeout: float = 300) -> Try:
    """One job held with every rank inside a point, SIGTERM delivered `way`; the stopped file is left at
    `Try.out` for `check_resumed`."""
    t = Try(mpi.name, way)
    folder.mkdir(parents=True, exist_ok=True)
    out, gate = folder / "s.h5", folder / "gate"
    t.out = str(out)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "LANDSCAPE_MPI_TEST_GATE": f"batch:2:{gate}",
           "PATH": f"{Path(mpi.python).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = ["bash", "-c", SCRIPT, str(LAUNCH), *mpi.mpiexec, mpi.python, "-m", "landscape_mpi", "surface", *LM_ARGS,
           "--checkpoint", checkpoint, "--out", str(out), *GROUP_ARGS]
    proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    err, log = Lines(proc.stderr), Lines(proc.stdout)
    job: list[int] = []
    try:
        reached = [Path(f"{gate}.reached.{r}") for r in range(4)]
        if not wait_until(lambda: all(p.exists() for p in reached) or proc.poll() is not None, timeout):
            t.problems.append(f"not every rank held inside a point after {timeout} s")
            return t
        if proc.poll() is not None:
            t.problems.append(f"the job ended (exit {proc.returncode}) before every rank was inside a point")
            return t
        job = descendants(proc.pid)
        ranks = {world_rank(p): p for p in job}
        ranks.pop(None, None)
        launcher = [p for p in job if p not in ranks.values() and Path(f"/proc/{p}/cmdline").read_bytes()
                    .split(b"\0")[0].endswith(b"mpiexec")]
        if sorted(ranks) != [0, 1, 2, 3] or len(launcher) != 1:
            t.problems.append(f"ranks {sorted(ranks)}, launcher {launcher}: not a 4-rank job under one mpiexec")
            return t
        targets = {"every": [proc.pid, *job], "mpiexec": launcher, "follower": [ranks[3]]}[way]
        t0 = time.monotonic()
        for pid in targets:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        # the event: the signal reached the held ranks it was meant for (each writes GATE.stopped.R), or the
        # launcher ended; with mpiexec alone, whichever ranks it passes the signal on to
        expect = {"every": range(4), "mpiexec": None, "follower": [3]}[way]
        stopped = [Path(f"{gate}.stopped.{r}") for r in range(4)]
        if expect is None:
            got = wait_until(lambda: any(p.exists() for p in stopped) or proc.poll() is not None, timeout)
        else:
            got = wait_until(lambda: all(stopped[r].exists() for r in expect) or proc.poll() is not None, timeout)
        if not got:
            t.problems.append("the signal reached no rank")
        gate.touch()
        if not wait_until(lambda: proc.poll() is not None and not any(alive(p) for p in job), timeout):
            t.problems.append(f"the job still runs {timeout} s after the signal")
            return t
        t.seconds = time.monotonic() - t0
        err.thread.join(10)
        log.thread.join(10)
        m = re.search(r"launcher=(\d+) job=(\d+)", log.text)
        if m is None:
            t.problems.append(f"no exit codes from the shell (exit {proc.returncode})")
        else:
            t.launcher_rc, t.job_rc = int(m.group(1)), int(m.group(2))
            if t.job_rc != 75 or proc.returncode != 75:
                t.problems.append(f"exit {t.job_rc} (launcher {t.launcher_rc}), not 75")
        if t.seconds > STOP_SECONDS:
            t.problems.append(f"stopped after {t.seconds:.1f} s, more than {STOP_SECONDS:.0f} s")
        import h5py

        with h5py.File(out, "r") as f:
            if f["results/done"][()].all():
                t.problems.append("the grid completed: the stop came too late to test anything")
        return t
    finally:
        t.log = "--- stdout\n" + "\n".join(log.stamped) + "\n--- stderr\n" + "\n".join(err.stamped)
        if proc.poll() is None or any(alive(p) for p in job):
            for pid in [proc.pid, *job, *descendants(proc.pid)]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait(30)


def make_checkpoint(folder: Path) -> str:
    """`gpt_tiny` at seed 0, as tests/group_helpers.py makes it."""
    import torch

    from landscape_mpi.models import build_model

    torch.manual_seed(0)
    path = folder / "gpt.pt"
    torch.save(build_model("gpt_tiny").state_dict(), path)
    return str(path)


def surface(checkpoint: str, out: str) -> int:
    """`landscape-mpi surface` in this process, one rank: a first run, or the resume of a stopped file."""
    from landscape_mpi.cli import main

    try:
        return main(["surface", *LM_ARGS, "--checkpoint", checkpoint, "--out", out])
    finally:  # the command caught stop signals for its run: this script ends on them again
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def contents(path) -> tuple[dict, dict]:
    import h5py

    with h5py.File(path, "r") as f:
        results = {k: f["results"][k][()] for k in f["results"] if k not in ("rank", "seconds")}
        directions = {f"{a}/{k}": f["directions"][a][k][()] for a in f["directions"] for k in f["directions"][a]}
    return results, directions


def differences(path, reference) -> list[str]:
    """How the file differs from the reference run: [] if equal (losses and perplexities to 1e-6 relative)."""
    import numpy as np

    (got, got_dirs), (ref, ref_dirs) = contents(path), contents(reference)
    found = []
    if got.keys() != ref.keys() or got_dirs.keys() != ref_dirs.keys():
        return [f"datasets {sorted(got)} / {sorted(ref)}"]
    if not got["done"].all():
        found.append("not complete after the resume")
    for k in ref:
        if k.endswith(("loss", "ppl")):
            if not np.allclose(got[k], ref[k], rtol=1e-6, atol=0):
                found.append(f"{k} differs")
        elif not np.array_equal(got[k], ref[k]):
            found.append(f"{k} differs")
    found += [f"direction {k} differs" for k in ref_dirs if not np.array_equal(got_dirs[k], ref_dirs[k])]
    return found


def check_resumed(t: Try, checkpoint: str, reference: str) -> None:
    """Resume the stopped file by one process; it must equal the uninterrupted run."""
    if not t.out or not os.path.exists(t.out) or t.problems:
        return
    code = surface(checkpoint, t.out)
    if code != 0:
        t.problems.append(f"the resume exited {code}")
    else:
        t.problems += differences(t.out, reference)


def table(tries: list[Try]) -> str:
    rows = ["| MPI | SIGTERM to | tries | exit 75 and resumed equal | launcher's own exit code | seconds to stop "
            "(median, max) |", "|---|---|---|---|---|---|"]
    for name in dict.fromkeys(t.mpi for t in tries):
        for way in dict.fromkeys(t.way for t in tries if t.mpi == name):
            these = [t for t in tries if t.mpi == name and t.way == way]
            secs = sorted(t.seconds for t in these if t.seconds == t.seconds)
            codes = sorted({t.launcher_rc for t in these if t.launcher_rc is not None})
            timing = f"{secs[len(secs) // 2]:.1f}, {secs[-1]:.1f}" if secs else "-"
            rows.append(f"| {name} | {way} | {len(these)} | {sum(t.ok for t in these)}/{len(these)} | "
                        f"{', '.join(map(str, codes)) or '-'} | {timing} |")
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tries", type=int, default=20, help="tries per MPI and way")
    p.add_argument("--mpi", default="openmpi,mpich", help="comma-separated: openmpi, mpich")
    p.add_argument("--ways", default=",".join(WAYS), help=f"comma-separated: {', '.join(WAYS)}")
    p.add_argument("--keep", default=None, help="keep the tries' folders here (default: a temporary folder)")
    a = p.parse_args()
    found = mpis()
    names, ways = a.mpi.split(","), a.ways.split(",")
    missing = [n for n in names if n not in found] + [w for w in ways if w not in WAYS]
    if missing:
        print(f"stress_stops: not available here: {', '.join(missing)}", file=sys.stderr)
        return 2
    base = Path(a.keep or tempfile.mkdtemp(prefix="stress-stops-"))
    base.mkdir(parents=True, exist_ok=True)
    checkpoint = make_checkpoint(base)
    reference = str(base / "reference.h5")
    if surface(checkpoint, reference) != 0:
        return 1
    tries = []
    t_start = time.monotonic()
    for i in range(a.tries):  # round after round of every case: an interrupted run has tried each about as often
        for name in names:
            for way in ways:
                t = one_try(found[name], way, checkpoint, base / f"{name}-{way}-{i:02d}")
                check_resumed(t, checkpoint, reference)
                tries.append(t)
                status = "ok" if t.ok else "FAILED: " + "; ".join(t.problems)
                print(f"{name} {way} {i + 1}/{a.tries}: launcher {t.launcher_rc}, job {t.job_rc}, "
                      f"{t.seconds:.1f} s, {status}", file=sys.stderr, flush=True)
                if not t.ok:
                    print(t.log[-4000:], file=sys.stderr, flush=True)
    print(table(tries))
    print(f"\n{len(tries)} tries in {time.monotonic() - t_start:.0f} s; folders in {base}")
    if not a.keep:
        shutil.rmtree(base, ignore_errors=True)
    return 0 if all(t.ok for t in tries) else 1


if __name__ == "__main__":
    raise SystemExit(main())
