"""The model zoo, checkpoint formats, CIFAR-10 from a local folder (a small one made here), user data,
and `landscape-mpi train`."""

import os
import pickle

import numpy as np
import pytest
import torch

from conftest import cli, run
from landscape_mpi.config.errors import UserError
from landscape_mpi.data.datasets import CIFAR_MEAN, CIFAR_STD, decode_images, load_eval_set
from landscape_mpi.models import INPUT_SHAPES, ZOO, build_model, load_checkpoint, read_state_dict


@pytest.mark.parametrize("name", [n for n in ZOO if ZOO[n][1] != "text"])  # gpt_tiny: tests/test_gpt_text.py
def test_zoo_models_forward(name):
    model = build_model(name).eval()
    x = torch.randn(2, *INPUT_SHAPES[ZOO[name][1]])
    with torch.no_grad():
        assert model(x).shape == (2, 10)


def test_zoo_architectures():
    n = {k: sum(p.numel() for p in build_model(k).parameters()) for k in
         ("resnet20", "resnet20_noshort", "resnet56", "wrn56_2", "resnet110")}
    assert 0.25e6 < n["resnet20"] < 0.3e6  # He et al.: 0.27M
    assert n["resnet20_noshort"] < n["resnet20"]  # no projection shortcuts
    assert 0.8e6 < n["resnet56"] < 0.9e6 and 1.6e6 < n["resnet110"] < 1.8e6
    assert 3.5 < n["wrn56_2"] / n["resnet56"] < 4.1  # width 2: about 4x the parameters
    dense = build_model("densenet121")
    assert sum(1 for m in dense.modules() if isinstance(m, torch.nn.Conv2d)) == 120  # + the classifier: 121


def he_resnet_shapes(stem_in: int, stem: int, widths: tuple, blocks: int, shortcut: bool, kernel: tuple) -> dict:
    """The state_dict of a 6n+2-layer ResNet (He et al. 2016, projection shortcuts; the reference code's names),
    written out: key -> shape."""
    out = {"conv1.weight": (stem, stem_in, *kernel)}

    def bn(prefix, c):
        out.update({f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                    f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()})

    bn("bn1", stem)
    c_in = stem
    for s, c in enumerate(widths, start=1):
        for b in range(blocks):
            p = f"layer{s}.{b}"
            out[f"{p}.conv1.weight"] = (c, c_in, *kernel)
            bn(f"{p}.bn1", c)
            out[f"{p}.conv2.weight"] = (c, c, *kernel)
            bn(f"{p}.bn2", c)
            if shortcut and c_in != c:  # the first block of stages 2 and 3 (and of stage 1 when stem != width)
                out[f"{p}.shortcut.0.weight"] = (c, c_in, *(1,) * len(kernel))
                bn(f"{p}.shortcut.1", c)
            c_in = c
    out.update({"linear.weight": (10, c_in), "linear.bias": (10,)})
    return out


@pytest.mark.parametrize("name, want", [
    ("resnet20", (3, 16, (16, 32, 64), 3, True, (3, 3))),
    ("resnet20_noshort", (3, 16, (16, 32, 64), 3, False, (3, 3))),
    ("wrn56_2", (3, 16, (32, 64, 128), 9, True, (3, 3))),
    ("resnet2d_8_w4", (1, 32, (32, 64, 128), 1, True, (3, 3))),
    ("resnet1d_20_noshort_w1", (1, 8, (8, 16, 32), 3, False, (3,))),
])
def test_resnet_stages_have_he_et_al_layout(name, want):
    """The CIFAR ResNets and the small ResNets (one stage builder): every state_dict key and shape as written
    out from the architecture, stride 2 in the first block of stages 2 and 3 only."""
    model = build_model(name)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == he_resnet_shapes(*want)
    strides = {n: m.stride[0] for n, m in model.named_modules() if n.endswith(".conv1") and n.startswith("layer")}
    assert {n for n, s in strides.items() if s == 2} == {"layer2.0.conv1", "layer3.0.conv1"}
    if name == "resnet20":
        assert sum(p.numel() for p in model.parameters()) == 272474  # He et al.'s 0.27M, option B


def test_checkpoint_formats(tmp_path):
    model = build_model("digits_mlp")
    sd = model.state_dict()
    for i, obj in enumerate([sd, {"state_dict": sd}, {"model_state_dict": sd, "epoch": 3},
                             {"net": {f"module.{k}": v for k, v in sd.items()}}]):
        path = tmp_path / f"c{i}.pt"
        torch.save(obj, path)
        fresh = build_model("digits_mlp")
        load_checkpoint(fresh, str(path))
        assert all(torch.equal(fresh.state_dict()[k], sd[k]) for k in sd)
    torch.save({"epoch": 3}, tmp_path / "nostate.pt")
    with pytest.raises(UserError, match="holds no state_dict"):
        read_state_dict(str(tmp_path / "nostate.pt"))


