"""Shared by the group tests (tests/test_groups*.py): the language-model command, its one-process reference run
and the comparison with it. conftest.py loads this module as a plugin, so its fixtures reach every test module
without an import."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from conftest import cli, run

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
