"""The injected run machinery: `Faults` (the test suite's fault points, one object per process, read once from the
environment) and `SelfComm` (the communicator of a process started without MPI, behaving as MPI.COMM_SELF for the
calls the package makes). Unit tests, in this process; the end-to-end faults are in test_faults.py."""

import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from conftest import ROOT, env
from landscape_mpi.runtime import faults as fp
from landscape_mpi.runtime import lifecycle, scheduler
from landscape_mpi.runtime.comm import SELF, SelfComm
from landscape_mpi.runtime.faults import NO_FAULTS, Faults, InjectedFault


# ------------------------------------------------------------------------------------------------ Faults
@pytest.mark.parametrize("environ", [{}, {"HOME": "/x", "LANDSCAPE_MPI": "1"}, {fp.FAIL_AT: "", fp.GATE: ""}])
def test_no_variable_gives_the_no_op_object(environ):
    faults = Faults.from_environment(3, environ)
    assert faults is NO_FAULTS and not faults.enabled
    for stage in fp.STAGES + ("batch:1", "train_step:1"):
        faults.reached(stage)  # returns at once: no raise, no file, no wait
    hooks = faults.batch_hooks()
    assert not hooks.single_points
    t0 = time.perf_counter()
    for _ in range(100):
        hooks.before_points(4)
        hooks.on_batch()
        hooks.after_points(4)
    assert time.perf_counter() - t0 < 0.1 and hooks.points == 0 and hooks.batches == 0


def test_process_environment_is_read_by_from_environment(monkeypatch):
    for name in fp.ALL:
        monkeypatch.delenv(name, raising=False)
    assert Faults.from_environment(0) is NO_FAULTS
    monkeypatch.setenv(fp.FAIL_AT, "lock:0")
    faults = Faults.from_environment(0)
    assert faults is not NO_FAULTS and faults.enabled
    monkeypatch.delenv(fp.FAIL_AT)  # read once: the object keeps what it was made with
    with pytest.raises(InjectedFault):
        faults.reached("lock")


def test_fail_at_a_stage_on_the_chosen_rank_only():
    environ = {fp.FAIL_AT: "file:1,close:*"}
    rank0, rank1 = Faults.from_environment(0, environ), Faults.from_environment(1, environ)
    rank0.reached("file")  # not this rank
    rank1.reached("lock")  # not this stage
    with pytest.raises(InjectedFault, match=r"^test hook: rank 1 fails at stage file$"):
        rank1.reached("file")
    for faults, rank in ((rank0, 0), (rank1, 1)):
        with pytest.raises(InjectedFault, match=f"rank {rank} fails at stage close"):
            faults.reached("close")
    assert not issubclass(InjectedFault, lifecycle.UserError)  # the internal-failure path, never a user error


@pytest.mark.parametrize("spec,stage", [("mid_run:{gate}", "mid_run"), ("train_step:7:{gate}", "train_step:7"),
                                        ("batch:3:{gate}", "batch:3")])
def test_gate_writes_reached_and_waits_for_the_release(tmp_path, spec, stage):
    gate = tmp_path / "gate"
    faults = Faults.from_environment(2, {fp.GATE: spec.format(gate=gate)})
    faults.reached("context")  # another stage passes
    faults.reached("train_step:8")
    waiter = threading.Thread(target=faults.reached, args=(stage,))
    waiter.start()
    reached = tmp_path / "gate.reached.2"
    deadline = time.monotonic() + 10
    while not reached.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reached.exists() and reached.read_text().isdigit()
    time.sleep(0.1)
    assert waiter.is_alive()  # held until the test releases it
    gate.touch()
    waiter.join(5)
    assert not waiter.is_alive()


