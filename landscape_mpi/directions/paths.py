"""Paths between models as points of the direction space (docs/method.md#paths-between-models).

Every path kind is theta(t) = theta_0 + sum_k c_k(t) d_k with d_k = theta_k - theta_0 (another model, or a part
of one, minus the first), so the surface job's engines evaluate it unchanged: a path job is a grid of
(curve, t) points whose coefficient vectors come from a table instead of the grid's coordinates.

- ``linear`` (models A, B): one curve, c = t: (1 - t) A + t B.
- ``chain`` (models M_0 .. M_{N-1}): one curve through every model, knots t_k = k / (N - 1), each segment linear.
- ``bezier`` (A, B and the bend C, model 2): (1-t)^2 A + 2t(1-t) C + t^2 B = A + t^2 (B - A) + 2t(1-t) (C - A)
  (Garipov et al. 2018).
- ``pairs`` (N models): one linear curve per pair i < j, (1 - t) M_i + t M_j = M_0 + (1 - t) d_i + t d_j: the
  barrier matrix, every pair in one job.
- ``layers`` (A, B): one curve per block (a module's tensors, a tensor, a repeated layer of the model, or the
  tensors of a permutation group: `blocks_of`), that block interpolated, the rest at A (Adilova et al.): d_g is
  B - A on the block's tensors, zero elsewhere.

`path_table` is the numpy half (the t grid and coefficients, from the kind and the counts only); `path_directions`
the torch half (the K directions from the models' state_dicts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from landscape_mpi.config.errors import UserError
from landscape_mpi.directions.base import Direction, check_target, target_tensor


@dataclass
class PathTable:
    """The points of a path job: a (curves x t) grid and the coefficient vector of each point."""

    t: np.ndarray
    """(n_t,) the path parameter of each column; 0 and 1 included (and every chain knot)."""
    curves: list[str]
    """A label per curve: "chain", "bezier", "0-1" (a pair: model indices), or a block's name."""
    endpoints: np.ndarray
    """(n_curves, 2) int: the models (indices into the path's checkpoints) at t = 0 and t = 1."""
    coefficients: np.ndarray
    """(n_curves, n_t, K): theta at point (c, j) = theta_0 + sum_k coefficients[c, j, k] d_k."""
    knots: np.ndarray | None = None
    """(chain) the t of each model along the chain."""

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.curves), len(self.t)


def bezier_weights(t):
    """(w_A, w_C, w_B): the weights of A, the bend C and B on the quadratic Bezier curve at `t` (a float or an
    array), theta(t) = w_A A + w_C C + w_B B. They sum to 1, so theta(t) = A + w_B (B - A) + w_C (C - A): w_B
    and w_C are a ``bezier`` path's coefficients. The one formula of the curve (training/bend.py trains its bend
    with it)."""
    return (1 - t) ** 2, 2 * t * (1 - t), t * t


