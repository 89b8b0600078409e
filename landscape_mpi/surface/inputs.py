"""A surface's inputs, loaded and checked before anything is written: the model at theta*, the evaluation data.

`load_inputs` is the pre-flight of every rank: it builds the model, loads the checkpoint, loads each split and
runs one forward on a couple of samples of each, so that a model that does not fit the data (a CIFAR model
with the digits data, say) is one line and exit 2 before any file exists, not a traceback at the first point.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from landscape_mpi.config.errors import UserError
from landscape_mpi.config.surface import SurfaceConfig
from landscape_mpi.data.datasets import EvalSet, load_eval_set
from landscape_mpi.models import (
    build_model,
    check_fits,
    load_checkpoint,
    parameters_on_meta,
    read_state_dict,
    tied_parameters,
)
from landscape_mpi.tasks import ClassifyTask, Task, make_task
from landscape_mpi.tasks.base import describe


@dataclass
class Inputs:
    model: nn.Module
    """The model at theta*, on the CPU, in eval mode."""
    data: list[EvalSet]
    """One evaluation set per split, in the config's split order, on the CPU."""
    bn_data: EvalSet | None = None
    """Training samples that re-estimate BatchNorm statistics (``--bn recalibrate``)."""
    fingerprints: dict[str, str] = field(default_factory=dict)
    """split -> sha256 of its evaluation tensors (what a resume must find unchanged)."""
    task: Task = field(default_factory=ClassifyTask)
    """What a point evaluates (--task, with classify's --loss)."""
    theta: Mapping[str, torch.Tensor] | None = None
    """Set when no rank holds the whole model (`streams_shards`): theta*'s tensors memory-mapped from the
    checkpoint, `model` with its parameters on the meta device (buffers real); each member keeps its rows."""


def streams_shards(config: SurfaceConfig, options) -> str:
    """'' when the run builds its shards without ever holding the whole model on a rank (--group-mode shard,
    random or target directions over the weights, no eig metric); else why it builds the model whole on every
    rank first (docs/mpi.md#groups-of-ranks-per-point)."""
    from landscape_mpi.directions.sources import STREAMED_SOURCES

    if options.ranks_per_point <= 1 or options.group_mode != "shard":
        return "no sharded group"
    if config.directions not in STREAMED_SOURCES:
        return f"--directions {config.directions} is computed from the whole model"
    if config.dir_space != "weights":
        return f"--dir-space {config.dir_space}"
    if config.eig:
        return "--metrics eig (its sharded Hessian copies the model)"
    return ""


def data_fingerprint(data: EvalSet) -> str:
    """sha256 of a split's evaluation inputs and labels (content, shape and dtype; not where they came from).

    A dict of inputs: each tensor after its key, keys sorted; no labels: nothing for them. A streamed split
    (`data.stream`) carries the same hash, computed batch by batch when it was opened."""
    if data.streamed:
        return data.fingerprint
    h = hashlib.sha256()
    if isinstance(data.inputs, dict):
        tensors = []
        for key in sorted(data.inputs):
            h.update(f"{key}:".encode())
            tensors.append(data.inputs[key])
    else:
        tensors = [data.inputs]
    if data.labels is not None:
        tensors.append(data.labels)
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def check_fit(model: nn.Module, data: EvalSet, config: SurfaceConfig, task: Task | None = None,
              grad_mode=torch.inference_mode) -> None:
    """One forward on two samples: the task (`config.task`) must be able to read the output and the data.
    `grad_mode`: torch.no_grad for a sharded model (FSDP2's all-gathers need it; a collective of the group)."""
    task = task if task is not None else make_task(config.task, config.loss)
    x, y = data.rows(0, 2)
    shape = tuple(x.shape[1:]) if isinstance(x, torch.Tensor) else describe(x)
    where = f"--model {config.model} with --dataset {config.dataset} ({data.name} inputs {shape})"
    on_meta = any(p.device.type == "meta" for p in model.parameters())
    try:
        with grad_mode():
            out = task.forward(model, _to_meta(x) if on_meta else x)
    except Exception as exc:  # noqa: BLE001  (any failure of the user's forward is a mismatch to report)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        if on_meta and "meta" in first.lower():
            return  # a forward that needs values (not only shapes): checked again on the sharded model (run.py)
        raise UserError(f"{where}: the forward fails ({first}); choose a model built for this dataset "
                        f"(landscape-mpi models lists each zoo model's dataset)") from None
    try:
        problem = task.check(out, x, y, data)
    except Exception as exc:  # noqa: BLE001  (a user task's check that fails is a mismatch too)
        problem = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    if problem:
        named = "" if config.task == "classify" else f", --task {config.task}"
        raise UserError(f"{where}{named}: {problem}")


def _to_meta(x):
    return x.to("meta") if isinstance(x, torch.Tensor) else {k: v.to("meta") for k, v in x.items()}


def read_inputs(config: SurfaceConfig, stream: bool = False, sharded: bool = False
                ) -> tuple[dict[str, torch.Tensor] | None, list[EvalSet], EvalSet | None]:
    """What comes from the file system: theta*'s state_dict (checked against the model), the evaluation
    splits and the BatchNorm recalibration samples. Done by one rank per node (`sharing`). `stream`
    (--stream-data): user splits are read in batches at every point; here only their length, subset and
    fingerprint are read (one pass), which the node's other ranks receive. `sharded` (`streams_shards`): no
    state_dict (each rank maps the checkpoint itself in `load_inputs`)."""
    state = None
    if not sharded:
        model = build_model(config.model, config.task)
        load_checkpoint(model, config.checkpoint)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    data = [load_eval_set(config.dataset, s, config.data_root, config.samples, config.seed, stream,
                          config.tokenizer, config.seq_len) for s in config.splits]
    bn_data = None
    if config.bn == "recalibrate":
        train = load_eval_set(config.dataset, "train", config.data_root, None, config.seed, stream, config.tokenizer,
                              config.seq_len)
        n = min(config.bn_samples or len(train), len(train))
        bn_data = train.part(0, n, np.arange(n))
    return state, data, bn_data


def load_inputs(config: SurfaceConfig, read: tuple | None = None) -> Inputs:
    """Build the model at theta*, load the data of every split and check that they fit (pre-flight).

    `read`: what `read_inputs` returned, when the node's reading rank has read it (`sharing.share_per_node`);
    None: read the files here.
    """
    state, data, bn_data = read if read is not None else read_inputs(config)
    task = make_task(config.task, config.loss)
    if state is None:  # streams_shards: the parameters on meta, theta* mapped; the fit is checked on shapes
        with parameters_on_meta():
            model = build_model(config.model, config.task)
        model.eval()
        theta = read_state_dict(config.checkpoint, "--checkpoint", mmap=True)
        check_fits(model, theta, tied_parameters(model), config.checkpoint)
        shapes_only = copy.deepcopy(model).to("meta")  # the fit of model and data, from shapes alone
        for d in data:
            check_fit(shapes_only, d, config, task)
        return Inputs(model, data, bn_data, {d.name: data_fingerprint(d) for d in data}, task, theta)
    model = build_model(config.model, config.task)
    model.load_state_dict(state)
    model.eval()
    for d in data:
        check_fit(model, d, config, task)
    if config.eig and not any(p.requires_grad for p in model.parameters()):
        raise UserError(f"--metrics eig: --model {config.model} has no trainable parameter, so no Hessian; "
                        f"drop eig from --metrics")
    return Inputs(model, data, bn_data, {d.name: data_fingerprint(d) for d in data}, task)
