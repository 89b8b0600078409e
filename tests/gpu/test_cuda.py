"""Checks that need a GPU: collected only where CUDA is present (tests/conftest.py), run by
benchmarks/gpu_check.sh on a GPU machine. `LANDSCAPE_GPU_CHECK_DEVICE=cpu` runs the same comparisons on the CPU
(a dry run of this file's logic; the NCCL test then needs 2+ GPUs and is skipped).

Oracle everywhere: the eager engine on the CPU in fp32 (the plain path), against every engine on the device:
fp32 to 1e-5 relative (TF32 off), tf32 to 2e-3, bf16 to 3e-2 on the loss; accuracies within one sample in
fp32, within 2% in reduced precision.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

from conftest import cli, mpiexec, run

DEVICE = torch.device(os.environ.get("LANDSCAPE_GPU_CHECK_DEVICE", "cuda"))
CPU = torch.device("cpu")
TOL = {"fp32": 1e-5, "tf32": 2e-3, "bf16": 3e-2}
KINDS = ("eager", "folded", "channels_last", "batched", "compiled")


def directions(model, seed=1):
    from landscape_mpi.directions.base import random_direction, space_keys

    g = torch.Generator().manual_seed(seed)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    keys = space_keys(model, "weights")
    return [random_direction(state, keys, g, "filter", "biasbn") for _ in range(2)]


def cifar_like(n=512, seed=0):
    """Random uint8 images with their normalized float form (the compact path keeps the uint8 on the device)."""
    from landscape_mpi.data.items import CompactImages, EvalSet, decode_images

    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    mean, std = torch.tensor([0.49, 0.48, 0.45]).view(1, 3, 1, 1), torch.tensor([0.25, 0.24, 0.26]).view(1, 3, 1, 1)
    y = torch.randint(0, 10, (n,), generator=g)
    return EvalSet("test", decode_images(raw, mean, std), y, None, CompactImages(raw, mean, std))


COORDS = np.array([[0.0, 0.0], [0.4, -0.3], [-0.8, 0.6]])


def oracle(model, dirs, data, task="classify"):
    from landscape_mpi.engine import make_engine
    from landscape_mpi.tasks import make_task

    e = make_engine(model, dirs, data, loss=make_task(task), device=CPU, kind="eager", log=lambda m: None)
    return e.evaluate(COORDS)


def compare(got, want, precision, metrics=2):
    loss = got[:, 0::metrics], want[:, 0::metrics]
    np.testing.assert_allclose(loss[0], loss[1], rtol=TOL[precision])
    acc_tol = 1.5 / 512 if precision == "fp32" else 0.02
    np.testing.assert_allclose(got[:, 1::metrics], want[:, 1::metrics], atol=acc_tol)


#: every engine x precision x compact, but torch.compile only twice (a cold inductor compile is 20-60 s each)
CASES = [(k, p, c) for k in KINDS for p in ("fp32", "tf32", "bf16") for c in (False, True)
         if k != "compiled" or (p, c) in (("fp32", False), ("bf16", True))]


@pytest.mark.parametrize("kind, precision, compact", CASES)
def test_resnet20_every_engine_on_the_device_equals_the_cpu_oracle(kind, precision, compact):
    from landscape_mpi.engine import make_engine
    from landscape_mpi.models import build_model
    from landscape_mpi.tasks import make_task

    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    dirs, data = directions(model), [cifar_like()]
    want = oracle(model, dirs, data)
    notes = []
    e = make_engine(model, dirs, data, loss=make_task("classify"), device=DEVICE, kind=kind, precision=precision,
                    compact=compact, log=notes.append)
    assert not any("using the eager engine" in n for n in notes) or kind == "eager", notes
    if compact and kind != "eager":
        assert any("kept as uint8" in n for n in notes), notes
    compare(e.evaluate(COORDS), want, precision)


@pytest.mark.parametrize("kind", ["eager", "folded", "compiled"])
def test_language_model_on_the_device_equals_the_cpu_oracle(kind):
    from landscape_mpi.data.datasets import load_eval_set
    from landscape_mpi.engine import make_engine
    from landscape_mpi.models import build_model
    from landscape_mpi.tasks import make_task

    torch.manual_seed(0)
    model = build_model("gpt_tiny").eval()
    dirs = directions(model)
    data = [load_eval_set("text", "test", None, 64, 0)]
    want = oracle(model, dirs, data, "lm")
    notes = []
    e = make_engine(model, dirs, data, loss=make_task("lm"), device=DEVICE, kind=kind, log=notes.append)
    assert not any("using the eager engine" in n for n in notes) or kind == "eager", notes
    got = e.evaluate(COORDS)
    np.testing.assert_allclose(got[:, 0], want[:, 0], rtol=1e-5)
    np.testing.assert_allclose(got[:, 2], want[:, 2], atol=2 / (64 * 63))


def test_groups_on_nccl_equal_one_process(tmp_path):
    gpus = torch.cuda.device_count() if DEVICE.type == "cuda" else 0
    if gpus < 2:
        pytest.skip(f"groups on NCCL need 2 GPUs or more, this machine has {gpus}")
    import h5py

    from landscape_mpi.models import build_model

    torch.manual_seed(0)
    ck = tmp_path / "gpt.pt"
    torch.save(build_model("gpt_tiny").state_dict(), ck)
    args = ["surface", "--model", "gpt_tiny", "--dataset", "text", "--task", "lm", "--checkpoint", str(ck),
            "--x=-1:1:5", "--y=-1:1:5", "--samples", "64", "--device", "cuda"]
    run(cli(*args, "--out", str(tmp_path / "one.h5")), timeout=600)
    for mode in ("shard", "data"):
        out = tmp_path / f"{mode}.h5"
        p = run(mpiexec(gpus) + cli(*args, "--out", str(out), "--ranks-per-point", str(gpus), "--group-mode", mode),
                timeout=600)
        assert "nccl" in p.stderr, p.stderr
        with h5py.File(tmp_path / "one.h5") as f, h5py.File(out) as g:
            np.testing.assert_allclose(g["results/test_loss"][()], f["results/test_loss"][()], rtol=1e-5)
            assert np.array_equal(g["results/test_token_acc"][()], f["results/test_token_acc"][()])
    print(f"groups of {gpus} on NCCL: equal to one process", file=sys.stderr)
