"""A grid point evaluated by a group of ranks (--ranks-per-point G) over torch.distributed.

Two modes (docs/mpi.md#groups-of-ranks-per-point):

- ``shard``: the model is sharded over the group with FSDP2 (`torch.distributed.fsdp.fully_shard`, one unit per
  module that owns parameters no other module shares, the rest in the root unit): each member holds its rows
  (dim 0) of every parameter, and the same rows of every direction, so theta* + sum c_i d_i is set on each
  shard where it lives; a forward all-gathers one unit at a time and frees it after.
- ``data``: every member holds the whole model (the eager engine's per-point set-up). This class is data mode's
  engine for ``--engine eager`` only; ``auto`` takes the folded model a chunk of points per batch
  (`engine.group_chunked`).

In both, each batch of a split (the batches a one-rank run reads) is divided among the members, each member
runs the forward on its rows and adds up the task's sums (`Task.batch_sums`); at the end of the split the sums
are added over the group (one all-reduce in float64) and the task finishes its metrics: the values of the
one-rank run up to the order of float64 additions. A member whose share of a short last batch is empty runs the
forward on one row anyway (a sharded forward is a collective) and drops its sums.

A stop (signal, the master's STOP) is agreed on by the group at every batch boundary: one all-reduce of a flag,
so that no member is left inside a collective that the others have abandoned.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from landscape_mpi.config.errors import UserError
from landscape_mpi.data.items import EvalSet
from landscape_mpi.directions.base import Direction, PointSetter
from landscape_mpi.engine.common import Engine, as_coords, autocast, set_precision
from landscape_mpi.tasks import Task
from landscape_mpi.tasks.base import add_sums

GROUP_MODES = ("shard", "data")


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules that become FSDP units of their own, as torchtitan shards a transformer block by block: the
    members of every ``nn.ModuleList`` / ``nn.Sequential`` (the repeated blocks; the layers of a Sequential
    model), outermost first, each only if no module outside it uses its parameters (a tied embedding and output
    head stay together in the root's unit). The rest (embeddings, final norms, heads) is the root's unit."""
    owners: dict[int, set[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), set()).add(name)
    units: list[nn.Module] = []
    inside_unit: set[str] = set()
    for name, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or any(
                name == u or name.startswith(u + ".") for u in inside_unit):
            continue
        for child_name, child in module.named_children():
            full = f"{name}.{child_name}" if name else child_name
            params = list(child.parameters())
            if params and all(all(o == full or o.startswith(full + ".") for o in owners[id(p)]) for p in params):
                units.append(child)
                inside_unit.add(full)
    return units


class ShardSetter:
    """theta* + sum c_i d_i on the local shard of every sharded tensor (dim-0 rows, as FSDP2 cuts them) and on
    the whole of every replicated one (buffers), in place."""

    def __init__(self, model: nn.Module, directions: Sequence[Direction], rank: int, size: int,
                 rows: bool = False) -> None:
        """`rows`: `directions` hold this member's rows of each sharded tensor already (read so from the file),
        not the whole tensors."""
        self.targets: list[tuple[torch.Tensor, torch.Tensor, list[torch.Tensor | None]]] = []
        for key, t in model.state_dict(keep_vars=True).items():
            local = t.to_local() if hasattr(t, "to_local") else t
            ds = []
            for d in directions:
                full = d.get(key)
                if full is None or not bool(full.any()):
                    ds.append(None)
                    continue
                part = local_rows(full, rank, size) if hasattr(t, "to_local") and not rows else full
                if tuple(part.shape) != tuple(local.shape):
                    raise RuntimeError(f"{key}: the direction's shard {tuple(part.shape)} does not match the "
                                       f"parameter's {tuple(local.shape)}")
                moved = part.to(local.device, local.dtype)
                ds.append(moved if rows else moved.clone())  # rows: read for this setter alone
            if any(d is not None for d in ds):
                self.targets.append((local, local.detach().clone(), ds))

    def nbytes(self) -> int:
        """Bytes of the shards this member holds: theta*'s copy and the directions' (the parameters themselves
        are FSDP's)."""
        return sum(b.numel() * b.element_size() + sum(d.numel() * d.element_size() for d in ds if d is not None)
                   for _, b, ds in self.targets)

    @torch.no_grad()
    def set(self, coords: Sequence[float]) -> None:
        for local, base, ds in self.targets:
            local.copy_(base)
            for c, d in zip(coords, ds):
                if d is not None and c != 0.0:
                    local.add_(d, alpha=float(c))


