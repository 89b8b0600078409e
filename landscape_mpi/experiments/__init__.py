"""The paper's findings as runnable experiments (`definitions`), their runner (`runner`) and the report
generated from their HDF5 files (`report`)."""

from landscape_mpi.experiments.definitions import NAMES, SCALES, Experiment, experiment, experiments
from landscape_mpi.experiments.paper import paper_experiment  # registers the scale paper (its own setting)

__all__ = ["NAMES", "SCALES", "Experiment", "experiment", "experiments", "paper_experiment"]
