"""User datasets read in batches (--stream-data, iterable datasets): the tests of tests/test_stream.py.

Not part of the package (the tests put this folder on PYTHONPATH). The iterable datasets give the very items of
their map-style twins in task_toys.py, so a streamed run must equal an in-memory one.
"""

import atexit
import math
import os
import weakref

import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset

import task_toys


class Stream(IterableDataset):
    """An iterable dataset over a list of items (no len(): read in order)."""

    def __init__(self, items):
        self.items = items

    def __iter__(self):
        return iter(self.items)


def token_stream(split):
    """task_toys.token_data's items as an iterable dataset."""
    ds = task_toys.token_data(split)
    return Stream([ds[i] for i in range(len(ds))])


def dict_stream(split):
    """task_toys.dict_data's Hugging Face-style dict items as an iterable dataset."""
    ds = task_toys.dict_data(split)
    return Stream([ds[i] for i in range(len(ds))])


def ragged_stream(split):
    """Token sequences of two lengths, the shorter ones from the second read batch (1,024 items) on: each batch
    collates, the split does not."""
    return Stream([torch.arange(6) % task_toys.VOCAB] * 1024 + [torch.arange(5) % task_toys.VOCAB] * 3)


#: A split far larger than a batch, generated item by item: 150,000 vectors of 1,024 float32 (614 MB).
BIG_N, BIG_DIM, BIG_CLASSES = 150_000, 1024, 10
_BASE = torch.linspace(-1.0, 1.0, BIG_DIM)


#: Where BigVectors writes the most items alive at once when the process exits (a test sets it): the count says
#: whether a run held the split or one batch, whatever the allocator keeps.
LIVE_FILE = "STREAM_TOYS_LIVE_FILE"


class BigVectors(Dataset):
    """Item i: (the base vector times a value of i, i mod 10). Made when asked; nothing is held."""

    def __init__(self):
        self.alive = self.most = 0
        path = os.environ.get(LIVE_FILE)
        if path:
            atexit.register(lambda: open(path, "w").write(str(self.most)))

    def _gone(self):
        self.alive -= 1

    def __len__(self):
        return BIG_N

    def __getitem__(self, i):
        x = _BASE * math.sin(0.001 * i)
        self.alive += 1
        self.most = max(self.most, self.alive)
        weakref.finalize(x, self._gone)
        return x, i % BIG_CLASSES


def big_vectors(split):
    return BigVectors()


def make_big_classifier():
    torch.manual_seed(5)
    return nn.Linear(BIG_DIM, BIG_CLASSES)