def path_table(kind: str, n_models: int, points: int, blocks: Sequence[str] = ()) -> PathTable:
    """The t grid and coefficients of a path of `kind` through `n_models` models (for ``bezier``: A, B, then the
    bend), `points` values of t per curve (per segment for ``chain``), `blocks` the curves of ``layers``."""
    t = np.linspace(0.0, 1.0, points)
    if kind == "linear":
        return PathTable(t, ["0-1"], np.array([[0, 1]]), t[None, :, None].copy())
    if kind == "bezier":
        _, w_bend, w_b = bezier_weights(t)
        coefficients = np.stack([w_b, w_bend], axis=1)[None]  # d_1 = B - A, d_2 = C - A
        return PathTable(t, ["bezier"], np.array([[0, 1]]), coefficients)
    if kind == "chain":
        segments = n_models - 1
        knots = np.linspace(0.0, 1.0, n_models)
        local = np.linspace(0.0, 1.0, points)
        t = np.concatenate([[0.0]] + [knots[s] + (knots[s + 1] - knots[s]) * local[1:] for s in range(segments)])
        t[-1] = 1.0
        coefficients = np.zeros((1, len(t), segments))
        for j in range(len(t)):  # theta = (1 - u) M_s + u M_{s+1}, model m > 0 is direction m - 1
            s = min(j // (points - 1), segments - 1)
            u = local[j - s * (points - 1)]
            if s > 0:
                coefficients[0, j, s - 1] += 1 - u
            coefficients[0, j, s] += u
        return PathTable(t, ["chain"], np.array([[0, n_models - 1]]), coefficients, knots)
    if kind == "pairs":
        pairs = [(i, j) for i in range(n_models) for j in range(i + 1, n_models)]
        coefficients = np.zeros((len(pairs), len(t), n_models - 1))
        for c, (i, j) in enumerate(pairs):
            if i > 0:
                coefficients[c, :, i - 1] += 1 - t
            coefficients[c, :, j - 1] += t
        return PathTable(t, [f"{i}-{j}" for i, j in pairs], np.array(pairs), coefficients)
    if kind == "layers":
        coefficients = np.zeros((len(blocks), len(t), len(blocks)))
        for g in range(len(blocks)):
            coefficients[g, :, g] = t
        return PathTable(t, list(blocks), np.tile([0, 1], (len(blocks), 1)), coefficients)
    raise ValueError(kind)


#: the blocks of ``--blocks transformer-block`` outside the repeated layers: before the first, after the last
EMBEDDINGS, HEAD = "embeddings", "head"
#: the block of ``--blocks permutation-group`` that holds the tensors no permutation group touches
UNPERMUTED = "(unpermuted)"


def blocks_of(model: nn.Module, keys: Sequence[str], by: str, groups=None) -> dict[str, list[str]]:
    """The blocks of a ``layers`` path, in model order: block name -> its state_dict keys among `keys` (the
    direction space); every key in exactly one block. `by`:

    - ``tensor``: one block per key;
    - ``module``: the tensors a module holds itself (a conv's weight and bias, a BatchNorm's weight, bias and
      running statistics);
    - ``transformer-block``: each repeated layer (`repeated_layers`) with everything under it; the tensors before
      the first are the block ``embeddings``, those after the last ``head``, any between two runs of layers go
      by module. Raises UserError for a model without repeated layers;
    - ``permutation-group``: the tensors of each permutation group of `groups` (alignment's `GroupSpec` of the
      model: ``sizes`` and ``axes``), a tensor that carries several groups going to the one that touches the
      fewest tensors (the later-named on a tie: a layer's incoming weights and bias, a residual block's inner
      convolutions with their hidden units); the tensors no group touches are the block ``(unpermuted)``."""
    if by == "tensor":
        return {k: [k] for k in keys}
    if by == "transformer-block":
        return _layer_blocks(model, keys)
    if by == "permutation-group":
        return _group_blocks(keys, groups.sizes, groups.axes)
    out: dict[str, list[str]] = {}
    for k in keys:
        out.setdefault(_module_of(k), []).append(k)
    return out


def _module_of(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else "(root)"


def repeated_layers(model: nn.Module) -> list[str]:
    """The module names of the model's repeated layers, in model order: the children of every outermost
    ``nn.ModuleList`` or ``nn.Sequential`` whose children are all of one class and all hold parameters (the
    transformer blocks of gpt_tiny's ``blocks``, GPT-2's ``transformer.h``, Llama's ``model.layers``; a
    ResNet's residual blocks, stage by stage). Read from the module tree, nothing per model."""
    out: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        children = list(module.named_children())
        if (isinstance(module, (nn.ModuleList, nn.Sequential)) and children
                and len({type(c) for _, c in children}) == 1
                and all(any(True for _ in c.parameters()) for _, c in children)):
            out.extend(prefix + name for name, _ in children)
            return
        for name, child in children:
            visit(f"{prefix}{name}.", child)

    visit("", model)
    return out


def _layer_blocks(model: nn.Module, keys: Sequence[str]) -> dict[str, list[str]]:
    layers = repeated_layers(model)
    if not layers:
        raise UserError(f"--blocks transformer-block: {type(model).__name__} has no repeated layers (an "
                        f"nn.ModuleList or nn.Sequential of modules of one class); use --blocks module")
    owner = [next((layer for layer in layers if k.startswith(layer + ".")), None) for k in keys]
    inside = [i for i, layer in enumerate(owner) if layer is not None]
    out: dict[str, list[str]] = {}
    for i, (k, layer) in enumerate(zip(keys, owner)):
        if layer is None:
            layer = EMBEDDINGS if i < inside[0] else HEAD if i > inside[-1] else _module_of(k)
        out.setdefault(layer, []).append(k)
    return out


def _group_blocks(keys: Sequence[str], sizes: Mapping[str, int], axes: Mapping) -> dict[str, list[str]]:
    carried = {k: {g for dims in factors for g, _ in dims if g is not None} for k, factors in axes.items()}
    touched = {g: sum(g in gs for gs in carried.values()) for g in sizes}
    order = {g: i for i, g in enumerate(sizes)}
    out: dict[str, list[str]] = {}
    for k in keys:
        mine = carried.get(k, set())
        block = min(mine, key=lambda g: (touched[g], -order[g])) if mine else UNPERMUTED
        out.setdefault(block, []).append(k)
    return out


def path_directions(kind: str, theta0: Mapping[str, torch.Tensor], others: Sequence[Mapping[str, torch.Tensor]],
                    keys: Sequence[str], options: Sequence[str], blocks: Mapping[str, list[str]] | None = None
                    ) -> list[Direction]:
    """The K directions of a path over the space `keys`: models[k] - theta_0 for every other model (``layers``:
    B - A cut into `blocks`, zero outside each). `options` name each other model in errors (e.g.
    ``--checkpoint B.pt``). Raises UserError for a model of another architecture."""
    for other, option in zip(others, options):
        check_target(theta0, other, keys, option)
    if kind == "layers":
        (b,) = others
        return [{k: (target_tensor(theta0[k], b[k]) if k in mine else torch.zeros_like(theta0[k])) for k in keys}
                for mine in map(set, blocks.values())]
    return [{k: target_tensor(theta0[k], other[k]) for k in keys} for other in others]


def check_blocks(blocks: Mapping[str, list[str]], by: str) -> None:
    if not blocks:
        raise UserError(f"--blocks {by}: the model has no tensor in the direction space to interpolate")
