"""Adaptive grids (--adaptive): the refinement rule against a known bump, the job end to end on a model whose
loss is that bump (tests/adaptive_toys.py), one process against `mpiexec -n 3` (the same points, the same
values), a run killed mid-way and resumed (the same points), and bad input (one line, exit 2, no file changed)."""

from __future__ import annotations

import hashlib
import shutil

import h5py
import numpy as np
import pytest
from matplotlib import tri

import adaptive_toys
from conftest import cli, mpiexec, run
from landscape_mpi.cli import main
from landscape_mpi.numbers.refinement import BUDGET, Refinement, Rule

GRID = ["--x=-1:1:17", "--y=-1:1:17"]
BUDGET_POINTS = 70


def bump_grid(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.array([[adaptive_toys.bump(a, b) for b in y] for a in x])


def refine(rule: Rule, values: np.ndarray) -> Refinement:
    refinement = Refinement(rule)
    points = refinement.start()
    while len(points):
        points = refinement.advance(values.ravel())
    return refinement


def test_rule_concentrates_on_the_bump_and_beats_a_regular_grid_of_as_many_points():
    """On a 33x33 lattice, 150 points chosen in rounds of 12: at least 4x denser within 0.35 of the bump than
    elsewhere, every round's points new, and the linear interpolation of the chosen points (a Delaunay
    triangulation) is closer to the bump at every lattice point than that of the regular 13x13 grid (169 points)."""
    x = y = np.linspace(-1, 1, 33)
    f = bump_grid(x, y)
    r = refine(Rule((x, y), 150, 2, 12, 0.0), f)
    chosen = (r.round_of >= 0).reshape(33, 33)
    assert r.finished == BUDGET and 150 - 25 < chosen.sum() <= 150
    assert np.bincount(r.round_of[r.round_of >= 0])[0] == 25  # round 0: the 5x5 coarse grid
    X, Y = np.meshgrid(x, y, indexing="ij")
    near = np.hypot(X - adaptive_toys.CENTER[0], Y - adaptive_toys.CENTER[1]) < 0.35
    assert chosen[near].mean() > 4 * chosen[~near].mean()

    def max_error(mask):
        t = tri.Triangulation(X[mask], Y[mask])
        return float(np.max(np.abs(tri.LinearTriInterpolator(t, f[mask])(X, Y) - f)))

    regular = np.isin(np.arange(33), np.round(np.linspace(0, 32, 13)).astype(int))
    regular = regular[:, None] & regular[None, :]
    assert max_error(chosen) < 0.5 * max_error(regular)


def test_rule_in_1d_and_3d_and_a_tolerance():
    """1-D: the first refined cell is the one whose middle departs most from the chord (computed here by hand);
    3-D: rounds fill the budget; a tolerance above every surplus stops after the coarse grid."""
    x = np.linspace(-1, 1, 33)
    f = np.array([adaptive_toys.bump(a, adaptive_toys.CENTER[1]) for a in x])
    r = Refinement(Rule((x,), 40, 2, 1, 0.0))
    coarse = r.start()
    assert coarse.tolist() == [0, 8, 16, 24, 32]
    first = r.advance(f)
    # the level-1 cells [0,16], [16,32]: surplus at 8 and 24; the halves next to the larger one go first
    s8, s24 = abs(f[8] - (f[0] + f[16]) / 2), abs(f[24] - (f[16] + f[32]) / 2)
    lo = 16 if s24 > s8 else 0
    assert first.tolist() == [lo + 4]  # the lower half of the larger cell (ties: the lower corner first)
    z = np.linspace(-1, 1, 9)
    g = np.exp(-np.add.outer(np.add.outer(z ** 2, z ** 2), (z - 0.5) ** 2) / 0.1)
    r3 = refine(Rule((z, z, z), 200, 1, 40, 0.0), g)
    assert r3.chosen <= 200 and r3.round >= 3
    flat = refine(Rule((x,), 40, 2, 1, 10.0), f)
    assert flat.chosen == 5 and flat.finished == "tolerance"


# ------------------------------------------------------------------------------------------- the job
@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adaptive")
    return folder, adaptive_toys.save_checkpoints(folder)


def command(toys, out, *extra) -> list[str]:
    folder, (center, ex, ey) = toys
    return ["surface", "--model", "adaptive_toys:make_model", "--dataset", "adaptive_toys:make_data", "--task",
            "regress", "--splits", "train", "--checkpoint", center, "--x-target", ex, "--y-target", ey, *GRID,
            "--out", str(out), *extra]


@pytest.fixture(scope="module")
def serial(toys):
    out = toys[0] / "serial.h5"
    assert main(command(toys, out, "--adaptive", str(BUDGET_POINTS), "--adaptive-round", "6")) == 0
    return out


def chosen_points(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as f:
        return f["results/done"][()].astype(bool), f["results/round"][()], f["results/train_loss"][()]


def test_the_job_computes_the_chosen_points_of_the_bump(serial, capsys):
    """Every done point holds the bump's value there (computed here), its round is recorded, the points are
    the rule's (replayed from the bump itself, not the file), and info and the scattered figure say so."""
    done, rounds, loss = chosen_points(serial)
    x = y = np.linspace(-1, 1, 17)
    f = bump_grid(x, y)
    assert np.allclose(loss[done], f[done], rtol=1e-5, atol=1e-7)
    assert np.isnan(loss[~done]).all() and (rounds[~done] == -1).all() and (rounds[done] >= 0).all()
    expected = refine(Rule((x, y), BUDGET_POINTS, 2, 6, 0.0), f)
    assert np.array_equal(expected.round_of.reshape(17, 17), rounds)
    assert main(["info", str(serial)]) == 0
    out = capsys.readouterr().out
    assert f"of the lattice's 289 points ({100 * done.sum() / 289:.1f}% coverage)" in out and "finished (budget)" in out
    assert "(complete)" in out
    from plotting.cli import main as plot

    assert plot([str(serial), "--out", str(serial.parent / "fig")]) == 0
    assert (serial.parent / "fig" / "serial_train_loss_scattered.png").stat().st_size > 10_000


def test_three_ranks_choose_the_same_points_with_collective_io(toys, serial):
    """mpiexec -n 3 with --io collective: the same points, rounds and values as one process."""
    out = toys[0] / "mpi.h5"
    p = run([*mpiexec(3), *cli(*command(toys, out, "--adaptive", str(BUDGET_POINTS), "--adaptive-round", "6",
                                        "--io", "collective"))], timeout=240)
    assert "round 1:" in p.stderr
    a, b = chosen_points(serial), chosen_points(out)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert np.allclose(a[2][a[0]], b[2][b[0]], rtol=1e-6, atol=1e-9)
    with h5py.File(out, "r") as f:
        assert len(set(f["results/rank"][()][b[0]].tolist())) == 3  # every rank computed points


def test_a_killed_run_resumes_to_the_same_points(toys, serial, monkeypatch):
    """A run that fails after 31 points (an internal error: what it finished is in the file), then the same
    command: the same points and rounds as the uninterrupted run; a file missing one early point and holding
    later ones (a lost write) computes that point alone."""
    out = toys[0] / "killed.h5"
    monkeypatch.setenv("LANDSCAPE_MPI_TEST_FAIL", "0:31")
    assert main(command(toys, out, "--adaptive", str(BUDGET_POINTS), "--adaptive-round", "6")) == 1
    monkeypatch.delenv("LANDSCAPE_MPI_TEST_FAIL")
    done, rounds, _ = chosen_points(out)
    assert done.sum() == 31 and rounds.max() >= 1  # stopped inside the refinement, its rounds recorded
    assert main(command(toys, out, "--adaptive", str(BUDGET_POINTS), "--adaptive-round", "6")) == 0
    a, b = chosen_points(serial), chosen_points(out)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert np.allclose(a[2][a[0]], b[2][b[0]], rtol=1e-6)

    lost = toys[0] / "lost.h5"
    shutil.copy(serial, lost)
    with h5py.File(lost, "r+") as f:
        early = int(np.flatnonzero(f["results/round"][()].ravel() == 1)[0])
        d = f["results/done"][()]
        d.ravel()[early] = 0
        f["results/done"][...] = d
        f["results/rank"][...] = np.full(d.shape, 9, dtype=np.int32)  # who computed what, from here on
    assert main(command(toys, lost, "--adaptive", str(BUDGET_POINTS), "--adaptive-round", "6")) == 0
    c = chosen_points(lost)
    assert np.array_equal(a[0], c[0]) and np.array_equal(a[1], c[1])
    with h5py.File(lost, "r") as f:
        rank = f["results/rank"][()].ravel()
    assert rank[early] == 0 and (np.delete(rank, early) == 9).all()  # that point alone was computed again


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line(capsys, *needles) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for n in needles:
        assert n in err[0], err[0]


def test_bad_input(toys, serial, capsys):
    """A budget below the coarse grid, a regular file resumed with --adaptive and the reverse, a setting of
    --adaptive without it: one line naming the option, exit 2, no file written or changed."""
    new = toys[0] / "never.h5"
    assert main(command(toys, new, "--adaptive", "24")) == 2
    one_line(capsys, "--adaptive 24", "25 points", "5x5")
    assert main(command(toys, new, "--adaptive-round", "4")) == 2
    one_line(capsys, "--adaptive-round", "--adaptive POINTS")
    assert not new.exists()

    regular = toys[0] / "regular.h5"
    assert main(command(toys, regular, "--x=-1:1:3", "--y=-1:1:3")) == 0
    capsys.readouterr()
    before = sha(regular)
    assert main(command(toys, regular, "--x=-1:1:3", "--y=-1:1:3", "--adaptive", "9", "--adaptive-coarse", "1")) == 2
    one_line(capsys, "--adaptive: the file holds a regular grid")
    assert sha(regular) == before

    before = sha(serial)
    assert main(command(toys, serial)) == 2
    one_line(capsys, f"--adaptive: the file holds an adaptive grid (--adaptive {BUDGET_POINTS})")
    assert sha(serial) == before
