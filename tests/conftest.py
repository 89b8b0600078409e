"""Shared helpers: run the CLI as a user would (subprocess), under mpiexec when asked, and small checkpoints;
wait for events (a line on stderr, a file, points in the surface file) instead of time windows; a local SLURM
cluster of the session's own; and the rule that a skipped test fails the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
BIN = Path(sys.executable).parent
#: The fault-injection and synchronization variables of landscape_mpi/runtime/faults.py (listed here so that the
#: test helpers do not depend on the package importing).
TEST_HOOKS = ("LANDSCAPE_MPI_TEST_FAIL_AT", "LANDSCAPE_MPI_TEST_GATE", "LANDSCAPE_MPI_TEST_FAIL",
              "LANDSCAPE_MPI_TEST_DELAY", "LANDSCAPE_MPI_TEST_BATCH_DELAY")
#: With a gate: one point per evaluator call (any DELAY does that) and no sleep, so a rank held after its first
#: point has computed exactly one point, however many points the engine would group.
ONE_POINT_AT_A_TIME = {"LANDSCAPE_MPI_TEST_DELAY": "0"}
#: tests/gpu needs a GPU: collected only where CUDA is present, or for a dry run on the CPU
#: (LANDSCAPE_GPU_CHECK_DEVICE=cpu); benchmarks/gpu_check.sh runs it on a GPU machine.
collect_ignore_glob = [] if (torch.cuda.is_available() or os.environ.get("LANDSCAPE_GPU_CHECK_DEVICE")) else ["gpu/*"]
#: Set to 1 to let skipped tests pass (a developer machine without SLURM or MPICH); CI never sets it.
ALLOW_SKIP = "LANDSCAPE_MPI_ALLOW_SKIP"
#: The group tests' fixtures (gpt_ckpt, lm_reference), offered to every test module without an import.
pytest_plugins = ["group_helpers"]


# ------------------------------------------------------------------------------ skipped tests fail the run
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A skipped test is a failed test: CI must not pass because SLURM, MPICH or parallel HDF5 went missing."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and os.environ.get(ALLOW_SKIP) != "1":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (f"skipped, and a skipped test fails the suite: {reason}\n"
                           f"(install what is missing: bash scripts/install.sh; or set {ALLOW_SKIP}=1 to allow skips)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """LANDSCAPE_MPI_TEST_CPU_LOG=FILE appends each test's CPU seconds (setup, call and teardown; the test process,
    the processes it waited for, launchers' ranks included, and the zygote's runs) and wall seconds: what a test
    costs the machine, read the same on a loaded machine, where wall times are not (docs/testing.md)."""
    log = os.environ.get("LANDSCAPE_MPI_TEST_CPU_LOG")
    if not log:
        yield
        return

    def cpu() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime + ZYGOTE.cpu

    c0, t0 = cpu(), time.monotonic()
    yield
    with open(log, "a") as f:
        f.write(json.dumps({"test": item.nodeid, "cpu": round(cpu() - c0, 2), "wall": round(time.monotonic() - t0, 2),
                            "worker": os.environ.get("PYTEST_XDIST_WORKER", ""), "end": round(time.time(), 1)})
                + "\n")


def env(**extra) -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT), e.get("PYTHONPATH", "")])
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"  # the console scripts landscape-mpi, landscape-plot
    e.setdefault("OMP_NUM_THREADS", "1")
    for k in TEST_HOOKS:  # hooks reach a run only when a test passes them
        e.pop(k, None)
    for k, v in extra.items():  # a value None removes the variable
        if v is None:
            e.pop(k, None)
        else:
            e[k] = str(v)
    return e


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "landscape_mpi", *args]


def mpiexec_path() -> str | None:
    return shutil.which("mpiexec", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")


def mpi_flavor() -> str:
    out = subprocess.run([mpiexec_path(), "--version"], capture_output=True, text=True).stdout
    return "openmpi" if ("Open MPI" in out or "OpenRTE" in out) else "mpich"


def mpiexec(n: int) -> list[str]:
    """mpiexec -n N with what Open MPI needs as root and oversubscribed (MPICH needs nothing)."""
    exe = mpiexec_path()
    if exe is None:
        pytest.skip("no mpiexec on PATH")
    cmd = [exe, "-n", str(n)]
    if mpi_flavor() == "openmpi":
        cmd += ["--oversubscribe", "--bind-to", "none"]
        if os.geteuid() == 0:
            cmd += ["--allow-run-as-root"]
    return cmd


class Zygote:
    """tests/zygote.py, one per test worker, started at the first run that can use it: `python -m MODULE ARGS`
    runs forked from an interpreter that has imported torch already. Only for runs whose import-time environment
    (ZYGOTE_FIXED) equals the zygote's, one at a time (a second caller meanwhile gets a fresh interpreter);
    LANDSCAPE_MPI_TEST_FRESH=1 turns it off (every run a fresh interpreter)."""

    FIXED = ("PYTHON", "OMP_", "MKL", "OPENBLAS", "KMP", "ATEN", "TORCH", "LD_", "HDF5", "MALLOC", "CUDA", "MPL")

    def __init__(self):
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.env: dict = {}
        self.runs = 0  # runs served: test_zygote asserts the fork path was taken
        self.cpu = 0.0  # CPU seconds of the runs served (the test CPU log counts them)

    def fixed(self, e: dict) -> dict:
        return {k: v for k, v in e.items() if k.startswith(self.FIXED)}

    def usable(self, cmd: list[str], e: dict) -> bool:
        return (os.environ.get("LANDSCAPE_MPI_TEST_FRESH") != "1" and len(cmd) >= 3 and cmd[0] == sys.executable
                and cmd[1] == "-m" and (self.proc is None or self.fixed(e) == self.fixed(self.env)))

    def _reply(self, key: str) -> int:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"tests/zygote.py ended (exit {self.proc.wait()}) before it answered {key!r}")
        reply = json.loads(line)
        self.cpu += reply.get("cpu", 0.0)
        return reply[key]

    def run(self, cmd: list[str], e: dict, timeout: float) -> subprocess.CompletedProcess | None:
        if not self.usable(cmd, e) or not self.lock.acquire(blocking=False):
            return None
        try:
            if self.proc is None or self.proc.poll() is not None:
                self.env = env()
                if self.fixed(e) != self.fixed(self.env):
                    return None
                self.proc = subprocess.Popen([sys.executable, str(TESTS / "zygote.py")], stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, text=True, env=self.env, cwd=ROOT)
            with tempfile.TemporaryDirectory() as d:
                out, err = os.path.join(d, "stdout"), os.path.join(d, "stderr")
                req = {"module": cmd[2], "args": cmd[3:], "env": e, "cwd": str(ROOT), "stdout": out, "stderr": err}
                self.proc.stdin.write(json.dumps(req) + "\n")
                self.proc.stdin.flush()
                pid = self._reply("pid")
                expired = threading.Event()

                def expire():
                    expired.set()
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)

                timer = threading.Timer(timeout, expire)
                timer.start()
                try:
                    code = self._reply("code")
                finally:
                    timer.cancel()
                self.runs += 1
                stdout, stderr = Path(out).read_text(errors="replace"), Path(err).read_text(errors="replace")
                if expired.is_set():
                    raise subprocess.TimeoutExpired(cmd, timeout, stdout, stderr)
                return subprocess.CompletedProcess(cmd, code, stdout, stderr)
        finally:
            self.lock.release()


ZYGOTE = Zygote()


def run(cmd: list[str], timeout: float = 300, check_rc: int | None = 0, **extra_env) -> subprocess.CompletedProcess:
    """A run of `cmd` as a user would start it. `python -m MODULE` runs are forked from the test worker's zygote
    (the same process, environment, files and exit code; only the imports are not paid again)."""
    e = env(**extra_env)
    p = ZYGOTE.run(cmd, e, timeout)
    if p is None:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e, cwd=ROOT)
    if check_rc is not None and p.returncode != check_rc:
        raise AssertionError(f"{' '.join(cmd)}\nexit {p.returncode}, expected {check_rc}\n"
                             f"stdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-5000:]}")
    return p


def one_line_error(p: subprocess.CompletedProcess, *needles: str) -> str:
    """A user error as the CLI reports it: exit 2, one line on stderr, no traceback, holding every needle."""
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


RESULT_KEYS = ("done", "train_loss", "train_acc", "test_loss", "test_acc", "rank")


def read_results(path) -> dict:
    """The result datasets of a surface file, `done` read first (the contract: a point marked done has its
    values, also while a job is writing)."""
    with h5py.File(path, "r") as f:
        return {k: f["results"][k][()] for k in RESULT_KEYS if k in f["results"]}


def assert_same_results(a, b) -> None:
    """Same values (NaN equal to NaN) and done mask; which rank computed a point may differ."""
    ra, rb = read_results(a), read_results(b)
    for k in RESULT_KEYS[:-1]:
        assert (k in ra) == (k in rb), k
        if k in ra:
            assert np.array_equal(ra[k], rb[k], equal_nan=True), k


def wait_until(condition: Callable[[], object], timeout: float, what: str, poll: float = 0.05):
    """Poll `condition` until it returns something true (returned); AssertionError naming `what` after `timeout`
    seconds. The timeout only bounds a hang: tests wait for the event, never for a time."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def wait_for_points(path, at_least: int, timeout: float = 300) -> None:
    """Wait until a running job has marked `at_least` points done in `path`."""

    def enough():
        try:
            return read_results(path)["done"].sum() >= at_least
        except (OSError, KeyError):
            return False

    wait_until(enough, timeout, f"{at_least} points done in {path}", poll=0.2)


