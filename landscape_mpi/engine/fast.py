"""The fast engines: BatchNorm folded, channels-last, compiled, and K grid points per forward (vmap).

Every one evaluates the same math as the eager engine (`engine.eager`) and differs only by rounding: loss
within relative 1e-5 and the same accuracy counts in fp32 (tested in tests/test_engine.py). Classify: loss sums
and hit counts are accumulated on the device and read back once per split per point (one host sync). Another
task (`task`, e.g. ``lm``): its `batch_sums` per batch (and per point of a batched group), finished as the eager
engine finishes them (tests/test_tasks.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from landscape_mpi.data.datasets import EvalSet
from landscape_mpi.directions.base import Direction
from landscape_mpi.engine.common import AffineFamily, Engine, Progress, as_coords, autocast
from landscape_mpi.engine.evaluate import batch_loss_sum, evaluate_task, per_sample_loss
from landscape_mpi.engine.fold import FoldPlan, _scale_shift, fold_tensors
from landscape_mpi.tasks import Task, add_sums, model_output


class FoldedTensors:
    """The tensors of a folded model (`FoldPlan.module`) at grid points.

    Static pairs (no direction on the BatchNorm's tensors) are folded once here into theta* and the
    directions; dynamic pairs are folded again at every point. Tensors outside any pair move as the
    directions say. Everything is on `device`.
    """

    def __init__(self, plan: FoldPlan, state: dict[str, torch.Tensor], directions: Sequence[Direction],
                 device: torch.device) -> None:
        self.module = plan.module
        self.pairs = plan.pairs
        self.targets = dict(self.module.state_dict(keep_vars=True))
        moving = {k for k in state if any(k in d and bool(d[k].any()) for d in directions)}
        self.unused = sorted(k for k in moving if k not in self.targets and not any(
            k.startswith(p.bn + ".") for p in plan.pairs))
        bases: dict[str, torch.Tensor] = {}
        dirs: dict[str, list[torch.Tensor | None]] = {}
        in_pairs: set[str] = set()
        # dynamic pairs: (pair, names by role, affine family over the moving originals, fixed originals)
        self.dynamic: list[tuple] = []
        with torch.no_grad():
            for pair in plan.pairs:
                names = {"weight": f"{pair.layer}.weight", "bias": f"{pair.layer}.bias",
                         "gamma": f"{pair.bn}.weight", "beta": f"{pair.bn}.bias",
                         "mean": f"{pair.bn}.running_mean", "var": f"{pair.bn}.running_var"}
                in_pairs.update(names.values())
                orig = {r: (state[n].to(device) if n in state else None) for r, n in names.items()}
                if not any(names[r] in moving for r in ("gamma", "beta", "mean", "var")):
                    s, _ = _scale_shift(orig["gamma"], orig["beta"], orig["mean"], orig["var"], pair.eps)
                    w, b = fold_tensors(orig["weight"], orig["bias"], orig["gamma"], orig["beta"], orig["mean"],
                                        orig["var"], pair.eps)
                    self.targets[names["weight"]].copy_(w)
                    self.targets[names["bias"]].copy_(b)
                    for role, t in (("weight", w), ("bias", b)):
                        if names[role] in moving:
                            view = s.reshape(-1, *([1] * (t.dim() - 1)))
                            bases[names[role]] = t
                            dirs[names[role]] = [
                                (d[names[role]].to(device).double() * view).to(t.dtype)
                                if names[role] in d and bool(d[names[role]].any()) else None for d in directions]
                else:
                    fam = AffineFamily.from_directions({n: state[n] for n in names.values() if n in state},
                                                       directions, device)
                    fixed = {r: orig[r] for r, n in names.items() if n not in fam.bases}
                    self.dynamic.append((pair, names, fam, fixed))
        rest = {k: state[k] for k in moving if k not in in_pairs and k in self.targets}
        other = AffineFamily.from_directions(rest, directions, device)
        bases.update(other.bases)
        dirs.update(other.dirs)
        self.family = AffineFamily(bases, dirs)

    @torch.no_grad()
    def write(self, coords: Sequence[float]) -> None:
        """Set the folded model's tensors in place to the point `coords`."""
        self.family.write(self.targets, coords)
        for pair, names, fam, fixed in self.dynamic:
            vals = dict(fixed)
            moved = fam.at(coords)
            vals.update({r: moved[n] for r, n in names.items() if n in moved})
            w, b = fold_tensors(vals["weight"], vals["bias"], vals["gamma"], vals["beta"], vals["mean"],
                                vals["var"], pair.eps)
            self.targets[names["weight"]].copy_(w)
            self.targets[names["bias"]].copy_(b)

    @torch.no_grad()
    def stacked(self, coords: np.ndarray) -> dict[str, torch.Tensor]:
        """The moving tensors of the folded model at K points: name -> (K, *shape)."""
        out = self.family.stacked(coords)
        k = coords.shape[0]
        for pair, names, fam, fixed in self.dynamic:
            vals = {r: (t.unsqueeze(0).expand(k, *t.shape) if t is not None else None) for r, t in fixed.items()}
            moved = fam.stacked(coords)
            vals.update({r: moved[n] for r, n in names.items() if n in moved})
            w, b = fold_tensors(vals["weight"], vals["bias"], vals["gamma"], vals["beta"], vals["mean"],
                                vals["var"], pair.eps, lead=1)
            out[names["weight"]] = w
            out[names["bias"]] = b
        return out


class _OnFoldedModel(Engine):
    """What the fast engines share: the folded model with its tensors, the splits, and the split loop's size."""

    def __init__(self, tensors: FoldedTensors, data: Sequence[EvalSet], n_axes: int, *, loss: str,
                 device: torch.device, precision: str, batch_size: int, task: Task | None = None) -> None:
        self.task = task  # None: classify with `loss` (the device-side sums); else the task's own sums
        self.n_metrics = 2 if task is None else len(task.metrics)
        self.tensors = tensors
        self.module = tensors.module
        self.data = list(data)
        self.n_axes = n_axes
        self.loss = loss
        self.device = device
        self.precision = precision
        self.batch_size = batch_size

    def _sync(self) -> str:
        """How often the engine reads values back (for `describe`)."""
        return "one host sync per split" if self.task is None else f"task {self.task.name}: its sums per batch"

    def _batches_per_pass(self) -> int:
        """Forward calls of one pass over every split (the progress unit)."""
        return sum(math.ceil(len(s) / self.batch_size) for s in self.data)

    def point_forward(self, coords: Sequence[float]) -> Callable[[torch.Tensor], torch.Tensor]:
        """The folded model with its tensors at one point (one point per forward, whatever the engine)."""
        self.tensors.write([float(v) for v in coords])
        return self.module


class FoldedEngine(_OnFoldedModel):
    """One point per forward on the folded model: optional channels-last and torch.compile."""

    group_size = 1

    def __init__(self, tensors: FoldedTensors, data: Sequence[EvalSet], n_axes: int, *, loss: str,
                 device: torch.device, precision: str, batch_size: int, channels_last: bool = False,
                 compile: bool = False, log: Callable[[str], None] = print, task: Task | None = None) -> None:
        super().__init__(tensors, data, n_axes, loss=loss, device=device, precision=precision, batch_size=batch_size,
                         task=task)
        self.channels_last = channels_last
        self.log = log
        self.name = "folded" + ("+channels_last" if channels_last else "") + ("+compiled" if compile else "")
        self.forward: Callable[[torch.Tensor], torch.Tensor] = self.module
        self.compiled = compile
        if compile:
            self.forward = torch.compile(self.module, dynamic=False)

    def describe(self) -> str:
        return (f"engine {self.name} (BatchNorm folded, {self._sync()}), batch {self.batch_size}, "
                f"precision {self.precision}")

    def point_forward(self, coords: Sequence[float]) -> Callable[[torch.Tensor], torch.Tensor]:
        self.tensors.write([float(v) for v in coords])
        return self._forward

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.compiled:
            return self.module(x)
        try:
            return self.forward(x)
        except Exception as exc:  # inductor/dynamo failures come in many types; the eager module is exact
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            self.log(f"engine: torch.compile failed ({type(exc).__name__}: {first}); "
                     f"continuing without compiling")
            self.compiled = False
            self.name = self.name.replace("+compiled", "")
            return self.module(x)

    @torch.inference_mode()
    def _split(self, split: EvalSet, progress: Progress) -> tuple[float, float]:
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        hits = torch.zeros((), dtype=torch.int64, device=self.device)
        n = len(split)
        for start in range(0, n, self.batch_size):
            x = split.inputs[start:start + self.batch_size]
            y = split.labels[start:start + self.batch_size]
            with autocast(self.precision, self.device):
                logits = self._forward(x)
            total += batch_loss_sum(logits, y, self.loss).double()
            hits += (logits.argmax(dim=1) == y).sum()
            progress.step(1)
        values = torch.stack([total, hits.double()]).cpu()  # the one host sync of this split
        return float(values[0]) / n, float(values[1]) / n

    def _task_split(self, split: EvalSet, progress: Progress) -> list[float]:
        """Another task's metrics of one split: the eager engine's loop (`evaluate_task`) on this forward."""
        with autocast(self.precision, self.device):
            return evaluate_task(self._forward, split, self.task, self.batch_size, lambda: progress.step(1))

    def evaluate(self, coords: np.ndarray) -> np.ndarray:
        c = as_coords(coords, self.n_axes)
        m = self.n_metrics
        out = np.empty((c.shape[0], m * len(self.data)), dtype=np.float64)
        progress = Progress(self, self._batches_per_pass() * c.shape[0])
        split_values = self._split if self.task is None else self._task_split
        for i, point in enumerate(c):
            self.tensors.write([float(v) for v in point])
            for j, split in enumerate(self.data):
                out[i, m * j:m * j + m] = split_values(split, progress)
        return out


class BatchedEngine(_OnFoldedModel):
    """K grid points per forward: the folded model's moving tensors stacked (K, ...) and the forward
    vectorized over them with torch.func.vmap + functional_call (convolutions become grouped convolutions,
    linear layers batched matmuls). Pays where a single point's forward is too small to keep the machine busy."""

    name = "batched"

    def __init__(self, tensors: FoldedTensors, data: Sequence[EvalSet], n_axes: int, *, loss: str,
                 device: torch.device, precision: str, batch_size: int, k: int, task: Task | None = None) -> None:
        super().__init__(tensors, data, n_axes, loss=loss, device=device, precision=precision, batch_size=batch_size,
                         task=task)
        self.group_size = k

        def one(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(self.module, params, (x,))

        self.vmapped = torch.func.vmap(one, in_dims=(0, None))

    def describe(self) -> str:
        return (f"engine batched ({self.group_size} points per forward, BatchNorm folded, {self._sync()}), "
                f"batch {self.batch_size} samples, precision {self.precision}")

    @torch.no_grad()
    def logits(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """(K, B, C) logits of K stacked parameter sets on one batch."""
        with autocast(self.precision, self.device):
            return self.vmapped(params, x)

    @torch.no_grad()
    def _task_group(self, coords: np.ndarray, progress: Progress) -> np.ndarray:
        """Another task: the K points' outputs of each batch, each through the task's `batch_sums` (per point
        per batch, as the eager engine sums them), finished per point and split."""
        params = self.tensors.stacked(coords)
        k = coords.shape[0]
        out = []
        for split in self.data:
            sums: list[dict] = [{} for _ in range(k)]
            for start in range(0, len(split), self.batch_size):
                x, y = split.rows(start, start + self.batch_size)
                outputs = model_output(self.logits(params, x))
                for i in range(k):
                    add_sums(sums[i], self.task.batch_sums(outputs[i], x, y))
                progress.step(1)
            out.append(np.array([self.task.finish(s) for s in sums], dtype=np.float64).reshape(k, self.n_metrics))
        return np.concatenate(out, axis=1)

    @torch.no_grad()
    def _group(self, coords: np.ndarray, progress: Progress) -> np.ndarray:
        if self.task is not None:
            return self._task_group(coords, progress)
        params = self.tensors.stacked(coords)
        k = coords.shape[0]
        sums = []
        for split in self.data:
            total = torch.zeros(k, dtype=torch.float64, device=self.device)
            hits = torch.zeros(k, dtype=torch.int64, device=self.device)
            for start in range(0, len(split), self.batch_size):
                x = split.inputs[start:start + self.batch_size]
                y = split.labels[start:start + self.batch_size]
                logits = self.logits(params, x)
                total += per_sample_loss(logits, y, self.loss).sum(dim=1).double()
                hits += (logits.argmax(dim=-1) == y).sum(dim=1)
                progress.step(1)
            sums.append(torch.stack([total, hits.double()], dim=1))
        values = torch.cat(sums, dim=1).cpu().numpy()  # the one host sync of this group
        n = np.repeat([len(s) for s in self.data], 2)
        return values / n

    def evaluate(self, coords: np.ndarray) -> np.ndarray:
        c = as_coords(coords, self.n_axes)
        groups = [c[i:i + self.group_size] for i in range(0, c.shape[0], self.group_size)]
        progress = Progress(self, self._batches_per_pass() * len(groups))
        return np.concatenate([self._group(g, progress) for g in groups], axis=0)


def probe_batched(engine: BatchedEngine, reference: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                  n_axes: int) -> str:
    """Check vmap works on this model and agrees with the per-point folded forward on a tiny input.

    Returns "" if so, else why not (the caller falls back). `reference` must evaluate the folded module as
    it is set; the probe leaves the module's tensors at coordinate 0 of the first axis.
    """
    coords = np.zeros((2, n_axes))
    coords[1, 0] = 0.5
    try:
        got = model_output(engine.logits(engine.tensors.stacked(coords), x))
    except Exception as exc:  # vmap lacks batching rules for some ops: fall back, do not fail
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        return f"vmap cannot run this model ({type(exc).__name__}: {first})"
    for i in range(2):
        engine.tensors.write([float(v) for v in coords[i]])
        with torch.no_grad(), autocast(engine.precision, engine.device):
            want = model_output(reference(x))
        if got.shape[1:] != want.shape or not torch.allclose(got[i].float(), want.float(), rtol=1e-3, atol=1e-4):
            return "vmap's output differs from the per-point forward"
    return ""


def count_flops(module: nn.Module, x: torch.Tensor) -> float:
    """Forward FLOPs per sample of the convolution and linear layers (2 per multiply-add, the convention of
    torch.utils.flop_counter, which `tests/test_engine.py` checks this against), counted by forward hooks.

    Not FlopCounterMode itself: its dispatch mode imports torch._dynamo on first use, 2.6 s of every run's
    start-up for a number that only picks the engine and is logged. Convolutions and matmuls written as
    functions (F.conv2d in a user's forward) are not counted; 0.0 if the forward fails.
    """
    total = 0

    def hook(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Linear):
            total += 2 * out.numel() * m.in_features
        else:  # _ConvNd: every output element is a dot product over in_channels/groups x kernel
            k = 1
            for s in m.kernel_size:
                k *= s
            total += 2 * out.numel() * (m.in_channels // m.groups) * k

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    try:
        with torch.no_grad():
            module(x)
    except Exception:  # counting is advisory: an unusual model must not stop a run
        return 0.0
    finally:
        for h in handles:
            h.remove()
    return total / max(x.shape[0], 1)
