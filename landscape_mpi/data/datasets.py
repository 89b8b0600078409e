"""Datasets: the embedded digits, MNIST-1D (generated offline), CIFAR-10 from a local folder, the built-in text
corpus for language models (`landscape_mpi.data.text`), and user datasets by import path.

Evaluation data is prepared once per process and kept on the device as two tensors (`EvalSet`), so
evaluating a grid point is a plain loop over tensor slices: no DataLoader, no per-point transforms.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch

from landscape_mpi.config.errors import UserError

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


def decode_images(raw: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, C, H, W) -> float32 normalized ``(raw / 255 - mean) / std`` (mean, std: (1, C, 1, 1)).

    The one definition of the normalization: the float inputs are computed with it at load time, and an engine
    that keeps the uint8 images on its device computes each batch with it, so both give the same bits (every
    step is one correctly rounded IEEE operation per element, on any device)."""
    return (raw.float().div_(255.0) - mean) / std


@dataclass
class CompactImages:
    """The uint8 form of an image split (a quarter of the float32 bytes) and its normalization."""

    raw: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def subset(self, idx: torch.Tensor) -> "CompactImages":
        return CompactImages(self.raw[idx].contiguous(), self.mean, self.std)


#: A split's inputs: one tensor (B, ...), or a dict of tensors with the same first dimension (keyword
#: arguments of the model's forward, e.g. input_ids and attention_mask).
Inputs = Union[torch.Tensor, dict]


def map_inputs(inputs: Inputs, fn: Callable[[torch.Tensor], torch.Tensor]) -> Inputs:
    """`fn` applied to the tensor, or to every tensor of a dict (keys kept in order)."""
    if isinstance(inputs, dict):
        return {k: fn(v) for k, v in inputs.items()}
    return fn(inputs)


def first_tensor(inputs: Inputs) -> torch.Tensor:
    return next(iter(inputs.values())) if isinstance(inputs, dict) else inputs


@dataclass
class EvalSet:
    """One split's inputs and labels, as tensors on the evaluation device."""

    name: str
    inputs: Inputs
    labels: torch.Tensor | None
    """None where the task needs none (token sequences: the targets are the inputs shifted)."""
    indices: np.ndarray | None = None
    """Which samples of the split were kept by --samples (None: all)."""
    compact: CompactImages | None = None
    """The same inputs as uint8 images (CIFAR-10), from which `inputs` was decoded; None for other data."""

    def __len__(self) -> int:
        if self.labels is not None:
            return int(self.labels.shape[0])
        return int(first_tensor(self.inputs).shape[0])

    def to(self, device: torch.device) -> "EvalSet":
        return EvalSet(self.name, map_inputs(self.inputs, lambda t: t.to(device)),
                       self.labels.to(device) if self.labels is not None else None, self.indices)

    def rows(self, start: int, stop: int) -> tuple[Inputs, torch.Tensor | None]:
        """(inputs, labels) of samples start..stop-1 (views)."""
        return (map_inputs(self.inputs, lambda t: t[start:stop]),
                self.labels[start:stop] if self.labels is not None else None)

    def part(self, start: int, stop: int, indices: np.ndarray | None = None) -> "EvalSet":
        """Samples start..stop-1 as an EvalSet of their own (contiguous copies where sliced)."""
        x, y = self.rows(start, stop)
        return EvalSet(self.name, x, y, self.indices if indices is None else indices)

    def select(self, idx: torch.Tensor) -> tuple[Inputs, torch.Tensor | None]:
        """(inputs, labels) of the samples `idx` (an index tensor)."""
        return map_inputs(self.inputs, lambda t: t[idx]), (self.labels[idx] if self.labels is not None else None)