def wait_for_files(paths: Iterable, timeout: float = 300) -> None:
    """Wait until every path exists (e.g. the `GATE.reached.<rank>` files of a fault point's gate)."""
    paths = [Path(p) for p in paths]
    wait_until(lambda: all(p.exists() for p in paths), timeout,
               f"{[p.name for p in paths if not p.exists()]} to exist")


def wait_for_text(path, pattern: str, timeout: float = 300) -> re.Match:
    """Wait until the file (a SLURM job log) holds a match of the regular expression `pattern`."""

    def found():
        try:
            return re.search(pattern, Path(path).read_text(errors="replace"))
        except OSError:
            return None

    return wait_until(found, timeout, f"/{pattern}/ in {path}", poll=0.1)


class Job:
    """A launched command (mpiexec ..., srun ...) whose stderr is read as it comes, line by line, each line with
    the time it arrived: tests wait for a line (an event) and measure from it.

    Use it as a context manager: whatever fails in the test, a job still running at the end of the block is
    killed with every rank (a hung job must not keep spinning beside the rest of the suite)."""

    def __init__(self, cmd: list[str], **extra_env) -> None:
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env(**extra_env), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.lines: list[tuple[float, str]] = []
        self.stdout = ""
        self._changed = threading.Condition()
        self._readers = [threading.Thread(target=self._read_err, daemon=True),
                         threading.Thread(target=self._read_out, daemon=True)]
        for t in self._readers:
            t.start()

    def __enter__(self) -> "Job":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            kill_job(self.proc)

    def _read_err(self) -> None:
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self._changed.notify_all()

    def _read_out(self) -> None:
        self.stdout = self.proc.stdout.read()

    @property
    def stderr(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 300) -> tuple[float, re.Match]:
        """(arrival time, match) of the first stderr line matching `pattern`; fails if the job ends without one."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for t, line in self.lines[seen:]:
                    m = rx.search(line)
                    if m:
                        return t, m
                seen = len(self.lines)
                if self.proc.poll() is not None and not any(t.is_alive() for t in self._readers[:1]):
                    raise AssertionError(f"the job ended (exit {self.proc.returncode}) without a line "
                                         f"/{pattern}/ on stderr:\n{self.stderr[-5000:]}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"no line /{pattern}/ on stderr after {timeout} s:\n{self.stderr[-5000:]}")
                self._changed.wait(0.2)

    def wait(self, timeout: float = 300) -> int:
        """Wait for the end (the whole job is killed if it does not end: a hang fails, it does not stall)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_job(self.proc)
            raise AssertionError(f"{' '.join(map(str, self.cmd))}\nstill running after {timeout} s (killed):\n"
                                 f"{self.stderr[-5000:]}") from None
        for t in self._readers:
            t.join(timeout=30)
        return self.proc.returncode


