"""The findings experiments: measures against independent computations, a tiny experiment end to end through the
CLI (resumable, a rerun costs nothing), and a report generated from the files alone."""

import os
import shutil

import h5py
import numpy as np
import pytest
import scipy.stats

from conftest import cli, run
from landscape_mpi.errors import UserError
from landscape_mpi.experiments import experiment, experiments, measures
from landscape_mpi.models import ZOO

TINY = ("--tiny",)


# ------------------------------------------------------------------------------------------ measures
def test_roughness_of_known_surfaces():
    x = np.linspace(-1, 1, 21)
    h = x[1] - x[0]
    # a parabola's second difference is 2 h^2 everywhere; its range over [-1, 1] is 1
    assert measures.roughness(x**2) == pytest.approx(2 * h**2, rel=1e-12)
    assert measures.roughness(3 * x + 1) == pytest.approx(0, abs=1e-12)  # a line
    zigzag = np.where(np.arange(21) % 2 == 0, 0.0, 1.0)  # every second difference is 2, range 1
    assert measures.roughness(zigzag) == pytest.approx(2.0)
    with_gap = x**2
    with_gap[5] = np.nan  # not computed: the three runs through it are left out
    assert measures.roughness(with_gap) == pytest.approx(2 * h**2, rel=1e-12)


def test_nonconvex_fraction_and_sharpness():
    x = np.linspace(-1, 1, 11)
    X, Y = np.meshgrid(x, x, indexing="ij")
    assert measures.nonconvex_fraction(X**2 + 2 * Y**2, x, x) == 0
    assert measures.nonconvex_fraction(X**2 - Y**2, x, x) == 1
    assert measures.nonconvex_fraction(X * Y, x, x) == 1  # Hessian [[0, 1], [1, 0]]: eigenvalue -1
    # within radius 0.45 of the center of x^2 + 2 y^2 (grid step 0.2), the highest points are (+-0.2, +-0.4),
    # at distance 0.447: 0.04 + 0.32; radius 0.4 keeps only (0, +-0.4): 0.32
    assert measures.eps_sharpness(X**2 + 2 * Y**2, [x, x], 0.45) == pytest.approx(0.36)
    assert measures.eps_sharpness(X**2 + 2 * Y**2, [x, x], 0.4) == pytest.approx(0.32)
    assert measures.curvature_1d(3 * x**2 + x + 1, x, 0.5) == pytest.approx(6.0)
    assert measures.eig_ratio_mean(np.array([-1.0, 0.0, np.nan]), np.array([2.0, 4.0, 1.0])) == pytest.approx(0.25)


def test_spearman_against_scipy():
    rng = np.random.RandomState(0)
    for _ in range(5):
        a, b = rng.rand(6), rng.rand(6)
        b[2] = b[3]  # a tie
        assert measures.spearman(list(a), list(b)) == pytest.approx(scipy.stats.spearmanr(a, b)[0])


# ------------------------------------------------------------------------------------------ definitions
def test_definitions():
    for exp in experiments("all", "tiny"):
        assert all(r.config["epochs"] == 1 for r in exp.runs)
        assert {r.config["model"] for r in exp.runs} <= set(ZOO)
        grids = [a for s in exp.surfaces for a in s.args if a.startswith(("--x=", "--y="))]
        assert all(g.endswith(":5") or g.endswith(":3") or g.endswith(":1") for g in grids), grids
    assert {r.config["model"] for r in experiment("skip", "tiny").runs} == {"resnet1d_8_w1", "resnet1d_8_noshort_w1"}
    for scale in ("small", "paper"):
        for exp in experiments("all", scale):
            assert {r.config["model"] for r in exp.runs} <= set(ZOO)
    assert len({r.config["model"] for r in experiment("skip", "small").runs}) == 6  # 3 depths x shortcut or not
    with pytest.raises(UserError, match="unknown"):
        experiment("nope", "tiny")


