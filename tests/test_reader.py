"""landscape_mpi/files/reader.py: the one reader of every file kind. Its one-line errors (missing file, not HDF5,
another kind, no schema, a newer schema) for each kind and entry point, and a new file's in-memory copy that a run
evaluates with (`prepare.SurfaceFileKind.read_back`) equal to what a read of the file gives."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from landscape_mpi.config.errors import UserError
from landscape_mpi.files import contract, reader, store


def surface_file(path, **attrs):
    """A minimal schema-1 surface file in the contract's layout, written with h5py."""
    with h5py.File(path, "w") as h:
        h.attrs["schema_version"] = 1
        h.attrs["config"] = json.dumps({"model": "toy"})
        h.attrs["axes"] = json.dumps(["x"])
        h.attrs["metrics"] = json.dumps(["train_loss"])
        for k, v in attrs.items():
            h.attrs[k] = v
        h["coords/x"] = np.linspace(-1, 1, 3)
        h["results/train_loss"] = np.array([1.0, 2.0, np.nan])
        h["results/done"] = np.array([1, 1, 0], dtype=np.uint8)
        h["directions/x/w"] = np.ones((2, 2), np.float32)
    return str(path)


@pytest.fixture
def files(tmp_path):
    not_hdf5 = tmp_path / "notes.h5"
    not_hdf5.write_text("my notes")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as h:
        h["data"] = np.zeros(3)
    return {"missing": str(tmp_path / "none.h5"), "not_hdf5": str(not_hdf5), "foreign": str(foreign),
            "surface": surface_file(tmp_path / "s.h5"),
            "hessian": surface_file(tmp_path / "h.h5", file_kind="hessian"),
            "newer": surface_file(tmp_path / "new.h5", schema_version=max(contract.READABLE_SCHEMA_VERSIONS) + 1)}


def one_line(call, *needles) -> str:
    with pytest.raises(UserError) as exc:
        call()
    message = str(exc.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


@pytest.mark.parametrize("read", [reader.read_summary, lambda p: reader.read_directions(p, ["x"]), reader.read_coords,
                                  lambda p: reader.read_run_inputs(p, ["x"]), reader.read_trajectory,
                                  reader.open_surface])
def test_surface_readers_refuse_with_one_line(files, read):
    one_line(lambda: read(files["missing"]), files["missing"], "no such file")
    one_line(lambda: read(files["not_hdf5"]), "not a readable HDF5 surface file", "--overwrite")
    one_line(lambda: read(files["foreign"]), "not a landscape-mpi surface file (no schema_version/config)")
    one_line(lambda: read(files["hessian"]), "a hessian file, not a surface file")
    newer = max(contract.READABLE_SCHEMA_VERSIONS) + 1
    one_line(lambda: read(files["newer"]), f"schema_version {newer}, this landscape-mpi reads 1",
             "use the landscape-mpi version that wrote it")


def test_hessian_readers_refuse_with_one_line(files):
    for read in (lambda p: reader.read_hessian_file(p), lambda p: reader.read_eigenvectors(p, 0, 2)):
        # B023: one_line calls each lambda at once, in this iteration
        one_line(lambda: read(files["missing"]), "--hessian-file", "no such file", "landscape-mpi hessian")  # noqa: B023
        one_line(lambda: read(files["not_hdf5"]), "--hessian-file", "not a readable HDF5 Hessian file")  # noqa: B023
        one_line(lambda: read(files["surface"]), "--hessian-file", "a surface file, not a Hessian file")  # noqa: B023
        one_line(lambda: read(files["foreign"]), "not a landscape-mpi Hessian file")  # noqa: B023
    # plotting reads without the option's name
    message = one_line(lambda: reader.read_hessian_file(files["missing"], option=""), "no such file")
    assert message.startswith(files["missing"])


def test_direction_files_refuse_with_one_line(files):
    for read in (reader.read_direction_file, reader.read_reference_datasets):
        # B023: one_line calls each lambda at once, in this iteration
        one_line(lambda: read(files["missing"]), "--dir-file", "no such file")  # noqa: B023
        one_line(lambda: read(files["not_hdf5"]), "--dir-file", "not a readable HDF5 file")  # noqa: B023
    one_line(lambda: reader.read_direction_file(files["foreign"]), "not a readable direction file with /directions/x")
    one_line(lambda: reader.read_reference_datasets(files["surface"]), "no 'xdirection' group")
    dirs = reader.read_direction_file(files["surface"])
    assert len(dirs) == 1 and dirs[0]["w"].dtype == np.float32


def test_file_kind_and_is_complete(files):
    assert reader.file_kind(files["surface"]) == "surface" and reader.file_kind(files["hessian"]) == "hessian"
    one_line(lambda: reader.file_kind(files["missing"]), "no such file")
    assert not any(reader.is_complete(files[k]) for k in files)  # partial, missing or not a surface file
    with h5py.File(files["surface"], "a") as h:
        h["results/done"][2] = 1
    assert reader.is_complete(files["surface"])


def test_summary_reads_done_mask_values_and_masks_by_done(files):
    s = reader.read_summary(files["surface"], with_ranks=False)
    assert s.shape == (3,) and s.done.tolist() == [True, True, False] and s.ranks is None
    assert list(s.metrics) == ["train_loss"] and s.metrics["train_loss"][0] == 1.0
    with reader.open_surface(files["surface"]) as f:
        assert f.metrics() == ["train_loss"] and f.axes == ["x"]
        v = f.values("train_loss", np.array([True, False, False]))
    assert v[0] == 1.0 and np.isnan(v[1:]).all()


def test_a_new_files_in_memory_copy_is_what_a_read_gives(tmp_path):
    """Rank 0 evaluates a new file's points with the directions it wrote, the other ranks with what they read back:
    the same keys in the same order, dtypes and bytes."""
    from landscape_mpi.config.surface import Axis, SurfaceConfig
    from landscape_mpi.surface.prepare import SurfaceFileKind

    config = SurfaceConfig(model="m", checkpoint="c", x=Axis(-1, 1, 4), y=Axis(-0.5, 0.7, 3))
    rng = np.random.default_rng(0)
    direction = {"layer2.weight": rng.standard_normal((3, 2)).astype(np.float32), "bn.bias": rng.standard_normal(3),
                 "a.weight": rng.standard_normal((2, 2, 3)).astype(np.float32),
                 "B.x": np.float32(rng.standard_normal(1))}
    directions = {"x": direction, "y": {k: -v for k, v in direction.items()}}
    path = str(tmp_path / "f.h5")
    store.create_surface_file(path, config, directions, {}, {})
    mem_dirs, mem_coords = SurfaceFileKind(config).read_back(directions)
    file_dirs, file_coords = reader.read_run_inputs(path, ["x", "y"])
    for a, b in zip(mem_dirs, file_dirs):
        assert list(a) == list(b)
        for k in a:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes(), k
    for a, b in zip(mem_coords, file_coords):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
