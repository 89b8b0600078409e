"""Evaluation splits read in batches (landscape_mpi/data/stream.py): --stream-data and iterable datasets.

The oracle is the in-memory path (the split collated once into tensors): a streamed run must give the same
values, the same --samples subset and the same fingerprint (so either resumes the other), and hold one batch
at a time (peak memory measured against the in-memory run of the same command, which must exceed it).
"""

from __future__ import annotations

import h5py
import numpy as np
import torch

import peak_memory
import stream_toys
import task_toys
from conftest import cli, mpiexec, one_line_error, run
from landscape_mpi.data.stream import READ_BATCH

LM = ["--task", "lm", "--x=-1:1:3", "--y=-1:1:3", "--batch-size", "7"]


def save(model, path) -> str:
    torch.save(model.state_dict(), path)
    return str(path)


def contents(path) -> tuple[dict, dict]:
    with h5py.File(path, "r") as f:
        data = f["data"] if "data" in f else {}
        return ({k: f["results"][k][()] for k in f["results"] if k not in ("rank", "seconds")},
                {**{k: str(v) for k, v in f.attrs.items() if k.endswith("_data_sha256")},
                 **{k: data[k][()].tolist() for k in data if k.endswith("_indices")}})


def engine_line(p) -> str:
    return next((line for line in (p.stdout + p.stderr).splitlines() if "evaluation data is streamed" in line), "")


def test_iterable_and_streamed_map_style_equal_the_in_memory_split(tmp_path):
    ck = save(task_toys.make_lm(), tmp_path / "lm.pt")
    plain = ["--model", "task_toys:make_lm"]
    runs = {"memory": ["--dataset", "task_toys:token_data"],
            "streamed": ["--dataset", "task_toys:token_data", "--stream-data"],
            "iterable": ["--dataset", "stream_toys:token_stream", "--stream-data"],
            "iterable collated": ["--dataset", "stream_toys:token_stream"]}
    got = {}
    for name, args in runs.items():
        out = tmp_path / f"{name.replace(' ', '_')}.h5"
        p = run(cli("surface", *LM, *plain, *args, "--samples", "13", "--checkpoint", ck, "--out", str(out)))
        # the streamed runs really read in batches (the eager engine, told why); the others hold the split
        assert ("--stream-data" in args) == bool(engine_line(p)), (name, p.stdout)
        got[name] = contents(out)
    memory = got.pop("memory")
    for name, (values, prints) in got.items():
        assert values.keys() == memory[0].keys()
        for k in values:
            np.testing.assert_array_equal(values[k], memory[0][k], err_msg=f"{name}: {k}")
        assert prints == memory[1], name
    # and the subset is --samples' seeded one: 13 of the 20 sequences, in order
    assert memory[0]["test_loss"].shape == (3, 3) and np.all(np.isfinite(memory[0]["test_loss"]))


def test_a_file_computed_in_memory_is_complete_for_a_streamed_resume(tmp_path):
    ck = save(task_toys.make_lm(), tmp_path / "lm.pt")
    out = tmp_path / "s.h5"
    base = ["surface", *LM, "--model", "task_toys:make_lm_output", "--checkpoint", ck, "--out", str(out)]
    run(cli(*base, "--dataset", "task_toys:dict_data"))
    # the identity (fingerprints included) matches: nothing left to compute, not "a different dataset"
    p = run(cli(*base, "--dataset", "task_toys:dict_data", "--stream-data"))
    assert "nothing to compute" in p.stdout + p.stderr
    # and an iterable twin of the same items has the file's fingerprints (only the --dataset name differs)
    p = run(cli(*base, "--dataset", "stream_toys:dict_stream", "--stream-data"), check_rc=2)
    assert "dataset: file has" in p.stderr and "evaluation samples differ" not in p.stderr, p.stderr


def test_streamed_under_two_ranks_equals_one_process(tmp_path):
    ck = save(task_toys.make_lm(), tmp_path / "lm.pt")
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    args = ["surface", *LM, "--model", "task_toys:make_lm_output", "--dataset", "stream_toys:dict_stream",
            "--stream-data", "--checkpoint", ck]
    run(cli(*args, "--out", str(one)))
    run([*mpiexec(2), *cli(*args, "--out", str(two))])
    a, b = contents(one), contents(two)
    for k in ("train_loss", "test_loss", "train_token_acc", "test_token_acc"):
        np.testing.assert_array_equal(a[0][k], b[0][k], err_msg=k)
    assert a[1] == b[1]


def test_items_that_cannot_be_collated_are_one_line_and_no_file(tmp_path):
    ck = save(task_toys.make_lm(), tmp_path / "lm.pt")
    out = tmp_path / "s.h5"
    p = run(cli("surface", *LM, "--model", "task_toys:make_lm", "--dataset", "stream_toys:ragged_stream",
                "--stream-data", "--checkpoint", ck, "--out", str(out)), check_rc=None)
    one_line_error(p, "stream_toys:ragged_stream", "pad them")
    assert not out.exists()


def test_memory_is_bounded_by_the_batch_not_the_split(tmp_path):
    ck = save(stream_toys.make_big_classifier(), tmp_path / "big.pt")
    split_mb = stream_toys.BIG_N * stream_toys.BIG_DIM * 4 / 2**20
    base = ["surface", "--model", "stream_toys:make_big_classifier", "--dataset", "stream_toys:big_vectors",
            "--splits", "test", "--x=0:0:1", "--checkpoint", ck, "--batch-size", "512"]

    def measured(name, *extra):
        live, folder = tmp_path / f"{name}.live", tmp_path / f"peaks-{name}"
        folder.mkdir()
        p = run(peak_memory.command(*base, *extra, "--out", str(tmp_path / f"{name}.h5")), timeout=600,
                PEAKS_DIR=folder, **{stream_toys.LIVE_FILE: live})
        (peak,) = peak_memory.peaks(folder)
        return p, int(live.read_text()), peak

    streamed, s_items, s_peak = measured("s", "--stream-data")
    assert engine_line(streamed)
    memory, m_items, m_peak = measured("m")
    print(f"items alive at once: streamed {s_items}, in memory {m_items}; peaks (MB): streamed {s_peak}, "
          f"in memory {m_peak}; split {split_mb:.0f} MB")
    # the items the dataset made that were alive at once (counted by the dataset, whatever malloc keeps): the
    # in-memory run holds the split (the control: the count can fail), the streamed one at most one read batch
    assert m_items == stream_toys.BIG_N, m_items
    assert 0 < s_items <= READ_BATCH, s_items
    # and the memory the process allocated (peak_memory.py: anonymous, not the libraries' file pages): the
    # in-memory run holds at least the split's bytes more
    assert m_peak["anon"] - s_peak["anon"] > split_mb, (s_peak, m_peak, split_mb)
    np.testing.assert_allclose(contents(tmp_path / "s.h5")[0]["test_loss"], contents(tmp_path / "m.h5")[0]["test_loss"],
                               rtol=1e-6)
