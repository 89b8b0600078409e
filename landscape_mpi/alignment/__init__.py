"""Neuron alignment: the permutation groups of a model derived from a traced forward pass (`find_groups`),
weight matching (`match_weights`, Ainsworth et al. 2023), and the stored permutation (`Permutation`: apply to
a state_dict, save, load). See docs/alignment.md.

Sits on the row of `directions`: imports `tasks`, `models`, `config` below it, never the engine or the jobs.
"""

from landscape_mpi.alignment.matching import match_weights
from landscape_mpi.alignment.permutation import Permutation, state_sha256
from landscape_mpi.alignment.trace import GroupSpec, find_groups

__all__ = ["GroupSpec", "Permutation", "find_groups", "match_weights", "state_sha256"]
