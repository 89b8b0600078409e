"""Evaluation splits read in batches from a user's dataset: memory per rank bounded by the batch, not the split.

A user dataset (``--dataset package.module:factory``) whose ``factory(split)`` returns an iterable dataset (no
``len``: a token corpus read from shards, a large set on a parallel file system) is always read this way; a
map-style one is read this way under ``--stream-data``, and is otherwise collated once into tensors
(`datasets.EvalSet`). Both give the same values, the same ``--samples`` subset and the same fingerprint
(tested), so a file started with one resumes with the other.

- The subset: the seeded, sorted permutation of `items.subset_indices` over the split's length, as for an
  in-memory split. An iterable dataset is counted once (one pass) to know that length.
- Reading a batch: the items at the batch's positions, collated by `items.collate` (deterministic, in order).
  A map-style dataset is indexed; an iterable one is walked from its start, keeping the subset's positions, and
  a walk continues where the previous batch ended (the engines read batches in order).
- The fingerprint and the label range are computed in one streamed pass per tensor by the node's reading rank
  (`surface.inputs.read_inputs`) and travel with the split to the node's other ranks (no dataset object is
  pickled: each process opens the dataset itself on first use).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import torch

from landscape_mpi.config.errors import UserError
from landscape_mpi.data.items import EvalSet, Inputs, collate_user_items, map_inputs, open_user_dataset, subset_indices

#: Items collated per read when the caller asks for more (a fingerprint pass, a whole-split count).
READ_BATCH = 1024


class StreamedSplit:
    """One split of a user dataset, read in batches: the `EvalSet` reading interface (``len``, ``rows``, ``part``,
    ``to``, ``name``, ``indices``) without holding the split."""

    compact = None  # no uint8 image form
    streamed = True

    def __init__(self, spec: str, name: str, n_items: int, indices: np.ndarray | None, *, iterable: bool,
                 window: tuple[int, int] | None = None, device: torch.device | None = None) -> None:
        self.spec, self.name, self.n_items, self.indices, self.iterable = spec, name, n_items, indices, iterable
        n = len(indices) if indices is not None else n_items
        self.window = window if window is not None else (0, n)
        self.device = device
        self.fingerprint: str | None = None
        """sha256 of the split as `surface.inputs.data_fingerprint` computes it for the same tensors in memory."""
        self.label_bounds: tuple[float, float] | None = None
        self._dataset = None
        self._walk: tuple[Iterator, int, int] | None = None  # (iterator, next raw position, next subset index)

    # ------------------------------------------------------------------ the EvalSet interface
    def __len__(self) -> int:
        return self.window[1] - self.window[0]

    @property
    def inputs(self):
        raise TypeError(f"the {self.name} split is streamed (--stream-data or an iterable dataset): read it in "
                        f"batches with rows(start, stop)")

    labels = inputs

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_dataset"], state["_walk"] = None, None  # each process opens the dataset itself
        return state

    def _copy(self, **changes) -> "StreamedSplit":
        other = StreamedSplit.__new__(StreamedSplit)
        other.__dict__.update(self.__getstate__())
        other.__dict__.update(changes)
        return other

    def to(self, device: torch.device) -> "StreamedSplit":
        return self._copy(device=device)

    def part(self, start: int, stop: int, indices: np.ndarray | None = None) -> "StreamedSplit":
        """Samples start..stop-1 of this split, still streamed (a view: nothing is read)."""
        lo = self.window[0]
        stop = min(stop, len(self))
        return self._copy(window=(lo + start, lo + stop), fingerprint=None)

    def rows(self, start: int, stop: int) -> tuple[Inputs, torch.Tensor | None]:
        """(inputs, labels) of samples start..stop-1, collated now (on the split's device)."""
        stop = min(stop, len(self))
        if start >= stop:
            raise IndexError(f"rows({start}, {stop}) of a streamed split of {len(self)} samples")
        lo = self.window[0] + start
        hi = self.window[0] + stop
        items = self._items(lo, hi)
        x, y = collate_user_items(self.spec, self.name, items)
        if self.device is not None:
            x = map_inputs(x, lambda t: t.to(self.device))
            y = y.to(self.device) if y is not None else None
        return x, y

    def label_range(self) -> tuple[float, float] | None:
        return self.label_bounds

    # ------------------------------------------------------------------ reading
    def dataset(self):
        if self._dataset is None:
            self._dataset = open_user_dataset(self.spec, self.name)[0]
        return self._dataset

    def _position(self, k: int) -> int:
        return int(self.indices[k]) if self.indices is not None else k

    def _items(self, lo: int, hi: int) -> list:
        ds = self.dataset()
        if not self.iterable:
            return [ds[self._position(k)] for k in range(lo, hi)]
        if self._walk is None or self._walk[2] != lo:
            self._walk = (iter(ds), 0, lo)  # a new walk from the start: the loop below skips to position lo
        it, raw, k = self._walk
        out = []
        while k < hi:
            want = self._position(k)
            item = None
            while raw <= want:
                try:
                    item = next(it)
                except StopIteration:
                    raise UserError(f"--dataset {self.spec}: the {self.name} split ended after {raw} items, "
                                    f"{self.n_items} were counted at the start; the dataset must give the "
                                    f"same items on every pass") from None
                raw += 1
            out.append(item)
            k += 1
        self._walk = (it, raw, k)
        return out

    def materialize(self) -> EvalSet:
        """The whole split as an in-memory `EvalSet` (for an analysis that needs it; memory: the split)."""
        parts = [self.rows(a, min(a + READ_BATCH, len(self))) for a in range(0, len(self), READ_BATCH)]
        xs = [p[0] for p in parts]
        x = ({k: torch.cat([p[k] for p in xs]) for k in xs[0]} if isinstance(xs[0], dict) else torch.cat(xs))
        y = torch.cat([p[1] for p in parts]) if parts[0][1] is not None else None
        lo, hi = self.window
        idx = self.indices[lo:hi] if self.indices is not None else None
        return EvalSet(self.name, x, y, idx)


def open_streamed(spec: str, split: str, samples: int | None, seed: int,
                  opened: tuple[object, int | None] | None = None) -> StreamedSplit:
    """A user split to be read in batches, with its subset, fingerprint and label range (one streamed pass per
    tensor). `opened`: what `items.open_user_dataset` returned, if called already. UserError for an empty split
    or items the collation cannot read."""
    ds, n = opened if opened is not None else open_user_dataset(spec, split)
    iterable = n is None
    if iterable:
        n = sum(1 for _ in ds)
        if n == 0:
            raise UserError(f"--dataset {spec}: the {split} split is empty")
    indices = subset_indices(n, samples, seed)
    s = StreamedSplit(spec, split, n, indices, iterable=iterable)
    s._dataset = ds
    s.fingerprint, s.label_bounds = _streamed_fingerprint(s)
    return s


def _batches(s: StreamedSplit) -> Iterator[tuple[Inputs, torch.Tensor | None]]:
    for a in range(0, len(s), READ_BATCH):
        yield s.rows(a, a + READ_BATCH)


def _streamed_fingerprint(s: StreamedSplit) -> tuple[str, tuple[float, float] | None]:
    """`surface.inputs.data_fingerprint` of the split's tensors, read batch by batch: one pass per tensor (the hash
    takes each tensor whole, shape first, then its bytes in sample order)."""
    x0, y0 = s.rows(0, min(2, len(s)))
    keys = sorted(x0) if isinstance(x0, dict) else [None]
    h = hashlib.sha256()
    n = len(s)
    bounds = None

    def stream(pick) -> None:
        first = None
        for x, y in _batches(s):
            t = pick(x, y).detach().cpu().contiguous()
            if first is None:
                first = t
                h.update(f"{t.dtype}{(n, *t.shape[1:])}".encode())
            elif t.dtype != first.dtype or t.shape[1:] != first.shape[1:]:
                raise UserError(f"--dataset {s.spec}: the {s.name} items differ in shape or dtype "
                                f"({tuple(first.shape[1:])} {first.dtype}, then {tuple(t.shape[1:])} {t.dtype}); "
                                f"pad them to one length")
            h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())

    for key in keys:  # the key names first, then each tensor, as for a dict held in memory
        if key is not None:
            h.update(f"{key}:".encode())
    for key in keys:
        stream(lambda x, y, key=key: x[key] if key is not None else x)
    if y0 is not None:
        lo, hi = np.inf, -np.inf

        def labels(x, y):
            nonlocal lo, hi
            if y.numel():
                lo, hi = min(lo, float(y.min())), max(hi, float(y.max()))
            return y

        stream(labels)
        bounds = (lo, hi)
    return h.hexdigest(), bounds
