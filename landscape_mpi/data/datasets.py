"""Datasets: the embedded digits, MNIST-1D (generated offline), CIFAR-10 from a local folder, the built-in text
corpus for language models (`landscape_mpi.data.text`), and user datasets by import path.

Evaluation data is prepared once per process and kept on the device as tensors (`items.EvalSet`), so
evaluating a grid point is a plain loop over tensor slices: no DataLoader, no per-point transforms. A user
dataset too large for that is read in batches instead (`stream.StreamedSplit`, --stream-data).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random

import numpy as np
import torch

from landscape_mpi.config.errors import UserError
from landscape_mpi.config.hub import HF_PREFIX
from landscape_mpi.data.items import (  # noqa: F401  (re-exported: the split types live in items)
    LABEL_KEYS,
    CompactImages,
    EvalSet,
    Inputs,
    collate,
    collate_user_items,
    decode_images,
    first_tensor,
    map_inputs,
    open_user_dataset,
    subset_indices,
)
from landscape_mpi.data.stream import open_streamed

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_FILES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
               "batches.meta"]
# Per-channel mean and std (of the 0..1 pixel values) used by the paper's reference training code.
CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
DIGITS_TRAIN = 1437  # of 1797: an 80/20 split of a fixed permutation
#: MNIST-1D generation arguments (mnist1d.data.get_dataset_args() defaults: 5,000 signals of 40 samples, 4,000
#: train / 1,000 test, seed 42); the cache file name is keyed by a hash of these and the package version.
MNIST1D_CACHE_ENV = "LANDSCAPE_MPI_CACHE"


def load_split(dataset: str, split: str, data_root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All samples of one split as (float32 inputs, int64 labels) on the CPU."""
    x, y, _ = _load(dataset, split, data_root)
    return x, y


def _load(dataset: str, split: str, data_root: str | None, tokenizer: str | None = None, seq_len: int | None = None
          ) -> tuple[Inputs, torch.Tensor | None, CompactImages | None]:
    if split not in ("train", "test"):
        raise ValueError(split)
    if dataset == "digits":
        return (*_digits(split), None)
    if dataset == "mnist1d":
        return (*_mnist1d(split), None)
    if dataset == "cifar10":
        return _cifar10(split, data_root)
    if dataset == "text":
        from landscape_mpi.data.text import text_split

        return (*text_split(split), None)
    if dataset.startswith(HF_PREFIX):
        from landscape_mpi.data.hf_data import load_hf_split

        return (*load_hf_split(dataset, split, tokenizer, seq_len), None)
    if ":" in dataset:
        return (*_user_dataset(dataset, split), None)
    raise UserError(f"--dataset {dataset}: unknown dataset; choose digits, mnist1d, cifar10, text, "
                    "package.module:factory or hf:PATH")


def load_eval_set(dataset: str, split: str, data_root: str | None, samples: int | None, seed: int,
                  stream: bool = False, tokenizer: str | None = None, seq_len: int | None = None):
    """The evaluation set of one split, reduced to a deterministic subset of `samples` if asked.

    `stream`: a user dataset is read in batches (`landscape_mpi.data.stream.StreamedSplit`); an iterable user
    dataset is always read that way, and collated into one `EvalSet` here unless `stream`. `tokenizer`,
    `seq_len`: how ``hf:`` text is tokenised (`hf_data`)."""
    compact = None
    if ":" in dataset and not dataset.startswith(HF_PREFIX):
        ds, n = open_user_dataset(dataset, split)
        if stream or n is None:
            streamed = open_streamed(dataset, split, samples, seed, opened=(ds, n))
            return streamed if stream else streamed.materialize()
        x, y = collate_user_items(dataset, split, [ds[i] for i in range(n)])
    else:
        x, y, compact = _load(dataset, split, data_root, tokenizer, seq_len)
    data = EvalSet(split, x, y)
    indices = subset_indices(len(data), samples, seed)
    if indices is not None:
        idx = torch.from_numpy(indices)
        x, y = data.select(idx)
        compact = compact.subset(idx) if compact is not None else None
    return EvalSet(split, map_inputs(x, torch.Tensor.contiguous), y.contiguous() if y is not None else None,
                   indices, compact)


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits (1797 images of 8x8 in 0..16, labels), read straight from the CSV that
    ships inside scikit-learn: the same values as `sklearn.datasets.load_digits()` (tested) without importing
    scikit-learn, whose import costs about a second of every run's start-up."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the digits dataset needs scikit-learn: pip install scikit-learn")
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", "digits.csv.gz")
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


