"""Write the demo's references (tests/test_demo_identity.py reads them); run from a checkout whose behaviour is
the reference, with the tests' thread count:

    OMP_NUM_THREADS=1 .venv/bin/python tests/data/make_demo_reference.py

- ``demo_checkpoint.pt``: the demo's trained digits_cnn (its ``final.pt``), so that the surface check does not
  depend on training, whose last bits depend on the CPU's SIMD paths and grow over 10 epochs;
- ``demo_surface_reference.npz``: the demo's surface computed from that checkpoint: coordinates, directions,
  every value and the file's configuration attributes;
- ``demo_train_reference.pt``: the demo's training recipe run for one epoch (its state_dict).

Written at commit 07ec923 on the CI machine kind (2-core AMD EPYC, torch 2.14.1, CPU capability AVX2).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
IGNORED_ATTRS = ("created", "versions", "checkpoint", "checkpoint_sha256")


def surface_contents(path: str, out_dir: str) -> tuple[dict, dict]:
    """(configuration attributes, arrays) of a demo surface file, paths under `out_dir` written as <OUT>."""
    arrays = {}
    with h5py.File(path, "r") as f:
        for axis in ("x", "y"):
            arrays[f"coords/{axis}"] = f[f"coords/{axis}"][()]
            for key in f[f"directions/{axis}"]:
                arrays[f"directions/{axis}/{key}"] = f[f"directions/{axis}/{key}"][()]
        for name in ("train_loss", "train_acc", "test_loss", "test_acc", "done"):
            arrays[f"results/{name}"] = f[f"results/{name}"][()]
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items() if k not in IGNORED_ATTRS}
    config = json.loads(attrs["config"])
    config["checkpoint"] = config["checkpoint"].replace(out_dir, "<OUT>")
    attrs["config"] = config
    return attrs, arrays


def train_one_epoch(out_dir: str, lr: float = 0.05) -> dict[str, torch.Tensor]:
    """The demo's training recipe (landscape_mpi/cli/demo.py, EMBEDDED) for one epoch: the final state_dict."""
    from landscape_mpi.config.train import TrainConfig
    from landscape_mpi.training.train import train

    path = train(TrainConfig(model="digits_cnn", dataset="digits", out_dir=out_dir, schedule="cosine", seed=0,
                             epochs=1, batch_size=64, lr=lr, weight_decay=5e-4), quiet=True)
    return torch.load(path, weights_only=True)["state_dict"]


def main() -> None:
    tmp = tempfile.mkdtemp()
    try:
        demo = os.path.join(tmp, "demo")
        subprocess.run([sys.executable, "-m", "landscape_mpi", "demo", "--out-dir", demo], check=True)
        shutil.copyfile(os.path.join(demo, "digits_cnn", "final.pt"), os.path.join(HERE, "demo_checkpoint.pt"))
        attrs, arrays = surface_contents(os.path.join(demo, "surface.h5"), demo)
        np.savez_compressed(os.path.join(HERE, "demo_surface_reference.npz"), attrs=json.dumps(attrs), **arrays)
        torch.save(train_one_epoch(os.path.join(tmp, "train")), os.path.join(HERE, "demo_train_reference.pt"))
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
