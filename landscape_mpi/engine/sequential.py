"""Sequential estimates per point (``--tolerance REL``; docs/method.md#sequential-estimates): a point's batches
are read in one fixed random order of the split, the same at every point (common random numbers), and reading
stops once the standard error of the mean loss is below REL x |running mean|.

The unit of the estimate is a *block* of ``--tolerance-block`` consecutive samples of that order (not the
forward's batch: a forward covers as many whole blocks as ``--batch-size`` holds, and the rule is checked after
every block, so the values do not depend on the batch size or the device, only on the rule). Per split:

- the estimate of every metric is the task's own `finish` of the summed `batch_sums` of the blocks read, as the
  exact pass finishes the whole split's sums (all blocks read: the exact value up to the order of summation);
- the loss's standard error is the ratio estimator's (sum of losses / sum of units, per block), with the
  finite-population correction ``1 - n/N`` (blocks are drawn without replacement from the split: reading all of
  it leaves no error); every other metric's is the delete-one-block jackknife's, with the same correction;
- the rule: at least `SequentialRule.min_blocks` blocks, then stop after the first block where
  ``se(loss) <= tolerance * |loss|``; a non-finite loss never stops early (the whole split is read).

`SequentialEngine` wraps a per-point engine (`Engine.point_forward`: the eager oracle or the folded model) and
returns, after the task's metrics per split, per split the samples read and each metric's standard error
(`config.surface.SurfaceConfig.sequential_columns`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from landscape_mpi.data.datasets import EvalSet, map_inputs
from landscape_mpi.engine.common import DecodedImages, Engine, Progress, as_coords, autocast
from landscape_mpi.tasks import Task, add_sums

#: Mixed into the order's seed so that the order is not the --samples subset's or a direction's stream.
ORDER_STREAM = 0x5E9
#: The split names whose order is numbered (the order of split i: default_rng([seed, ORDER_STREAM, i])).
ORDER_SPLITS = ("train", "test")


@dataclass(frozen=True)
class SequentialRule:
    """The stopping rule: relative `tolerance` on the loss's standard error, at least `min_samples` samples
    (whole blocks, two at least), blocks of `block` samples in the order seeded by `seed`."""

    tolerance: float
    min_samples: int
    block: int
    seed: int

    @property
    def min_blocks(self) -> int:
        return max(2, math.ceil(self.min_samples / self.block))

    def describe(self) -> str:
        return (f"sequential estimates: stop once se(loss) <= {self.tolerance:g} x |loss|, at least "
                f"{self.min_blocks} blocks of {self.block} samples, order seed {self.seed}")


def split_order(n: int, seed: int, split: str) -> np.ndarray:
    """The fixed random order of a split of `n` samples: the same at every point, rank and resume."""
    index = ORDER_SPLITS.index(split) if split in ORDER_SPLITS else len(ORDER_SPLITS)
    return np.random.default_rng([seed, ORDER_STREAM, index]).permutation(n)


class RatioEstimate:
    """Running sums of (loss sum s_b, units c_b) per block: the ratio estimate R = sum s / sum c and its standard
    error ``sqrt((1 - f) * sum (s_b - R c_b)^2 / (k (k - 1))) / mean c`` (f: the share of the split's samples
    read). Updated in O(1) per block (the rule is checked after every block)."""

    def __init__(self, total_rows: int) -> None:
        self.total_rows = total_rows
        self.k = 0
        self.rows = 0
        self.s = self.c = self.ss = self.cc = self.sc = 0.0

    def add(self, s: float, c: float, rows: int) -> None:
        self.k += 1
        self.rows += rows
        self.s += s
        self.c += c
        self.ss += s * s
        self.cc += c * c
        self.sc += s * c

    @property
    def mean(self) -> float:
        return self.s / self.c if self.c else float("nan")

    @property
    def se(self) -> float:
        if self.rows >= self.total_rows:
            return 0.0
        if self.k < 2 or not self.c:
            return float("nan")
        r = self.mean
        if not math.isfinite(r):
            return float("nan")
        resid = max(self.ss - 2.0 * r * self.sc + r * r * self.cc, 0.0)
        c_bar = self.c / self.k
        return math.sqrt((1.0 - self.rows / self.total_rows) * resid / (self.k * (self.k - 1))) / c_bar


def jackknife_se(task: Task, blocks: Sequence[dict], total: dict, fpc: float) -> list[float]:
    """The delete-one-block jackknife standard error of each of the task's metrics, times sqrt(fpc)."""
    k = len(blocks)
    m = len(task.metrics)
    if fpc <= 0.0:
        return [0.0] * m
    if k < 2:
        return [float("nan")] * m
    values = np.array([task.finish({key: total[key] - b[key] for key in total}) for b in blocks], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        var = (k - 1) / k * ((values - values.mean(axis=0)) ** 2).sum(axis=0)
    return [float(v) for v in np.sqrt(var * fpc)]


def permuted(split: EvalSet, order: np.ndarray) -> EvalSet:
    """The split (on its device) with its samples in `order`: the blocks are then contiguous rows."""
    x0 = split.inputs
    device = (x0.device if isinstance(x0, (torch.Tensor, DecodedImages))
              else next(iter(x0.values())).device)
    idx = torch.as_tensor(order, dtype=torch.int64, device=device)
    if isinstance(x0, DecodedImages):
        x = DecodedImages(x0.raw[idx], x0.mean, x0.std)
    else:
        x = map_inputs(x0, lambda t: t[idx])
    y = split.labels[idx] if split.labels is not None else None
    return EvalSet(split.name, x, y, split.indices)


class SequentialEngine(Engine):
    """Per point and split: blocks in the split's fixed order until the rule holds (`SequentialRule`).

    `inner`: a per-point engine with `point_forward` (its splits on the device, `inner.data`). Returns per point
    the task's metrics per split, then per split [samples read, the standard error of each metric]."""

    name = "sequential"
    group_size = 1

    def __init__(self, inner: Engine, task: Task, rule: SequentialRule, batch_size: int, precision: str,
                 device: torch.device) -> None:
        self.inner = inner
        self.task = task
        self.rule = rule
        self.n_axes = inner.n_axes
        self.device = device
        self.precision = precision
        self.per_forward = max(1, batch_size // rule.block)  # whole blocks per forward
        self.orders = [split_order(len(s), rule.seed, s.name) for s in inner.data]
        self.data = [permuted(s, o) for s, o in zip(inner.data, self.orders)]
        inner.data = self.data  # one copy on the device: the inner engine only sets the weights from here on
        self.forwards = 0
        self.samples_read = 0
        """Samples the estimates used, and samples forwarded (a forward covers whole blocks: the rule may stop
        inside one, whose later blocks are computed and not used; benchmarks/bench_fidelity.py counts these)."""
        self.rows_forwarded = 0
        self.trace: list[list[np.ndarray]] | None = None
        """Set to a list to record, per point, the sample indices read of each split (tests)."""

    def describe(self) -> str:
        return f"engine sequential on {self.inner.describe()}; {self.rule.describe()}"

    def _blocks(self, split: EvalSet) -> list[tuple[int, int]]:
        n, b = len(split), self.rule.block
        return [(a, min(a + b, n)) for a in range(0, n, b)]

    def _split(self, forward: Callable, split: EvalSet, progress: Progress) -> tuple[list[float], int, list[float]]:
        """(metrics, samples read, standard errors) of one split at the point `forward` computes."""
        task, rule = self.task, self.rule
        blocks = self._blocks(split)
        est = RatioEstimate(len(split))
        sums: list[dict] = []
        total: dict = {}
        i = 0
        stopped = False
        while i < len(blocks) and not stopped:
            chunk = blocks[i:i + self.per_forward]
            lo, hi = chunk[0][0], chunk[-1][1]
            x, y = split.rows(lo, hi)
            with torch.inference_mode(), autocast(self.precision, self.device):
                out = task.forward(forward, x)
            self.forwards += 1
            self.rows_forwarded += hi - lo
            sliceable = isinstance(out, torch.Tensor) and out.dim() > 0 and out.shape[0] == hi - lo
            for a, b in chunk:
                if len(chunk) == 1:
                    xb, yb, ob = x, y, out
                else:
                    xb, yb = split.rows(a, b)
                    if sliceable:
                        ob = out[a - lo:b - lo]
                    else:  # an output not indexed by sample first: this block on its own
                        with torch.inference_mode(), autocast(self.precision, self.device):
                            ob = task.forward(forward, xb)
                        self.rows_forwarded += b - a
                s = task.batch_sums(ob, xb, yb)
                sums.append(s)
                add_sums(total, s)
                est.add(float(s["loss"]), float(s["count"]), b - a)
                i += 1
                if est.k >= rule.min_blocks and self._holds(est):
                    stopped = True
                    break
            progress.step(1)
        self.samples_read += est.rows
        fpc = 1.0 - est.rows / len(split)
        se = jackknife_se(task, sums, total, fpc)
        se[0] = est.se
        return list(task.finish(total)), est.rows, se

    def _holds(self, est: RatioEstimate) -> bool:
        mean, se = est.mean, est.se
        return math.isfinite(mean) and math.isfinite(se) and se <= self.rule.tolerance * abs(mean)

    def evaluate(self, coords: np.ndarray) -> np.ndarray:
        c = as_coords(coords, self.n_axes)
        m = len(self.task.metrics)
        n_splits = len(self.data)
        out = np.empty((c.shape[0], n_splits * (2 * m + 1)), dtype=np.float64)
        per_point = sum(math.ceil(len(self._blocks(s)) / self.per_forward) for s in self.data)
        progress = Progress(self, per_point * c.shape[0])
        for i, point in enumerate(c):
            forward = self.inner.point_forward([float(v) for v in point])
            extra = []
            seen = []
            for j, split in enumerate(self.data):
                values, rows, se = self._split(forward, split, progress)
                out[i, m * j:m * j + m] = values
                extra += [float(rows), *se]
                seen.append(self.orders[j][:rows])
            out[i, m * n_splits:] = extra
            if self.trace is not None:
                self.trace.append(seen)
        return out