@torch.no_grad()
def fill_shards(model: nn.Module, theta: Mapping[str, torch.Tensor], device: torch.device) -> None:
    """Allocate a meta-device model's shards on `device` (FSDP2's ``to_empty``) and copy this member's rows of
    theta* (`theta`, memory-mapped: only these rows are read) into them; buffers keep the values the model was
    built with, then take the checkpoint's where it has them (persistent ones)."""
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    model.to_empty(device=device)
    for name, b in model.named_buffers():
        b.copy_(theta[name] if name in theta else buffers[name])
    for name, p in model.named_parameters():  # a tied parameter once, under its first name (as the checkpoint)
        local = p.to_local() if hasattr(p, "to_local") else p
        source = theta[name]
        part = local_rows(source, dist.get_rank(), dist.get_world_size()) if hasattr(p, "to_local") else source
        local.copy_(part)


def shard_span(n: int, rank: int, size: int) -> tuple[int, int]:
    """Rows lo..hi-1 of n that member `rank` of `size` holds, as FSDP2's Shard(0) cuts them (torch.chunk:
    ceil(n / size) rows per rank, the last ones shorter or empty)."""
    step = -(-n // size)
    return min(rank * step, n), min((rank + 1) * step, n)


def local_rows(full: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    """This member's rows of `full` (`shard_span`)."""
    lo, hi = shard_span(full.shape[0], rank, size)
    return full[lo:hi]


def member_rows(start: int, stop: int, rank: int, size: int) -> tuple[int, int]:
    """This member's rows of the batch start..stop-1 (contiguous, sizes differ by at most one)."""
    n = stop - start
    return start + n * rank // size, start + n * (rank + 1) // size


def member_batches(split: EvalSet, batch_size: int, rank: int, size: int):
    """(inputs, labels, real) of this member's rows of every batch of `split` (the batches of a one-rank run):
    every member gets as many as the others. `real` is False for a stand-in row (the batch's first) where this
    member's share of a short batch is empty: a sharded forward is a collective, so it runs anyway."""
    n = len(split)
    for start in range(0, n, batch_size):
        lo, hi = member_rows(start, min(start + batch_size, n), rank, size)
        x, y = split.rows(start, start + 1) if lo == hi else split.rows(lo, hi)
        yield x, y, lo < hi


def reshard(model: nn.Module) -> None:
    """Free every unsharded parameter FSDP2 keeps after a forward (the root unit's, by its heuristic for
    training; a backward's), so that the next forward gathers the shards as they are now."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


class GroupEngine(Engine):
    """Per point, the group together: the weights set (sharded or whole), each batch divided among the
    members, the task's sums added over the group."""

    group_size = 1

    def __init__(self, model: nn.Module, directions: Sequence[Direction], data: Sequence[EvalSet], *, task: Task,
                 device: torch.device, precision: str, batch_size: int, mode: str, stop: type[BaseException],
                 check_stop: Callable[[], None] | None = None, theta: Mapping[str, torch.Tensor] | None = None) -> None:
        """`stop`: the exception a stop raises from `on_batch` (or from `check_stop`, a follower's own signal
        check); the group agrees on it at each batch boundary and every member raises it.

        `theta` (shard mode only): theta*'s tensors, memory-mapped; then `model` holds its parameters on the meta
        device and `directions` only this member's rows (`local_rows`), and the whole model never exists on
        this rank: FSDP2 shards the meta model, each member allocates its shards and copies its rows of theta*
        into them."""
        if mode not in GROUP_MODES:
            raise UserError(f"--group-mode {mode}: choose {' or '.join(GROUP_MODES)}")
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.mode, self.task, self.device = mode, task, device
        self.precision, self.batch_size = precision, batch_size
        self.stop, self.check_stop = stop, check_stop
        self.n_axes = len(directions)
        self.name = f"group-{mode}"
        set_precision(precision, device)
        if theta is not None and mode != "shard":
            raise ValueError("theta (a model on the meta device) needs --group-mode shard")
        self.model = copy.deepcopy(model).eval()
        if theta is None:  # else the parameters are on meta: `fill_shards` allocates this member's rows
            self.model.to(device)
        if mode == "shard":
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh(device.type, (self.size,))
            pristine = self.model
            self.note = ""
            for attempt in ("units", "root"):
                self.model = copy.deepcopy(pristine) if attempt == "units" else pristine
                self.units = shard_units(self.model) if attempt == "units" else []
                for module in self.units:
                    fully_shard(module, mesh=mesh)
                fully_shard(self.model, mesh=mesh)
                if theta is not None:
                    fill_shards(self.model, theta, device)
                problem = self._probe(data)
                if not problem or attempt == "root":
                    break
                # a unit's parameter used outside its module's forward (e.g. `self.pos.weight[:t]` in the root's
                # forward) is still sharded there: shard the whole model as one unit instead
                self.note = f"; one unit (per-block sharding failed: {problem})"
            if problem:
                raise UserError(f"--group-mode shard: the sharded forward fails ({problem}); check that --model "
                                f"fits --dataset, or use --group-mode data")
            del pristine
            self.setter = ShardSetter(self.model, directions, self.rank, self.size, rows=theta is not None)
        else:
            self.units = []
            self.setter = PointSetter(self.model, [{k: v.to(device) for k, v in d.items()} for d in directions])
        self.data = [task.to_device(s, device) for s in data]

    def _probe(self, data: Sequence[EvalSet]) -> str:
        """One sharded forward on one sample, agreed by the group: '' if it runs on every member, else the
        first line of the error."""
        problem = ""
        try:
            x, _ = data[0].rows(0, 1)
            x = x.to(self.device) if isinstance(x, torch.Tensor) else {k: v.to(self.device) for k, v in x.items()}
            with torch.no_grad():
                self.task.forward(self.model, x)
        except Exception as exc:  # noqa: BLE001  (reported, and the group falls back together)
            problem = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        flag = torch.tensor([1.0 if problem else 0.0], dtype=torch.float64, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return problem or ("another member's forward failed" if flag.item() > 0 else "")

    def describe(self) -> str:
        how = (f"FSDP2 over {self.size} ranks, {len(self.units)} unit(s) + the root{self.note}" if self.mode == "shard"
               else f"the model on each of {self.size} ranks")
        return (f"engine group-{self.mode} (a point per group of {self.size}: {how}; each batch divided among "
                f"the members, {dist.get_backend()}), batch {self.batch_size}, precision {self.precision}")

    def _agree_on_stop(self, fraction: float) -> None:
        """Every member learns whether any member must stop, at the same batch boundary."""
        stopping = 0.0
        try:
            if self.on_batch is not None:
                self.on_batch(fraction)
            if self.check_stop is not None:
                self.check_stop()
        except self.stop:
            stopping = 1.0
        flag = torch.tensor([stopping], dtype=torch.float64, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0:
            raise self.stop("the group stops")

    def _split(self, split: EvalSet, done: int, total: int) -> tuple[list[float], int]:
        sums: dict = {}
        for x, y, real in member_batches(split, self.batch_size, self.rank, self.size):
            if real or self.mode == "shard":  # data mode: an empty share needs no forward (no collective in it)
                with torch.no_grad(), autocast(self.precision, self.device):  # no inference_mode: FSDP2 all-gathers
                    out = self.task.forward(self.model, x)
                    if real:
                        add_sums(sums, self.task.batch_sums(out, x, y))
            done += 1
            self._agree_on_stop(done / total)
        return list(self.task.finish(self._group_sums(sums))), done

    def _group_sums(self, sums: dict) -> dict:
        """The task's sums over the group: one all-reduce in float64 (counts exact below 2**53)."""
        keys = dist_keys(sums, self.size)
        values = torch.tensor([float(sums.get(k, 0.0)) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return dict(zip(keys, values.tolist()))

    def evaluate(self, coords: np.ndarray) -> np.ndarray:
        c = as_coords(coords, self.n_axes)
        m = len(self.task.metrics)
        out = np.empty((c.shape[0], m * len(self.data)), dtype=np.float64)
        total = sum(-(-len(s) // self.batch_size) for s in self.data) * c.shape[0]
        done = 0
        for i, point in enumerate(c):
            if self.mode == "shard":
                reshard(self.model)  # the next forward gathers the shards set here, not a copy left from the last one
            self.setter.set([float(v) for v in point])
            for j, split in enumerate(self.data):
                out[i, m * j:m * j + m], done = self._split(split, done, total)
        return out


def dist_keys(sums: dict, size: int) -> list[str]:
    """The union of every member's sum names (a member without rows has none): gathered once per split."""
    gathered: list = [None] * size
    dist.all_gather_object(gathered, sorted(sums))
    return sorted({k for names in gathered for k in names})
