"""landscape-mpi: loss-landscape surfaces of trained networks, computed across MPI ranks into one HDF5 file."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``landscape_mpi.open(path)``: a file as an xarray.Dataset (landscape_mpi/files/xarray_view.py), imported on
    first use, without torch. The jobs called from Python are in `landscape_mpi.api` (docs/api.md)."""
    if name == "open":
        from landscape_mpi.files.xarray_view import open_dataset

        return open_dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
