"""The file schema, written once (landscape_mpi/files/contract.py): files written by the real commands (surfaces of
the classify, lm and regress tasks and of a user task; a Hessian file) hold nothing the schema lacks, each of the
schema's entries is seen in some written file, a planted departure is caught, and docs/file-format.md's tables
are the schema's."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch

import hessian_toys
import task_toys
from conftest import ROOT
from landscape_mpi.cli import main
from landscape_mpi.files import contract, store
from landscape_mpi.files.conformance import schema_problems
from landscape_mpi.files.reader import file_kind

TOY = ["--model", "hessian_toys:make_model", "--dataset", "hessian_toys:make_data"]


def all_names(path) -> set[str]:
    """Every dataset and attribute of a file as the schema writes names (``object@attribute``)."""
    with h5py.File(path, "r") as f:
        names = {f"/@{a}" for a in f.attrs}

        def visit(rel, obj):
            if isinstance(obj, h5py.Dataset):
                names.add("/" + rel)
            names.update(f"/{rel}@{a}" for a in obj.attrs)
        f.visititems(visit)
    return names


def seen_entries(kind: str, paths) -> set[str]:
    """The schema entries of `kind` that some dataset or attribute of the files matches."""
    values = {"metric": ("loss", "r2")}  # the user task's (task_toys.SquaredError)
    seen = set()
    for path in paths:
        for name in all_names(path):
            seen.update(e.name for e in contract.SCHEMAS[kind] if e.pattern(values).match(name))
    return seen


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, str]:
    """Real files of every kind and many options: name -> path."""
    d = tmp_path_factory.mktemp("schema")
    data = hessian_toys.make_data("train").tensors
    model = hessian_toys.make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for epoch in range(1, 5):  # a short training: the trajectory's checkpoints
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(data[0]), data[1]).backward()
            opt.step()
        torch.save({"state_dict": model.state_dict(), "epoch": epoch}, d / f"epoch_{epoch:03d}.pt")
    final, first = str(d / "epoch_004.pt"), str(d / "epoch_001.pt")
    out = {name: str(d / f"{name}.h5") for name in ("hessian", "eig_hessian_dirs", "pca", "target_3d", "lm",
                                                       "regress", "user_task", "path_chain", "path_lm",
                                                       "path_aligned", "adaptive")}
    runs = {
        "hessian": ["hessian", *TOY, "--checkpoint", final, "--samples", "40", "--top-k", "2", "--tol", "1e-2",
                    "--trace-probes", "2", "--slq-runs", "2", "--slq-steps", "4", "--adaptive-samples", "2",
                    "--blocks", "module"],
        "eig_hessian_dirs": ["surface", *TOY, "--checkpoint", final, "--directions", "hessian", "--hessian-file",
                             out["hessian"], "--x=-1:1:2", "--metrics", "loss,eig", "--eig-tol", "0.1",
                             "--samples", "30"],
        "pca": ["surface", *TOY, "--checkpoint", final, "--directions", "pca", "--trajectory",
                str(d / "epoch_*.pt"), "--x=-1:1:2", "--y=-1:1:2"],
        "target_3d": ["surface", *TOY, "--checkpoint", final, "--x-target", first, "--x=0:1:2", "--y=-1:1:2",
                      "--z=-1:1:2", "--splits", "test"],
    }
    torch.save(task_toys.make_lm().state_dict(), d / "lm.pt")
    torch.manual_seed(1)
    torch.save(task_toys.TinyLM().state_dict(), d / "lm_other.pt")
    torch.save(task_toys.make_regressor().state_dict(), d / "reg.pt")
    reg = ["--model", "task_toys:make_regressor", "--dataset", "task_toys:regress_data", "--checkpoint",
           str(d / "reg.pt"), "--x=-1:1:3"]
    runs["lm"] = ["surface", "--model", "task_toys:make_lm", "--dataset", "task_toys:token_data", "--task", "lm",
                  "--checkpoint", str(d / "lm.pt"), "--x=-1:1:3"]
    sequential = ["--tolerance", "0.5", "--min-samples", "8", "--tolerance-block", "4"]  # its columns and rule
    runs["regress"] = ["surface", *reg, "--task", "regress", *sequential]
    runs["user_task"] = ["surface", *reg, "--task", "task_toys:squared_error"]
    runs["adaptive"] = ["surface", *reg, "--task", "regress", "--adaptive", "3", "--adaptive-coarse", "1"]
    models = [a for e in (1, 2, 4) for a in ("--checkpoint", str(d / f"epoch_{e:03d}.pt"))]
    runs["path_chain"] = ["path", *TOY, "--kind", "chain", *models, "--points", "3", "--samples", "30"]
    runs["path_lm"] = ["path", "--model", "task_toys:make_lm", "--dataset", "task_toys:token_data", "--task", "lm",
                       "--checkpoint", str(d / "lm.pt"), "--checkpoint", str(d / "lm_other.pt"), "--points", "3",
                       *sequential]
    runs["path_aligned"] = ["path", *TOY, "--align", *models[:4], "--points", "2", "--samples", "30"]
    for name, args in runs.items():
        assert main([*args, "--out", out[name]]) == 0, name
    # a resumed run on other ranks keeps the earlier run's table (the writer's own call, as a resume makes it)
    for kind in ("pca", "path_chain"):
        out[f"{kind}_resumed"] = str(d / f"{kind}_resumed.h5")
        shutil.copy(out[kind], out[f"{kind}_resumed"])
        store.write_run_ranks(out[f"{kind}_resumed"], ["node-a", "node-b"], ["cpu", "cpu"])
    return out


def test_written_files_hold_only_the_schema(written):
    for name, path in written.items():
        assert schema_problems(path) == [], name
    # the task metrics are in the files, under the names the schema declares
    names = {k: all_names(p) for k, p in written.items()}
    assert {"/results/train_ppl", "/results/test_token_acc"} <= names["lm"]
    assert {"/results/train_r2", "/results/test_r2"} <= names["regress"]
    assert "/results/train_acc" not in names["regress"]
    assert {"/results/train_r2"} <= names["user_task"]
    assert {"/results/eig_max", "/data/train_indices", "/@hessian_eigenvalues"} <= names["eig_hessian_dirs"]
    assert {"/trajectory/step_norms", "/trajectory@centered"} <= names["pca"]
    assert {"/coords/z", "/@x_target_sha256", "/@test_data_sha256"} <= names["target_3d"]
    assert {"/ranks/run_0_host", "/ranks/host"} <= names["pca_resumed"]
    assert {"/path/knots", "/results/test_acc", "/data/train_indices"} <= names["path_chain"]
    assert {"/results/train_token_acc", "/results/test_ppl"} <= names["path_lm"]
    assert "/@alignment" in names["path_aligned"]
    from landscape_mpi.files.path_reader import read_path  # the path file's reader reads what its writer wrote

    assert read_path(written["path_chain"]).kind == "chain" and read_path(written["path_lm"]).kind == "linear"


def test_every_schema_entry_is_written_somewhere(written):
    """No entry of the schemas is dead: each is matched by a file written above."""
    kinds = {k: file_kind(p) for k, p in written.items()}
    for kind, schema in contract.SCHEMAS.items():
        files = [written[k] for k, v in kinds.items() if v == kind]
        assert seen_entries(kind, files) == {e.name for e in schema}, kind


def test_a_planted_departure_is_caught(written, tmp_path):
    path = tmp_path / "planted.h5"
    shutil.copy(written["eig_hessian_dirs"], path)
    with h5py.File(path, "r+") as f:
        shape = f["results/done"].shape
        f.create_dataset("results/train_bogus", data=np.zeros(shape))  # a metric no task has
        f.create_dataset("extra/values", data=np.zeros(3))
        f.attrs["note"] = "hand-written"
        f["trajectory_like"] = np.zeros(2)
        del f["results/seconds"]
        f.create_dataset("results/seconds", data=np.zeros(shape, dtype=np.float32))
        del f["results/rank"]
        f.create_dataset("results/rank", data=np.zeros((7,), dtype=np.int32))  # not the grid's shape
        del f.attrs["grid_indexing"]
    problems = schema_problems(str(path))
    expected = ["/results/train_bogus: a dataset", "/extra: a group", "/extra/values: a dataset",
                "/@note: an attribute", "/trajectory_like: a dataset", "/results/seconds: is float32, not float64",
                "/results/rank: grid = (7,)", "/@grid_indexing: written always, missing"]
    assert len(problems) == len(expected), problems
    for needle in expected:
        assert any(p.startswith(needle) for p in problems), (needle, problems)
    # a Hessian file with an attribute of the wrong type, and a group the schema lacks
    hpath = tmp_path / "planted_hessian.h5"
    shutil.copy(written["hessian"], hpath)
    with h5py.File(hpath, "r+") as f:
        f["eigen"].attrs["maxiter"] = "1000"
        f.create_group("eigenvectors/row_000/extra")
    assert sorted(schema_problems(str(hpath))) == ["/eigen@maxiter: is str, not int",
                                                   "/eigenvectors/row_000/extra: a group the schema does not have"]


def test_a_planted_departure_in_a_path_file_is_caught(written, tmp_path):
    path = tmp_path / "path.h5"
    shutil.copy(written["path_chain"], path)
    with h5py.File(path, "r+") as f:
        f["path/coefficients_extra"] = np.zeros(2)
        f["results/done"].attrs["note"] = 1
        del f["path/endpoints"]
        f["path/endpoints"] = np.zeros((1, 3), dtype=np.int64)  # (n_curves, 2) in the schema
    assert sorted(p.split(":")[0] for p in schema_problems(str(path))) == [
        "/path/coefficients_extra", "/path/endpoints", "/results/done@note"]


def test_schema_names_every_task_metric():
    from landscape_mpi.tasks import make_task

    for name in ("classify", "lm", "regress"):
        for metric in make_task(name).metrics:
            assert any(e.pattern().match(f"/results/train_{metric}") for e in contract.SURFACE_SCHEMA), metric
            assert any(e.pattern().match(f"/results/test_{metric}") for e in contract.PATH_SCHEMA), metric
    assert not any(e.pattern().match("/results/train_nonsense") for e in contract.SURFACE_SCHEMA)


def test_file_format_md_tables_are_the_schema():
    doc = (ROOT / "docs" / "file-format.md").read_text()
    for kind in contract.SCHEMAS:
        assert f"<!-- schema:{kind} -->" in doc, kind
    assert contract.render_docs(doc) == doc, (
        "docs/file-format.md's schema tables differ from files/contract.py: "
        "run .venv/bin/python -m landscape_mpi.files.contract docs/file-format.md")
    assert "token_acc" in doc and "r2" in doc and "ppl" in doc
