"""A permutation of a model's hidden units: one index array per group, applied to a state_dict, stored in HDF5.

Convention: ``perm[g][i]`` is the unit of the second model (B) that lands at position i, so that applying the
permutation to B's state_dict (gathering each group's axis by ``perm[g]``) lines B's units up with A's.

The file (docs/alignment.md#the-permutation-file) holds the model's identity (every state_dict key with its
shape and axes, as `find_groups` derived them), the hashes of the two checkpoints it was computed from, the
method and its settings, and one int64 dataset per group; loading it for another model is a `UserError`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from landscape_mpi.alignment.trace import Axes, GroupSpec
from landscape_mpi.config.errors import UserError

FORMAT = "landscape-mpi permutation"
VERSION = 1


def permute_axes(t: torch.Tensor, axes: Axes, perms: dict[str, np.ndarray], skip: tuple | None = None,
                 only: int | None = None) -> torch.Tensor:
    """`t` with every group factor of `axes` gathered by its permutation (a factor `skip` = (axis, factor) left
    as it is; `only`: that axis alone)."""
    for d, factors in enumerate(axes):
        if (only is not None and d != only) or all(g is None or g not in perms for g, _ in factors):
            continue
        sizes = [n for _, n in factors]
        shape = tuple(t.shape)
        u = t.reshape(shape[:d] + tuple(sizes) + shape[d + 1:])
        for f, (g, _) in enumerate(factors):
            if g is not None and g in perms and (d, f) != skip:
                u = u.index_select(d + f, torch.as_tensor(perms[g], device=t.device))
        t = u.reshape(shape)
    return t


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state_dict's keys, dtypes, shapes and bytes (for states that come from no file)."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class Permutation:
    """Per group of `spec`, the permutation of B's units that matches A's; `hash_a` / `hash_b` identify the
    two checkpoints (sha256 of their weight files, or `state_sha256`); `info` records how it was found."""

    spec: GroupSpec
    perms: dict[str, np.ndarray]
    hash_a: str = ""
    hash_b: str = ""
    info: dict = field(default_factory=dict)

    @classmethod
    def identity(cls, spec: GroupSpec) -> Permutation:
        return cls(spec, {g: np.arange(n) for g, n in spec.sizes.items()})

    def apply(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A new state_dict: every tensor of `state` with its group axes permuted (keys the spec does not know,
        and tensors without groups, as they are)."""
        return {k: permute_axes(v, self.spec.axes[k], self.perms) if k in self.spec.axes else v
                for k, v in state.items()}

    def check_model(self, spec: GroupSpec, path: str, option: str = "--permutation") -> None:
        """Raise `UserError` unless this permutation was made for a model with `spec`'s keys, shapes and axes."""
        mine, theirs = self.spec.shapes, spec.shapes
        missing = [k for k in theirs if k not in mine]
        extra = [k for k in mine if k not in theirs]
        shapes = [k for k in theirs if k in mine and tuple(mine[k]) != tuple(theirs[k])]
        axes = [k for k in theirs if k in mine and not shapes and self.spec.axes[k] != spec.axes[k]]
        for label, keys in (("keys it lacks", missing), ("keys the model lacks", extra),
                            ("other shapes", shapes), ("other groups", axes)):
            if keys:
                raise UserError(f"{option} {path}: made for another model ({label}: {', '.join(keys[:3])}"
                                f"{' ...' if len(keys) > 3 else ''}); compute one for this model with "
                                f"landscape-mpi align --model ... --checkpoint A --checkpoint B --out FILE")

    def check_checkpoints(self, hash_a: str, hash_b: str, path: str, option: str = "--permutation") -> None:
        """Raise `UserError` unless this permutation was computed from the checkpoints with these hashes."""
        if (hash_a, hash_b) != (self.hash_a, self.hash_b):
            raise UserError(f"{option} {path}: computed from other checkpoints (sha256 {self.hash_a[:12]} and "
                            f"{self.hash_b[:12]}, given {hash_a[:12]} and {hash_b[:12]}); compute one for these "
                            f"with landscape-mpi align --checkpoint A --checkpoint B --out FILE")

    # -- the file -------------------------------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Write the file whole or not at all (a temporary file in the same folder, then a rename)."""
        import h5py

        tmp = f"{path}.tmp{os.getpid()}"
        try:
            with h5py.File(tmp, "w") as f:
                f.attrs["format"] = FORMAT
                f.attrs["version"] = VERSION
                f.attrs["hash_a"] = self.hash_a
                f.attrs["hash_b"] = self.hash_b
                f.attrs["info"] = json.dumps(self.info, sort_keys=True)
                f.attrs["model"] = json.dumps({"sizes": self.spec.sizes, "axes": self.spec.axes,
                                               "shapes": self.spec.shapes, "weights": self.spec.weights})
                groups = f.create_group("perms")
                for i, (g, p) in enumerate(sorted(self.perms.items())):
                    ds = groups.create_dataset(str(i), data=np.asarray(p, dtype=np.int64))
                    ds.attrs["group"] = g
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    @classmethod
    def load(cls, path: str, option: str = "--permutation") -> Permutation:
        import h5py

        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("format") != FORMAT:
                    raise UserError(f"{option} {path}: not a permutation file (no format attribute "
                                    f"'{FORMAT}'); write one with landscape-mpi align ... --out FILE")
                model = json.loads(f.attrs["model"])
                perms = {str(ds.attrs["group"]): ds[()] for ds in f["perms"].values()}
                hash_a, hash_b = str(f.attrs["hash_a"]), str(f.attrs["hash_b"])
                info = json.loads(f.attrs["info"])
        except OSError as exc:
            raise UserError(f"{option} {path}: cannot read it as HDF5 ({str(exc).splitlines()[0][:120]}); give "
                            f"a file written by landscape-mpi align") from None
        axes = {k: tuple(tuple((g, int(n)) for g, n in factors) for factors in dims)
                for k, dims in model["axes"].items()}
        spec = GroupSpec({g: int(n) for g, n in model["sizes"].items()}, axes,
                         {k: tuple(s) for k, s in model["shapes"].items()}, tuple(model["weights"]))
        return cls(spec, perms, hash_a, hash_b, info)
