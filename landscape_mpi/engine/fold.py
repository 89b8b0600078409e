"""BatchNorm folded into the preceding convolution / linear layer, for evaluation-mode forwards.

In eval mode ``bn(conv(x)) = s * (W x + b - mean) + beta`` per output channel with
``s = gamma / sqrt(running_var + eps)``, which is the layer ``W' = s W``, ``b' = s (b - mean) + beta``:
one pass over the activations instead of two. The model is traced with torch.fx; a BatchNorm is folded only
when the pattern is certain (its input is a Conv1d/2d/3d or a 2D-output Linear called once, used by nothing
else, whose weights nothing else shares); every other BatchNorm stays as it is, so a model never gets a
wrong value, only a slower one. A model that torch.fx cannot trace raises `FoldError` (the caller falls
back to the eager engine).

In weight space with zero directions on the BatchNorm tensors (the default: ``--ignore biasbn``), ``s`` and
``beta - s*mean`` are the same at every grid point, so the fold is linear in the coordinates:
``W'(c) = s W* + sum_a c_a (s d_a)`` -- folded once at set-up into theta* and the directions, no per-point
cost. When a direction moves a BatchNorm tensor (``states`` space, or ``--ignore none``), that pair is
folded again at every point from the point's tensors.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.fx
from torch import nn

FOLDABLE_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
BN_TENSORS = ("weight", "bias", "running_mean", "running_var")


class FoldError(Exception):
    """The model cannot be traced or analysed; the message says why (for the log)."""


@dataclass
class FoldPair:
    """A layer and the BatchNorm folded into it (module names in the model)."""

    layer: str
    bn: str
    eps: float
    affine: bool


@dataclass
class FoldPlan:
    """The traced model with the folded BatchNorms removed, what was folded, and notes on what was not."""

    module: torch.fx.GraphModule
    pairs: list[FoldPair]
    notes: list[str]


class TensorShape(NamedTuple):
    shape: tuple[int, ...]
    dtype: torch.dtype


class _ShapeRecorder(torch.fx.Interpreter):
    """Runs the graph once and records each tensor output's shape and dtype in ``node.meta["tensor_meta"]``.

    What torch.fx's ShapeProp records, without its import of torch's symbolic-shape machinery (sympy and the
    meta registrations: about 1 s of every run's start-up)."""

    def run_node(self, n: torch.fx.Node):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            n.meta["tensor_meta"] = TensorShape(tuple(out.shape), out.dtype)
        return out


def plan_fold(model: nn.Module, example: torch.Tensor) -> FoldPlan:
    """Trace a copy of `model` (eval mode) and remove every BatchNorm that can be folded.

    `example` is a small input batch (2+ samples) used to propagate shapes (a Linear followed by a
    BatchNorm1d folds only when its output is (batch, features)). The folded layers keep their weights
    unchanged here: `fold_tensors` computes the folded values. Raises FoldError if tracing fails.
    """
    model = copy.deepcopy(model).eval()
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as exc:  # torch.fx raises many types (TraceError, TypeError, NotImplementedError...)
        first = str(exc).splitlines()[0][:120]
        raise FoldError(f"torch.fx cannot trace the model ({type(exc).__name__}: {first})") from None
    gm.eval()
    try:
        with torch.no_grad():
            _ShapeRecorder(gm).run(example)
    except Exception as exc:
        raise FoldError(f"shape propagation failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None

    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    attrs: set[str] = set()
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
        elif node.op == "get_attr":
            attrs.add(node.target)
    # Tensors reachable under more than one name (tied weights) must not be rescaled for one user only.
    owners: dict[int, int] = {}
    for _, p in list(gm.named_parameters(remove_duplicate=False)) + list(gm.named_buffers(remove_duplicate=False)):
        owners[id(p)] = owners.get(id(p), 0) + 1

    pairs: list[FoldPair] = []
    notes: list[str] = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], nn.modules.batchnorm._BatchNorm):
            continue
        bn = modules[node.target]
        why = _why_not(node, bn, modules, calls, attrs, owners)
        if why:
            notes.append(f"{node.target} not folded: {why}")
            continue
        src = node.args[0]
        layer = modules[src.target]
        pairs.append(FoldPair(src.target, node.target, float(bn.eps), bool(bn.affine)))
        if layer.bias is None:  # the folded layer needs a bias: b' = beta - s * mean
            out = layer.weight.shape[0]
            layer.bias = nn.Parameter(torch.zeros(out, dtype=layer.weight.dtype, device=layer.weight.device))
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    for p in gm.parameters():
        p.requires_grad_(False)
    return FoldPlan(gm, pairs, notes)


