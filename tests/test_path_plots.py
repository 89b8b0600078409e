"""Figures of path files (plotting/paths.py and `landscape-plot` on path files): what is drawn is read back from
the matplotlib objects and compared with the values written into the files (and with barriers worked out by
hand), not only checked to exist; the plane figure on real files of `surface` and `path`."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch
from matplotlib import pyplot as plt

from landscape_mpi.files.path_reader import read_path
from plotting import cli
from plotting.paths import plot_barrier_matrix, plot_layer_barriers, plot_paths
from test_barriers import T17, bump, write_path_file


@pytest.fixture
def two_paths(tmp_path):
    """A linear path with a barrier and a curve without one, between the same two models; the curve's file
    has two points not computed yet (t = 3/16 and 4/16)."""
    linear = write_path_file(str(tmp_path / "linear.h5"), "linear", T17, ["0-1"], [[0, 1]], ["a.pt", "b.pt"], {
        "train_loss": bump(T17, 0.25, 0.5, 1.0)[None], "train_acc": (0.875 - bump(T17, 0, 0, 0.5))[None],
        "test_loss": bump(T17, 0.375, 0.625, 1.0)[None], "test_acc": (0.75 - bump(T17, 0, 0, 0.5))[None]})
    done = np.ones((1, 17), dtype=bool)
    done[0, [3, 4]] = False
    flat = {"train_loss": (0.25 + 0.25 * T17)[None], "train_acc": np.full((1, 17), 0.875),
            "test_loss": (0.375 + 0.25 * T17)[None], "test_acc": np.full((1, 17), 0.75)}
    curve = write_path_file(str(tmp_path / "curve.h5"), "bezier", T17, ["bezier"], [[0, 2]],
                            ["a.pt", "bend.pt", "b.pt"], flat, done=done)
    return linear, curve


def test_values_along_t_of_several_paths_on_shared_axes(two_paths):
    linear, curve = (read_path(p) for p in two_paths)
    fig = plot_paths([linear, curve])
    loss_ax, acc_ax = fig.axes
    lines = {line.get_label(): line for line in loss_ax.get_lines()}
    names = ("linear (linear)", "curve (bezier)")
    assert set(lines) == {f"{name} {split}" for name in names for split in ("train", "test")}
    np.testing.assert_array_equal(lines["linear (linear) train"].get_xdata(), T17)
    np.testing.assert_array_equal(lines["linear (linear) train"].get_ydata(), bump(T17, 0.25, 0.5, 1.0))
    got = lines["curve (bezier) test"].get_ydata()
    assert np.isnan(got[[3, 4]]).all()  # not computed: a gap, not a value
    np.testing.assert_array_equal(np.delete(got, [3, 4]), np.delete(0.375 + 0.25 * T17, [3, 4]))
    assert lines["curve (bezier) test"].get_linestyle() == "--" and lines["curve (bezier) train"].get_linestyle() == "-"
    acc = {line.get_label(): line for line in acc_ax.get_lines()}
    np.testing.assert_allclose(acc["linear (linear) test"].get_ydata(), 100 * (0.75 - bump(T17, 0, 0, 0.5)))
    assert acc_ax.get_ylabel() == "accuracy (%)"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [*names, "train", "test"]
    assert "curve (bezier): 15 of 17 points" in fig._suptitle.get_text()
    plt.close(fig)


def test_a_chain_shows_its_knots(tmp_path):
    pf = read_path(write_path_file(str(tmp_path / "c.h5"), "chain", T17, ["chain"], [[0, 2]], ["a", "m", "b"],
                                   {"train_loss": T17[None]}, knots=[0.0, 0.375, 1.0]))
    fig = plot_paths([pf])
    knots = [line for line in fig.axes[0].get_lines() if line.get_linestyle() == ":"]
    assert [tuple(line.get_xdata()) for line in knots] == [(0.375, 0.375)]
    plt.close(fig)


def test_the_barrier_matrix_heat_map(tmp_path):
    heights = {(0, 1): 0.5, (1, 2): 0.25}  # pair (0, 2) not in the file
    pf = read_path(write_path_file(
        str(tmp_path / "m.h5"), "pairs", T17, ["0-1", "1-2"], list(heights), ["run/s1.pt", "run/s2.pt", "run/s3.pt"],
        {"test_acc": np.stack([0.875 - bump(T17, 0, 0, h) for h in heights.values()])}))
    fig = plot_barrier_matrix(pf, "test_acc")
    ax = fig.axes[0]
    shown = ax.get_images()[0].get_array()
    expected = np.array([[0.0, 0.5, np.nan], [0.5, 0.0, 0.25], [np.nan, 0.25, 0.0]])
    np.testing.assert_array_equal(shown.mask, np.isnan(expected))
    np.testing.assert_array_equal(shown.filled(-1), np.nan_to_num(expected, nan=-1))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["s1.pt", "s2.pt", "s3.pt"]
    assert sorted(t.get_text() for t in ax.texts) == ["0", "0", "0", "0.25", "0.25", "0.5", "0.5"]
    assert "1 pair(s) not finished" in ax.get_title()
    assert fig.axes[1].get_ylabel() == "interpolation barrier of test 1 - acc"
    plt.close(fig)


def test_layer_wise_barrier_bars(tmp_path):
    names, heights = ["conv1", "conv2", "fc"], [0.125, 2.0, 0.5]
    done = np.ones((3, 17), dtype=bool)
    done[2, 5] = False
    pf = read_path(write_path_file(str(tmp_path / "l.h5"), "layers", T17, names, [[0, 1]] * 3, ["a", "b"],
                                   {"train_loss": np.stack([bump(T17, 1.0, 1.5, h) for h in heights])}, done=done))
    fig = plot_layer_barriers(pf, "train_loss")
    ax = fig.axes[0]
    bars = [p for p in ax.patches if p.get_fill()]
    assert [b.get_width() for b in bars] == heights[:2]
    assert [t.get_text().strip() for t in ax.texts] == ["0.125", "2"]  # each value written beside its bar
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    hatched = [p for p in ax.patches if not p.get_fill()]
    assert len(hatched) == 1 and hatched[0].get_width() == 0 and hatched[0].get_y() + hatched[0].get_height() / 2 == 2
    plt.close(fig)


def test_landscape_plot_draws_path_files(two_paths, tmp_path, capsys):
    out = tmp_path / "figs"
    assert cli.main([*two_paths, "--out", str(out)]) == 0
    assert capsys.readouterr().out.split() == [str(out / "paths.png")]
    assert (out / "paths.png").stat().st_size > 0
    assert cli.main([two_paths[0], "--kind", "barrier_matrix", "--out", str(out)]) == 2
    assert "--kind barrier_matrix draws pairs path files; none of these is one" in capsys.readouterr().err


# ------------------------------------------------------------------------------- a path on a plane of models
@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    """Real files of the two commands on three digits_mlp nets built from seeds 0, 1, 2 (A, B, C) and a fourth
    (D, seed 3): the surface on the plane A + x (B - A) + y (C - A), the Bezier path from A to B through the bend
    C, the same curve with B and C swapped (A to C through B), one through the bend D (off the plane), and the
    chain A -> C -> B."""
    from landscape_mpi.cli import main
    from landscape_mpi.models import build_model

    out = tmp_path_factory.mktemp("plane")
    ckpt = {}
    for seed, name in enumerate("ABCD"):
        torch.manual_seed(seed)
        ckpt[name] = str(out / f"{name}.pt")
        torch.save({"state_dict": build_model("digits_mlp").state_dict()}, ckpt[name])
    common = ["--model", "digits_mlp", "--dataset", "digits", "--samples", "32"]
    files = {n: str(out / f"{n}.h5") for n in ("surface", "bezier", "swapped", "off", "chain")}
    assert main(["surface", *common, "--checkpoint", ckpt["A"], "--x-target", ckpt["B"], "--y-target", ckpt["C"],
                 "--x=-0.5:1.5:5", "--y=-0.5:1.5:5", "--out", files["surface"]]) == 0
    for name, b, bend in (("bezier", "B", "C"), ("swapped", "C", "B"), ("off", "B", "D")):
        assert main(["path", *common, "--kind", "bezier", "--checkpoint", ckpt["A"], "--checkpoint", ckpt[b],
                     "--bend", ckpt[bend], "--points", "5", "--out", files[name]]) == 0
    assert main(["path", *common, "--kind", "chain", *(x for m in "ACB" for x in ("--checkpoint", ckpt[m])),
                 "--points", "3", "--out", files["chain"]]) == 0
    return files


def test_a_bezier_path_drawn_on_the_plane_through_its_ends_and_bend(plane):
    from plotting.paths import plot_plane_path
    from plotting.reader import read_surface

    surface = read_surface(plane["surface"])
    bezier, swapped, chain = (read_path(plane[n]) for n in ("bezier", "swapped", "chain"))
    t = np.linspace(0, 1, 5)
    # the path file's own coefficients (d_1 = B - A, d_2 = C - A): Garipov et al.'s curve, t^2 and 2t(1 - t)
    np.testing.assert_allclose(bezier.coefficients[0], np.stack([t * t, 2 * t * (1 - t)], axis=1), rtol=0, atol=1e-15)
    fig = plot_plane_path(surface, [bezier, swapped, chain], "train_loss", np.linspace(0.1, 5.0, 10))
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    curve = lines["bezier (bezier)"]
    np.testing.assert_array_equal(curve.get_xdata(), bezier.coefficients[0, :, 0])  # drawn as stored
    np.testing.assert_array_equal(curve.get_ydata(), bezier.coefficients[0, :, 1])
    # A to C through the bend B: the models are found by sha256, so x is B's coefficient (the second), y is C's
    np.testing.assert_array_equal(lines["swapped (bezier)"].get_xdata(), swapped.coefficients[0, :, 1])
    np.testing.assert_array_equal(lines["swapped (bezier)"].get_ydata(), swapped.coefficients[0, :, 0])
    # the chain A -> C -> B, t = 0, .25, .5, .75, 1: through C at its knot, straight on each segment
    drawn = lines["chain (chain)"]
    assert list(zip(drawn.get_xdata(), drawn.get_ydata())) == [(0, 0), (0, .5), (0, 1), (.5, .5), (1, 0)]
    linear = [line for line in ax.get_lines() if line.get_linestyle() == "--"]  # the chain's is the bezier's
    assert [(tuple(line.get_xdata()), tuple(line.get_ydata())) for line in linear] == [((0, 1), (0, 0)),
                                                                                        ((0, 0), (0, 1))]
    assert linear[0].get_label() == "linear path"
    models = lines["models"]
    assert sorted(zip(models.get_xdata(), models.get_ydata())) == [(0, 0), (0, 1), (1, 0)]
    assert sorted(t.get_text() for t in ax.texts if t.get_text().endswith(".pt")) == [
        "A: A.pt", "B: B.pt", "C (bend): C.pt"]
    assert ax.get_xlabel() == "x: weight of B - A"
    plt.close(fig)


def test_landscape_plot_draws_the_plane_figure_alone(plane, tmp_path, capsys):
    out = tmp_path / "figs"
    assert cli.main([plane["surface"], plane["bezier"], "--kind", "plane_path", "--out", str(out)]) == 0
    assert capsys.readouterr().out.split() == [str(out / "surface_train_loss_plane_path.png")]
    assert (out / "surface_train_loss_plane_path.png").stat().st_size > 0


@pytest.mark.parametrize("case", ["other bend", "aligned", "layers", "no surface"])
def test_a_path_off_the_surface_plane_is_refused_in_one_line(plane, tmp_path, capsys, case):
    files = [plane["surface"], plane["off"]]
    expected = f"{plane['off']}: its model 2 (D.pt, sha256 "
    if case == "aligned":  # the path's models permuted after they were hashed: another curve, the same hashes
        aligned = str(tmp_path / "aligned.h5")
        shutil.copy(plane["bezier"], aligned)
        with h5py.File(aligned, "r+") as f:
            f.attrs["alignment"] = json.dumps({"1": "aligned.align-1.h5"})
        files, expected = [plane["surface"], aligned], f"{aligned}: its models were permuted (--align)"
    elif case == "layers":  # one block at a time: off the plane, whatever its models
        layers = str(tmp_path / "layers.h5")
        shutil.copy(plane["bezier"], layers)
        with h5py.File(layers, "r+") as f:
            f.attrs["path_kind"] = "layers"
        files, expected = [plane["surface"], layers], f"{layers}: a layers path moves one block at a time"
    elif case == "no surface":
        files, expected = [plane["bezier"]], "--kind plane_path draws path files on a surface file: give both"
    out = tmp_path / "figs"
    assert cli.main([*files, "--kind", "plane_path", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"landscape-plot: error: {expected}"), err
    assert not list(out.iterdir())  # nothing drawn


def test_the_plane_figure_of_a_partial_surface_with_fill_missing(plane, tmp_path, monkeypatch):
    import plotting.paths

    partial = str(tmp_path / "partial.h5")
    shutil.copy(plane["surface"], partial)
    with h5py.File(partial, "r+") as f:  # two points not computed yet
        f["results/done"][0, 0] = 0
        f["results/done"][4, 4] = 0
    figures = []
    monkeypatch.setattr(plotting.paths, "save", lambda fig, path, dpi: figures.append(fig) or path)
    assert cli.main([partial, plane["bezier"], "--kind", "plane_path", "--fill-missing", "--out", str(tmp_path)]) == 0
    (fig,) = figures
    ax = fig.axes[0]
    assert "INTERPOLATED from 23 of 25 points" in ax.get_title()
    dots = {line.get_label(): line for line in ax.get_lines()}["computed points"]
    assert len(dots.get_xdata()) == 23 and (-0.5, -0.5) not in set(zip(dots.get_xdata(), dots.get_ydata()))
    plt.close(fig)