def load_split(dataset: str, split: str, data_root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All samples of one split as (float32 inputs, int64 labels) on the CPU."""
    x, y, _ = _load(dataset, split, data_root)
    return x, y


def _load(dataset: str, split: str, data_root: str | None) -> tuple[Inputs, torch.Tensor | None, CompactImages | None]:
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
    if ":" in dataset:
        return (*_user_dataset(dataset, split), None)
    raise UserError(f"--dataset {dataset}: unknown dataset; choose digits, mnist1d, cifar10, text or package.module:factory")


def load_eval_set(dataset: str, split: str, data_root: str | None, samples: int | None, seed: int) -> EvalSet:
    """The evaluation set of one split, reduced to a deterministic subset of `samples` if asked."""
    x, y, compact = _load(dataset, split, data_root)
    data = EvalSet(split, x, y)
    indices = None
    if samples is not None and samples < len(data):
        # A seeded permutation, sorted: the same subset on every rank, machine and rerun.
        indices = np.sort(np.random.RandomState(seed).permutation(len(data))[:samples])
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
        raise UserError(f"--data-root {root}: cannot read CIFAR-10 ({exc}); re-extract cifar-10-python.tar.gz there") from None
    raw = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    compact = CompactImages(raw, torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1))
    x = decode_images(raw, compact.mean, compact.std)
    y = torch.tensor(ds.targets, dtype=torch.int64)
    return x, y, compact


#: The key of a dict item that holds the labels (the other keys are inputs).
LABEL_KEYS = ("labels", "label")


def _user_dataset(spec: str, split: str) -> tuple[Inputs, torch.Tensor | None]:
    from landscape_mpi.config.imports import import_object

    factory = import_object(spec, "--dataset")
    ds = factory(split)
    try:
        n = len(ds)
    except TypeError:
        raise UserError(f"--dataset {spec}: factory({split!r}) must return a map-style torch Dataset with len()") from None
    if n == 0:
        raise UserError(f"--dataset {spec}: the {split} split is empty")
    items = [ds[i] for i in range(n)]
    try:
        return collate(items)
    except (TypeError, ValueError, RuntimeError, KeyError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"--dataset {spec}: cannot read the {split} items ({first}); an item is (x, y), "
                        f"a dict of tensors (labels under 'labels'), or a LongTensor of token ids") from None


def _stack_inputs(values: list) -> torch.Tensor:
    """Inputs of every item, stacked: int64 token ids stay int64 (int32 too), anything else float32 as always."""
    first = values[0]
    if isinstance(first, torch.Tensor) and first.dtype in (torch.int64, torch.int32):
        return torch.stack([torch.as_tensor(v).long() for v in values])
    return torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in values])


def _stack_labels(values: list) -> torch.Tensor:
    """Labels of every item: integers (class labels) int64 as always; real values (regression targets) float32;
    tensors of any shape stacked (token labels (T,), targets (k,))."""
    first = values[0]
    if isinstance(first, torch.Tensor) and first.dim() > 0 or isinstance(first, np.ndarray) and first.ndim > 0:
        stacked = torch.stack([torch.as_tensor(v) for v in values])
        return stacked.float() if stacked.is_floating_point() else stacked.long()
    real = (isinstance(first, (float, np.floating)) or (isinstance(first, torch.Tensor) and first.is_floating_point())
            or (isinstance(first, np.ndarray) and first.dtype.kind == "f"))
    if real:
        return torch.as_tensor([float(v) for v in values], dtype=torch.float32)
    return torch.as_tensor([int(v) for v in values], dtype=torch.int64)


def collate(items: list) -> tuple[Inputs, torch.Tensor | None]:
    """A user dataset's items as (inputs, labels) tensors, in item order.

    An item is (x, y) (a tuple or list), a dict (``labels`` or ``label``: the labels; every other key an
    input: one key is the input tensor, several are the model's keyword arguments), or a single integer tensor
    of token ids (no labels: language modelling). ValueError for anything else."""
    first = items[0]
    if isinstance(first, torch.Tensor):
        if first.is_floating_point():
            raise ValueError(f"a single tensor item must be integer token ids, found {first.dtype}")
        return torch.stack([torch.as_tensor(v).long() for v in items]), None
    if isinstance(first, dict):
        label_key = next((k for k in LABEL_KEYS if k in first), None)
        keys = [k for k in first if k != label_key]
        if not keys:
            raise ValueError(f"a dict item needs an input besides {label_key!r}")
        inputs = {k: _stack_inputs([item[k] for item in items]) for k in keys}
        labels = _stack_labels([item[label_key] for item in items]) if label_key else None
        return (inputs[keys[0]] if len(keys) == 1 else inputs), labels
    if isinstance(first, (tuple, list)) and len(first) == 2:
        xs, ys = zip(*items)
        if isinstance(xs[0], dict):
            inputs = {k: _stack_inputs([x[k] for x in xs]) for k in xs[0]}
            x = inputs if len(inputs) > 1 else next(iter(inputs.values()))
        else:
            x = _stack_inputs(list(xs))
        return x, _stack_labels(list(ys))
    raise ValueError(f"an item is a {type(first).__name__}")
