"""Barriers from path files (landscape_mpi/numbers/barriers.py, docs/barriers.md), against values worked out by
hand on constructed 1-D curves; and the path file reader (landscape_mpi/files/path_reader.py).

The path files here are written with h5py in the layout of the path job's writer (`write_path_file`; the
plotting tests use it too), so these tests need no torch and no job.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from landscape_mpi.config.errors import UserError
from landscape_mpi.files.path_reader import read_path
from landscape_mpi.numbers.barriers import barrier_matrix, barrier_of, curve_barriers, layer_barriers, read_barriers

T17 = np.linspace(0.0, 1.0, 17)  # 1/16 steps: every number below is exact in binary


def write_path_file(path, kind, t, curves, endpoints, checkpoints, results, done=None, knots=None):
    """A path file in the layout of /tmp/helpers/pathfile.md (the path job's writer): `results` maps
    ``<split>_<metric>`` to (n_curves, n_t) values; `done` (default all) marks the points computed, the others
    are stored as NaN as the writer leaves them."""
    t = np.asarray(t, dtype=np.float64)
    n_c = len(curves)
    done = np.ones((n_c, len(t)), dtype=bool) if done is None else np.asarray(done, dtype=bool)
    with h5py.File(path, "w") as f:
        f.attrs.update({"file_kind": "path", "schema_version": 1, "config": json.dumps({"kind": kind}),
                        "metrics": json.dumps(list(results)), "path_kind": kind})
        f["coords/t"] = t
        f.create_dataset("path/checkpoints", data=np.array(checkpoints, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("path/curves", data=np.array(curves, dtype=object), dtype=h5py.string_dtype())
        f["path/endpoints"] = np.asarray(endpoints, dtype=np.int64).reshape(n_c, 2)
        if knots is not None:
            f["path/knots"] = np.asarray(knots, dtype=np.float64)
        f["path/coefficients"] = np.broadcast_to(t[None, :, None], (n_c, len(t), 1)).copy()
        f["directions/d0/w"] = np.ones(2)
        for name, v in results.items():
            stored = np.asarray(v, dtype=np.float64).reshape(n_c, len(t)).copy()
            stored[~done] = np.nan
            f[f"results/{name}"] = stored
        f["results/done"] = done.astype(np.uint8)
        f["results/rank"] = np.where(done, 0, -1).astype(np.int32)
        f["results/seconds"] = np.where(done, 0.01, np.nan)
    return path


def bump(t, f0, f1, h):
    """The straight line from f0 to f1 plus a parabola of height h at t = 1/2: its interpolation barrier is h
    at t = 1/2 exactly."""
    return f0 + (f1 - f0) * t + 4.0 * h * t * (1.0 - t)


def test_a_known_bump_gives_each_barrier_exactly():
    # f = 1 + t + 8 t (1 - t): f' = 0 at t* = 9/16 (a column), f(t*) = 1 + 9/16 + 8 (9/16)(7/16) = 3.53125.
    b = barrier_of(T17, bump(T17, 1.0, 2.0, 2.0))
    assert (b.interpolation, b.interpolation_t) == (2.0, 0.5)
    assert b.max_t == 0.5625
    assert b.above_mean == 3.53125 - 1.5
    assert b.above_max == 3.53125 - 2.0
    assert (b.n_points, b.n_missing, b.complete) == (17, 0, True)


def test_endpoint_conventions():
    # Equal ends: the three numbers coincide. Read backwards: the same numbers, argmax mirrored.
    same = barrier_of(T17, bump(T17, 0.5, 0.5, 0.75))
    assert same.interpolation == same.above_mean == same.above_max == 0.75
    fwd = barrier_of(T17, bump(T17, 1.0, 2.0, 2.0))
    back = barrier_of(1.0 - T17[::-1], bump(T17, 1.0, 2.0, 2.0)[::-1])
    assert (back.interpolation, back.above_mean, back.above_max) == (fwd.interpolation, fwd.above_mean, fwd.above_max)
    assert back.max_t == 1.0 - fwd.max_t
    # A convex path (a valley between the ends) has no barrier: every measure is 0, reached at an end.
    valley = barrier_of(T17, bump(T17, 1.0, 3.0, -0.5))
    assert valley.interpolation == 0.0 and valley.interpolation_t in (0.0, 1.0)
    assert valley.above_max == 0.0 and valley.max_t == 1.0
    assert valley.above_mean == 1.0  # the worse end is 1 above the ends' mean
    # A grid that is not uniform: the line is in t, not in column number.
    t = np.array([0.0, 0.1, 0.25, 0.5, 1.0])
    f = np.array([0.0, 0.1, 0.75, 0.5, 1.0])  # 0.5 above the line at t = 0.25
    b = barrier_of(t, f)
    assert (b.interpolation, b.interpolation_t) == (0.5, 0.25)


def test_a_higher_is_better_metric_is_taken_as_its_error(tmp_path):
    acc = 0.875 - bump(T17, 0.0, 0.0, 0.25)  # accuracy dips by 1/4 in the middle
    pf = read_path(write_path_file(str(tmp_path / "p.h5"), "linear", T17, ["0-1"], [[0, 1]], ["a.pt", "b.pt"],
                                   {"test_loss": bump(T17, 1.0, 1.0, 0.5)[None], "test_acc": acc[None]}))
    (b,) = curve_barriers(pf, "test_acc")
    assert b.on == "1 - acc" and (b.interpolation, b.interpolation_t) == (0.25, 0.5)
    # Taken as it is, the dip would be a valley: the orientation is what makes it a barrier.
    assert barrier_of(T17, acc).interpolation == 0.0
    (loss,) = curve_barriers(pf, "test_loss")
    assert loss.on == "loss" and loss.interpolation == 0.5


def test_a_chain_has_one_barrier_per_segment(tmp_path):
    # Knots at 0, 1/4, 1: a bump of 1 on [0, 1/4] (parabola in the segment's own s), of 3 on [1/4, 1].
    t = T17
    f = np.empty_like(t)
    first = t <= 0.25
    s0, s1 = t[first] / 0.25, (t[~first] - 0.25) / 0.75
    f[first] = bump(s0, 2.0, 1.0, 1.0)
    f[~first] = bump(s1, 1.0, 4.0, 3.0)
    # 1/4 + 3/4 * s with s = 1/2 is 0.625 = 10/16, a column; 1/8 = 2/16 also.
    pf = read_path(write_path_file(str(tmp_path / "c.h5"), "chain", t, ["chain"], [[0, 2]], ["a", "m", "b"],
                                   {"train_loss": f[None]}, knots=[0.0, 0.25, 1.0]))
    whole, seg0, seg1 = curve_barriers(pf, "train_loss")
    assert (seg0.curve, seg0.t0, seg0.t1) == ("chain:0", 0.0, 0.25)
    assert (seg0.interpolation, seg0.interpolation_t) == (1.0, 0.125)
    assert (seg1.curve, seg1.t0, seg1.t1) == ("chain:1", 0.25, 1.0)
    assert (seg1.interpolation, seg1.interpolation_t) == (3.0, 0.625)
    assert (seg0.n_points, seg1.n_points) == (5, 13)
    # The whole curve's line runs from f(0) = 2 to f(1) = 4.
    ref = f - ((1.0 - t) * 2.0 + t * 4.0)
    assert whole.curve == "chain" and whole.interpolation == ref.max() and whole.interpolation_t == t[ref.argmax()]


def test_the_barrier_matrix_of_a_pairs_file(tmp_path):
    heights = {(0, 1): 0.5, (0, 2): 1.25, (1, 2): 0.0625}
    pairs = list(heights)
    pf = read_path(write_path_file(
        str(tmp_path / "m.h5"), "pairs", T17, [f"{i}-{j}" for i, j in pairs], pairs, ["a", "b", "c"],
        {"test_loss": np.stack([bump(T17, 0.25 * i, 0.25 * j, h) for (i, j), h in heights.items()])}))
    m = barrier_matrix(pf, "test_loss")
    expected = np.array([[0.0, 0.5, 1.25], [0.5, 0.0, 0.0625], [1.25, 0.0625, 0.0]])
    np.testing.assert_array_equal(m, expected)
    # above_max of pair (0, 2): ends 0 and 0.5, f = 0.5 t + 5 t (1 - t), max at t = 0.55 -> 5.5^2/20 = 1.5125;
    # not a column: the grid's max is at 9/16.
    f02 = bump(T17, 0.0, 0.5, 1.25)
    assert barrier_matrix(pf, "test_loss", "above_max")[2, 0] == f02.max() - 0.5
    with pytest.raises(UserError, match="need a layers file"):
        layer_barriers(pf, "test_loss")


def test_a_pair_not_finished_is_nan_in_the_matrix(tmp_path):
    done = np.ones((2, 17), dtype=bool)
    done[1, 8] = False
    pf = read_path(write_path_file(str(tmp_path / "m.h5"), "pairs", T17, ["0-1", "1-2"], [[0, 1], [1, 2]],
                                   ["a", "b", "c"], {"test_loss": np.stack([bump(T17, 0, 0, 0.5)] * 2)}, done=done))
    m = barrier_matrix(pf, "test_loss")
    assert m[0, 1] == m[1, 0] == 0.5
    assert np.isnan(m[1, 2]) and np.isnan(m[2, 1])
    assert np.isnan(m[0, 2])  # a pair the file does not hold
    assert barrier_matrix(pf, "test_loss", partial=True)[1, 2] == bump(T17, 0, 0, 0.5)[7]  # the top is missing


def test_partial_curves_say_so(tmp_path):
    f = bump(T17, 1.0, 1.0, 1.0)
    done = np.ones(17, dtype=bool)
    done[[8, 12]] = False  # the top (t = 1/2) and one more
    b = barrier_of(T17, f, done)
    assert np.isnan(b.interpolation) and np.isnan(b.above_max) and (b.n_missing, b.complete) == (2, False)
    p = barrier_of(T17, f, done, partial=True)
    assert (p.interpolation, p.interpolation_t, p.n_missing) == (f[7] - 1.0, T17[7], 2)
    assert f[7] - 1.0 < 1.0  # the missing top is not pretended
    end_missing = done.copy()
    end_missing[-1] = False
    assert np.isnan(barrier_of(T17, f, end_missing, partial=True).interpolation)
    # The same through the file: values not done are NaN in what the reader returns.
    pf = read_path(write_path_file(str(tmp_path / "p.h5"), "linear", T17, ["0-1"], [[0, 1]], ["a", "b"],
                                   {"train_loss": f[None]}, done=done[None]))
    assert np.isnan(pf.values["train_loss"][0, 8]) and pf.n_done == 15 and not pf.complete
    (from_file,) = read_barriers(pf.path)
    assert np.isnan(from_file.interpolation) and from_file.n_missing == 2
    (from_file,) = read_barriers(pf.path, partial=True)
    assert from_file.interpolation == p.interpolation


def test_layer_barriers_one_per_layer(tmp_path):
    heights = [0.125, 2.0, 0.0]
    names = ["conv1", "conv2", "fc"]
    pf = read_path(write_path_file(str(tmp_path / "l.h5"), "layers", T17, names, [[0, 1]] * 3, ["a", "b"],
                                   {"train_loss": np.stack([bump(T17, 1.0, 1.5, h) for h in heights])}))
    got_names, values = layer_barriers(pf, "train_loss")
    assert got_names == names
    np.testing.assert_array_equal(values, heights)
    with pytest.raises(UserError, match="needs a pairs file"):
        barrier_matrix(pf, "train_loss")
    with pytest.raises(UserError, match="choose one of interpolation, above_mean, above_max"):
        layer_barriers(pf, "train_loss", "height")


def test_the_reader_refuses_other_files_in_one_line(tmp_path):
    surface = tmp_path / "s.h5"
    with h5py.File(surface, "w") as f:
        f.attrs.update({"schema_version": 1, "config": "{}"})
    with pytest.raises(UserError, match=r"a surface file, not a path file; compute it with landscape-mpi path"):
        read_path(str(surface))
    with pytest.raises(UserError, match="no such file"):
        read_path(str(tmp_path / "none.h5"))
    pf = read_path(write_path_file(str(tmp_path / "p.h5"), "linear", T17, ["0-1"], [[0, 1]], ["a", "b"],
                                   {"train_loss": T17[None]}))
    with pytest.raises(UserError, match="no metric 'test_acc'.*choose one of train_loss"):
        curve_barriers(pf, "test_acc")
    with h5py.File(pf.path, "a") as f:
        del f["path/endpoints"]
    with pytest.raises(UserError, match="without a part it must have"):
        read_path(pf.path)
