"""landscape-mpi: loss-landscape surfaces of trained networks, computed across MPI ranks into one HDF5 file."""

__version__ = "0.1.0"
