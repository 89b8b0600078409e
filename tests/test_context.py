"""Rank and device discovery: GPU by node-local rank, CPU threads shared among a node's ranks."""

import os

import pytest
import torch

from conftest import cli, mpiexec, run
from landscape_mpi import context
from landscape_mpi.errors import UserError


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


def test_threads_split_among_ranks_of_a_node():
    cores = len(os.sched_getaffinity(0))
    assert context.default_threads(1) == cores
    assert context.default_threads(cores * 4) == 1


def test_mpi_detection_from_launcher_environment(monkeypatch):
    for k in context._MPI_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.delenv("LANDSCAPE_MPI", raising=False)
    assert not context.launched_under_mpi()
    monkeypatch.setenv("PMI_SIZE", "4")
    assert context.launched_under_mpi()
    monkeypatch.setenv("LANDSCAPE_MPI", "0")
    assert not context.launched_under_mpi()


def test_ranks_on_one_node_share_its_cores(tmp_path, digits_ckpt):
    expected = max(1, len(os.sched_getaffinity(0)) // 3)
    p = run(mpiexec(3) + cli("surface", "--model", "digits_cnn", "--checkpoint", digits_ckpt, "--x=-1:1:3",
                             "--out", str(tmp_path / "s.h5")), timeout=300)
    assert f"on 3 rank(s), io=single, rank 0 on cpu with {expected} thread(s)" in p.stderr
