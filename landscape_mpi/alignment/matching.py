"""Weight matching (Ainsworth et al. 2023, "Git Re-Basin", their Algorithm 1): the permutation of model B's
hidden units that maximises the summed inner products of A's and B's weights.

Coordinate descent over the groups: each step holds every other group's permutation and solves one linear
assignment for group g, maximising sum_i C[i, perm[i]] where C[i, j] is the inner product, over every weight
that carries g, of A's slice at unit i with B's slice at unit j (B's other groups permuted as they stand).
The groups are visited in a random order per sweep (seeded); the descent stops after a sweep in which no
step improved its objective (or after `max_sweeps`). Each step can only raise the total, so it ends.

Before the sweeps, one pass solves each group once, next the group whose weights are most fully comparable with
what is solved so far; a group that shares an axis with other groups (heads x units) is matched there as blocks,
the cost of a pair of its units being the best assignment of the other factors between them
(docs/alignment.md#weight-matching).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from landscape_mpi.alignment.permutation import Permutation, permute_axes
from landscape_mpi.alignment.trace import GroupSpec
from landscape_mpi.config.errors import UserError


def _unit_rows(t: torch.Tensor, sizes: list[int], d: int, f: int) -> torch.Tensor:
    """`t` as (units of factor f of axis d, everything else)."""
    shape = tuple(t.shape)
    u = t.reshape(shape[:d] + tuple(sizes) + shape[d + 1:])
    return u.movedim(d + f, 0).reshape(sizes[f], -1)


def _unit_blocks(t: torch.Tensor, sizes: list[int], d: int, f: int, co: list[int]) -> torch.Tensor:
    """`t` as (units of factor f of axis d, the factors `co` of the same axis flattened, everything else)."""
    shape = tuple(t.shape)
    u = t.reshape(shape[:d] + tuple(sizes) + shape[d + 1:])
    u = u.movedim([d + f] + [d + i for i in co], list(range(1 + len(co))))
    return u.reshape(sizes[f], int(np.prod([sizes[i] for i in co])), -1)


def _check_states(spec: GroupSpec, state_a: dict, state_b: dict) -> None:
    for label, state in (("A", state_a), ("B", state_b)):
        for k in spec.weights:
            if k not in state or tuple(state[k].shape) != tuple(spec.shapes[k]):
                found = "missing" if k not in state else f"shape {tuple(state[k].shape)}"
                raise UserError(f"alignment: checkpoint {label} does not fit the model ({k}: {found}, the model "
                                f"has {tuple(spec.shapes[k])}); give checkpoints of the --model architecture")


def match_weights(spec: GroupSpec, state_a: dict[str, torch.Tensor], state_b: dict[str, torch.Tensor],
                  seed: int = 0, max_sweeps: int = 100) -> Permutation:
    """The permutation of B's units that best matches A's (weight matching); `info` records the method, seed,
    sweeps and the objective (summed inner products over the compared weights) before and after."""
    _check_states(spec, state_a, state_b)
    a = {k: state_a[k].detach().to("cpu", torch.float64) for k in spec.weights}
    b = {k: state_b[k].detach().to("cpu", torch.float64) for k in spec.weights}
    groups = sorted(spec.sizes)
    where = {g: spec.occurrences(g) for g in groups}
    perms = {g: np.arange(n) for g, n in spec.sizes.items()}
    current = dict(b)  # B with every group's current permutation applied

    def objective() -> float:
        return float(sum((a[k] * current[k]).sum() for k in spec.weights))

    def step(g: str, relax: bool) -> bool:
        """One linear assignment for group g; True where it raised g's objective (and was taken). `relax`: a
        group that shares an axis with other groups (heads x units) compares each pair of its units after the
        best assignment of those other factors, per pair (the head-block start of `match_weights`)."""
        n = spec.sizes[g]
        cost = np.zeros((n, n))
        blocks: dict[tuple, np.ndarray] = {}  # per set of co-factor groups: (n, n, m, m) inner products
        for k, d, f in where[g]:
            factors = spec.axes[k][d]
            sizes = [s for _, s in factors]
            co = [i for i, (h, _) in enumerate(factors) if h is not None and h != g] if relax else []
            # B's weight with every other group permuted as it stands, but for this occurrence of g (and, when
            # relaxed, the groups that share its axis)
            bk = permute_axes(b[k], spec.axes[k], perms, skip=(d, f))
            if co:
                bk = permute_axes(bk, spec.axes[k], {h: np.argsort(perms[h]) for h, _ in
                                                     (factors[i] for i in co)}, only=d)
                ua, ub = _unit_blocks(a[k], sizes, d, f, co), _unit_blocks(bk, sizes, d, f, co)
                key = tuple(factors[i][0] for i in co)
                blocks[key] = blocks.get(key, 0) + torch.einsum("iar,jbr->ijab", ua, ub).numpy()
            else:
                cost += (_unit_rows(a[k], sizes, d, f) @ _unit_rows(bk, sizes, d, f).T).numpy()
        for block in blocks.values():
            for i in range(n):
                for j in range(n):
                    r, c = linear_sum_assignment(block[i, j], maximize=True)
                    cost[i, j] += block[i, j][r, c].sum()
        _, new = linear_sum_assignment(cost, maximize=True)
        if cost[np.arange(n), new].sum() > cost[np.arange(n), perms[g]].sum() + 1e-12 * max(1.0, abs(cost).max()):
            perms[g] = new
            for k in {k for k, _, _ in where[g]}:
                current[k] = permute_axes(b[k], spec.axes[k], perms)
            return True
        return False

    before = objective()
    rng = np.random.default_rng(seed)
    composite = {g for g in groups if any(h is not None and h != g for k, d, _ in where[g] for h, _ in spec.axes[k][d])}
    # The start: one pass in which each group is solved once, the next one being the group with the most weight
    # elements whose other groups are already solved (first the groups next to the fixed inputs, outputs and
    # embeddings; ties in the seeded random order); a group that shares an axis with others (heads x units) is
    # matched as blocks there.
    tensors_of = {g: {k for k, _, _ in where[g]} for g in groups}
    groups_in = {k: {h for factors in spec.axes[k] for h, _ in factors if h is not None} for k in spec.weights}
    solved: set[str] = set()
    for _ in groups:
        order = [groups[i] for i in rng.permutation(len(groups)) if groups[i] not in solved]
        score = {g: sum(a[k].numel() for k in tensors_of[g] if groups_in[k] - {g} <= solved) for g in order}
        g = max(order, key=lambda h: score[h])  # the first of the best in the seeded order
        step(g, relax=g in composite)
        solved.add(g)
    sweeps, improved = 0, True
    while improved and sweeps < max_sweeps:
        sweeps += 1
        improved = False
        for i in rng.permutation(len(groups)):
            improved = step(groups[i], relax=False) or improved
    after = objective()
    info = {"method": "weight_matching", "seed": seed, "sweeps": sweeps, "objective_before": before,
            "objective_after": after, "groups": len(groups)}
    return Permutation(spec, perms, info=info)
