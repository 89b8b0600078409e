"""Rank and device discovery: GPU by node-local rank, threads from the CPU set a rank really has, and a
warning when `--device auto` leaves some ranks on the CPU.

The thread tests run real processes under real bindings (taskset, mpiexec, srun --cpus-per-task) and check
the count each rank reports against the binding the test made, not against the code's own formula.
"""

import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import cli, env, mpiexec, run
from landscape_mpi.config.errors import UserError
from landscape_mpi.runtime import context

#: A process that builds its context and reports what it got.
REPORT = ("from landscape_mpi.runtime.context import make_context; import torch; c = make_context('cpu'); "
          "import sys; sys.stdout.write(f'rank {c.rank} threads {c.threads} torch {torch.get_num_threads()}\\n'); "
          "sys.stdout.flush()")  # one write per line: ranks' lines must not interleave (PYTHONUNBUFFERED)


def reported(stdout: str) -> dict[int, tuple[int, int]]:
    """rank -> (threads in the context, torch's thread count) from the REPORT lines."""
    return {int(r): (int(t), int(n)) for r, t, n in re.findall(r"rank (\d+) threads (\d+) torch (\d+)", stdout)}


@pytest.mark.parametrize("visible,local_rank,expected", [(8, 0, 0), (8, 5, 5), (4, 5, 1), (1, 3, 0)])
def test_gpu_from_node_local_rank(monkeypatch, visible, local_rank, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    assert context.choose_device("auto", local_rank) == torch.device("cuda", expected)
    assert context.choose_device("cpu", local_rank) == torch.device("cpu")


def test_no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert context.choose_device("auto", 3) == torch.device("cpu")
    with pytest.raises(UserError, match="--device cpu"):
        context.choose_device("cuda", 0)


def test_device_auto_warns_when_some_ranks_have_no_gpu():
    ranks = [("cuda", "node1"), ("cuda", "node1"), ("cpu", "node2"), ("cpu", "node2")]
    warning = context.device_warning("auto", ranks)
    assert warning is not None and "rank(s) 2, 3 on node2" in warning and "2 rank(s) use GPUs" in warning
    assert "--device cuda" in warning  # how to make it an error instead
    assert context.device_warning("auto", [("cuda", "a")] * 3) is None  # all on GPUs
    assert context.device_warning("auto", [("cpu", "a")] * 3) is None  # a CPU-only job: nothing odd
    assert context.device_warning("cpu", ranks[:1] + [("cpu", "a")]) is None  # the CPU was asked for


def test_device_cuda_without_gpu_under_mpi_is_one_line_on_every_rank(tmp_path, digits_ckpt):
    """Every rank agrees on the failure (no rank left waiting in a collective): exit 2, one line naming the
    failing rank and its host, no file. CUDA_VISIBLE_DEVICES="" hides any GPU, so this holds on GPU machines."""
    p = run(mpiexec(3) + cli("surface", "--model", "digits_cnn", "--checkpoint", digits_ckpt, "--x=-1:1:3",
                             "--device", "cuda", "--out", str(tmp_path / "s.h5")),
            timeout=300, check_rc=None, CUDA_VISIBLE_DEVICES="")
    assert p.returncode == 2, p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("landscape-mpi")]
    assert len(errors) == 1 and "Traceback" not in p.stderr, p.stderr
    assert re.search(r"error: rank 0 \(.+\): --device cuda: no CUDA GPU .* use --device cpu", errors[0]), errors
    assert not (tmp_path / "s.h5").exists()


def test_threads_decision_literal_cases():
    """The documented precedence, on literal cases (expected values written out, not recomputed)."""
    node = frozenset(range(8))
    assert context.default_threads(node, [node] * 4, {}) == 2  # 4 unbound ranks share 8 cores
    assert context.default_threads(node, [node], {}) == 8  # alone on the node
    own = frozenset({2, 3, 4})  # bound by the launcher: its set as it is, whatever the others have
    assert context.default_threads(own, [frozenset({0, 1}), own, frozenset({5, 6, 7})], {}) == 3
    assert context.default_threads(node, [node] * 4, {"SLURM_CPUS_PER_TASK": "4"}) == 4
    assert context.default_threads(frozenset({0, 1}), [frozenset({0, 1})], {"SLURM_CPUS_PER_TASK": "8"}) == 2
    assert context.default_threads(node, [node] * 4, {"OMP_NUM_THREADS": "3", "SLURM_CPUS_PER_TASK": "4"}) == 3
    assert context.default_threads(node, [node] * 16, {}) == 1  # never 0


