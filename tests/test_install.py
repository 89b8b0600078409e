"""The set-up path without root (docs/install.md#without-root), run by a user without root.

A user account without privileges copies the project, runs `LANDSCAPE_SKIP_APT=1 bash scripts/install.sh` into
an environment of its own (no apt-get: the MPI on PATH, PyPI's serial h5py), and computes a small surface on two
ranks with `--io single`. PyTorch itself is taken from the suite's environment (LANDSCAPE_SHARE_SITE, the
script's way to reuse a shared PyTorch install) rather than copied again: it is the same pip command on both
paths, and installing it costs minutes and gigabytes. The user's interpreter is the system's `python3` (the
suite's own may live in root's home, which the user cannot enter).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sysconfig
import tempfile

import h5py
import numpy as np
import pytest
import torch

from conftest import ROOT

USER = "landscape-nonroot"


def _as_user(cmd: list[str], home: str, timeout: float, **extra) -> subprocess.CompletedProcess:
    environment = {"HOME": home, "PATH": f"{home}/venv/bin:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", **extra}
    return subprocess.run(["runuser", "-u", USER, "--", "env", "-i",
                           *[f"{k}={v}" for k, v in environment.items()], *cmd],
                          cwd=home, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def nonroot_home():
    if os.geteuid() != 0:
        pytest.skip("needs root to create the user without root that runs this test")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", USER], check=True)
    # pytest's own temporary folders are private to root (mode 700 up the tree): the user gets one of its own
    home = tempfile.mkdtemp(prefix="landscape-nonroot-", dir="/tmp")
    os.chmod(home, 0o755)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split("\n")
    for rel in filter(None, files):
        if os.path.isfile(os.path.join(ROOT, rel)):
            os.makedirs(os.path.join(home, "src", os.path.dirname(rel)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, rel), os.path.join(home, "src", rel))
    subprocess.run(["chown", "-R", USER, home], check=True)
    yield home
    shutil.rmtree(home, ignore_errors=True)


def test_install_without_root_then_a_surface_on_two_ranks(nonroot_home):
    home = nonroot_home
    shared = sysconfig.get_paths()["purelib"]
    p = _as_user(["bash", f"{home}/src/scripts/install.sh"], home, 600, LANDSCAPE_SKIP_APT="1",
                 LANDSCAPE_VENV=f"{home}/venv", LANDSCAPE_SHARE_SITE=shared)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "installed: torch" in p.stdout and "parallel HDF5: False" in p.stdout, p.stdout[-2000:]
    assert not os.path.exists(os.path.join(home, "src", ".venv-mpich"))  # the root path's second environment

    # the environment is the user's own, and the package is the copy's (not the suite's checkout)
    where = _as_user([f"{home}/venv/bin/python", "-c", "import landscape_mpi, h5py, mpi4py; "
                      "print(landscape_mpi.__file__); print(h5py.__file__); print(mpi4py.__file__)"], home, 120)
    assert where.returncode == 0, where.stderr
    package, h5py_file, mpi4py_file = where.stdout.split()
    assert package.startswith(os.path.join(home, "src")), package
    assert h5py_file.startswith(os.path.join(home, "venv")) and mpi4py_file.startswith(os.path.join(home, "venv"))

    torch.manual_seed(0)
    from landscape_mpi.models import build_model

    checkpoint = os.path.join(home, "model.pt")
    torch.save(build_model("digits_cnn").state_dict(), checkpoint)
    os.chmod(checkpoint, 0o644)
    out = os.path.join(home, "s.h5")
    run = _as_user(["mpiexec", "-n", "2", "landscape-mpi", "surface", "--model", "digits_cnn", "--checkpoint",
                    checkpoint, "--x=-1:1:5", "--samples", "100", "--io", "single", "--out", out], home, 600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    with h5py.File(out, "r") as f:
        assert f["results/done"][()].all()
        loss = f["results/train_loss"][()]
    assert "on 2 rank(s)" in run.stderr, run.stderr  # one job of two ranks, not two jobs of one
    assert np.isfinite(loss).all()
    assert pwd.getpwuid(os.stat(out).st_uid).pw_name == USER


def test_conda_environment_lists_every_dependency():
    """environment.yml (the conda path, docs/install.md) holds every requirement of setup.cfg, test extra too."""
    import configparser
    import re

    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    wanted = cfg["options"]["install_requires"].split() + cfg["options.extras_require"]["test"].split()
    names = {re.split(r"[<>=!~ ]", w)[0].lower() for w in wanted if w.strip()}
    conda_names = {"torch": "pytorch"}
    with open(os.path.join(ROOT, "environment.yml")) as f:
        listed = {re.split(r"[<>=!~ ]", line.strip()[2:].strip())[0].lower()
                  for line in f if re.match(r"\s*- [A-Za-z]", line)}
    missing = sorted(n for n in names if conda_names.get(n, n) not in listed)
    assert not missing, f"environment.yml lacks {missing}"
