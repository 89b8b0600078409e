"""Groups of ranks per point (--ranks-per-point G, --group-mode shard|data; landscape_mpi/engine/group.py,
landscape_mpi/runtime/groups.py), on CPU with gloo.

Oracles: the one-process run of the same command (the plain per-rank path): values to 1e-6 relative, the same
accuracies, bit-identical directions; a run killed under G = 2 and resumed with G = 1 against the uninterrupted
run; memory counted from the live tensors of each rank (not from anything the engine reports).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from conftest import (ROOT, Job, cli, kill_job, mpi_flavor, mpiexec, one_line_error, processes_with, rank_pids, run,
                      wait_for_points, wait_until)

pytestmark = pytest.mark.timeout(900)

LM_ARGS = ["--model", "gpt_tiny", "--dataset", "text", "--task", "lm", "--x=-1:1:3", "--y=-1:1:3", "--samples", "20",
           "--batch-size", "6", "--threads", "1"]


@pytest.fixture(scope="module")
def gpt_ckpt(tmp_path_factory) -> str:
    from landscape_mpi.models import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gpt") / "gpt.pt"
    torch.save(build_model("gpt_tiny").state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def lm_reference(gpt_ckpt, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("ref") / "one.h5"
    run(cli("surface", *LM_ARGS, "--checkpoint", gpt_ckpt, "--out", str(out)))
    return str(out)


def contents(path) -> tuple[dict, dict]:
    with h5py.File(path, "r") as f:
        results = {k: f["results"][k][()] for k in f["results"] if k not in ("rank", "seconds")}
        directions = {f"{a}/{k}": f["directions"][a][k][()] for a in f["directions"] for k in f["directions"][a]}
    return results, directions


def assert_equal_to_reference(path, reference) -> None:
    got, got_dirs = contents(path)
    ref, ref_dirs = contents(reference)
    assert got.keys() == ref.keys()
    assert got["done"].all()
    for k in ref:
        if k.endswith(("loss", "ppl")):
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-6, atol=0, err_msg=k)
        else:
            assert np.array_equal(got[k], ref[k]), k
    assert got_dirs.keys() == ref_dirs.keys()
    for k in ref_dirs:
        assert np.array_equal(got_dirs[k], ref_dirs[k]), k


@pytest.mark.parametrize("mode, io", [("shard", "single"), ("data", "collective")])
def test_groups_of_two_equal_one_process_on_the_language_model(tmp_path, gpt_ckpt, lm_reference, mode, io):
    if io == "collective" and not h5py.get_config().mpi:
        pytest.skip("h5py without parallel HDF5")
    out = tmp_path / f"{mode}.h5"
    p = run(mpiexec(4) + cli("surface", *LM_ARGS, "--checkpoint", gpt_ckpt, "--out", str(out),
                             "--ranks-per-point", "2", "--group-mode", mode, "--io", io), timeout=600)
    # the group engine really ran: two groups of two, FSDP2 per transformer block (not the one-unit fallback)
    assert "2 group(s) of 2 ranks per point" in p.stderr, p.stderr
    assert f"engine group-{mode}" in p.stderr, p.stderr
    if mode == "shard":
        assert "FSDP2 over 2 ranks, 2 unit(s) + the root;" in p.stderr, p.stderr
    if io == "collective":  # the two leaders wrote, together
        assert "collective write phases per rank:" in p.stderr, p.stderr
    assert_equal_to_reference(out, lm_reference)


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


EIG_ARGS = ["--x=-1:1:3", "--samples", "4", "--splits", "train", "--batch-size", "4", "--threads", "1",
            "--metrics", "loss,eig", "--eig-tol", "1e-4"]


@pytest.fixture(scope="module")
def eig_reference(gpt_ckpt, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("eig") / "one.h5"
    run(cli("surface", *LM_ARGS[:6], *EIG_ARGS, "--checkpoint", gpt_ckpt, "--out", str(out)), timeout=600)
    return str(out)


@pytest.mark.parametrize("mode", ["shard", "data"])
def test_eigenvalue_maps_with_groups_equal_one_process(tmp_path, gpt_ckpt, eig_reference, mode):
    """--metrics loss,eig with groups of 2: lambda_max, lambda_min at each point as one process gives them (data:
    the split divided, exact products; shard: a float64 copy sharded, finite-difference products)."""
    two = tmp_path / "two.h5"
    run(mpiexec(2) + cli("surface", *LM_ARGS[:6], *EIG_ARGS, "--checkpoint", gpt_ckpt, "--out", str(two),
                         "--ranks-per-point", "2", "--group-mode", mode), timeout=600)
    with h5py.File(eig_reference) as a, h5py.File(two) as b:
        assert b["results/done"][()].all()
        for k in ("eig_max", "eig_min"):
            np.testing.assert_allclose(b["results"][k][()], a["results"][k][()], rtol=1e-3, err_msg=k)


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


def test_what_groups_do_not_do_is_one_line_and_no_file(tmp_path, gpt_ckpt):
    out = tmp_path / "no.h5"
    base = ["surface", *LM_ARGS, "--checkpoint", gpt_ckpt, "--out", str(out), "--ranks-per-point", "2"]
    one_line_error(run(cli(*base, "--bn", "recalibrate", "--bn-samples", "8"), check_rc=None), "--ranks-per-point 2",
                   "--bn recalibrate")
    one_line_error(run(cli(*base, "--engine", "folded"), check_rc=None), "--engine folded")
    # three ranks on a node do not make groups of two: exit 2, one line of ours (beside the launcher's notice)
    p = run(mpiexec(3) + cli(*base), check_rc=None, timeout=300)
    errors = [line for line in p.stderr.splitlines() if "landscape-mpi" in line and "error" in line]
    assert p.returncode == 2 and len(errors) == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert "a node runs 3 rank(s)" in errors[0], errors
    assert not out.exists()
    # hessian groups: the model is sharded over all the job's ranks
    hessian = ["hessian", "--model", "gpt_tiny", "--dataset", "text", "--task", "lm", "--checkpoint", gpt_ckpt,
               "--out", str(out), "--ranks-per-point", "2"]
    one_line_error(run(cli(*hessian), check_rc=None), "--ranks-per-point 2", "launch 2 ranks (now 1)")
    one_line_error(run(cli(*hessian, "--group-mode", "data"), check_rc=None), "--group-mode data")
    assert not out.exists()


MEMORY_SCRIPT = r"""
import gc, json, sys
import torch, torch.distributed as dist
from torch import nn
from mpi4py import MPI
from torch.distributed.tensor import DTensor
from landscape_mpi.data.items import EvalSet
from landscape_mpi.engine.group import GroupEngine
from landscape_mpi.runtime.groups import RankGroup, init_process_group
from landscape_mpi.runtime.lifecycle import StopRequested
from landscape_mpi.tasks import make_task

