"""Figures of path files (plotting/paths.py and `landscape-plot` on path files): what is drawn is read back from
the matplotlib objects and compared with the values written into the files (and with barriers worked out by
hand), not only checked to exist."""

from __future__ import annotations

import numpy as np
import pytest
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
