"""Training the bend of a curve between two models (Garipov et al. 2018, "Loss Surfaces, Mode Connectivity, and
Fast Ensembling of DNNs"): a quadratic Bezier curve or a polygonal chain with one bend, from model A (t = 0)
through the bend C to model B (t = 1),

    bezier:  theta(t) = (1 - t)^2 A + 2 t (1 - t) C + t^2 B
    chain:   theta(t) = A + 2t (C - A) for t <= 1/2,  C + (2t - 1)(B - C) for t >= 1/2   (the bend at t = 1/2)

with A and B fixed and C trained to minimise the task's loss averaged over t ~ U(0, 1), one t drawn per step (a
stochastic estimate of the integral of the loss along the curve, as Garipov et al. train it). C starts at the
midpoint (A + B) / 2, where both curves are the straight line from A to B: zero steps give the linear path.

The model is evaluated at theta(t) with `torch.func.functional_call` (the model's own parameters are never
written), through the task's `forward` and `loss_sum` (the loss of evaluation, in one place). Only parameters
are on the curve; BatchNorm runs in train mode, normalising with each batch's statistics (as Garipov et al.
train), on a scratch copy of the running statistics that is thrown away: the bend's buffers are the midpoint of
A's and B's (integer buffers: A's), and the path job re-estimates the statistics at every point of the curve.

The bend is a normal checkpoint (``torch.load(..., weights_only=True)``; its ``state_dict`` loads into the
model) that records the recipe and both endpoints' hashes (``bend``, JSON) and, until complete, what resuming
needs (``resume``). A rerun with the same recipe and endpoints resumes from it, or returns at once if complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from landscape_mpi.config.errors import UserError
from landscape_mpi.data.datasets import EvalSet
from landscape_mpi.data.items import first_tensor
from landscape_mpi.directions.paths import bezier_weights
from landscape_mpi.runtime.faults import NO_FAULTS, Faults
from landscape_mpi.runtime.lifecycle import STOP, StopRequested
from landscape_mpi.tasks.base import Task
from landscape_mpi.training.train import read_checkpoint

__all__ = ["KINDS", "CHAIN_KNOT", "curve_weights", "curve_state", "curve_loss", "state_sha256", "train_bend",
           "load_bend", "BendStopped"]

#: The curves whose bend is trained.
KINDS = ("bezier", "chain")
#: The t of a chain's bend.
CHAIN_KNOT = 0.5
State = Mapping[str, torch.Tensor]


class BendStopped(StopRequested):
    """A stop signal arrived while training a bend: every step taken is in the bend's file; rerun to resume."""


def curve_weights(kind: str, t: float) -> tuple[float, float, float]:
    """(w_A, w_C, w_B) with theta(t) = w_A A + w_C C + w_B B (they sum to 1)."""
    if kind == "bezier":
        return bezier_weights(t)
    if kind == "chain":
        if t <= CHAIN_KNOT:
            s = t / CHAIN_KNOT
            return 1.0 - s, s, 0.0
        s = (t - CHAIN_KNOT) / (1.0 - CHAIN_KNOT)
        return 0.0, 1.0 - s, s
    raise UserError(f"curve kind {kind!r}: choose one of {', '.join(KINDS)}")


def curve_state(kind: str, t: float, a: State, c: State, b: State) -> dict[str, torch.Tensor]:
    """theta(t) for each key of `c` (the keys on the curve)."""
    wa, wc, wb = curve_weights(kind, t)
    return {k: wa * a[k] + wc * c[k] + wb * b[k] for k in c}


class _TaskCall(nn.Module):
    """``task.forward(model, inputs)`` as a module, so that `functional_call` replaces the model's tensors
    (``model.<key>``) however the task calls the model."""

    def __init__(self, model: nn.Module, task: Task) -> None:
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, inputs: Any) -> torch.Tensor:
        return self.task.forward(self.model, inputs)