def tensor_bytes():
    # every live tensor's storage, counted once (a DTensor's local shard included), from the garbage collector
    seen, total = set(), 0
    for obj in gc.get_objects():
        if not isinstance(obj, torch.Tensor):
            continue
        ts = [obj, obj._local_tensor] if isinstance(obj, DTensor) else [obj]
        for t in ts:
            try:
                if t.device.type != "cpu" or type(t) is DTensor:  # a DTensor's bytes are its local shard's
                    continue
                s = t.untyped_storage()
                ptr, n = s.data_ptr(), s.nbytes()
            except Exception:
                continue  # no storage of its own (a tensor subclass, a freed or fake storage)
            if ptr and ptr not in seen:
                seen.add(ptr)
                total += n
    return total

comm = MPI.COMM_WORLD
group = RankGroup(comm, comm.Get_rank(), comm.Get_size(), 0, comm if comm.Get_rank() == 0 else None)
init_process_group(group, "cpu", 120)
torch.manual_seed(0)
width, layers = 512, 16
data = [EvalSet("test", torch.randn(8, width), torch.randint(0, width, (8,)))]
base = tensor_bytes()
model = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
directions = [{k: 0.01 * torch.randn_like(v) for k, v in model.state_dict().items()} for _ in range(2)]
engine = GroupEngine(model, directions, data, task=make_task("classify", "ce"), device=torch.device("cpu"),
                     precision="fp32", batch_size=8, mode="shard", stop=StopRequested)
del model, directions
gc.collect()
peak = [tensor_bytes() - base]
def gathered(module):
    # after FSDP's own pre-forward hook the unit's parameters are whole tensors (not DTensor shards); their
    # storages are views of FSDP's all-gather buffer, which the storage walk above does not see: add them
    return sum(p.numel() * p.element_size() for p in module.parameters() if not isinstance(p, DTensor))

for unit in engine.units:
    unit.register_forward_pre_hook(lambda m, i: peak.append(tensor_bytes() - base + gathered(m)))
values = engine.evaluate([[0.5, -0.5]])
with open(f"{sys.argv[1]}.{comm.Get_rank()}.json", "w") as f:  # one file per rank: stdout lines can interleave
    json.dump({"rank": comm.Get_rank(), "rest": peak[0], "peak": max(peak), "units": len(engine.units),
               "gathers": len(peak) - 1, "loss": float(values[0, 0])}, f)
