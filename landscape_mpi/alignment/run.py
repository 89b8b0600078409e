"""`landscape-mpi align` as one library call: two checkpoints in, a permutation file out (docs/alignment.md)."""

from __future__ import annotations

import os

import torch

from landscape_mpi.alignment.matching import match_weights
from landscape_mpi.alignment.permutation import Permutation
from landscape_mpi.alignment.trace import find_groups
from landscape_mpi.config.align import AlignConfig
from landscape_mpi.config.errors import UserError
from landscape_mpi.data.datasets import load_eval_set
from landscape_mpi.models import build_model, check_fits, checkpoint_sha256, read_state_dict, tied_keys

#: samples of the example batch the model is traced on
EXAMPLE_SAMPLES = 2


def example_batch(dataset: str, data_root: str | None) -> object:
    """A few training samples of `dataset`: the inputs `find_groups` runs the model on."""
    data = load_eval_set(dataset, "train", data_root, EXAMPLE_SAMPLES, seed=0)
    return data.rows(0, EXAMPLE_SAMPLES)[0]


def align(config: AlignConfig) -> Permutation:
    """Trace the model, match B's units to A's, write the permutation file (whole or not at all); every user
    mistake is a `UserError` before anything is written."""
    out_dir = os.path.dirname(os.path.abspath(config.out))
    if not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK):
        raise UserError(f"--out {config.out}: the folder {out_dir} does not exist or is not writable; create it "
                        f"or give another path")
    model = build_model(config.model)
    tied = tied_keys(model)
    states = []
    for option, path in (("--checkpoint-a", config.checkpoint_a), ("--checkpoint-b", config.checkpoint_b)):
        state = read_state_dict(path, option)
        check_fits(model, state, tied, path, option)
        states.append(state)
    spec = find_groups(model, example_batch(config.dataset, config.data_root), config.unsupported, "--unsupported")
    with torch.no_grad():
        perm = match_weights(spec, states[0], states[1], seed=config.seed, max_sweeps=config.max_sweeps)
    perm.hash_a = checkpoint_sha256(config.checkpoint_a, "--checkpoint-a")
    perm.hash_b = checkpoint_sha256(config.checkpoint_b, "--checkpoint-b")
    perm.info["model"] = config.model
    perm.save(config.out)
    return perm