def curve_loss(model: nn.Module, task: Task, kind: str, t: float, a: State, c: State, b: State,
               fixed: State, inputs: Any, labels: torch.Tensor | None) -> torch.Tensor:
    """The task's mean loss of a batch at theta(t), differentiable in `c` (`fixed`: the model's tensors that
    are not on the curve, e.g. buffers; the model's own tensors are not used or changed)."""
    state = {f"model.{k}": v for k, v in {**fixed, **curve_state(kind, t, a, c, b)}.items()}
    out = functional_call(_TaskCall(model, task), state, (inputs,))
    return task.loss_sum(out, inputs, labels) / task.count(inputs, labels)


def state_sha256(state: State) -> str:
    """sha256 of a state_dict's content: keys (sorted), dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k].detach().cpu().contiguous()
        h.update(f"{k}:{v.dtype}{tuple(v.shape)}".encode())
        h.update((v.float() if v.dtype == torch.bfloat16 else v).numpy().tobytes())
    return h.hexdigest()


def _check_endpoints(model: nn.Module, a: State, b: State) -> None:
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for name, s in (("A", a), ("B", b)):
        got = {k: tuple(v.shape) for k, v in s.items()}
        if got != want:
            diff = sorted(set(want).symmetric_difference(got)) or [k for k in want if want[k] != got[k]]
            raise UserError(f"endpoint {name} does not fit the model ({', '.join(diff[:3])} differ); give "
                            f"checkpoints of this model")


def _load(path: str) -> dict[str, Any]:
    return read_checkpoint(path, "bend checkpoint", "delete it to train the bend again")


def load_bend(path: str, endpoint_hashes: tuple[str, str] | None = None, option: str = "--bend"
              ) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, recipe) of a complete bend file. Raises UserError if it is not complete or was trained
    between other endpoints than `endpoint_hashes` (A's, B's)."""
    if not os.path.isfile(path):
        raise UserError(f"{option} {path}: no such file; train the bend first (landscape-mpi path --kind bezier)")
    ck = _load(path)
    if "bend" not in ck:
        raise UserError(f"{option} {path}: not a bend checkpoint (no recipe in it); give a file that train_bend "
                        f"wrote")
    recipe = json.loads(ck["bend"])
    if not ck.get("complete"):
        raise UserError(f"{option} {path}: a bend trained {ck['step']} of {recipe['steps']} steps; rerun to finish "
                        f"it")
    if endpoint_hashes is not None and tuple(recipe["endpoints"]) != tuple(endpoint_hashes):
        raise UserError(f"{option} {path}: a bend between other endpoints (sha256 {recipe['endpoints'][0][:12]}..., "
                        f"{recipe['endpoints'][1][:12]}...); train one between these checkpoints")
    return ck["state_dict"], recipe