def _digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, target = digits_arrays()  # ships inside scikit-learn: no download
    order = np.random.RandomState(0).permutation(len(target))
    keep = order[:DIGITS_TRAIN] if split == "train" else order[DIGITS_TRAIN:]
    x = torch.from_numpy(images[keep].astype(np.float32) / 16.0).unsqueeze(1)  # N x 1 x 8 x 8, in [0, 1]
    y = torch.from_numpy(target[keep].astype(np.int64))
    return x, y


def mnist1d_cache_dir() -> str:
    """Where generated MNIST-1D arrays are cached: $LANDSCAPE_MPI_CACHE, else ~/.cache/landscape-mpi."""
    return os.environ.get(MNIST1D_CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "landscape-mpi")


def mnist1d_arrays() -> dict[str, np.ndarray]:
    """The MNIST-1D dataset as numpy arrays ``x`` (4000 x 40), ``y``, ``x_test`` (1000 x 40), ``y_test``.

    Generated offline by ``mnist1d.data.make_dataset()`` with the package's default arguments (never its
    download path), then cached as an .npz keyed by the arguments and the package version (generation takes
    a few seconds). Raises UserError if the ``mnist1d`` package is not installed.
    """
    try:
        from importlib.metadata import version

        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise UserError("--dataset mnist1d needs the mnist1d package: pip install mnist1d") from None
    args = get_dataset_args(as_dict=True)
    args.pop("url", None)  # where the package would download from: not part of what is generated
    key = hashlib.sha256(json.dumps({"args": args, "version": version("mnist1d")}, sort_keys=True).encode()).hexdigest()
    path = os.path.join(mnist1d_cache_dir(), f"mnist1d_{key[:16]}.npz")
    if os.path.isfile(path):
        with np.load(path) as f:
            return {k: f[k] for k in ("x", "y", "x_test", "y_test")}
    # make_dataset seeds the global `random` and `numpy.random` generators: keep the caller's streams intact.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        made = make_dataset(get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    arrays = {"x": made["x"].astype(np.float32), "y": made["y"].astype(np.int64),
              "x_test": made["x_test"].astype(np.float32), "y_test": made["y_test"].astype(np.int64)}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp.npz"  # unique per process: ranks may generate at the same time
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: generate again next time rather than fail
    return arrays


def _mnist1d(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    arrays = mnist1d_arrays()
    x, y = (arrays["x"], arrays["y"]) if split == "train" else (arrays["x_test"], arrays["y_test"])
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y)  # N x 1 x 40


def cifar10_layout_error(root: str | None) -> UserError:
    return UserError(
        f"CIFAR-10 not found: --data-root {root} must hold {CIFAR_FOLDER}/ with {', '.join(CIFAR_FILES)} "
        f"(the python version, cifar-10-python.tar.gz, extracted there; nothing is downloaded)")


def _cifar10(split: str, root: str | None) -> tuple[torch.Tensor, torch.Tensor, CompactImages]:
    if root is None:
        raise UserError("--dataset cifar10 needs --data-root DIR, the folder holding cifar-10-batches-py/")
    folder = os.path.join(root, CIFAR_FOLDER)
    if not all(os.path.isfile(os.path.join(folder, f)) for f in CIFAR_FILES):
        raise cifar10_layout_error(root)
    from torchvision.datasets import CIFAR10

    class LocalCIFAR10(CIFAR10):
        # torchvision checks md5 sums of the official archive's files; a local copy is trusted as it is
        # (a site's pre-processed copy, or a small one built by a test), so only the layout is checked above.
        def _check_integrity(self) -> bool:
            return True

        def _load_meta(self) -> None:
            with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    try:
        ds = LocalCIFAR10(root, train=(split == "train"), download=False)
    except Exception as exc:
        raise UserError(f"--data-root {root}: cannot read CIFAR-10 ({exc}); "
                        "re-extract cifar-10-python.tar.gz there") from None
    raw = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    compact = CompactImages(raw, torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1))
    x = decode_images(raw, compact.mean, compact.std)
    y = torch.tensor(ds.targets, dtype=torch.int64)
    return x, y, compact


def _user_dataset(spec: str, split: str) -> tuple[Inputs, torch.Tensor | None]:
    d = load_eval_set(spec, split, None, None, 0)
    return d.inputs, d.labels