def _why_not(node: torch.fx.Node, bn: nn.Module, modules: dict[str, nn.Module], calls: dict[str, int],
             attrs: set[str], owners: dict[int, int]) -> str:
    """Why this BatchNorm node cannot be folded ("" if it can)."""
    if type(bn) not in BATCHNORMS:
        return f"{type(bn).__name__} is not a plain BatchNorm1d/2d/3d"
    if not bn.track_running_stats or bn.running_mean is None:
        return "it uses batch statistics (track_running_stats=False)"
    if calls.get(node.target, 0) != 1 or len(node.args) != 1 or node.kwargs:
        return "it is called more than once or with extra arguments"
    src = node.args[0]
    if not isinstance(src, torch.fx.Node) or src.op != "call_module":
        what = src.target if isinstance(src, torch.fx.Node) else type(src).__name__
        return f"its input comes from {getattr(what, '__name__', what)}, not a conv/linear layer"
    layer = modules[src.target]
    if type(layer) not in FOLDABLE_LAYERS:
        return f"its input comes from {type(layer).__name__}, not a conv/linear layer"
    if calls.get(src.target, 0) != 1 or len(src.users) != 1:
        return f"{src.target} is called more than once or its output is used elsewhere"
    if any(a == src.target or a.startswith(src.target + ".") for a in attrs):
        return f"{src.target}'s tensors are read directly elsewhere"
    tensors = [layer.weight] + ([layer.bias] if layer.bias is not None else [])
    if any(owners.get(id(t), 0) != 1 for t in tensors):
        return f"{src.target} shares its weights with another layer"
    meta = src.meta.get("tensor_meta")
    if meta is None or len(meta.shape) < 2 or meta.shape[1] != layer.weight.shape[0]:
        return f"{src.target}'s output channels are not along dim 1"
    if isinstance(layer, nn.Linear) and len(meta.shape) != 2:
        return f"{src.target}'s output is not (batch, features)"
    return ""


def _scale_shift(gamma: torch.Tensor | None, beta: torch.Tensor | None, mean: torch.Tensor, var: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, shift) in float64 with ``bn(y) = s * y + shift``; leading (K,) dims broadcast through."""
    s = torch.rsqrt(var.double() + eps)
    if gamma is not None:
        s = s * gamma.double()
    shift = -mean.double() * s
    if beta is not None:
        shift = shift + beta.double()
    return s, shift


def fold_tensors(weight: torch.Tensor, bias: torch.Tensor | None, gamma: torch.Tensor | None,
                 beta: torch.Tensor | None, mean: torch.Tensor, var: torch.Tensor, eps: float,
                 lead: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Folded (weight, bias) of a layer followed by an eval-mode BatchNorm.

    ``W' = s W``, ``b' = s (b - mean) + beta``, computed in float64 and returned in the weight's dtype.
    `lead` leading dims (0, or 1 for K stacked points) are carried through on every tensor.
    """
    s, shift = _scale_shift(gamma, beta, mean, var, eps)
    w = weight.double() * s.reshape(*s.shape, *([1] * (weight.dim() - lead - 1)))
    b = shift if bias is None else bias.double() * s + shift
    return w.to(weight.dtype), b.to(weight.dtype)