def train_bend(model: nn.Module, state_a: State, state_b: State, data: EvalSet, task: Task, kind: str = "bezier",
               *, steps: int | None = None, epochs: int | None = None, lr: float = 0.01, momentum: float = 0.9,
               weight_decay: float = 0.0, batch_size: int = 128, seed: int = 0, out: str,
               endpoint_hashes: tuple[str, str] | None = None, recipe: Mapping[str, Any] | None = None,
               save_every: int = 0, faults: Faults = NO_FAULTS) -> str:
    """Train the bend C of a `kind` curve from `state_a` to `state_b` on `data` (a training split, on the
    device where the model is evaluated) with SGD (`lr`, `momentum`, `weight_decay` on C) for `steps` optimizer
    steps, or `epochs` passes over `data` in batches of `batch_size`; `seed` draws the batches and the t of each
    step. Writes the bend to `out` (also every `save_every` steps, and on a stop signal) and returns `out`.

    `endpoint_hashes`: what identifies A and B (default: `state_sha256` of each); `recipe`: more to record (the
    dataset, the model's name). An `out` that holds this bend complete is returned at once; one that holds it
    unfinished is resumed; one of another recipe or endpoints is a UserError.
    """
    if kind not in KINDS:
        raise UserError(f"curve kind {kind!r}: choose one of {', '.join(KINDS)}")
    if (steps is None) == (epochs is None):
        raise UserError("train_bend: give steps or epochs, one of them")
    if data.streamed:
        raise UserError("training a bend draws random batches from a split held in memory; drop --stream-data")
    n = len(data)
    per_epoch = -(-n // batch_size)
    steps = steps if steps is not None else epochs * per_epoch
    _check_endpoints(model, state_a, state_b)
    hashes = tuple(endpoint_hashes) if endpoint_hashes else (state_sha256(state_a), state_sha256(state_b))
    settings = {"kind": kind, "knot": CHAIN_KNOT if kind == "chain" else None, "steps": steps, "lr": lr,
                "momentum": momentum, "weight_decay": weight_decay, "batch_size": batch_size, "seed": seed,
                "samples": n, "task": getattr(task, "name", type(task).__name__), "endpoints": list(hashes),
                "t_sampling": "uniform, one t per step", **dict(recipe or {})}
    bend_json = json.dumps(settings, sort_keys=True)

    device = first_tensor(data.inputs).device
    model = model.to(device).train()
    on_curve = [k for k, p in model.named_parameters() if p.is_floating_point()]
    a = {k: state_a[k].to(device) for k in on_curve}
    b = {k: state_b[k].to(device) for k in on_curve}
    c = {k: ((a[k] + b[k]) / 2).detach().clone().requires_grad_(True) for k in on_curve}
    # A key that names a parameter under another name (tied weights) follows that parameter.
    names = {id(p): k for k, p in model.named_parameters()}
    tied = {k: names[id(v)] for k, v in model.state_dict(keep_vars=True).items() if id(v) in names and k not in c}
    fixed = {k: ((state_a[k] + state_b[k]) / 2 if state_a[k].is_floating_point() else state_a[k].clone())
             for k in model.state_dict() if k not in c and k not in tied}
    opt = torch.optim.SGD(list(c.values()), lr=lr, momentum=momentum, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    step, order = 0, torch.empty(0, dtype=torch.int64)

    if os.path.isfile(out):
        ck = _load(out)
        if ck.get("bend") != bend_json:
            raise UserError(f"{out} holds a bend of other settings or endpoints; give another output path, or "
                            f"remove it to train this one")
        if ck.get("complete"):
            return out
        r = ck["resume"]
        with torch.no_grad():
            for k in c:
                c[k].copy_(r["bend"][k].to(device))
        opt.load_state_dict(r["optimizer"])
        generator.set_state(r["generator"])
        step, order = ck["step"], r["order"]

    def save(complete: bool, last_loss: float) -> None:
        """Write the bend atomically (temporary file, then rename)."""
        state = {k: v.detach().cpu().clone() for k, v in fixed.items()}
        state.update({k: v.detach().cpu().clone() for k, v in c.items()})
        state.update({k: state[p] for k, p in tied.items()})
        state = {k: state[k] for k in model.state_dict()}  # the model's key order
        ck = {"state_dict": state, "bend": bend_json, "step": step, "complete": complete, "last_loss": last_loss}
        if not complete:
            ck["resume"] = {"bend": {k: v.detach().cpu().clone() for k, v in c.items()},
                            "optimizer": opt.state_dict(), "generator": generator.get_state(), "order": order}
        tmp = out + ".tmp"
        torch.save(ck, tmp)
        os.replace(tmp, out)

    scratch = {k: v.to(device).clone() for k, v in fixed.items()}  # BatchNorm writes its statistics here
    last = float("nan")
    while step < steps:
        if STOP.requested:
            save(False, last)
            raise BendStopped(f"bend training stopped by {STOP.signal_name} at step {step} of {steps}: rerun the "
                              f"same command to resume")
        position = step % per_epoch
        if position == 0 or order.numel() == 0:
            order = torch.randperm(n, generator=generator)
        t = float(torch.rand((), generator=generator))
        idx = order[position * batch_size:(position + 1) * batch_size].to(device)
        inputs, labels = data.select(idx)
        opt.zero_grad(set_to_none=True)
        loss = curve_loss(model, task, kind, t, a, c, b, scratch, inputs, labels)
        loss.backward()
        opt.step()
        step, last = step + 1, float(loss.detach())
        if faults.enabled:
            faults.reached(f"bend_step:{step}")
        if save_every and step % save_every == 0 and step < steps:
            save(False, last)
    save(True, last)
    return out