def test_write_whole_replaces_the_file_whole_and_readable(tmp_path, monkeypatch):
    """The text is written aside and renamed over the old file: a failed write leaves the old one whole and no
    temporary file behind; the result is readable by the group (0644), not mkstemp's 0600."""
    path = tmp_path / "manifest.json"
    lifecycle.write_whole(str(path), "old\n")
    assert path.read_text() == "old\n" and path.stat().st_mode & 0o777 == 0o644

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lifecycle.os, "replace", full_disk)
    with pytest.raises(OSError):
        lifecycle.write_whole(str(path), "new\n")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
    monkeypatch.undo()
    lifecycle.write_whole(str(path), "new\n")
    assert path.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_batch_hooks_count_batches_and_points(tmp_path):
    gate = tmp_path / "gate"
    gate.touch()  # released already: reaching the gate only writes its file
    hooks = Faults.from_environment(1, {fp.GATE: f"batch:2:{gate}"}).batch_hooks()
    hooks.on_batch()
    assert not (tmp_path / "gate.reached.1").exists()
    hooks.on_batch()
    assert (tmp_path / "gate.reached.1").exists() and hooks.batches == 2
    assert not hooks.single_points  # a gate alone keeps groups of points

    gate2 = tmp_path / "first"
    gate2.touch()
    hooks = Faults.from_environment(0, {fp.GATE: f"mid_run:{gate2}"}).batch_hooks()
    hooks.before_points(3)
    assert not (tmp_path / "first.reached.0").exists()
    hooks.after_points(3)  # mid_run: after the rank's first points
    assert (tmp_path / "first.reached.0").exists() and hooks.points == 3


def test_fail_after_points_and_delays():
    environ = {fp.FAIL_POINTS: "1:2", fp.DELAY: "0.2,1:0", fp.BATCH_DELAY: "0,0:0.05"}
    rank0, rank1 = Faults.from_environment(0, environ), Faults.from_environment(1, environ)
    assert (rank0.delay, rank1.delay, rank0.batch_delay, rank1.batch_delay) == (0.2, 0.0, 0.05, 0.0)
    assert rank0.fail_after is None and rank1.fail_after == 2
    hooks = rank1.batch_hooks()
    assert hooks.single_points  # FAIL (or DELAY) set: one point per evaluator call
    for _ in range(2):
        hooks.before_points(1)
        hooks.after_points(1)
    with pytest.raises(InjectedFault, match="rank 1 fails after 2 points"):
        hooks.before_points(1)
    hooks0 = rank0.batch_hooks()
    t0 = time.perf_counter()
    hooks0.before_points(1)
    hooks0.on_batch()
    assert time.perf_counter() - t0 >= 0.25
    assert Faults.from_environment(0, {fp.DELAY: "0"}).batch_hooks().single_points  # "0" is set


def test_context_carries_the_faults(monkeypatch):
    from landscape_mpi.runtime.context import make_context

    for name in fp.ALL:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANDSCAPE_MPI", "0")
    threads = torch.get_num_threads()
    ctx = make_context("cpu", threads)
    assert ctx.faults is NO_FAULTS and ctx.comm is SELF and (ctx.rank, ctx.size, ctx.local_size) == (0, 1, 1)
    monkeypatch.setenv(fp.FAIL_AT, "engine:0")
    ctx = make_context("cpu", threads)
    with pytest.raises(InjectedFault, match="rank 0 fails at stage engine"):
        ctx.faults.reached("engine")


# ---------------------------------------------------------------------------------------------- SelfComm
def test_self_comm_semantics():
    comm = SelfComm()
    assert (comm.Get_rank(), comm.Get_size()) == (0, 1)
    obj = {"a": [1, 2]}
    assert comm.bcast(obj, root=0) is obj and comm.gather(obj, root=0) == [obj] and comm.allgather(obj) == [obj]
    assert comm.allreduce(5) == 5
    buf = np.arange(4.0)
    comm.Bcast(buf, root=0)
    assert np.array_equal(buf, np.arange(4.0))
    out = np.empty(4)
    comm.Allreduce(buf, out)
    assert np.array_equal(out, buf) and out is not buf
    assert comm.Split(0, 0) is comm and comm.Split_type(None, key=0) is comm
    comm.Free()
    comm.Barrier()
    comm.barrier()


