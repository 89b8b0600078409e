"""The Python API (docs/api.md): the jobs called with a model object and data in memory, and the files as xarray.

    import landscape_mpi.api as lm
    result = lm.surface(model, (inputs, labels), x=(-1, 1, 21), y=(-1, 1, 21))   # in memory; out="s.h5": a file
    result.dataset["train_loss"].plot()
    lm.open("s.h5")                                                              # any file, as an xarray.Dataset

The jobs are the commands' own code (`jobs`): the same options, by field name, the same file, the same one-line
errors (raised as `UserError`). The top layer of the package: it may import every other, and none imports it.
``surface`` and ``hessian`` live here rather than on `landscape_mpi` itself, whose subpackages of those names
(the jobs' code) own the names; `landscape_mpi.open` is the same function as `open` here.
"""

from landscape_mpi.api.jobs import Result, hessian, path, surface
from landscape_mpi.config.errors import UserError
from landscape_mpi.files.xarray_view import open_dataset as open  # noqa: A004  (the API's name: lm.open(path))

__all__ = ["Result", "UserError", "hessian", "open", "path", "surface"]
