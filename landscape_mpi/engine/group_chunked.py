"""A group of ranks per point in data mode (--ranks-per-point G --group-mode data) on the fast engine.

Every member holds the whole folded model (`engine.fold`) and the chunk's points' moving tensors; each batch of a
split (the batches a one-rank run reads) is divided among the members as in `engine.group` (`member_batches`), and
each member evaluates its rows at all the chunk's points (`engine.chunked`: K points per forward, or one
functional forward per point) before the next batch. At the end of a split the K points' sums are added over the
group in one float64 all-reduce, and the task finishes each point's metrics. A stop is agreed by the group at every
batch boundary, as in `GroupEngine`.

Shard mode stays on `GroupEngine`: FSDP2 owns a sharded model's parameters (DTensors, gathered by its pre-forward
hooks one unit at a time), and a functional forward with K stacked parameter sets would bypass those hooks; see
docs/performance.md#fast-engines-for-streamed-data-and-groups.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
import torch.distributed as dist

from landscape_mpi.data.items import EvalSet, Inputs
from landscape_mpi.engine.chunked import ChunkedEngine
from landscape_mpi.engine.common import Progress
from landscape_mpi.engine.fast import FoldedTensors
from landscape_mpi.engine.group import GroupEngine, dist_keys, member_batches
from landscape_mpi.tasks import Task


class ChunkedGroupEngine(ChunkedEngine):
    """A chunk of points per batch, each batch divided among the group's members, the sums added over the group."""

    def __init__(self, tensors: FoldedTensors, data: Sequence[EvalSet], n_axes: int, *, task: Task,
                 device: torch.device, precision: str, batch_size: int, k: int, batched: bool,
                 channels_last: bool = False, stop: type[BaseException],
                 check_stop: Callable[[], None] | None = None) -> None:
        super().__init__(tensors, data, n_axes, task=task, device=device, precision=precision, batch_size=batch_size,
                         k=k, batched=batched, channels_last=channels_last)
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.stop, self.check_stop = stop, check_stop
        self.name = f"group-data+{self.forward_kind}"

    def describe(self) -> str:
        return (f"engine {self.name} (a point per group of {self.size}: the model on each of {self.size} ranks; "
                f"each batch divided among the members, {dist.get_backend()}; {self._how()}), batch "
                f"{self.batch_size}, precision {self.precision}")

    def _batches(self, split: EvalSet) -> Iterator[tuple[Inputs, torch.Tensor | None, bool]]:
        return member_batches(split, self.batch_size, self.rank, self.size)

    def _after_batch(self, progress: Progress) -> None:
        progress.done += 1
        GroupEngine._agree_on_stop(self, min(progress.done / progress.total, 1.0))

    def _reduce(self, sums: list[dict]) -> list[dict]:
        """The K points' sums over the group: one all-reduce in float64 (counts exact below 2**53)."""
        flat = {f"{i}\t{key}": value for i, s in enumerate(sums) for key, value in s.items()}
        keys = dist_keys(flat, self.size)
        values = torch.tensor([float(flat.get(k, 0.0)) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        out: list[dict] = [{} for _ in sums]
        for key, value in zip(keys, values.tolist()):
            i, name = key.split("\t", 1)
            out[int(i)][name] = value
        return out


def agree(ok: bool, device: torch.device) -> bool:
    """Whether every member of the group can take the fast path (each decides on its own copy of the model and
    data; they must take the same engine, whose collectives differ)."""
    flag = torch.tensor([1.0 if ok else 0.0], dtype=torch.float64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return flag.item() > 0
