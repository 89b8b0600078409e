"""Sequential estimates per point (--tolerance; landscape_mpi/engine/sequential.py,
docs/method.md#sequential-estimates): the stopping rule's coverage, the one order at every point, the file's
record of the rule, exact mode unchanged, bad input, and three MPI ranks equal to one process."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import h5py
import numpy as np
import pytest
import torch

import landscape_toys
import sequential_toys
from conftest import cli, mpiexec, one_line_error, run
from landscape_mpi.cli import main
from landscape_mpi.data.datasets import EvalSet
from landscape_mpi.engine.eager import EagerEngine
from landscape_mpi.engine.sequential import SequentialEngine, SequentialRule
from landscape_mpi.files.conformance import schema_problems

N_TRAIN = sequential_toys.SIZES["train"]
COMMON = ["--model", "landscape_toys:make_model", "--dataset", "sequential_toys:make_data", "--x=-2:2:5",
          "--threads", "1"]
RULE = ["--tolerance", "0.05", "--min-samples", "100", "--tolerance-block", "20"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    return sequential_toys.train_checkpoint(tmp_path_factory.mktemp("seq") / "toy.pt")


@pytest.fixture(scope="module")
def files(ckpt, tmp_path_factory) -> dict[str, str]:
    """One sequential and one exact 1D surface of the toy, computed in process."""
    out = tmp_path_factory.mktemp("seqfiles")
    paths = {"seq": str(out / "seq.h5"), "exact": str(out / "exact.h5")}
    assert main(["surface", *COMMON, "--checkpoint", ckpt, *RULE, "--out", paths["seq"]]) == 0
    assert main(["surface", *COMMON, "--checkpoint", ckpt, "--out", paths["exact"]]) == 0
    return paths


class one_thread:
    """torch on one thread inside (the tiny forwards are dominated by threading overhead on a busy machine)."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)


def toy_engine(ckpt: str, direction: dict, split: EvalSet) -> EagerEngine:
    model = landscape_toys.make_model()
    model.load_state_dict(torch.load(ckpt))
    return EagerEngine(model.eval(), [direction], [split], loss="ce", device=torch.device("cpu"), precision="fp32",
                       batch_size=128)


def toy_direction(ckpt: str) -> dict:
    g = torch.Generator().manual_seed(0)
    state = torch.load(ckpt)
    return {k: torch.randn(v.shape, generator=g) * (v.norm() / v.numel() ** 0.5) for k, v in state.items()
            if v.is_floating_point() and v.dim() > 1}


def test_coverage_of_the_reported_interval(ckpt):
    """Over 120 random orders at 2 points (240 estimates), the full-pass value lies within +-2 reported standard
    errors about as often as a normal error does (95%; measured 94.2%, accuracy 95.4%): asserted band 0.87..0.99
    (binomial sd at 240 trials: 0.015; optional stopping can take it below 95%). Negative control: the
    interval shrunk to +-0.5 se covers far less (a normal error: 38%), so the test fails if the reported se were
    inflated. Accuracy carries its own (jackknife) standard error, checked the same way."""
    x, y = sequential_toys.make_data("train").tensors
    split = EvalSet("train", x, y)
    d = toy_direction(ckpt)
    points = np.array([[0.0], [1.0]])
    with one_thread():
        full = toy_engine(ckpt, d, split).evaluate(points)  # the exact oracle: every sample
        runs = []
        for seed in range(120):
            inner = toy_engine(ckpt, d, split)
            runs.append(SequentialEngine(inner, inner.task, SequentialRule(0.03, 100, 20, seed), 128, "fp32",
                                         torch.device("cpu")).evaluate(points))
    runs = np.array(runs)  # (orders, points, [loss, acc, samples, se(loss), se(acc)])
    assert (runs[:, :, 2] < N_TRAIN).mean() > 0.9  # the rule did stop early: an estimate, not the full pass
    loss_err, acc_err = np.abs(runs[:, :, 0] - full[:, 0]), np.abs(runs[:, :, 1] - full[:, 1])
    covered = (loss_err <= 2 * runs[:, :, 3]).mean()
    assert 0.87 <= covered <= 0.99, covered
    assert (loss_err <= 0.5 * runs[:, :, 3]).mean() < 0.6  # negative control: a shrunk interval fails
    covered_acc = (acc_err <= 2 * runs[:, :, 4]).mean()
    assert 0.87 <= covered_acc <= 1.0, covered_acc
    assert (acc_err <= 0.5 * runs[:, :, 4]).mean() < 0.6