def test_user_errors_exit_2(tmp_path):
    p = run(cli("experiments", "run", "nope", "--tiny", "--out-dir", str(tmp_path)), check_rc=2)
    assert len(p.stderr.strip().splitlines()) == 1 and "choose one of" in p.stderr
    p = run(cli("experiments", "run", "width", "--tiny", "--task", "7", "--out-dir", str(tmp_path)), check_rc=2)
    assert "--task 7" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = run(cli("experiments", "report", "--out-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "r.md")),
            check_rc=2)
    assert "holds no experiment" in p.stderr


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def width_run(tmp_path_factory):
    """The tiny width experiment (two 1-epoch trainings, two 5x5 surfaces), run through the CLI."""
    out = tmp_path_factory.mktemp("exp")
    run(cli("experiments", "run", "width", *TINY, "--out-dir", str(out), "--device", "cpu"), timeout=600)
    return out


def test_run_writes_complete_surfaces(width_run):
    for name in ("d8_noshort_w1", "d8_noshort_w4"):
        with h5py.File(width_run / "width" / f"{name}.h5", "r") as f:
            assert f["results/done"][()].all() and f["results/train_loss"].shape == (5, 5)
    assert (width_run / "runs" / "resnet1d_8_noshort_w4_e1" / "final.pt").is_file()


def test_rerun_of_finished_experiment_costs_nothing(width_run):
    files = sorted(p for p in width_run.rglob("*") if p.is_file())
    before = {p: os.path.getmtime(p) for p in files if p.name != "manifest.json"}
    p = run(cli("experiments", "run", "width", *TINY, "--out-dir", str(width_run)))
    assert "training" not in p.stderr and "landscape-mpi surface" not in p.stderr, p.stderr
    assert before == {q: os.path.getmtime(q) for q in before}


def test_report_is_deterministic_and_follows_the_files(width_run, tmp_path):
    out = tmp_path / "docs" / "findings.md"
    args = cli("experiments", "report", "--out-dir", str(width_run), "--out", str(out))
    run(args)
    first = out.read_text()
    assert "![narrow vs wide no-shortcut ResNet](findings/width_surfaces.png)" in first
    assert (tmp_path / "docs" / "findings" / "width_surfaces.png").is_file()
    assert "**Wider networks are smoother: " in first
    run(args)
    assert out.read_text() == first  # same files, same report
    # the roughness in the table is the one of the file's values (independent: recomputed here by hand)
    with h5py.File(width_run / "width" / "d8_noshort_w4.h5", "r") as f:
        v = f["results/train_loss"][()]
    d2 = np.concatenate([np.abs(v[:-2] - 2 * v[1:-1] + v[2:]).ravel(), np.abs(v[:, :-2] - 2 * v[:, 1:-1] + v[:, 2:]).ravel()])
    assert f"| x4 | 8 | {v[2, 2]:.4g} |" in first and f" {d2.mean() / (v.max() - v.min()):.4g} |" in first
    # change one value in a file: the report changes with it
    with h5py.File(width_run / "width" / "d8_noshort_w4.h5", "r+") as f:
        f["results/train_loss"][2, 2] = 0.123456
    try:
        run(args)
        assert out.read_text() != first and "| x4 | 8 | 0.1235 |" in out.read_text()
    finally:
        with h5py.File(width_run / "width" / "d8_noshort_w4.h5", "r+") as f:
            f["results/train_loss"][2, 2] = v[2, 2]


def test_steps_needing_missing_options_are_skipped_and_reported(width_run, tmp_path, monkeypatch):
    """A step whose surface options this installation lacks is recorded as skipped, and the report says so."""
    import landscape_mpi.experiments.runner as runner

    shutil.copytree(width_run / "runs", tmp_path / "runs")  # finished trainings: nothing to train
    monkeypatch.setattr(runner, "surface_options", lambda: set())
    exp = experiment("width", "tiny")
    exp = type(exp)(exp.name, exp.claim, exp.scale, exp.runs,
                    tuple(type(s)(s.name, s.run, s.args, ("--no-such-option",), None, s.role) for s in exp.surfaces))
    runner.run_experiment(exp, str(tmp_path), device="cpu", log=lambda m: None)
    assert (tmp_path / "width" / "d8_noshort_w1.skipped").is_file()
    assert not (tmp_path / "width" / "d8_noshort_w1.h5").exists()
    from landscape_mpi.experiments.report import render

    text = render(str(tmp_path), str(tmp_path / "fig"), "fig")
    assert "`d8_noshort_w1` not computed: landscape-mpi surface in this installation has no --no-such-option." in text
    assert "**Wider networks are smoother: inconclusive at this scale.** a surface is missing." in text
