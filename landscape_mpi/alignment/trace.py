"""Permutation groups of a model, derived from one traced forward pass (docs/alignment.md).

`find_groups(model, inputs)` runs the model once on an example batch under a `TorchFunctionMode` that sees
every torch function and tensor method the forward calls, with the real tensors, and ties the axes of their
operands together (`axes.py`): a linear layer ties its input features to its weight's columns and its outputs
to its rows and bias; an addition ties its operands (so a residual stream is one class across all blocks);
LayerNorm, RMSNorm's weight multiply and BatchNorm (running statistics included) tie their vectors to the
normalised axis; views cut an axis into heads and head units; a matmul ties the contracted axes (queries with
keys) and the batch axes (the heads). Model inputs and outputs are fixed, and so is every axis an operation
uses in a way a permutation would change (kernel windows, slices such as rotary embeddings' half-rotations,
concatenations, anything computed from an index). Nothing is written per model.

An operation not listed here is harmless when every axis it reads is fixed (mask and position arithmetic);
one that reads a permutable axis makes `find_groups` raise a `UserError` naming the module that called it,
unless ``unsupported="leave"``, which fixes what it reads (those units stay unpermuted).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from landscape_mpi.alignment.axes import Dim, fix, groups_of, new_dim, reshape, unify
from landscape_mpi.config.errors import UserError
from landscape_mpi.tasks.base import call_model, model_output

UNSUPPORTED = ("error", "leave")

#: one tensor's axes: per axis, its factors (group name or None for a fixed factor, size), most significant first
Axes = tuple[tuple[tuple[str | None, int], ...], ...]


@dataclass(frozen=True)
class GroupSpec:
    """The permutation groups of a model: `sizes` (group name -> number of units), `axes` (state_dict key ->
    `Axes`, every key, tied ones included), `shapes` (key -> shape), `weights` (the parameter keys, one per
    tensor, that weight matching compares)."""

    sizes: dict[str, int]
    axes: dict[str, Axes]
    shapes: dict[str, tuple[int, ...]]
    weights: tuple[str, ...]

    def occurrences(self, group: str) -> list[tuple[str, int, int]]:
        """(key, axis, factor index) of every place the group appears in the compared weights."""
        return [(k, d, f) for k in self.weights for d, factors in enumerate(self.axes[k])
                for f, (g, _) in enumerate(factors) if g == group]


def _name(func: Any) -> str:
    n = getattr(func, "__name__", "")
    if n == "__get__":  # a property such as Tensor.T
        n = getattr(getattr(func, "__self__", None), "__name__", "") + ".__get__"
    return n


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[i] if len(args) > i else default


def _dims_arg(value: Any, ndim: int) -> list[int] | None:
    if value is None:
        return None
    values = [value] if isinstance(value, int) else list(value)
    return [v % ndim for v in values]


# Names of operations, grouped by the rule that handles them (Tensor methods and torch functions share names).
UNARY = {"relu", "gelu", "silu", "sigmoid", "tanh", "exp", "log", "neg", "abs", "sqrt", "rsqrt", "square", "erf",
         "dropout", "contiguous", "clone", "detach", "to", "float", "half", "double", "bfloat16", "cpu", "cuda",
         "softmax", "log_softmax", "hardtanh", "leaky_relu", "elu", "softplus", "mish", "cos", "sin",
         "reciprocal", "clamp", "clamp_min", "clamp_max", "__pos__", "nan_to_num", "type", "data.__get__",
         "relu6", "hardswish", "hardsigmoid", "selu", "celu", "gelu_", "dropout1d", "dropout2d", "dropout3d",
         "alpha_dropout", "feature_alpha_dropout", "identity", "requires_grad_", "detach_", "sign", "type_as"}
ELEMENTWISE = {"add", "sub", "mul", "div", "true_divide", "pow", "maximum", "minimum", "where", "masked_fill",
               "eq", "ne", "lt", "gt", "le", "ge", "logical_and", "logical_or", "logical_not", "lerp",
               "addcmul", "addcdiv", "floor_divide", "fmod", "remainder", "__add__", "__radd__",
               "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__", "__pow__",
               "__rpow__", "__and__", "__or__", "__invert__", "__eq__", "__ne__", "__lt__", "__gt__", "__le__",
               "__ge__", "rsub", "bitwise_and", "bitwise_or", "bitwise_not", "isfinite", "isnan"}
REDUCE = {"sum", "mean", "amax", "amin", "var", "std", "logsumexp", "prod", "nansum", "nanmean"}
RESHAPE = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as", "ravel"}
CONSTANT = {"zeros_like", "ones_like", "full_like", "empty_like", "rand_like", "randn_like", "new_zeros",
            "new_ones", "new_full", "new_empty", "new_tensor"}
QUERY = {"size", "dim", "numel", "shape.__get__", "dtype.__get__", "device.__get__", "is_floating_point",
         "stride", "is_contiguous", "element_size", "__len__", "get_device", "requires_grad.__get__",
         "ndim.__get__", "is_cuda.__get__", "layout.__get__", "data_ptr", "nelement", "is_complex",
         "storage_offset", "__format__", "is_meta.__get__", "grad_fn.__get__", "is_nested.__get__",
         "is_sparse.__get__", "is_quantized.__get__", "is_mps.__get__", "is_xpu.__get__", "names.__get__"}


class _Tracer(TorchFunctionMode):
    """Records the axes of every tensor a forward pass makes, tying them as the operations demand."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.axes: dict[int, list[Dim]] = {}
        self.keep: list[torch.Tensor] = []  # keeps traced tensors alive, so that their ids stay unique
        self.stack: list[tuple[str, str]] = [("", type(model).__name__)]
        self.unknown: list[tuple[str, str, str, list[Dim]]] = []
        self.hooks = []
        for name, module in model.named_modules():
            self.hooks.append(module.register_forward_pre_hook(
                lambda m, a, name=name: self.stack.append((name, type(m).__name__))))
            self.hooks.append(module.register_forward_hook(lambda m, a, o: self.stack.pop() and None))

    def close(self) -> None:
        for h in self.hooks:
            h.remove()

    # -- axes of tensors ------------------------------------------------------------------------------------
    def set(self, t: torch.Tensor, dims: list[Dim]) -> None:
        if len(dims) != t.dim():
            raise ValueError(f"axes of {tuple(t.shape)}: {len(dims)}")
        self.axes[id(t)] = dims
        self.keep.append(t)

    def get(self, t: torch.Tensor) -> list[Dim]:
        """The axes of `t`; a tensor the trace never saw (a non-persistent buffer, a constant) is fixed."""
        if id(t) not in self.axes:
            self.set(t, [new_dim(s, fixed=True) for s in t.shape])
        return self.axes[id(t)]

    def fresh(self, t: torch.Tensor) -> None:
        self.set(t, [new_dim(s, fixed=True) for s in t.shape])

    # -- the mode ---------------------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = _name(func)
        base = name[:-1] if name.endswith("_") and not name.endswith("__") else name  # in-place: add_ -> add
        base = {"__iadd__": "add", "__isub__": "sub", "__imul__": "mul", "__itruediv__": "div"}.get(base, base)
        try:
            handled = self.handle(func, base, args, kwargs, out)
        except (IndexError, TypeError, ValueError):  # an argument form the rule does not parse
            handled = False
        if not handled:
            self.not_understood(name, args, kwargs, out)
        return out

    def tensors(self, value: Any) -> list[torch.Tensor]:
        if isinstance(value, torch.Tensor):
            return [value]
        if isinstance(value, (list, tuple)):
            return [t for v in value for t in self.tensors(v)]
        if isinstance(value, Mapping):
            return [t for v in value.values() for t in self.tensors(v)]
        return []

    def not_understood(self, name: str, args: tuple, kwargs: dict, out: Any) -> None:
        """An operation without a rule: its outputs are fixed; what it read is checked at the end."""
        read = [d for t in self.tensors((args, kwargs)) for d in self.get(t)]
        module, kind = self.stack[-1]
        self.unknown.append((module, kind, name, read))
        for t in self.tensors(out):
            self.fresh(t)

    def handle(self, func, name: str, args: tuple, kwargs: dict, out: Any) -> bool:  # noqa: C901 (one rule per op)
        if name in QUERY:
            return True
        if name in CONSTANT:
            for t in self.tensors(out):
                self.fresh(t)
            return True
        if not isinstance(out, torch.Tensor) and name not in ("split", "chunk", "max", "min",
                                                              "multi_head_attention_forward"):
            return False
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if name in UNARY and x is not None:
            self.set(out, self.get(x) if tuple(out.shape) == tuple(x.shape) else
                     [new_dim(s, True) for s in out.shape])
            if tuple(out.shape) != tuple(x.shape):
                fix([a for d in self.get(x) for a in d])
            return True
        if name in ELEMENTWISE or (name in ("max", "min") and len(args) > 1 and isinstance(args[1], torch.Tensor)):
            return self.elementwise(self.tensors((args, kwargs)), out)
        if name in REDUCE and x is not None:
            return self.reduce(x, out, _arg(args, kwargs, 1, "dim"))
        if name in RESHAPE and x is not None:
            dims = reshape(self.get(x), tuple(out.shape)) if out.numel() == x.numel() else None
            if dims is None:
                fix([a for d in self.get(x) for a in d])
                self.fresh(out)
            else:
                self.set(out, dims)
            return True
        if name in ("transpose", "swapaxes", "swapdims", "t", "T.__get__", "mT.__get__", "permute", "movedim",
                    "moveaxis") and x is not None:
            return self.transpose(name, x, args, kwargs, out)
        if name in ("expand", "expand_as", "broadcast_to") and x is not None:
            dims = self.get(x)
            lead = out.dim() - x.dim()
            self.set(out, [new_dim(s) if i < lead or x.shape[i - lead] != s else dims[i - lead]
                           for i, s in enumerate(out.shape)])
            return True
        if name == "linear":
            w, b = _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
            xd, wd = self.get(x), self.get(w)
            unify(xd[-1], wd[1])
            if b is not None:
                unify(self.get(b)[0], wd[0])
            self.set(out, xd[:-1] + [wd[0]])
            return True
        if name in ("matmul", "mm", "bmm", "__matmul__", "__rmatmul__"):
            a, b = (args[1], args[0]) if name == "__rmatmul__" else (args[0], args[1])
            return self.matmul(a, b, out)
        if name in ("addmm", "baddbmm", "addbmm"):
            inp, a, b = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "mat1"), _arg(args, kwargs, 2, "mat2")
            if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or name == "addbmm":
                return False
            self.matmul(a, b, out)
            return self.elementwise([inp, out], out)
        if name in ("conv1d", "conv2d", "conv3d"):
            return self.conv(args, kwargs, out)
        if name == "batch_norm":
            if func is torch.nn.functional.batch_norm:
                vectors = [_arg(args, kwargs, i, n) for i, n in
                           ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias"))]
            else:  # torch.batch_norm(input, weight, bias, running_mean, running_var, ...)
                vectors = list(args[1:5])
            xd = self.get(x)
            for v in vectors:
                if isinstance(v, torch.Tensor):
                    unify(self.get(v)[0], xd[1])
            self.set(out, xd)
            return True
        if name in ("layer_norm", "rms_norm"):
            shape = _arg(args, kwargs, 1, "normalized_shape")
            k = len(shape) if not isinstance(shape, int) else 1
            xd = self.get(x)
            vectors = [_arg(args, kwargs, 2, "weight")]
            if name == "layer_norm":
                vectors.append(_arg(args, kwargs, 3, "bias"))
            for v in vectors:
                if isinstance(v, torch.Tensor):
                    for vd, d in zip(self.get(v), xd[-k:]):
                        unify(vd, d)
            self.set(out, xd)
            return True
        if name == "embedding":
            ids, w = (args[0], args[1]) if func is torch.nn.functional.embedding else (args[1], args[0])
            wd = self.get(w)
            fix(wd[0])  # rows are looked up by token id
            self.set(out, self.get(ids) + [wd[1]])
            return True
        if "pool" in name and x is not None:
            k = next((int(c) for c in name if c.isdigit()), None)
            if k is None:
                return False
            xd = self.get(x)
            fix([a for d in xd[-k:] for a in d])
            self.set(out, xd[:-k] + [new_dim(s, True) for s in out.shape[-k:]])
            return True
        if name == "__getitem__":
            return self.getitem(x, args[1], out)
        if name in ("cat", "concat", "concatenate", "stack"):
            return self.cat(name, args, kwargs, out)
        if name in ("split", "chunk"):
            return self.split(name, x, args, kwargs, out)
        if name == "scaled_dot_product_attention":
            return self.attention(args, kwargs, out)
        if name == "multi_head_attention_forward":
            return self.packed_attention(args, kwargs, out)
        if name in ("max", "min") and x is not None:  # values and indices: the reduced axis fixed
            dim = _arg(args, kwargs, 1, "dim")
            if dim is not None:
                fix(self.get(x)[dim % x.dim()])
            return all(self.reduce(x, t, dim) for t in self.tensors(out))
        return False

    # -- rules ------------------------------------------------------------------------------------------------
    def elementwise(self, operands: list[torch.Tensor], out: torch.Tensor) -> bool:
        """Broadcasting: axes of equal size > 1, aligned from the right, are one class."""
        dims: list[Dim] = []
        for i in range(1, out.dim() + 1):
            axis = None
            for t in operands:
                if t.dim() >= i and t.shape[-i] == out.shape[-i] and out.shape[-i] > 1:
                    d = self.get(t)[-i]
                    if axis is None:
                        axis = d
                    else:
                        unify(axis, d)
            dims.insert(0, axis if axis is not None else new_dim(out.shape[-i], True))
        self.set(out, dims)
        return True

    def reduce(self, x: torch.Tensor, out: torch.Tensor, dim: Any) -> bool:
        """A sum, mean, max ... over axes: unchanged by permuting them; the other axes pass through."""
        xd = self.get(x)
        reduced = set(_dims_arg(dim, x.dim()) or range(x.dim()))
        kept = [d for i, d in enumerate(xd) if i not in reduced]
        if out.dim() == x.dim():  # keepdim
            kept = [([] if i in reduced else d) for i, d in enumerate(xd)]
        if len(kept) != out.dim():
            return False
        self.set(out, kept)
        return True

    def transpose(self, name: str, x, args, kwargs, out) -> bool:
        order = list(range(x.dim()))
        if name in ("transpose", "swapaxes", "swapdims"):
            i, j = _arg(args, kwargs, 1, "dim0") % x.dim(), _arg(args, kwargs, 2, "dim1") % x.dim()
            order[i], order[j] = order[j], order[i]
        elif name in ("t", "T.__get__"):
            order = order[::-1]
        elif name == "mT.__get__":
            order[-1], order[-2] = order[-2], order[-1]
        elif name == "permute":
            dims = args[1:] if len(args) > 2 or isinstance(_arg(args, kwargs, 1, "dims"), int) else \
                _arg(args, kwargs, 1, "dims")
            order = [d % x.dim() for d in dims]
        else:  # movedim / moveaxis
            src, dst = _dims_arg(args[1], x.dim()), _dims_arg(args[2], x.dim())
            rest = [d for d in order if d not in src]
            order = [None] * x.dim()
            for s, d in zip(src, dst):
                order[d] = s
            order = [o if o is not None else rest.pop(0) for o in order]
        xd = self.get(x)
        self.set(out, [xd[o] for o in order])
        return True

    def matmul(self, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> bool:
        ad, bd = list(self.get(a)), list(self.get(b))
        if a.dim() < 2 or b.dim() < 2:
            return False
        unify(ad[-1], bd[-2])  # the contracted axis
        batch = []
        for i in range(3, out.dim() + 1):  # broadcast batch axes
            axis = None
            for t, td in ((a, ad), (b, bd)):
                if t.dim() >= i and t.shape[-i] == out.shape[-i] and out.shape[-i] > 1:
                    if axis is None:
                        axis = td[-i]
                    else:
                        unify(axis, td[-i])
            batch.insert(0, axis if axis is not None else new_dim(out.shape[-i], True))
        self.set(out, batch + [ad[-2], bd[-1]])
        return True

    def conv(self, args, kwargs, out) -> bool:
        x, w, b = args[0], _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
        groups = _arg(args, kwargs, 6, "groups", 1)
        xd, wd = self.get(x), self.get(w)
        k = w.dim() - 2
        fix([a for d in wd[2:] + xd[2:] for a in d])  # kernel windows and positions
        # grouped (and depthwise) convolutions: channels are (group, channel within the group) on both sides;
        # whole groups move together, and the channels within a group by one permutation shared by all groups
        x_cut = reshape([xd[1]], (groups, x.shape[1] // groups)) if x.shape[1] % groups == 0 else None
        w_cut = reshape([wd[0]], (groups, w.shape[0] // groups)) if w.shape[0] % groups == 0 else None
        if x_cut is not None and w_cut is not None:
            unify(x_cut[0], w_cut[0])
            unify(x_cut[1], wd[1])
            out_channels = wd[0]
        else:
            fix([a for d in xd[1:2] + wd[:2] for a in d])
            out_channels = new_dim(out.shape[1], True)
        if isinstance(b, torch.Tensor):
            unify(self.get(b)[0], out_channels)
        self.set(out, xd[:1] + [out_channels] + [new_dim(s, True) for s in out.shape[-k:]])
        return True

    def getitem(self, x: torch.Tensor, index: Any, out: torch.Tensor) -> bool:
        """Whole slices and None pass axes through; an integer, a partial slice or a tensor index fixes its axis."""
        index = index if isinstance(index, tuple) else (index,)
        if any(isinstance(i, torch.Tensor) or isinstance(i, (list, bool)) for i in index):
            return False
        xd = self.get(x)
        n_ell = sum(i is Ellipsis for i in index)
        used = sum(1 for i in index if i is not None and i is not Ellipsis)
        expanded: list[Any] = []
        for i in index:
            expanded.extend([slice(None)] * (x.dim() - used) if i is Ellipsis else [i])
        if not n_ell:
            expanded += [slice(None)] * (x.dim() - used)
        dims, axis = [], 0
        for i in expanded:
            if i is None:
                dims.append([])
                continue
            d, size = xd[axis], x.shape[axis]
            axis += 1
            if isinstance(i, int):
                fix(d)
            elif isinstance(i, slice) and range(*i.indices(size)) == range(size):
                dims.append(d)
            else:
                fix(d)
                dims.append(None)
        if len(dims) != out.dim():
            return False
        self.set(out, [d if d is not None else new_dim(s, True) for d, s in zip(dims, out.shape)])
        return True

    def cat(self, name: str, args, kwargs, out) -> bool:
        parts = [t for t in _arg(args, kwargs, 0, "tensors") if t.dim() > 1 or t.numel()]  # torch skips empty 1-D
        dim = _arg(args, kwargs, 1, "dim", 0) % out.dim()
        for t in parts:
            td = self.get(t)
            if name == "cat" or name in ("concat", "concatenate"):
                fix(td[dim])
        ref = parts[0]
        dims = []
        for i, s in enumerate(out.shape):
            if i == dim:
                dims.append(new_dim(s, True))
                continue
            j = i if name != "stack" or i < dim else i - 1
            axis = self.get(ref)[j]
            for t in parts[1:]:
                unify(axis, self.get(t)[j])
            dims.append(axis)
        self.set(out, dims)
        return True

    def split(self, name: str, x, args, kwargs, out) -> bool:
        """Equal chunks of an axis: the axis becomes (chunk index, unit), the chunk index fixed, and every chunk
        carries the same unit atoms (so the q, k and v of a fused projection permute alike)."""
        dim = _arg(args, kwargs, 2 if name == "split" else 2, "dim", 0) % x.dim()
        parts = list(out)
        xd = self.get(x)
        sizes = {p.shape[dim] for p in parts}
        if len(sizes) == 1 and len(parts) > 1:
            cut = reshape([xd[dim]], (len(parts), parts[0].shape[dim]))
        else:
            cut = None
        if cut is None:
            fix(xd[dim])
            for p in parts:
                self.set(p, [d if i != dim else new_dim(p.shape[dim], True) for i, d in enumerate(xd)])
            return True
        fix(cut[0])
        for p in parts:
            self.set(p, [d if i != dim else cut[1] for i, d in enumerate(xd)])
        return True

    def attention(self, args, kwargs, out) -> bool:
        q, k, v = args[0], _arg(args, kwargs, 1, "key"), _arg(args, kwargs, 2, "value")
        mask = _arg(args, kwargs, 3, "attn_mask")
        qd, kd, vd = self.get(q), self.get(k), self.get(v)
        unify(qd[-1], kd[-1])
        unify(kd[-2], vd[-2])
        for i in range(3, q.dim() + 1):
            unify(kd[-i], vd[-i])
            if q.shape[-i] == k.shape[-i]:
                unify(qd[-i], kd[-i])
            elif i == 3 and q.shape[-3] % k.shape[-3] == 0:  # grouped-query attention: q heads = kv heads x rep
                unify(qd[-3], kd[-3] + new_dim(q.shape[-3] // k.shape[-3]))
            else:
                return False
        self.set(out, qd[:-1] + [vd[-1]])
        if isinstance(mask, torch.Tensor):
            scores = torch.empty(q.shape[:-1] + (k.shape[-2],), device="meta")
            self.set(scores, qd[:-1] + [kd[-2]])
            self.elementwise([scores, mask], scores)
        return True


    def packed_attention(self, args, kwargs, out) -> bool:
        """`nn.MultiheadAttention` (F.multi_head_attention_forward) with its packed in_proj_weight: the rows are
        (q/k/v, heads, units), q, k and v alike (as GPT-2's fused projection); the output projection reads
        (heads, units). Separate projections, bias_k/bias_v and zero attention are not understood."""
        names = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias",
                 "bias_k", "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias")
        a = {n: _arg(args, kwargs, i, n) for i, n in enumerate(names)}
        if (kwargs.get("use_separate_proj_weight") or a["in_proj_weight"] is None or a["bias_k"] is not None
                or a["add_zero_attn"]):
            return False
        heads, w = a["num_heads"], a["in_proj_weight"]
        cut = reshape([self.get(w)[0]], (3, heads, w.shape[0] // (3 * heads)))
        if cut is None:
            return False
        fix(cut[0])
        for t in (a["query"], a["key"], a["value"]):
            unify(self.get(t)[-1], self.get(w)[1])
        if isinstance(a["in_proj_bias"], torch.Tensor):
            unify(self.get(a["in_proj_bias"])[0], self.get(w)[0])
        wo = self.get(a["out_proj_weight"])
        unify(wo[1], cut[1] + cut[2])
        if isinstance(a["out_proj_bias"], torch.Tensor):
            unify(self.get(a["out_proj_bias"])[0], wo[0])
        self.set(out[0], self.get(a["query"])[:-1] + [wo[0]])
        if isinstance(out[1], torch.Tensor):
            self.fresh(out[1])
        return True


def find_groups(model: nn.Module, inputs: Any, unsupported: str = "error",
                option: str = "--unsupported") -> GroupSpec:
    """The permutation groups of `model`, from one forward pass on the example batch `inputs` (a tensor, or a
    dict of tensors passed as keyword arguments), in eval mode and without gradients.

    A group is named after the first state_dict key and axis that carry it (``fc1.weight:0``). Raises
    `UserError` naming the module of the first operation the aligner does not understand that reads a
    permutable axis, unless `unsupported` is ``"leave"`` (those axes are then left unpermuted); `option` is the
    option the message names."""
    if unsupported not in UNSUPPORTED:
        raise UserError(f"{option} {unsupported}: choose one of {', '.join(UNSUPPORTED)}")
    state = model.state_dict(keep_vars=True)
    tracer = _Tracer(model)
    for t in state.values():
        if id(t) not in tracer.axes:
            tracer.set(t, [new_dim(s) for s in t.shape])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            batch = inputs if isinstance(inputs, Mapping) else [inputs]
            for t in tracer.tensors(batch):
                tracer.fresh(t)
            with tracer:
                out = call_model(model, inputs)
            result = model_output(out)
            for t in tracer.tensors(result):
                fix([a for d in tracer.get(t) for a in d])
    finally:
        tracer.close()
        model.train(was_training)
    for module, kind, op, read in tracer.unknown:
        if any(not r.fixed for r in groups_of(read) for r in r):
            if unsupported == "error":
                where = f"module {module} ({kind})" if module else f"the model ({kind})"
                raise UserError(f"alignment: {where} calls {op}, which the aligner does not understand; give "
                                f"{option} leave to leave the units it touches unpermuted")
            fix([a for d in read for a in d])
    return _spec(model, state, tracer)


def _spec(model: nn.Module, state: dict[str, torch.Tensor], tracer: _Tracer) -> GroupSpec:
    names: dict[int, str] = {}
    axes: dict[str, Axes] = {}
    for key, t in state.items():
        dims = []
        for d, leaves in enumerate(groups_of(tracer.get(t))):
            factors = []
            for r in leaves:
                group = None
                if not r.fixed and r.size > 1:
                    group = names.setdefault(id(r), f"{key}:{d}" if len(leaves) == 1 else f"{key}:{d}.{len(factors)}")
                factors.append((group, r.size))
            dims.append(tuple(factors) if factors else ((None, 1),))
        axes[key] = tuple(dims)
    sizes = {}
    for dims in axes.values():
        for factors in dims:
            for g, n in factors:
                if g is not None:
                    sizes.setdefault(g, n)
    weights = tuple(k for k, p in model.named_parameters() if p.is_floating_point())
    return GroupSpec(sizes, axes, {k: tuple(t.shape) for k, t in state.items()}, weights)
