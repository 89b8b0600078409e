"""The Python API (landscape_mpi/api, docs/api.md) and the xarray views of the files (files/xarray_view.py).

The API's file is compared with the command's file for the same model (saved as the checkpoint the command reads)
and data, and its values with the loss computed here from the model directly; `open` with the readers' arrays.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import landscape_mpi
import landscape_mpi.api as lm
from conftest import ROOT, env, mpiexec, run, wait_until
from hessian_toys import exact_hessian
from hessian_toys import make_data as blobs
from hessian_toys import make_model as blob_model
from landscape_mpi.cli import main
from landscape_mpi.config.errors import UserError
from landscape_mpi.data.datasets import load_eval_set
from landscape_mpi.files import reader
from landscape_mpi.files.path_reader import read_path
from landscape_toys import make_data, make_model

GRID = ("--x=-1:1:5", "--y=-1:1:3")
#: Fields that name where the model and data came from (an import path of the test or of the API, a file).
PLACES = ("model", "dataset", "checkpoint")


def seeded_model(seed: int = 0):
    torch.manual_seed(seed)
    return make_model().eval()


def toy_data() -> dict:
    return {"train": make_data("train"), "test": make_data("test")}


def save_checkpoint(model, folder: Path, name: str = "theta") -> str:
    """The model as the command reads it, named as the API names its own (theta.pt, or model_<i>.pt of a path:
    torch.save records the file's name in it, so the same name gives the same bytes, the same sha256)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.pt"
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
    return str(path)


def surface_parts(path) -> dict:
    """Everything a surface file holds that the computation decides: results, directions, coordinates, indices."""
    out = {}
    with h5py.File(path, "r") as f:
        for group in ("results", "directions", "coords"):
            f[group].visititems(lambda name, obj, g=group: out.__setitem__(f"{g}/{name}", obj[()])
                                if isinstance(obj, h5py.Dataset) else None)
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    for volatile in ("results/rank", "results/seconds"):
        out.pop(volatile, None)
    config = json.loads(attrs["config"])
    out["config"] = {k: v for k, v in config.items() if k not in PLACES}
    out["hashes"] = {k: v for k, v in attrs.items() if k.endswith("_sha256")}
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            assert np.array_equal(a[k], b[k], equal_nan=True), k
        else:
            assert a[k] == b[k], k


def center_loss(model, dataset) -> float:
    """The cross-entropy at theta* computed here, from the model and the samples (the grid's centre point)."""
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    y = torch.stack([dataset[i][1] for i in range(len(dataset))])
    with torch.no_grad():
        return float(F.cross_entropy(model.eval()(x), y))


@pytest.fixture(scope="module")
def api_file(tmp_path_factory):
    """A surface computed by the API into a file, with the model object it was given."""
    folder = tmp_path_factory.mktemp("api")
    model = seeded_model()
    result = lm.surface(model, toy_data(), out=str(folder / "api.h5"), x=(-1, 1, 5), y="-1:1:3")
    return model, result


def test_api_file_equals_the_command_file(api_file, tmp_path):
    model, result = api_file
    assert result.complete and result.kind == "surface" and result.path.endswith("api.h5")
    checkpoint = save_checkpoint(model, tmp_path / "cli")
    out = tmp_path / "cli.h5"
    assert main(["surface", "--model", "landscape_toys:make_model", "--checkpoint", checkpoint, "--dataset",
                 "landscape_toys:make_data", *GRID, "--out", str(out)]) == 0
    api, cli = surface_parts(result.path), surface_parts(out)
    assert api["hashes"]["checkpoint_sha256"] == cli["hashes"]["checkpoint_sha256"]  # the same theta*, same data
    assert_same(api, cli)
    with h5py.File(result.path, "r") as f:
        config = json.loads(f.attrs["config"])
    assert config["model"] == "landscape_mpi.api.given:Sequential"
    assert config["dataset"] == "landscape_mpi.api.given:data"
    # the values themselves: theta* (the centre) is the model's own loss, computed here
    ds = result.dataset
    assert ds.train_loss.sel(x=0.0, y=0.0).item() == pytest.approx(center_loss(model, make_data("train")), rel=1e-6)
    assert ds.test_loss.sel(x=0.0, y=0.0).item() == pytest.approx(center_loss(model, make_data("test")), rel=1e-6)


def test_open_equals_the_readers_arrays(api_file, tmp_path):
    _, result = api_file
    partial = tmp_path / "partial.h5"
    with open(result.path, "rb") as src, open(partial, "wb") as dst:
        dst.write(src.read())
    with h5py.File(partial, "r+") as f:  # as a running job leaves it: some points not done yet
        done = f["results/done"][()]
        done[1:, :] = False
        f["results/done"][...] = done
    ds = landscape_mpi.open(str(partial))
    with reader.open_surface(str(partial)) as f:
        done = f.done()
        assert list(ds.data_vars) == [*f.metric_names(), "done"]
        for name in f.metric_names():
            assert np.array_equal(ds[name].values, f.values(name, done), equal_nan=True), name
            assert ds[name].dims == ("x", "y")
        assert np.array_equal(ds.done.values, done) and done.sum() == 3
        for axis, coords in f.coords().items():
            assert np.array_equal(ds[axis].values, coords)
        assert ds.attrs["config"] == f.attrs["config"] and ds.attrs["seed"] == 0 and ds.attrs["file_kind"] == "surface"
    assert np.isnan(ds.train_loss.values[1:, :]).all() and not np.isnan(ds.train_loss.values[0, :]).any()
    assert ds.train_loss.attrs == {"split": "train", "metric": "loss"}


def test_the_figures_take_a_dataset(api_file):
    """plotting's figures draw a Dataset (plotting/dataset.py) as they draw the file: the same Surface."""
    import matplotlib

    matplotlib.use("Agg")
    from plotting.dataset import as_surface
    from plotting.figures import levels_for, plot_contour
    from plotting.reader import read_surface

    _, result = api_file
    given, read = as_surface(result.dataset), read_surface(result.path)
    assert sorted(given.available) == sorted(read.available) and given.path == result.path
    for name in read.available:
        assert np.array_equal(given.metric(name), read.metric(name), equal_nan=True), name
    assert given.coords.keys() == read.coords.keys() and np.array_equal(given.done, read.done)
    assert given.config == read.config
    figure = plot_contour(given, "train_loss", levels_for([given.metric("train_loss")]))
    assert figure.axes and figure.axes[0].get_title() == plot_contour(read, "train_loss", levels_for(
        [read.metric("train_loss")])).axes[0].get_title()
    with pytest.raises(UserError, match="a hessian Dataset, not a surface's"):
        as_surface(result.dataset.assign_attrs(file_kind="hessian"))


def test_open_imports_no_torch(api_file):
    """`landscape_mpi.open` reads on a login node: importing and calling it loads neither torch nor mpi4py."""
    _, result = api_file
    code = ("import sys, landscape_mpi\n"
            f"ds = landscape_mpi.open({result.path!r})\n"
            "assert int(ds.done.sum()) == 15, ds\n"
            "bad = [m for m in ('torch', 'mpi4py') if m in sys.modules]\n"
            "assert not bad, bad\n"
            "print('no torch')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), cwd=ROOT, timeout=120)
    assert p.returncode == 0 and "no torch" in p.stdout, p.stderr


def test_in_memory_writes_nothing(tmp_path, monkeypatch):
    work, scratch = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    scratch.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the temporary files went, to look afterwards
    model = seeded_model(1)
    result = lm.surface(model, make_data("train"), x=(-0.5, 0.5, 3))
    assert result.path is None and result.complete
    assert list(work.iterdir()) == [] and list(scratch.iterdir()) == []
    assert result.dataset.train_loss.dims == ("x",) and "test_loss" not in result.dataset  # one dataset: train
    assert result.dataset.train_loss.sel(x=0.0).item() == pytest.approx(center_loss(model, make_data("train")),
                                                                        rel=1e-6)


def test_ctrl_c_stops_the_call_and_the_same_call_resumes(api_file, tmp_path, monkeypatch):
    """SIGINT (a notebook's interrupt) while the job is inside a point: the call returns complete=False with the
    finished points; the same call again completes the file, equal to the uninterrupted one."""
    gate = tmp_path / "gate"
    monkeypatch.setenv("LANDSCAPE_MPI_TEST_GATE", f"mid_run:{gate}")  # held after the first point
    monkeypatch.setenv("LANDSCAPE_MPI_TEST_DELAY", "0")  # one point at a time
    out = str(tmp_path / "stopped.h5")

    def interrupt() -> None:
        wait_until(lambda: Path(f"{gate}.reached.0").exists(), 120, "the job held after its first point")
        os.kill(os.getpid(), signal.SIGINT)
        wait_until(lambda: Path(f"{gate}.stopped.0").exists(), 120, "the stop seen by the held job")
        gate.touch()

    before = signal.getsignal(signal.SIGINT)
    thread = threading.Thread(target=interrupt)
    thread.start()
    stopped = lm.surface(seeded_model(), toy_data(), out=out, x=(-1, 1, 5), y=(-1, 1, 3))
    thread.join()
    assert not stopped.complete and int(stopped.dataset.done.sum()) == 1
    assert signal.getsignal(signal.SIGINT) == before  # the call gave the signal back
    monkeypatch.delenv("LANDSCAPE_MPI_TEST_GATE")
    resumed = lm.surface(seeded_model(), toy_data(), out=out, x=(-1, 1, 5), y=(-1, 1, 3))
    assert resumed.complete
    assert_same(surface_parts(out), surface_parts(api_file[1].path))


def test_an_api_error_is_the_command_line(tmp_path, capsys):
    model = seeded_model()
    with pytest.raises(lm.UserError) as caught:
        lm.surface(model, toy_data(), out=str(tmp_path / "a.h5"), samples=0)
    checkpoint = save_checkpoint(model, tmp_path)
    capsys.readouterr()
    assert main(["surface", "--model", "landscape_toys:make_model", "--checkpoint", checkpoint, "--dataset",
                 "landscape_toys:make_data", "--samples", "0", "--out", str(tmp_path / "b.h5")]) == 2
    printed = capsys.readouterr().err.strip().splitlines()
    assert printed == [f"landscape-mpi: error: {caught.value}"]
    assert str(caught.value).startswith("--samples 0")
    with pytest.raises(lm.UserError, match="no option 'sample'"):  # a misspelt option, before anything runs
        lm.surface(model, toy_data(), out=str(tmp_path / "c.h5"), sample=10)
    with pytest.raises(lm.UserError, match="--checkpoint"):  # a model by name needs its weights, as the command
        lm.surface("landscape_toys:make_model", toy_data(), out=str(tmp_path / "e.h5"))
    with pytest.raises(lm.UserError, match="--norm cosine: choose one of filter"):
        lm.surface(model, toy_data(), out=str(tmp_path / "d.h5"), norm="cosine")
    assert sorted(os.listdir(tmp_path)) == ["theta.pt"]


def test_hessian_and_path(tmp_path):
    """The Hessian's eigenvalues are the exact Hessian's; the path's file is the command's, and t = 1 is model B."""
    torch.manual_seed(3)
    model = blob_model().eval()
    options = dict(top_k=2, trace_probes=0, slq_runs=0, adaptive_samples=0, samples=64, threads=1)
    h = lm.hessian(model, blobs("train"), out=str(tmp_path / "api_h.h5"), **options)
    assert h.complete and h.path.endswith("api_h.h5")
    api = reader.read_hessian_file(h.path)
    assert np.array_equal(h.dataset.eigen_values.values, api["eigen/values"]) and h.dataset.eigen_values.dims == (
        "row", "k")
    assert h.dataset.checkpoint.values.tolist()[0].endswith("theta.pt")
    subset = load_eval_set("hessian_toys:make_data", "train", None, 64, 0)  # samples=64 of seed 0, as the job's
    exact = np.linalg.eigvalsh(exact_hessian(copy.deepcopy(model), subset))
    assert h.dataset.eigen_values.values[0] == pytest.approx(exact[::-1][:2], rel=1e-4)

    torch.manual_seed(4)
    other = blob_model().eval()
    p = lm.path([model, other], blobs("train"), out=str(tmp_path / "api_p.h5"), points=3, bn="eval",
                threads=1)
    a, b = save_checkpoint(model, tmp_path / "cli", "model_0"), save_checkpoint(other, tmp_path / "cli", "model_1")
    assert main(["path", "--model", "hessian_toys:make_model", "--checkpoint", a, "--checkpoint", b, "--dataset",
                 "hessian_toys:make_data", "--splits", "train", "--points", "3", "--bn", "eval", "--threads", "1",
                 "--out", str(tmp_path / "cli_p.h5")]) == 0
    api_p, cli_p = (read_path(str(tmp_path / n)) for n in ("api_p.h5", "cli_p.h5"))
    for name in cli_p.values:
        assert np.array_equal(api_p.values[name], cli_p.values[name]), name
    hashes = [{k: v for k, v in f.attrs.items() if k.endswith("sha256")} for f in (api_p, cli_p)]
    assert hashes[0] == hashes[1] and hashes[0]
    assert np.array_equal(p.dataset.train_loss.values, cli_p.values["train_loss"])
    assert p.dataset.t.values.tolist() == [0.0, 0.5, 1.0]
    loss_b = center_loss(other, blobs("train"))
    assert p.dataset.train_loss.sel(t=1.0).item() == pytest.approx(loss_b, rel=1e-5)  # t = 1 is model B


SCRIPT = """
import sys
import torch
import landscape_mpi.api as lm
from landscape_toys import make_data, make_model

torch.manual_seed(0)
model = make_model().eval()
result = lm.surface(model, {"train": make_data("train"), "test": make_data("test")}, out=sys.argv[1],
                    x=(-1, 1, 5), y=(-1, 1, 3))
memory = lm.surface(model, make_data("test"), x=(-1, 1, 5))  # in memory: rank 0's temporary file, shared
from mpi4py import MPI
rank = MPI.COMM_WORLD.Get_rank()
assert (result is None) == (rank != 0) and (memory is None) == (rank != 0), (rank, result, memory)
if rank == 0:
    assert memory.path is None and memory.complete
    torch.save(torch.from_numpy(memory.dataset.train_loss.values), sys.argv[1] + ".memory.pt")
print(f"rank {rank}: {'a result' if result is not None else 'None'} of {MPI.COMM_WORLD.Get_size()}")
torch.manual_seed(rank)  # a script that forgot its seed: each rank its own weights, refused on every rank
try:
    lm.surface(make_model(), make_data("train"), x=(-1, 1, 3))
except lm.UserError as exc:
    print(f"rank {rank} refused: {exc}")
"""


def test_the_same_script_under_mpiexec_equals_one_process(api_file, tmp_path):
    """The script a notebook user would write, unchanged under mpiexec -n 2: rank 0 returns the result, the
    file equals the one process's."""
    _, result = api_file
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    out = tmp_path / "mpi.h5"
    p = run(mpiexec(2) + [sys.executable, str(script), str(out)], timeout=300)
    assert sorted(re.findall(r"rank \d: .* of 2", p.stdout)) == ["rank 0: a result of 2", "rank 1: None of 2"]
    refused = sorted(re.findall(r"rank (\d) refused: (.*)", p.stdout))
    assert [r for r, _ in refused] == ["0", "1"] and {m for _, m in refused} == {
        "the model's weights differ between rank 0 and rank 1; build the model with the same seed on every rank, "
        "or load the same checkpoint"}
    assert_same(surface_parts(out), surface_parts(result.path))
    # in memory under MPI: the test split evaluated as the one dataset (train); x = 0 is theta*
    memory = torch.load(str(out) + ".memory.pt").numpy()
    assert memory.shape == (5,) and memory[2] == pytest.approx(center_loss(seeded_model(), make_data("test")),
                                                               rel=1e-6)
    assert sorted(os.listdir(tmp_path)) == ["mpi.h5", "mpi.h5.memory.pt", "script.py"]


def test_the_docs_example_runs(tmp_path, monkeypatch):
    """docs/api.md's worked example, the code block after its marker, run as it stands."""
    text = (ROOT / "docs" / "api.md").read_text()
    block = re.search(r"<!-- tests/test_api.py runs this example -->\s*```python\n(.*?)```", text, re.S)
    assert block, "docs/api.md lost its worked example"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the training loop's tiny steps: 2 threads on a busy 2-core machine cost 30x more
    try:
        exec(compile(block.group(1), "docs/api.md", "exec"), {"__name__": "docs_api"})
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "xor.h5").exists()