def test_self_comm_matches_mpi_comm_self():
    """The same calls on SelfComm and on mpi4py's MPI.COMM_SELF give the same results (in a child process:
    importing mpi4py initializes MPI)."""
    code = """
import numpy as np
from mpi4py import MPI
from landscape_mpi.runtime.comm import SELF, mpi_communicator

def calls(c):
    buf, out = np.arange(3.0), np.zeros(3)
    c.Bcast(buf, root=0)
    c.Allreduce(buf, out, op=MPI.SUM)
    node = c.Split_type(MPI.COMM_TYPE_SHARED, key=0)
    return (c.Get_rank(), c.Get_size(), c.bcast("x", root=0), c.gather(7, root=0), c.allgather((1, "a")),
            c.allreduce(3, op=MPI.SUM), buf.tolist(), out.tolist(), node.Get_size(), node.allgather(2))

assert calls(SELF) == calls(MPI.COMM_SELF), (calls(SELF), calls(MPI.COMM_SELF))
assert mpi_communicator(SELF) is MPI.COMM_SELF and mpi_communicator(MPI.COMM_WORLD) is MPI.COMM_WORLD
print("same")
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env(), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "same", p.stderr


def test_agree_and_sharing_on_one_rank(monkeypatch):
    from landscape_mpi.runtime.sharing import node_comm, share_per_node

    def failing(exc):
        def step():
            raise exc
        return step

    assert lifecycle.agree(SELF, lambda: 42) == 42
    with pytest.raises(lifecycle.AgreedError, match="^bad input$") as exc:
        lifecycle.agree(SELF, failing(lifecycle.UserError("bad input")))
    assert not exc.value.internal
    with pytest.raises(lifecycle.AgreedError, match="rank 0: ValueError: boom") as exc:
        lifecycle.agree(SELF, failing(ValueError("boom")))
    assert exc.value.internal
    assert node_comm(SELF) is SELF
    assert share_per_node(SELF, lambda: "read").get() == "read"
    monkeypatch.delitem(sys.modules, "mpi4py.MPI", raising=False)
    assert lifecycle.world() is SELF and lifecycle.world_rank() == 0


class _Evaluator:
    group_size = 2
    on_batch = None

    def __init__(self, fail_at=None):
        self.fail_at = fail_at
        self.seen = []

    def __call__(self, flats):
        if self.fail_at is not None and self.fail_at in flats:
            raise RuntimeError("evaluator failed")
        self.seen.extend(int(f) for f in flats)
        return np.stack([flats * 1.0, flats * 2.0], axis=1)


def test_master_alone_evaluates_every_point_and_raises_its_failures():
    written = []
    sink = scheduler.ResultSink(lambda flat, values, ranks, sec: written.append((flat, values)), 2, 0.0)
    evaluate = _Evaluator()
    outcome = scheduler.Master(SELF, np.arange(7, dtype=np.int64), evaluate, sink, lifecycle.StopFlag()).run()
    assert outcome.status == scheduler.STATUS_COMPLETE and outcome.computed == 7
    assert sorted(evaluate.seen) == list(range(7))
    flats = np.concatenate([f for f, _ in written])
    assert sorted(flats.tolist()) == list(range(7))
    written.clear()
    sink = scheduler.ResultSink(lambda flat, values, ranks, sec: written.append(flat), 2, 1e9)
    with pytest.raises(RuntimeError, match="evaluator failed"):  # no MPI_Abort for one rank: the caller reports it
        scheduler.Master(SELF, np.arange(7, dtype=np.int64), _Evaluator(fail_at=4), sink, lifecycle.StopFlag()).run()
    assert written and 4 not in np.concatenate(written).tolist()  # what was finished was written first


def test_one_process_never_imports_mpi4py():
    """A surface run's collectives, the scheduler and the Hessian operator on one process: no mpi4py."""
    code = """
import sys
import numpy as np
import torch
from landscape_mpi.runtime import lifecycle, scheduler
from landscape_mpi.runtime.comm import SELF
from landscape_mpi.runtime.sharing import node_comm, share_per_node
from landscape_mpi.curvature import hessian as hs
from landscape_mpi.data.datasets import EvalSet

assert lifecycle.agree(SELF, lambda: 1) == 1 and share_per_node(node_comm(SELF), lambda: 2).get() == 2
class E:
    group_size, on_batch = 1, None
    def __call__(self, flats):
        return np.zeros((len(flats), 2))
out = scheduler.Master(SELF, np.arange(5), E(), scheduler.ResultSink(None, 2), lifecycle.StopFlag()).run()
assert out.computed == 5
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
data = EvalSet("train", torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,)), None)
op = hs.HessianOperator(model, data, "ce")
hv = hs.drive(op, lambda matvec: matvec(np.ones(op.n)))
lmax, lmin, products = hs.eig_extremes(model, data, "ce", tol=1e-8, maxiter=1000)
assert np.all(np.isfinite(hv)) and lmax >= lmin and products > 0
assert "mpi4py" not in sys.modules, "imported mpi4py"
print("ok")
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env(), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr
