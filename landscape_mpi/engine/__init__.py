"""The evaluation engine: the task's metrics at grid points, behind one interface, chosen in one place.

``make_engine(...)`` returns an `Engine`; ``engine.evaluate(coords)`` maps coordinates (K, n_axes) to the
task's metrics per split (classify: ``[loss, acc]``). Implementations (``kind``); every one evaluates any task
(``lm``, ``regress``, a user task) whose model is called on a tensor of inputs (`Task.forward`): classify sums
its loss and hits on the device, another task runs its own `batch_sums` on the fast forward's output. A task
with its own ``forward``, or dict inputs, is evaluated by the eager engine (with a note).

- ``eager``: the oracle (`engine.eager`): weights set in place, plain NCHW forward, BatchNorm as its own
  pass, today's `evaluate.evaluate` per split. Also the only engine that recalibrates BatchNorm.
- ``folded``: BatchNorm folded into the preceding conv/linear (`engine.fold`), losses and hits summed on the
  device (one host sync per split per point).
- ``channels_last``: ``folded`` with NHWC activations (oneDNN on CPU: 1.2x; see docs/performance.md).
- ``compiled``: ``folded`` (channels-last where it applies) under torch.compile; falls back uncompiled with
  a log note when inductor cannot compile. Never chosen by ``auto`` (compile time exceeds the gain on CPU).
- ``batched``: K grid points per forward (torch.func.vmap over the folded model's stacked tensors).
- ``auto``: ``batched`` for small models (under SMALL_MODEL_FLOPS per sample), else ``channels_last`` for
  4D-input models, else ``folded``; ``eager`` with bn="recalibrate" or when the model cannot be traced.
- ``sequential`` (``--tolerance``, `engine.sequential`): one of the per-point engines above reading each split's
  blocks in a fixed random order until the loss's standard error is small enough (not exact: an estimate).
- a split read in batches (--stream-data, an iterable dataset): ``streamed+batched`` or ``streamed+folded``
  (`engine.chunked`: each batch read once for a chunk of points, the forward chosen as ``auto`` would).
- a group of ranks per point (`group`, the rank's placement, of 2 or more ranks): in data mode
  ``group-data+batched`` or ``group-data+folded`` (`engine.group_chunked`: a chunk of points per batch, each
  member its rows); ``group-shard``, and ``group-data`` for kind eager, one point at a time (`engine.group`, the
  placement's --group-mode). Kinds other than auto and eager are refused with the option
  (`config.surface.check_groups`).

Whatever a fast path cannot handle falls back (to a partial fold, to per-point, to eager) with a note through
`log`, never to a wrong value.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
from collections.abc import Callable, Mapping

import torch
from torch import nn

from landscape_mpi.config.errors import UserError
from landscape_mpi.config.surface import BN_MODES, ENGINES, PRECISIONS
from landscape_mpi.data.datasets import EvalSet
from landscape_mpi.directions.base import Direction
from landscape_mpi.engine.common import Engine, data_to_device, set_precision
from landscape_mpi.engine.eager import EagerEngine, batchnorms, recalibrate_bn
from landscape_mpi.engine.fast import BatchedEngine, FoldedEngine, FoldedTensors, count_flops, probe_batched
from landscape_mpi.engine.fold import FoldError, plan_fold
from landscape_mpi.engine.sequential import SequentialEngine, SequentialRule
from landscape_mpi.runtime.groups import ALONE, RankGroup
from landscape_mpi.runtime.lifecycle import StopRequested
from landscape_mpi.tasks import Task, as_task, has_own_forward, is_classify

__all__ = ["Engine", "make_engine", "KINDS", "PRECISIONS", "BN_MODES", "default_batch_size", "choose_group_size",
           "tune_cpu_allocator", "recalibrate_bn"]

#: The --engine choices, declared with the option (landscape_mpi/config/surface.py, RunOptions.engine).
KINDS = ENGINES

#: Forward FLOPs per sample under which one point per forward is dominated by per-call overhead and
#: ``auto`` stacks K points per forward. digits_cnn: 0.16 MFLOP per sample; resnet20: 82 MFLOP, where K > 1
#: gains nothing. See docs/performance.md for the measured points/s (benchmarks/bench_engine.py).
SMALL_MODEL_FLOPS = 5e6
#: Most points per forward (digits_cnn on 2 CPU threads: K=32 was the fastest measured; K=64 no better).
MAX_GROUP = 32
#: Bytes of activations one batched forward may take (CPU RAM or free GPU memory share).
GROUP_MEMORY_CPU = 1 << 30


def default_batch_size(device: torch.device) -> int:
    """Samples per forward when the user gives none: 128 on CPU, 1024 on CUDA.

    CPU: ResNet-20 with 2 threads, channels-last, is flat from 64 to 256 (0.46-0.50 s per 1,000 images)
    and slower at 1024 (cache misses; and with glibc's default malloc, page faults on every >32 MiB
    activation buffer: 1.0 s, 0.9 s of it in the kernel). CUDA: large batches keep the GPU busy; value-neutral
    (not measured here: no GPU on the development machine).
    """
    return 1024 if device.type == "cuda" else 128


def tune_cpu_allocator(keep_freed: bool = True) -> bool:
    """Keep freed activation buffers in the process instead of returning them to the kernel (glibc malloc).

    PyTorch's CPU allocator is plain malloc; glibc serves blocks over its mmap threshold (dynamic, at most
    32 MiB) with a fresh mmap, so every large activation buffer costs page faults on first touch: ResNet-20
    at batch 1024 spent 0.9 s of 1.6 s per point in the kernel. Raising the mmap and trim thresholds makes
    malloc reuse the heap (sys time 0). Process-wide: call it once at the entry point, on CPU ranks. The same
    effect from the environment: ``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824``.

    `keep_freed=False` does the opposite, for a rank that must never hold more than its share of a model
    (a sharded group, `surface.inputs.streams_shards`) or more than a batch of the data (``--stream-data``,
    `data.stream`): every block of 1 MiB or more is its own mapping,
    returned to the kernel when freed. glibc's dynamic threshold would otherwise serve the set-up's
    tensor-by-tensor work from the heap and keep about as much as the whole model in freed, fragmented blocks
    (measured: +540 MB resident after writing 256 MB of directions one 16 MB tensor at a time).
    Returns False where this is not glibc.
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    if not keep_freed:
        return bool(mallopt(m_mmap_threshold, 1 << 20)) and bool(mallopt(m_trim_threshold, 1 << 20))
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 1 << 30))


def choose_group_size(per_sample_bytes: float, param_bytes: int, batch_size: int, device: torch.device) -> int:
    """K points per forward that fit the memory: activations of K * batch_size samples plus K parameter sets
    within GROUP_MEMORY_CPU on CPU, a quarter of the free memory on CUDA; between 1 and MAX_GROUP."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free // 4
    else:
        budget = GROUP_MEMORY_CPU
    per_point = per_sample_bytes * batch_size + param_bytes
    return int(max(1, min(MAX_GROUP, budget // max(per_point, 1))))


def _activation_bytes_per_sample(module: torch.fx.GraphModule, batch: int) -> float:
    """Bytes of every node output per sample, from the shapes plan_fold recorded (an upper bound of what is live)."""
    total = 0
    for node in module.graph.nodes:
        meta = node.meta.get("tensor_meta")
        if meta is not None and hasattr(meta, "shape"):
            total += math.prod(meta.shape) * torch.empty((), dtype=meta.dtype).element_size()
    return total / batch


def make_engine(model: nn.Module, directions: list[Direction], data: list[EvalSet], *, loss: str | Task,
                device: torch.device, precision: str = "fp32", batch_size: int | None = None,
                bn: str = "eval", bn_data: EvalSet | None = None, kind: str = "auto",
                compact: bool | None = None, log: Callable[[str], None] = print, group: RankGroup = ALONE,
                theta: Mapping[str, torch.Tensor] | None = None, stop: type[BaseException] = StopRequested,
                check_stop: Callable[[], None] | None = None, rule: SequentialRule | None = None) -> Engine:
    """The engine that evaluates `model` (at theta*, on the CPU) moved along `directions` on `data`.

    `directions`: one dict per axis, state_dict key -> CPU tensor (a subset of the keys). `data`: the
    evaluation splits (CPU), results in this order. `loss`: a Task (`landscape_mpi.tasks`), or "ce" | "mse"
    (the classify task with that loss); a task with its own ``forward`` is evaluated by the eager engine.
    `precision`: "fp32" (TF32 off) | "tf32" | "bf16" (autocast); sets torch's backend flags. `batch_size`:
    samples per forward (None: per device, `default_batch_size`); any value gives the same results up to
    rounding. `bn`: "eval" (the running statistics at each point) | "recalibrate" (re-estimated at each point
    from `bn_data`).
    `kind`: one of KINDS. `compact`: keep image splits that have a uint8 form (CIFAR-10) as uint8 on the
    device and normalize each batch (the same values; None: on CUDA only, where device memory is the limit;
    the fast engines only). Choices and fallbacks are reported through `log`.

    `group`: this rank's placement (`runtime.groups.place`; by default the rank alone). In a group of 2 or more
    every member calls this together and the group evaluates each point (`GroupEngine`, in the placement's
    mode); then `theta` (shard mode: theta*'s tensors memory-mapped, the model on the meta device and
    `directions` this member's rows), `stop` (the exception a stop raises from `on_batch`, agreed by the group)
    and `check_stop` (a follower's own signal check) are the group engine's.

    `rule`: sequential estimates (--tolerance; `engine.sequential`): the engine chosen as above evaluates one
    point per forward (`Engine.point_forward`: a batched one through its folded model) and the `SequentialEngine`
    wrapping it reads each split's blocks in the rule's order until the rule holds. None: exact full passes.

    The option values are checked where they are declared (SurfaceConfig, RunOptions). Raises UserError for
    bn="recalibrate" without `bn_data` (2+ samples) or on a model without BatchNorm.
    """
    if bn == "recalibrate":
        if bn_data is None or len(bn_data) < 2:
            raise UserError("--bn recalibrate needs training samples to estimate BatchNorm statistics: "
                            "give --bn-samples N with N >= 2")
        if not batchnorms(model):
            raise UserError("--bn recalibrate: the model has no BatchNorm layer with running statistics; "
                            "drop --bn recalibrate")
    set_precision(precision, device)
    bs = batch_size or default_batch_size(device)
    task = as_task(loss)
    if rule is not None:
        if group.size > 1 or any(s.streamed for s in data):
            raise UserError("--tolerance needs each split in memory on one rank: drop --ranks-per-point and "
                            "--stream-data, or --tolerance")
        inner = make_engine(model, directions, data, loss=task, device=device, precision=precision, batch_size=bs,
                            bn=bn, bn_data=bn_data, kind=kind, compact=compact, log=log)
        e = SequentialEngine(inner, task, rule, bs, precision, device)
        log(e.describe())
        return e
    n_axes = len(directions)

    if group.size > 1:
        from landscape_mpi.engine.group import GroupEngine
        from landscape_mpi.engine.group_chunked import agree

        if group.mode == "data" and kind != "eager":  # every member decides on its own copy, then they agree
            fast = _chunked_engine(model, directions, data, task=task, device=device, precision=precision,
                                   batch_size=bs, kind=kind, log=log, group=(stop, check_stop))
            if agree(not isinstance(fast, str), device):
                log(fast.describe())
                return fast
            log(f"engine: {fast if isinstance(fast, str) else 'another member cannot take the fast path'}; "
                f"the group evaluates one point at a time")
        e = GroupEngine(model, directions, data, theta=theta, task=task, device=device, precision=precision,
                        batch_size=bs, mode=group.mode, stop=stop, check_stop=check_stop)
        log(e.describe())
        return e

    def eager(note: str = "") -> Engine:
        if note:
            log(f"engine: {note}; using the eager engine")
        e = EagerEngine(model, directions, data, loss=task, device=device, precision=precision, batch_size=bs,
                        bn=bn, bn_data=bn_data)
        log(e.describe())
        return e

    if kind == "eager":
        return eager()
    generic = None if is_classify(task) else task  # None: classify's device-side sums
    if generic is not None and has_own_forward(task):
        return eager(f"task {task.name} calls the model its own way (its forward), which the fast paths do not "
                     f"trace")
    loss = task.loss if generic is None else "task"
    if bn == "recalibrate":
        return eager(f"--bn recalibrate needs train-mode BatchNorm at every point ({kind} evaluates eval mode only)"
                     if kind != "auto" else "")
    if len(data) == 0 or len(data[0]) == 0:
        return eager("no evaluation data to trace the model with")
    if any(s.streamed for s in data):
        fast = _chunked_engine(model, directions, data, task=task, device=device, precision=precision, batch_size=bs,
                               kind=kind, log=log)
        if isinstance(fast, str):
            return eager(f"the evaluation data is streamed (--stream-data or an iterable dataset) and {fast}")
        log(fast.describe())
        return fast
    if isinstance(data[0].inputs, dict):
        return eager("inputs are a dict of tensors (keyword arguments), which the fast paths do not trace")
    example = data[0].inputs[:2]
    try:
        plan = plan_fold(model, example)
    except FoldError as exc:
        return eager(str(exc))
    for note in plan.notes:
        log(f"engine: {note} (it stays a separate eval-mode pass)")
    flops = count_flops(plan.module, example)
    conv_input = example.dim() == 4 and any(isinstance(m, nn.Conv2d) for m in plan.module.modules())
    # channels-last: measured 1.2x on CPU (oneDNN) for ResNet-20; on CUDA it pays with tensor cores
    # (tf32/bf16), not for plain fp32 cuDNN kernels (not measured here: no GPU).
    cl_default = conv_input and (device.type == "cpu" or precision != "fp32")
    if kind == "auto":
        kind = "batched" if (0 < flops < SMALL_MODEL_FLOPS) else ("channels_last" if cl_default else "folded")
    channels_last = conv_input and (kind == "channels_last" or (kind == "compiled" and cl_default))
    if kind == "channels_last" and not conv_input:
        log("engine: channels-last applies to 4D inputs of Conv2d models only; using folded")
    memory_format = torch.channels_last if channels_last else None

    gm = plan.module.to(device)
    if memory_format is not None:
        gm = gm.to(memory_format=memory_format)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    tensors = FoldedTensors(plan, state, directions, device)
    if tensors.unused:
        log(f"engine: {', '.join(tensors.unused[:5])} not used by the forward: moving them changes nothing")
    if compact is None:
        compact = device.type == "cuda"
    compact = compact and generic is None and any(s.compact is not None for s in data)
    device_data = (data_to_device(data, device, memory_format, compact) if generic is None
                   else [task.to_device(s, device) for s in data])
    if compact:
        log("engine: evaluation images kept as uint8 on the device, normalized per batch")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes at every point: the search is paid once

    if kind == "batched":
        param_bytes = sum(t.numel() * t.element_size() for t in tensors.family.bases.values())
        k = choose_group_size(_activation_bytes_per_sample(plan.module, example.shape[0]), param_bytes, bs, device)
        engine = BatchedEngine(tensors, device_data, n_axes, loss=loss, device=device, precision=precision,
                               batch_size=bs, k=k, task=generic)
        why = probe_batched(engine, gm, device_data[0].inputs[:4], n_axes)
        if not why:
            log(engine.describe() + f", {flops / 1e6:.2f} MFLOP per sample")
            return engine
        log(f"engine: {why}; evaluating one point per forward")
        kind = "folded"
    engine = FoldedEngine(tensors, device_data, n_axes, loss=loss, device=device, precision=precision,
                          batch_size=bs, channels_last=channels_last, compile=(kind == "compiled"), log=log,
                          task=generic)
    log(engine.describe() + f", {flops / 1e6:.2f} MFLOP per sample")
    return engine


def _chunked_engine(model: nn.Module, directions: list[Direction], data: list[EvalSet], *, task: Task,
                    device: torch.device, precision: str, batch_size: int, kind: str, log: Callable[[str], None],
                    group: tuple[type[BaseException], Callable[[], None] | None] | None = None) -> Engine | str:
    """The fast engine that reads each batch once for a chunk of points (`engine.chunked`: streamed splits; with
    `group` = (stop, check_stop), `engine.group_chunked`: a group of ranks in data mode), or why it cannot be used.

    `kind` picks the forward as for an in-memory split: ``batched`` (K points per forward; ``auto`` for small
    models), else one folded forward per point (channels-last where ``auto`` or ``channels_last`` would use it;
    ``compiled`` is not applied, with a note)."""
    if has_own_forward(task):
        return f"task {task.name} calls the model its own way (its forward), which the fast paths do not trace"
    if len(data) == 0 or len(data[0]) == 0:
        return "no evaluation data to trace the model with"
    example, _ = data[0].rows(0, min(2, len(data[0])))
    if isinstance(example, dict):
        return "inputs are a dict of tensors (keyword arguments), which the fast paths do not trace"
    try:
        plan = plan_fold(model, example)
    except FoldError as exc:
        return str(exc)
    for note in plan.notes:
        log(f"engine: {note} (it stays a separate eval-mode pass)")
    flops = count_flops(plan.module, example)
    conv_input = example.dim() == 4 and any(isinstance(m, nn.Conv2d) for m in plan.module.modules())
    cl_default = conv_input and (device.type == "cpu" or precision != "fp32")
    if kind == "compiled":
        log("engine: torch.compile is not applied to batches read a chunk at a time; using the uncompiled forward")
    if kind in ("auto", "compiled"):
        kind = "batched" if (kind == "auto" and 0 < flops < SMALL_MODEL_FLOPS) else (
            "channels_last" if cl_default else "folded")
    channels_last = conv_input and kind == "channels_last"
    gm = plan.module.to(device)
    if channels_last:
        gm = gm.to(memory_format=torch.channels_last)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    tensors = FoldedTensors(plan, state, directions, device)
    if tensors.unused:
        log(f"engine: {', '.join(tensors.unused[:5])} not used by the forward: moving them changes nothing")
    param_bytes = sum(t.numel() * t.element_size() for t in tensors.family.bases.values())

    def build(batched: bool) -> Engine:
        per_sample = _activation_bytes_per_sample(plan.module, example.shape[0]) if batched else 0.0
        k = choose_group_size(per_sample, param_bytes, batch_size, device)
        common = dict(task=task, device=device, precision=precision, batch_size=batch_size, k=k, batched=batched,
                      channels_last=channels_last)
        if group is None:
            from landscape_mpi.engine.chunked import ChunkedEngine

            return ChunkedEngine(tensors, data, len(directions), **common)
        from landscape_mpi.engine.group_chunked import ChunkedGroupEngine

        return ChunkedGroupEngine(tensors, data, len(directions), **common, stop=group[0], check_stop=group[1])

    if kind != "batched":
        return build(False)
    engine = build(True)
    why = probe_batched(engine, gm, example.to(device), len(directions))
    if why:
        log(f"engine: {why}; evaluating one point per forward")
        return build(False)
    return engine