class Recorder(torch.nn.Module):
    """The toy model, recording the inputs every forward sees (in a list outside the module: engines copy it)."""

    seen: list[torch.Tensor] = []

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        Recorder.seen.append(x.detach().clone())
        return self.model(x)


def test_the_same_order_at_every_point(ckpt):
    """The samples each point reads, identified by their inputs, are a prefix of one order, the same at every
    point: numpy.random.default_rng([seed, 0x5E9, 0]).permutation(n), as the file's rule attribute says."""
    x, y = sequential_toys.make_data("train").tensors
    model = landscape_toys.make_model()
    model.load_state_dict(torch.load(ckpt))
    engine = EagerEngine(Recorder(model).eval(), [{"model." + k: v for k, v in toy_direction(ckpt).items()}],
                         [EvalSet("train", x, y)], loss="ce", device=torch.device("cpu"), precision="fp32",
                         batch_size=40)
    seq = SequentialEngine(engine, engine.task, SequentialRule(0.05, 60, 20, 7), 40, "fp32", torch.device("cpu"))
    index = {tuple(row.tolist()): i for i, row in enumerate(x)}
    order = np.random.default_rng([7, 0x5E9, 0]).permutation(N_TRAIN)
    read = []
    for point in ([0.0], [0.7], [2.0]):
        Recorder.seen.clear()
        samples = int(seq.evaluate(np.array([point]))[0, 2])
        ids = [index[tuple(row.tolist())] for batch in Recorder.seen for row in batch]
        assert len(ids) >= samples  # whole forwards: a stop inside one leaves the rest of it unused
        assert ids[:samples] == order[:samples].tolist()
        read.append(samples)
    assert len(set(read)) > 1  # the points stopped at different lengths of the one order


def test_file_records_the_rule_and_reads_less_where_the_loss_is_high(files):
    with h5py.File(files["seq"], "r") as f:
        rule = json.loads(f.attrs["sequential"])
        r = {k: f["results"][k][()] for k in f["results"]}
    with h5py.File(files["exact"], "r") as f:
        exact = {k: f["results"][k][()] for k in f["results"]}
    assert schema_problems(files["seq"]) == []
    assert rule["tolerance"] == 0.05 and rule["min_samples"] == 100 and rule["block"] == 20
    assert rule["order_seed"] == 0 and rule["split_samples"] == sequential_toys.SIZES
    assert r["done"].all()
    samples = r["train_samples"]
    # high, smooth loss far from theta* (x = +-2): a fraction of the split pins it down
    assert samples[0] < N_TRAIN / 2 and samples[-1] < N_TRAIN / 2, samples
    assert exact["train_loss"][0] > 2 * exact["train_loss"][2]
    for split in ("train", "test"):
        loss, se = r[f"{split}_loss"], r[f"{split}_loss_se"]
        whole = r[f"{split}_samples"] == sequential_toys.SIZES[split]
        assert np.all(se[~whole] <= 0.05 * np.abs(loss[~whole]) + 1e-15)  # the rule held where it stopped
        assert np.all(se[whole] == 0)  # the whole split read: no sampling error
        np.testing.assert_allclose(loss[whole], exact[f"{split}_loss"][whole], rtol=1e-6)
        assert np.all(np.abs(loss - exact[f"{split}_loss"]) <= 4 * se + 1e-6 * np.abs(loss))
    # info reports the rule and the samples read; the plots draw the uncertainty map
    from landscape_mpi.numbers.summary import describe

    info = describe(files["seq"])
    assert info["estimates"]["splits"]["train"]["samples_max"] == int(samples.max())
    assert info["sharpness"]["train_loss"]["uncertainty"]["center_se"] == float(r["train_loss_se"][2])
    from plotting.cli import main as plot

    out = os.path.join(os.path.dirname(files["seq"]), "figures")
    assert plot([files["seq"], "--kind", "uncertainty", "--out", out]) == 0
    assert os.path.getsize(os.path.join(out, "seq_train_loss_uncertainty.png")) > 0