dist.destroy_process_group()
"""


def test_sharded_parameters_and_directions_take_about_half_the_memory_at_g2(tmp_path):
    script = tmp_path / "memory.py"
    script.write_text(MEMORY_SCRIPT)
    import json

    def measure(n: int) -> list[dict]:
        run([*mpiexec(n), sys.executable, str(script), str(tmp_path / f"g{n}")])
        return [json.loads((tmp_path / f"g{n}.{r}.json").read_text()) for r in range(n)]

    one, two = measure(1), measure(2)
    print("tensor bytes per rank, G=1:", one, "G=2:", two)
    # sixteen FSDP units, each really gathered in the forward (its pre-forward hook ran)
    assert len(one) == 1 and len(two) == 2 and all(r["units"] == 16 == r["gathers"] for r in one + two)
    params = 16 * (512 * 512 + 512) * 4  # theta*'s bytes: the 3 copies (model, 2 directions) are at least 3x
    assert one[0]["rest"] >= 3 * params, one
    for r in two:  # each rank of the group holds its half, and one gathered layer at a time on top
        assert r["peak"] <= 0.6 * one[0]["peak"], (r, one)
    assert two[0]["loss"] == pytest.approx(one[0]["loss"], rel=1e-6)


# ------------------------------------------------------------------------------------------- Hessian
def test_hessian_of_the_sharded_model_equals_the_unsharded_one(tmp_path, gpt_ckpt):
    """`hessian --ranks-per-point 2`: lambda_max and lambda_min of gpt_tiny with the model sharded over 2 ranks
    (finite differences of FSDP2 gradients) against one process (exact double-backward products)."""
    args = ["hessian", "--model", "gpt_tiny", "--dataset", "text", "--task", "lm", "--checkpoint", gpt_ckpt,
            "--samples", "4", "--batch-size", "4", "--precision", "float64", "--top-k", "1", "--tol", "1e-4",
            "--trace-probes", "0", "--slq-runs", "0", "--adaptive-samples", "0", "--threads", "1"]
    run(cli(*args, "--out", str(tmp_path / "one.h5")), timeout=600)
    p = run(mpiexec(2) + cli(*args, "--out", str(tmp_path / "two.h5"), "--ranks-per-point", "2"), timeout=600)
    assert "the model sharded over 2 ranks (gloo)" in p.stderr, p.stderr
    with h5py.File(tmp_path / "one.h5") as a, h5py.File(tmp_path / "two.h5") as b:
        for k in ("eigen/values", "eigen/lambda_min", "checkpoints/loss"):
            np.testing.assert_allclose(b[k][()], a[k][()], rtol=1e-3, err_msg=k)


PRODUCT_SCRIPT = r"""
import json
import numpy as np, torch
from mpi4py import MPI
from torch import nn
from landscape_mpi.analysis import hessian as hs
from landscape_mpi.analysis.sharded_hessian import ShardedHessianOperator
from landscape_mpi.data.items import EvalSet
from landscape_mpi.runtime.groups import RankGroup, init_process_group

comm = MPI.COMM_WORLD
init_process_group(RankGroup(comm, comm.Get_rank(), comm.Get_size(), 0, None), "cpu", 120)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 4)).to(torch.float64)
data = [EvalSet("train", torch.randn(41, 6, dtype=torch.float64), torch.randint(0, 4, (41,)))]
op = ShardedHessianOperator(model, data, "ce", 8, comm, torch.device("cpu"))
v = np.random.RandomState(1).randn(op.n)
hv = hs.drive(op, lambda matvec: matvec(v))
if comm.Get_rank() == 0:
    exact = hs.HessianOperator(model, data, "ce", 8).product(v)  # double backward, unsharded
    print(json.dumps({"rel": float(np.linalg.norm(hv - exact) / np.linalg.norm(exact)), "units": len(op.units)}))
torch.distributed.destroy_process_group()
"""


def test_sharded_finite_difference_product_against_the_exact_product(tmp_path):
    """The sharded product's error (docs/hessian.md#a-sharded-model): float64, a tanh MLP, 2 ranks."""
    import json

    script = tmp_path / "product.py"
    script.write_text(PRODUCT_SCRIPT)
    out = [json.loads(line) for line in run([*mpiexec(2), sys.executable, str(script)]).stdout.splitlines()
           if line.startswith("{")]
    assert len(out) == 1 and out[0]["units"] == 2, out
    assert out[0]["rel"] < 1e-7, out
