"""Groups of ranks per point (--ranks-per-point G, --group-mode shard|data; landscape_mpi/engine/group.py,
landscape_mpi/runtime/groups.py), on CPU with gloo.

Oracles: the one-process run of the same command (the plain per-rank path): values to 1e-6 relative, the same
accuracies, bit-identical directions; a run killed under G = 2 and resumed with G = 1 against the uninterrupted
run; memory counted from the live tensors of each rank (not from anything the engine reports).
"""

from __future__ import annotations

import sys

import h5py
import pytest

from conftest import cli, mpiexec, one_line_error, run
from group_helpers import LM_ARGS, assert_equal_to_reference  # its fixtures gpt_ckpt, lm_reference: a conftest plugin

pytestmark = pytest.mark.timeout(900)


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
        # no rank built the whole model: theta* mapped, directions streamed (tests/test_groups_setup.py)
        assert "each rank builds only its shards" in p.stderr, p.stderr
    if io == "collective":  # the two leaders wrote, together
        assert "collective write phases per rank:" in p.stderr, p.stderr
    assert_equal_to_reference(out, lm_reference)


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
# gloo's worker threads can drop a tensor's Python object during interpreter finalization and abort the process
# (signal 6, about 1 run in 6 here): the measurement is written, leave without finalizing
import os; MPI.Finalize(); os._exit(0)
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