def test_exact_mode_unchanged(files):
    """Without --tolerance the file is what it was before the rule existed: no rule attribute, no sequential
    columns, no rule field in the stored config; its values are every sample's (checked against the eager
    oracle on the same points)."""
    with h5py.File(files["exact"], "r") as f:
        assert "sequential" not in f.attrs
        assert sorted(f["results"]) == ["done", "rank", "seconds", "test_acc", "test_loss", "train_acc", "train_loss"]
        config = json.loads(f.attrs["config"])
        loss = f["results"]["train_loss"][()]
        ckpt = f.attrs["checkpoint"]
        direction = {k: torch.from_numpy(f["directions"]["x"][k][()]) for k in f["directions"]["x"]}
    assert not {"tolerance", "min_samples", "tolerance_block"} & set(config)
    x, y = sequential_toys.make_data("train").tensors
    oracle = toy_engine(ckpt, direction, EvalSet("train", x, y)).evaluate(np.linspace(-2, 2, 5)[:, None])
    np.testing.assert_allclose(loss, oracle[:, 0], rtol=1e-5)


def sha(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


@pytest.mark.parametrize("case", ["zero", "one", "negative", "min-samples alone", "exact file, --tolerance",
                                  "sequential file, no --tolerance"])
def test_bad_input_is_one_line_and_nothing_changes(ckpt, files, case, tmp_path, capsys):
    fresh = str(tmp_path / "new.h5")
    args, out, needles = {
        "zero": (["--tolerance", "0"], fresh, ["--tolerance 0.0", "between 0 and 1"]),
        "one": (["--tolerance", "1"], fresh, ["--tolerance 1.0", "between 0 and 1"]),
        "negative": (["--tolerance=-0.1"], fresh, ["--tolerance -0.1"]),
        "min-samples alone": (["--min-samples", "50"], fresh, ["--min-samples", "add --tolerance"]),
        "exact file, --tolerance": (RULE, files["exact"], ["--tolerance", "exact full passes"]),
        "sequential file, no --tolerance": ([], files["seq"], ["--tolerance", "add --tolerance 0.05"]),
    }[case]
    before = sha(out) if os.path.exists(out) else None
    capsys.readouterr()
    code = main(["surface", *COMMON, "--checkpoint", ckpt, *args, "--out", out])
    one_line_error(subprocess.CompletedProcess([], code, *capsys.readouterr()), *needles)
    assert (sha(out) if os.path.exists(out) else None) == before


def test_three_ranks_equal_one_process(ckpt, files, tmp_path):
    """Under mpiexec -n 3 every point reads the same samples and gets the same values and standard errors."""
    out = str(tmp_path / "mpi.h5")
    run(mpiexec(3) + cli("surface", *COMMON, "--checkpoint", ckpt, *RULE, "--out", out), timeout=300)
    with h5py.File(out, "r") as a, h5py.File(files["seq"], "r") as b:
        assert set(a["results"]) == set(b["results"])
        assert len(set(a["results"]["rank"][()].tolist())) > 1  # more than one rank computed points
        for name in a["results"]:
            if name not in ("rank", "seconds"):
                assert np.array_equal(a["results"][name][()], b["results"][name][()], equal_nan=True), name


def test_resume_recomputes_the_same_estimates(ckpt, files, tmp_path):
    """A file whose last points were lost (as after a kill: done 0, values NaN) resumes under the same command,
    and the points it computes again read the same samples and get the same bits."""
    out = str(tmp_path / "resumed.h5")
    shutil.copy(files["seq"], out)
    with h5py.File(out, "r+") as f:
        r = f["results"]
        r["done"][3:] = 0
        for name in r:
            if name.endswith(("_loss", "_acc", "_se")):
                r[name][3:] = np.nan
            elif name.endswith("_samples"):
                r[name][3:] = -1
    assert main(["surface", *COMMON, "--checkpoint", ckpt, *RULE, "--out", out]) == 0
    with h5py.File(out, "r") as a, h5py.File(files["seq"], "r") as b:
        # the points kept were not computed again (their timings are the first run's)
        assert np.array_equal(a["results"]["seconds"][:3], b["results"]["seconds"][:3])
        for name in b["results"]:
            if name not in ("rank", "seconds"):
                assert np.array_equal(a["results"][name][()], b["results"][name][()], equal_nan=True), name