def _parents() -> dict[int, int]:
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                pass
    return parent


def rank_pids(launcher_pid: int) -> list[int]:
    """The landscape_mpi rank processes of a launch: descendants of mpiexec (children with Open MPI,
    grandchildren under MPICH's hydra proxy)."""
    parent = _parents()
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


def processes_with(needle: str) -> list[int]:
    """Live (not zombie) processes whose command line contains `needle` (a test's unique --out path): what is
    left of a job after its launcher ended."""
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if needle.encode() in f.read() and not _zombie(int(d)):
                        found.append(int(d))
            except OSError:
                pass
    return found


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL the whole job at once: mpiexec and every rank (Open MPI puts ranks in process groups of their
    own, so killing mpiexec's group alone would leave rank 0 writing for a while); returns once all are gone."""
    pids = [proc.pid, *rank_pids(proc.pid)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)
    wait_until(lambda: not any(os.path.exists(f"/proc/{p}") and not _zombie(p) for p in pids[1:]), 60,
               f"the ranks {pids[1:]} to end after SIGKILL")


# ------------------------------------------------------------------------------------------------ SLURM
LOCAL_SLURM = ROOT / "scripts" / "local-slurm.sh"


def _free_port_pair() -> int:
    """A port P with P and P+1 free (slurmctld and slurmd of the session's own cluster)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two consecutive free ports for a local SLURM")


@pytest.fixture(scope="session")
def slurm():
    """A single-node SLURM cluster of this test session's own (scripts/local-slurm.sh in a temporary state
    folder, on free ports), so that sessions running side by side do not share, stop or reconfigure each
    other's cluster. SLURM_CONF points sbatch, srun, squeue and scontrol at it, in this process and in every
    command the tests start; the daemons are stopped, and the folder removed, at the end of the session."""
    if shutil.which("sbatch") is None or shutil.which("slurmctld") is None:
        pytest.skip("SLURM is not installed (apt-get install slurm-wlm munge; scripts/install.sh does)")
    if os.geteuid() != 0:
        pytest.skip("starting a local SLURM needs root")
    # Not pytest's tmp_path: munged (user munge) must reach its key, and pytest's folders are private to root.
    state = tempfile.mkdtemp(prefix="landscape-slurm-", dir="/tmp")
    conf = os.path.join(state, "etc", "slurm.conf")
    daemon_env = {**os.environ, "LOCAL_SLURM_STATE": state, "LOCAL_SLURM_PORT": str(_free_port_pair())}
    previous = os.environ.get("SLURM_CONF")
    previous_term = signal.getsignal(signal.SIGTERM)

    def interrupt(signum, frame):  # a CI timeout's SIGTERM: pytest then tears down, the daemons are stopped
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        p = subprocess.run(["bash", str(LOCAL_SLURM), "start"], env=daemon_env, capture_output=True, text=True,
                           timeout=300)
        if p.returncode != 0:
            raise AssertionError(f"scripts/local-slurm.sh start failed:\n{p.stdout}\n{p.stderr}")
        os.environ["SLURM_CONF"] = conf
        yield conf
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        # stop cancels what is left in the queue, then stops munged, slurmctld and slurmd
        subprocess.run(["bash", str(LOCAL_SLURM), "stop"], env=daemon_env, capture_output=True, timeout=300)
        shutil.rmtree(state, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous_term)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> tuple[str, subprocess.CompletedProcess]:
    """`landscape-mpi demo --out-dir DIR`, run once for the tests that read what it made: (DIR, the process)."""
    out_dir = str(tmp_path_factory.mktemp("demo") / "demo")
    return out_dir, run(cli("demo", "--out-dir", out_dir), timeout=300)


@pytest.fixture(scope="session")
def digits_ckpt(tmp_path_factory) -> str:
    """A digits_cnn trained 2 epochs (with BatchNorm and conv filters)."""
    from landscape_mpi.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("digits_cnn")
    return train(TrainConfig(model="digits_cnn", out_dir=str(out), epochs=2, batch_size=64, lr=0.05), quiet=True)


@pytest.fixture(scope="session")
def toy_ckpts(tmp_path_factory) -> tuple[str, str, str]:
    """Three checkpoints of the user toy model: theta*, and two others (targets for interpolation)."""
    sys.path.insert(0, str(TESTS))
    import landscape_toys

    out = tmp_path_factory.mktemp("toy")
    data = landscape_toys.make_data("train")
    x, y = data.tensors
    paths = []
    for seed, steps in ((0, 200), (1, 150), (2, 100)):
        torch.manual_seed(seed)
        model = landscape_toys.make_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        path = out / f"toy{seed}.pt"
        # a dict holding the state_dict, as training scripts often save
        torch.save({"state_dict": model.state_dict(), "epoch": steps}, path)
        paths.append(str(path))
    return tuple(paths)
