"""Shared helpers: run the CLI as a user would (subprocess), under mpiexec when asked, and small checkpoints."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
BIN = Path(sys.executable).parent


def env(**extra) -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT), e.get("PYTHONPATH", "")])
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"  # the console scripts landscape-mpi, landscape-plot
    e.setdefault("OMP_NUM_THREADS", "1")
    for k in ("LANDSCAPE_MPI_TEST_DELAY", "LANDSCAPE_MPI_TEST_FAIL"):
        e.pop(k, None)
    e.update({k: str(v) for k, v in extra.items()})
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


def run(cmd: list[str], timeout: float = 300, check_rc: int | None = 0, **extra_env) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env(**extra_env), cwd=ROOT)
    if check_rc is not None and p.returncode != check_rc:
        raise AssertionError(f"{' '.join(cmd)}\nexit {p.returncode}, expected {check_rc}\n"
                             f"stdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-5000:]}")
    return p


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


def wait_for_points(path, at_least: int, timeout: float = 120) -> None:
    """Wait until a running job has marked `at_least` points done in `path`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.2)
        try:
            if read_results(path)["done"].sum() >= at_least:
                return
        except (OSError, KeyError):
            pass
    raise AssertionError(f"fewer than {at_least} points done in {path} after {timeout} s")


@pytest.fixture(scope="session")
def digits_ckpt(tmp_path_factory) -> str:
    """A digits_cnn trained 2 epochs (with BatchNorm and conv filters)."""
    from landscape_mpi.train import TrainConfig, train

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
