"""Axis classes: which axes of which tensors must be permuted together, found by unification.

Every axis of every tensor a forward pass touches is a list of *atoms* (a row-major factorisation: an axis of
size 12 viewed as 3 heads of 4 units is the atoms [heads 3, units 4]). Two atoms that an operation ties
together (the output units of a linear layer and the input units of the next, the two operands of an addition,
a LayerNorm's weight and the axis it normalises) are unified (union-find); an atom that an operation uses in a
way a permutation would change (a model input, a model output, a convolution's kernel window, a slice, a
concatenation) is *fixed*. A view that cuts an atom into factors splits the atom's whole class, so every
tensor that carries the class is read with the same factors. What remains unfixed at the end, with size > 1,
is a permutation group: permuting those atoms in every tensor that carries them leaves the function unchanged.

Nothing here knows torch modules or operations; `trace.py` calls it for each operation of a forward pass.
"""

from __future__ import annotations

from math import prod


class Atom:
    """One factor of one axis: a size, a union-find parent, `fixed`, and `children` once its class is split."""

    __slots__ = ("parent", "size", "fixed", "children")

    def __init__(self, size: int, fixed: bool = False) -> None:
        self.parent: Atom | None = None
        self.size = size
        self.fixed = fixed
        self.children: list[Atom] | None = None


Dim = list  # list[Atom]: the atoms of one axis, most significant first (an axis of size 1 has none)


def find(a: Atom) -> Atom:
    """The representative of `a`'s class (path halving)."""
    while a.parent is not None:
        if a.parent.parent is not None:
            a.parent = a.parent.parent
        a = a.parent
    return a


def leaves(atoms: Dim) -> list[Atom]:
    """The unsplit class representatives that `atoms` stand for, in row-major order."""
    out: list[Atom] = []
    for a in atoms:
        r = find(a)
        if r.children is None:
            out.append(r)
        else:
            out.extend(leaves(r.children))
    return out


def new_dim(size: int, fixed: bool = False) -> Dim:
    """A fresh axis of `size` (no atom for a size-1 axis)."""
    return [Atom(size, fixed)] if size > 1 else []


def fix(atoms: Dim) -> None:
    """Mark every atom of `atoms` fixed (never permuted)."""
    for r in leaves(atoms):
        r.fixed = True


def _split(r: Atom, sizes: list[int]) -> list[Atom]:
    r.children = [Atom(s, r.fixed) for s in sizes]
    return r.children


def unify(x: Dim, y: Dim) -> None:
    """Tie two axes of the same size atom by atom, splitting atoms where the factorisations differ; where they
    cannot be matched (sizes 6x4 against 4x6, say), both are fixed."""
    xs, ys = leaves(x), leaves(y)
    if prod(a.size for a in xs) != prod(a.size for a in ys):
        fix(x), fix(y)
        return
    i = j = 0
    while i < len(xs) and j < len(ys):
        a, b = find(xs[i]), find(ys[j])
        if a.children is not None:  # split by an earlier step of this loop
            xs[i:i + 1] = leaves([a])
            continue
        if b.children is not None:
            ys[j:j + 1] = leaves([b])
            continue
        if a is b:
            i, j = i + 1, j + 1
        elif a.size == b.size:
            b.parent = a
            a.fixed = a.fixed or b.fixed
            i, j = i + 1, j + 1
        elif a.size > b.size and a.size % b.size == 0:
            xs[i:i + 1] = _split(a, [b.size, a.size // b.size])
        elif b.size > a.size and b.size % a.size == 0:
            ys[j:j + 1] = _split(b, [a.size, b.size // a.size])
        else:
            fix(xs[i:]), fix(ys[j:])
            return


def reshape(dims: list[Dim], shape: tuple[int, ...]) -> list[Dim] | None:
    """The axes of a row-major reshape of a tensor with axes `dims` into `shape`, splitting atoms where an output
    axis cuts one; None where the factors do not line up (the caller fixes everything)."""
    queue = [a for d in dims for a in leaves(d)]
    out: list[Dim] = []
    for size in shape:
        need, axis = size, []
        while need > 1:
            if not queue:
                return None
            a = find(queue[0])
            if a.children is not None:
                queue[0:1] = leaves([a])
                continue
            if need % a.size == 0:
                axis.append(a)
                need //= a.size
                queue.pop(0)
            elif a.size % need == 0:
                first, rest = _split(a, [need, a.size // need])
                axis.append(first)
                queue[0] = rest
                need = 1
            else:
                return None
        out.append(axis)
    return out if not queue else None


def groups_of(dims: list[Dim]) -> list[list[Atom]]:
    """Per axis, its unsplit class representatives (for reading off the groups after a trace)."""
    return [leaves(d) for d in dims]
