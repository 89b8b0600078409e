"""Streamed splits that count their reads, for tests/test_engine_stream.py (the chunked engines, engine/chunked.py).

Not part of the package (the tests put this folder on PYTHONPATH). `Images` makes every item when asked and counts
the items read and the most alive at once (each item a fresh tensor, counted dead when freed), so a test can tell
whether the engine read the split once per chunk or once per point, and held one batch or the split.
"""

import weakref

import torch
from torch.utils.data import Dataset, IterableDataset

N_ITEMS, SHAPE, CLASSES = 37, (1, 8, 8), 10


class Images(Dataset):
    """Seeded 8x8 images and labels; `reads` and `most_alive` count what the engines took from it (class-wide: the
    engine opens its own copy of the dataset)."""

    reads = alive = most_alive = 0

    def __init__(self, split):
        g = torch.Generator().manual_seed(41 if split == "train" else 42)
        self.x = torch.randn(N_ITEMS, *SHAPE, generator=g)
        self.y = torch.randint(0, CLASSES, (N_ITEMS,), generator=g)

    def __len__(self):
        return N_ITEMS

    def __getitem__(self, i):
        cls = Images
        cls.reads += 1
        cls.alive += 1
        cls.most_alive = max(cls.most_alive, cls.alive)
        x = self.x[i].clone()
        weakref.finalize(x, _gone)
        return x, int(self.y[i])

    @classmethod
    def reset(cls):
        cls.reads = cls.most_alive = 0


def _gone():
    Images.alive -= 1


def images(split):
    return Images(split)


class ImageStream(IterableDataset):
    """The same items as an iterable dataset (no len(): read in order)."""

    def __init__(self, split):
        self.items = Images(split)

    def __iter__(self):
        return (self.items[i] for i in range(len(self.items)))


def image_stream(split):
    return ImageStream(split)
