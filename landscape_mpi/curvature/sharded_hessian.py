"""Hessian-vector products of a model sharded over a group of ranks (FSDP2): `landscape-mpi hessian
--ranks-per-point G` (docs/hessian.md#a-sharded-model).

FSDP2 gathers a unit's parameters in a forward hook and reduce-scatters their gradients in a backward hook;
the gradient it leaves on each rank is that rank's rows of the full gradient. Double backward (the exact
product of curvature/hessian.py) does not pass through those hooks, so the product here is a central finite
difference of two sharded gradients:

    H v ~ (g(theta + eps v) - g(theta - eps v)) / (2 eps),    eps = FD_SCALE / ||v||

g the gradient of the mean loss (the same function as curvature/hessian.py: the task's loss sums over every
sample, divided by the count; model in eval mode). Its error is O(eps^2) from the third derivative plus the
rounding of the gradients divided by eps: with ``--precision float64`` (the default this module asks for) it is
around 1e-8 relative on the test's model (measured in tests/test_groups.py against the exact product), and
with float32 weights about 1e-3, so the eigenvalues are computed in float64.

The vectors of the Krylov methods (curvature/krylov.py) are whole, on the group's first rank, which drives
(`curvature.hessian.drive`, the protocol of `curvature.hessian.DrivenOperator`, the unsharded operator's too): it
broadcasts v, every rank perturbs its rows, computes its share of the gradient over its rows of every batch (the
batches divided as in engine/group.py: same number of forwards everywhere), and the ranks' rows of H v are
gathered back in parameter order.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from landscape_mpi.config.errors import UserError
from landscape_mpi.curvature.hessian import DrivenOperator, ParamSpace
from landscape_mpi.data.items import EvalSet, map_inputs
from landscape_mpi.engine.group import local_rows, member_batches, reshard, shard_units
from landscape_mpi.tasks import Task, as_task

#: eps * ||v|| of the central difference (float64 weights).
FD_SCALE = 1e-4


class ShardedHessianOperator(DrivenOperator):
    """Products with the Hessian of the mean loss, the model sharded over `comm`'s ranks (FSDP2 on the default
    torch.distributed process group, which must be that same group). The interface of
    `curvature.hessian.HessianOperator` that `drive` and the Krylov tasks use, and its drive protocol."""

    def __init__(self, model: nn.Module, data: Sequence[EvalSet], loss: str | Task, batch_size: int, comm,
                 device: torch.device, dtype: torch.dtype | None = None) -> None:
        """`dtype`: the model and the real-valued inputs and labels cast to it (float64 for the eigenvalue maps of
        a float32 model: the finite difference needs it); None keeps the model's."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        self.comm, self.rank, self.size = comm, comm.Get_rank(), comm.Get_size()
        if dist.get_world_size() != self.size:
            raise RuntimeError("the torch.distributed group must be the MPI group of the sharded model")
        self.task = as_task(loss)
        self.batch_size = batch_size
        self.device = device
        self.space = ParamSpace.of(model)
        self.data = list(data)
        self.n_samples = sum(len(s) for s in self.data)
        if self.n_samples == 0:
            raise UserError("the evaluation set is empty; check --samples and --splits")
        self.count = sum(self.task.count(*s.rows(a, a + batch_size)) for s in self.data
                         for a in range(0, len(s), batch_size))
        if self.count == 0:
            raise UserError(f"the evaluation set has nothing to predict for --task {self.task.name}")
        self.dtype = dtype
        self.model = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
        mesh = init_device_mesh(device.type, (self.size,))
        self.units = shard_units(self.model)
        for module in self.units:
            fully_shard(module, mesh=mesh)
        fully_shard(self.model, mesh=mesh)
        for module in [*self.units, self.model]:
            module.set_gradient_divide_factor(1.0)  # sums over the group's ranks, not their mean
        named = dict(self.model.named_parameters())
        self.params = [named[k] for k in self.space.names]
        self.products = 0

    @property
    def n(self) -> int:
        return self.space.n

    # ------------------------------------------------------------------------- sharded pieces
    def _locals(self) -> list[torch.Tensor]:
        return [p.to_local() for p in self.params]

    def _local_rows(self, v: np.ndarray) -> list[torch.Tensor]:
        """This rank's rows of every parameter's part of the flat vector `v` (model dtype and device)."""
        p0 = self._locals()[0]
        return [local_rows(torch.from_numpy(a), self.rank, self.size).to(p0.device, p0.dtype)
                for a in self.space.split(v).values()]

    def _batches(self):
        """(inputs, labels, real) of this rank's rows of every batch of every split (`engine.group.member_batches`),
        real-valued tensors cast to `dtype`."""
        for s in self.data:
            for x, y, real in member_batches(s, self.batch_size, self.rank, self.size):
                if self.dtype is not None:
                    x = map_inputs(x, self._cast)
                    y = self._cast(y) if y is not None else None
                yield x, y, real

    def _cast(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.dtype) if t.is_floating_point() else t

    def _gradient(self) -> np.ndarray:
        """This rank's rows of the gradient of the loss SUM over every sample (float64, parameter order)."""
        for p in self.params:
            p.grad = None
        self.model.eval()
        for x, y, real in self._batches():
            with torch.enable_grad():
                value = self.task.loss_sum(self.task.forward(self.model, x), x, y)
                (value if real else value * 0.0).backward()
        reshard(self.model)
        parts = [(p.grad.to_local() if p.grad is not None else torch.zeros_like(p.to_local())) for p in self.params]
        return np.concatenate([t.detach().double().cpu().numpy().ravel() for t in parts])

    def _local_product(self, v: np.ndarray) -> np.ndarray:
        """This rank's rows of (H v) * count (collective over the group)."""
        norm = float(np.linalg.norm(v))
        if norm == 0.0:
            return np.zeros(sum(t.numel() for t in self._locals()))
        eps = FD_SCALE / norm
        rows = self._local_rows(v)
        base = [t.detach().clone() for t in self._locals()]
        grads = []
        try:
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    for t, b, r in zip(self._locals(), base, rows):
                        t.copy_(b).add_(r, alpha=sign * eps)
                grads.append(self._gradient())
        finally:
            with torch.no_grad():
                for t, b in zip(self._locals(), base):
                    t.copy_(b)
        return (grads[0] - grads[1]) / (2.0 * eps)

    def _gather(self, local: np.ndarray) -> np.ndarray | None:
        """The ranks' rows put back into whole parameters, flat in parameter order (on rank 0; None elsewhere)."""
        shapes = [tuple(t.shape) for t in self._locals()]
        everyone = self.comm.gather((local, shapes), root=0)
        if self.rank != 0:
            return None
        pieces = []
        offsets = [0] * self.size
        for i, _ in enumerate(self.space.names):
            rows = []
            for r, (vec, their_shapes) in enumerate(everyone):
                size = int(np.prod(their_shapes[i])) if their_shapes[i] else 1
                rows.append(vec[offsets[r]:offsets[r] + size].reshape(their_shapes[i]))
                offsets[r] += size
            pieces.append(np.concatenate(rows, axis=0).ravel() if rows[0].ndim else rows[0].ravel())
        return np.concatenate(pieces)

    def point_setter(self, directions: Sequence[dict[str, torch.Tensor]]):
        """Sets theta* + sum c_i d_i on this rank's shards of the operator's model (`engine.group.ShardSetter`)."""
        from landscape_mpi.engine.group import ShardSetter

        return ShardSetter(self.model, directions, self.rank, self.size)

    # ------------------------------------------------------------------- HessianOperator's interface
    def _product_sum(self, v: np.ndarray) -> np.ndarray | None:
        """(H v) * count on rank 0 (None elsewhere): every rank's rows, gathered (`DrivenOperator`)."""
        return self._gather(self._local_product(v))

    def mean_loss(self) -> float:
        """The mean loss at theta* (collective on every rank of the group)."""
        total = 0.0
        self.model.eval()
        with torch.no_grad():
            for x, y, real in self._batches():
                value = float(self.task.loss_sum(self.task.forward(self.model, x), x, y).double())
                total += value if real else 0.0
        reshard(self.model)
        return float(self.comm.allreduce(total)) / self.count