def make_cifar(root, n_train=20, n_test=10):
    """A tiny CIFAR-10 folder in the official python format (str keys, as Python 2 pickled them)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    per = n_train // 5
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": rng.randint(0, 256, (per, 3072), dtype=np.uint8),
                         "labels": list(rng.randint(0, 10, per))}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": rng.randint(0, 256, (n_test, 3072), dtype=np.uint8),
                     "labels": list(rng.randint(0, 10, n_test))}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return folder


def test_cifar_from_local_folder(tmp_path):
    folder = make_cifar(tmp_path)
    ev = load_eval_set("cifar10", "train", str(tmp_path), None, 0)
    assert ev.inputs.shape == (20, 3, 32, 32) and len(ev) == 20
    with open(folder / "data_batch_1", "rb") as f:
        first = pickle.load(f)
    raw = first["data"][0].reshape(3, 32, 32) / 255.0
    expected = (raw - np.array(CIFAR_MEAN)[:, None, None]) / np.array(CIFAR_STD)[:, None, None]
    np.testing.assert_allclose(ev.inputs[0].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert ev.labels[0] == first["labels"][0]
    sub = load_eval_set("cifar10", "test", str(tmp_path), 4, 0)
    assert len(sub) == 4 and list(sub.indices) == sorted(sub.indices)
    # the uint8 form an engine may keep on its device decodes to the very same inputs, subset included
    for s in (ev, sub):
        assert s.compact.raw.dtype == torch.uint8 and s.compact.raw.shape == s.inputs.shape
        assert torch.equal(decode_images(s.compact.raw, s.compact.mean, s.compact.std), s.inputs)
    assert torch.equal(ev.compact.raw[0], torch.from_numpy(first["data"][0].reshape(3, 32, 32)))


def test_train_and_surface_on_cifar_folder(tmp_path):
    make_cifar(tmp_path)
    ck = tmp_path / "ck"
    run(cli("train", "--model", "resnet20", "--dataset", "cifar10", "--data-root", str(tmp_path), "--epochs", "2",
            "--batch-size", "8", "--optimizer", "adam", "--lr", "0.001", "--schedule", "step", "--out-dir", str(ck)))
    names = sorted(os.listdir(ck))
    assert names == ["epoch_000.pt", "epoch_001.pt", "epoch_002.pt", "final.pt"]
    saved = torch.load(ck / "epoch_002.pt", weights_only=True)
    assert saved["epoch"] == 2 and "train_loss" in saved and '"optimizer": "adam"' in saved["config"]
    a = torch.load(ck / "epoch_001.pt", weights_only=True)["state_dict"]
    assert any(not torch.equal(a[k], saved["state_dict"][k]) for k in a)  # training moved the weights
    out = tmp_path / "r20.h5"
    run(cli("surface", "--model", "resnet20", "--dataset", "cifar10", "--data-root", str(tmp_path), "--checkpoint",
            str(ck / "final.pt"), "--x=-1:1:3", "--samples", "10", "--out", str(out)))
    import h5py

    with h5py.File(out, "r") as f:
        assert f["results/done"][()].all() and f["data/train_indices"].shape == (10,)
        assert "test_indices" not in f["data"]
        np.testing.assert_allclose(f["results/test_loss"][1], saved["test_loss"], rtol=1e-4)


def test_user_dataset_errors(tmp_path):
    with pytest.raises(UserError, match="cannot import"):
        load_eval_set("no_such_module:make", "train", None, None, 0)
    with pytest.raises(UserError, match="has no attribute"):
        load_eval_set("landscape_toys:nothing_here", "train", None, None, 0)


def test_benchmark_scripts_run():
    """Smoke test only (no timing is asserted): the benchmark scripts keep working."""
    import sys

    from conftest import ROOT

    p = run([sys.executable, str(ROOT / "benchmarks" / "bench_evaluate.py"), "--model", "digits_mlp",
             "--samples", "100", "--points", "2"])
    assert "points/s" in p.stdout
    # the three ways to run K parameter sets must agree (the script asserts it) before it prints their times
    p = run([sys.executable, str(ROOT / "benchmarks" / "bench_kconv.py"), "--k", "3", "--batch", "5", "--reps", "1"])
    assert "| im2col + bmm |" in p.stdout


def test_digits_read_without_sklearn_equal_load_digits():
    from sklearn.datasets import load_digits

    from landscape_mpi.data.datasets import digits_arrays

    images, target = digits_arrays()
    bunch = load_digits()
    assert np.array_equal(images, bunch.images) and np.array_equal(target, bunch.target)