def test_mpi_detection_from_launcher_environment(monkeypatch):
    for k in context._MPI_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.delenv("LANDSCAPE_MPI", raising=False)
    assert not context.launched_under_mpi()
    monkeypatch.setenv("PMI_SIZE", "4")
    assert context.launched_under_mpi()
    monkeypatch.setenv("LANDSCAPE_MPI", "0")
    assert not context.launched_under_mpi()


def test_process_bound_to_one_cpu_gets_one_thread():
    """`taskset -c 0`: the process may run on CPU 0 only, so one thread (torch too), on any machine."""
    p = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", REPORT], capture_output=True, text=True,
                       env=env(OMP_NUM_THREADS=None), timeout=120)
    assert p.returncode == 0, p.stderr
    assert reported(p.stdout) == {0: (1, 1)}


def test_bound_rank_keeps_its_set_unbound_ranks_share():
    """Two ranks on this node: rank 1 bound to CPU 0 by taskset, rank 0 unbound (all CPUs). Rank 1 uses its
    one CPU; rank 0 shares its CPU set with no other rank, so it uses all of it (the old rule divided every
    rank's set by the number of ranks on the node and gave rank 0 half)."""
    cpus = len(os.sched_getaffinity(0))
    if cpus < 2:
        pytest.skip("needs at least 2 CPUs")
    wrapper = ('if [ "${OMPI_COMM_WORLD_RANK:-$PMI_RANK}" = 1 ]; then exec taskset -c 0 "$@"; else exec "$@"; fi')
    p = run(mpiexec(2) + ["sh", "-c", wrapper, "sh", sys.executable, "-c", REPORT], timeout=120,
            OMP_NUM_THREADS=None)
    assert reported(p.stdout) == {0: (cpus, cpus), 1: (1, 1)}, p.stdout


def test_unbound_ranks_on_one_node_share_its_cores(tmp_path, digits_ckpt):
    """Three unbound ranks on this node (mpiexec --bind-to none): the CPUs are split, at least 1 each; the
    surface command reports rank 0's count."""
    cpus = len(os.sched_getaffinity(0))
    p = run(mpiexec(3) + [sys.executable, "-c", REPORT], timeout=120, OMP_NUM_THREADS=None)
    got = reported(p.stdout)
    assert sorted(got) == [0, 1, 2]
    assert all(t == n and t >= 1 for t, n in got.values()) and sum(t for t, _ in got.values()) <= max(cpus, 3)
    p = run(mpiexec(3) + cli("surface", "--model", "digits_cnn", "--checkpoint", digits_ckpt, "--x=-1:1:3",
                             "--samples", "50", "--out", str(tmp_path / "s.h5")), timeout=300, OMP_NUM_THREADS=None)
    assert f"rank 0 on cpu with {got[0][0]} thread(s)" in p.stderr


def test_omp_num_threads_is_honoured():
    p = subprocess.run([sys.executable, "-c", REPORT], capture_output=True, text=True, env=env(OMP_NUM_THREADS=1),
                       timeout=120)
    assert reported(p.stdout) == {0: (1, 1)}, p.stderr


def test_slurm_cpus_per_task(slurm):
    """srun --cpus-per-task=2 with two tasks on this node (not bound: TaskPlugin=task/none): each rank uses
    the 2 CPUs SLURM allocated to it, not the node's CPUs divided among the ranks (which would give 1)."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs at least 2 CPUs")
    p = subprocess.run(["srun", "-n", "2", "--overcommit", "--cpus-per-task=2", "--mpi=pmix", "--kill-on-bad-exit=1",
                        sys.executable, "-c", REPORT], capture_output=True, text=True,
                       env=env(OMP_NUM_THREADS=None), timeout=180)
    assert p.returncode == 0, p.stderr
    assert reported(p.stdout) == {0: (2, 2), 1: (2, 2)}, p.stdout
    p = subprocess.run(["srun", "-n", "1", "--cpus-per-task=1", sys.executable, "-c", REPORT], capture_output=True,
                       text=True, env=env(OMP_NUM_THREADS=None), timeout=180)
    assert reported(p.stdout) == {0: (1, 1)}, p.stdout + p.stderr
