"""What a caller of the API hands over in memory: a model object and datasets, tensors or arrays.

The jobs build a model and read a dataset by name (``--model package.module:factory``, ``--dataset
package.module:factory``), on every rank, as often as they need to. So the API names what it was given by an import
path into this module: ``landscape_mpi.api.given:<ClassName>`` is a factory that returns a copy of the model object
(on the CPU), ``landscape_mpi.api.given:data`` the factory ``factory(split)`` of the datasets. Those names are what
the file records as ``model`` and ``dataset``; the weights are identified by the checkpoint's sha256 and the data by
their fingerprints, as for any user model and dataset. Every rank of an MPI job runs the caller's script, so every
rank registers its own objects (`register_model`, `register_data`); `clear` lets go of them after the call.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset, TensorDataset

from landscape_mpi.config.errors import UserError
from landscape_mpi.config.surface import SPLITS

#: The attribute of this module that is the datasets' factory (a model class of that name is renamed).
DATA = "data"

_MODELS: dict[str, nn.Module] = {}
_SPLITS: dict[str, object] = {}


def register_model(model: nn.Module) -> str:
    """Keep a CPU copy of `model` (its architecture: the weights come from the checkpoint); its import path."""
    name = re.sub(r"\W", "_", type(model).__name__) or "model"
    if name == DATA or name[0].isdigit():
        name = f"model_{name}"
    template = copy.deepcopy(model).to("cpu")
    template.eval()
    _MODELS[name] = template
    return f"{__name__}:{name}"


def register_data(data: object, splits: tuple[str, ...] | None) -> tuple[str, tuple[str, ...]]:
    """Keep the datasets of `data` and return (``--dataset`` import path, the splits to evaluate).

    `data`: one dataset (it serves every split asked for; default: train only), or a dict ``{"train": ...,
    "test": ...}`` (default: its splits, in train, test order). A dataset is a torch Dataset (map-style or
    iterable), an ``(inputs, labels)`` pair of tensors or arrays, one tensor (token ids for ``task="lm"``; the
    targets are the inputs shifted), or a dict of tensors with one row per sample (``input_ids``, ``labels``, ...).
    `splits`: the ``splits`` option when given."""
    if isinstance(data, Mapping) and data and set(data) <= set(SPLITS):
        given = {split: as_dataset(d, f"data[{split!r}]") for split, d in data.items()}
        wanted = splits if splits is not None else tuple(s for s in SPLITS if s in given)
        missing = [s for s in wanted if s not in given]
        if missing:
            raise UserError(f"--splits {','.join(wanted)}: data has no {missing[0]!r} split; pass data={{'train': ..., "
                            f"'test': ...}} or choose splits={tuple(s for s in wanted if s in given)!r}")
    else:
        one = as_dataset(data, "data")
        wanted = splits if splits is not None else ("train",)
        given = {split: one for split in SPLITS}
    _SPLITS.clear()
    _SPLITS.update(given)
    return f"{__name__}:{DATA}", tuple(wanted)


def as_dataset(data: object, what: str) -> Dataset:
    """A torch Dataset of `data` (see `register_data`); UserError naming the accepted forms otherwise."""
    if isinstance(data, (Dataset, IterableDataset)):
        return data
    if isinstance(data, (torch.Tensor, np.ndarray)):
        return Rows(torch.as_tensor(data))
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, (torch.Tensor, np.ndarray))
                                                                  for t in data):
        inputs, labels = (torch.as_tensor(t) for t in data)
        if len(inputs) != len(labels):
            raise UserError(f"{what}: {len(inputs)} inputs but {len(labels)} labels; give one label per input")
        return TensorDataset(inputs, labels)
    if isinstance(data, Mapping) and data and all(isinstance(t, (torch.Tensor, np.ndarray)) for t in data.values()):
        return DictRows({k: torch.as_tensor(v) for k, v in data.items()})
    raise UserError(f"{what}: a {type(data).__name__}; give a torch Dataset, an (inputs, labels) pair of tensors, "
                    f"a tensor of token ids, a dict of tensors, or a dict of those by split ({{'train': ..., "
                    f"'test': ...}})")


class Rows(Dataset):
    """The rows of one tensor as the items (token ids of a language model's sequences)."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    def __len__(self) -> int:
        return len(self.tensor)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.tensor[i]


class DictRows(Dataset):
    """The rows of a dict of tensors as dict items (``labels`` or ``label`` the labels, the rest inputs)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        lengths = {len(t) for t in tensors.values()}
        if len(lengths) != 1:
            raise UserError(f"data: the tensors of the dict have different lengths {sorted(lengths)}; give one row "
                            f"per sample in each")
        self.tensors, self.n = tensors, lengths.pop()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: t[i] for k, t in self.tensors.items()}


def clear() -> None:
    """Let go of every registered object (after the call that registered them)."""
    _MODELS.clear()
    _SPLITS.clear()


def _data(split: str) -> Dataset:
    if split not in _SPLITS:
        raise UserError(f"--dataset {__name__}:{DATA}: no {split!r} data was given; pass data={{'train': ..., "
                        f"'test': ...}}")
    return _SPLITS[split]


def __getattr__(name: str):
    """The factories the jobs import by path: ``data`` (the datasets), or a registered model's class name."""
    if name == DATA:
        return _data
    if name in _MODELS:
        template = _MODELS[name]
        return lambda: copy.deepcopy(template)
    raise AttributeError(f"module {__name__} has no attribute {name!r}: the API registers the model and data of "
                         f"the call in progress only")
