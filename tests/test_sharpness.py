"""Sharpness numbers (landscape_mpi/numbers/sharpness.py) and `landscape-mpi compare`, checked on surface files this
test writes with h5py from closed-form functions whose minimum, curvature, basin area, roughness and barrier
are known analytically."""

import json
import math
import subprocess
import sys

import h5py
import numpy as np
import pytest

from conftest import ROOT, cli, run
from landscape_mpi.config.errors import UserError
from landscape_mpi.experiments import report, rules
from landscape_mpi.experiments.surface_data import read_surface
from landscape_mpi.numbers.sharpness import (
    clipped_ratio,
    format_sharpness,
    grid_max_rise,
    median_clipped_ratio,
    quadratic_curvature,
    sharpness,
    sharpness_for_info,
)

A, B = 2.0, 0.5


def write_surface(path, coords, values, done=None, config=None, attrs=None):
    """A schema-1 surface file in the contract's layout, written with h5py (not with landscape_mpi's store)."""
    shape = tuple(len(c) for c in coords.values())
    done = np.ones(shape, bool) if done is None else done
    with h5py.File(path, "w") as h:
        h.attrs["schema_version"] = 1
        h.attrs["config"] = json.dumps({"model": "toy", "x_target": None, **(config or {})})
        h.attrs["axes"] = json.dumps(list(coords))
        h.attrs["metrics"] = json.dumps([m for m in values if m not in ("eig_max", "eig_min")])
        for k, v in (attrs or {}).items():
            h.attrs[k] = v
        for a, c in coords.items():
            h[f"coords/{a}"] = c
        for name, v in values.items():
            h[f"results/{name}"] = np.where(done, v, np.nan)
        h["results/done"] = done.astype(np.uint8)
    return str(path)


def quadratic_file(path, x, y, x0=0.0, done=None):
    XX, YY = np.meshgrid(x, y, indexing="ij")
    return write_surface(path, {"x": x, "y": y}, {"train_loss": 1.0 + A * (XX - x0) ** 2 + B * YY ** 2}, done)


def test_quadratic_minimum_curvature_max_rise(tmp_path):
    x = np.linspace(-1, 1, 41)  # step 0.05: 0.3 and -0.25 are grid points
    y = np.linspace(-1, 1, 21)  # non-square
    s = sharpness(quadratic_file(tmp_path / "q.h5", x, y, x0=0.3), radius=0.25)
    assert s["done"] == s["total"] == 41 * 21 and s["complete"]
    assert s["minimum"]["value"] == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(s["minimum"]["coords"], [0.3, 0.0], atol=1e-12)
    assert s["center"]["value"] == pytest.approx(1.0 + A * 0.09)
    # L(x, y) - L(0) = A x^2 - 0.6 A x + B y^2 is largest on the disk of radius 0.25 at (-0.25, 0):
    # on the circle it is (A - B) x^2 - 0.6 A x + B r^2, increasing as x decreases.
    assert s["max_rise"]["value"] == pytest.approx(A * 0.0625 + 0.6 * A * 0.25)
    np.testing.assert_allclose(s["max_rise"]["at"], [-0.25, 0.0], atol=1e-12)
    l0 = 1.0 + A * 0.09
    assert s["max_rise"]["relative_percent"] == pytest.approx(100 * 0.425 / (1 + l0))
    assert "eps_sharpness" not in s  # the old key is gone: the number is the grid max-rise
    # d2L/dx2 = 2A, d2L/dy2 = 2B; dL/dx at 0 = -0.6 A
    assert s["curvature"]["x"]["value"] == pytest.approx(2 * A, rel=1e-9)
    assert s["curvature"]["y"]["value"] == pytest.approx(2 * B, rel=1e-9)
    assert s["curvature"]["x"]["slope"] == pytest.approx(-0.6 * A, rel=1e-9)
    assert s["curvature"]["x"]["points"] == 5
    assert s["barrier"] is None and s["eig"] is None


def test_max_rise_and_curvature_of_arrays_by_hand():
    """The array-level numbers the report shares with info: within radius 0.45 of the center of x^2 + 2 y^2 (grid
    step 0.2) the highest points are (+-0.2, +-0.4), at distance 0.447: 0.04 + 0.32; radius 0.4 keeps only
    (0, +-0.4): 0.32."""
    x = np.linspace(-1, 1, 11)
    X, Y = np.meshgrid(x, x, indexing="ij")
    r = grid_max_rise(X**2 + 2 * Y**2, [x, x], 0.45)
    assert r.value == pytest.approx(0.36) and abs(x[r.at[0]]) == pytest.approx(0.2) and r.points == 21
    assert grid_max_rise(X**2 + 2 * Y**2, [x, x], 0.4).value == pytest.approx(0.32)
    assert quadratic_curvature(x, 3 * x**2 + x + 1) == pytest.approx({"value": 6.0, "slope": 1.0, "points": 11})
    # the report's 1D curvature fits only the points within the radius: a cubic term outside |x| <= 0.5 is not seen
    bent = 3 * x**2 + x + 1 + np.where(np.abs(x) > 0.5 + 1e-9, 50 * (np.abs(x) - 0.5) ** 3, 0.0)
    assert report.curvature_within(bent, x, 0.5) == pytest.approx(6.0)
    assert quadratic_curvature(x, bent)["value"] > 7


def test_median_clipped_ratio_by_hand():
    """Ratios 0.5, 0, 1 (5e8 clipped), 1 (3 clipped); a point not computed and a 0/0 are left out: median 0.75.
    A 5x5 map of ratio 0.2 with one lambda_max of 1e-6: the unclipped mean is dominated by it, the median not."""
    eig_max = np.array([2.0, 4.0, 1e-9, np.nan, 0.0, -1.0])
    eig_min = np.array([-1.0, 0.0, -0.5, -1.0, 0.0, -3.0])
    assert median_clipped_ratio(eig_min, eig_max) == (pytest.approx(0.75), 4)
    assert median_clipped_ratio(np.array([np.nan, 0.0]), np.array([1.0, 0.0])) == (None, 0)
    eig_max, eig_min = np.ones((5, 5)), np.full((5, 5), -0.2)
    eig_max[2, 3] = 1e-6
    assert float(np.mean(np.abs(eig_min / eig_max))) > 1000
    assert median_clipped_ratio(eig_min, eig_max) == (pytest.approx(0.2), 25)


def test_a_diverged_neighbour_makes_the_max_rise_infinite_everywhere(tmp_path):
    """One rule for a diverged point (docs/method.md#sharpness-numbers), in info, compare and the report: an
    infinite loss inside the radius makes the grid max-rise +inf, a point not computed (NaN) is skipped. Under the
    other rule (skip every non-finite point) each number below would be the finite B 0.2^2 = 0.02."""
    x = np.linspace(-1, 1, 11)
    XX, YY = np.meshgrid(x, x, indexing="ij")
    loss = 1.0 + A * XX**2 + B * YY**2
    loss[6, 5] = np.inf  # (0.2, 0) diverged: a finished point
    done = np.ones((11, 11), bool)
    done[4, 5] = False  # (-0.2, 0) not computed
    path = write_surface(tmp_path / "diverged.h5", {"x": x, "y": x}, {"train_loss": loss}, done)
    s = sharpness(path, radius=0.25)
    assert s["max_rise"]["value"] == math.inf and s["max_rise"]["at"] == pytest.approx([0.2, 0.0])
    assert s["max_rise"]["points"] == 4  # the center, (0, +-0.2) and the diverged point; not the NaN one
    finite_only = loss[[5, 5], [4, 6]].max() - loss[5, 5]  # the other rule's answer, by hand
    assert finite_only == pytest.approx(B * 0.04)
    rows = json.loads(run(cli("compare", "--radius", "0.25", "--json", path)).stdout)
    assert rows[0]["max_rise"]["value"] == math.inf
    assert "inf" in run(cli("compare", "--radius", "0.25", path)).stdout.splitlines()[2]
    # the report reads the file and computes the same number, and keeps it through the means over seeds
    d = read_surface(path)
    assert report.max_rise(d.values["train_loss"], d.coords, 0.25) == math.inf
    rec = report.Records()
    rec.add("large", 11, 21, {"rise": report.max_rise(d.values["train_loss"], d.coords, 0.25)})
    rec.add("large", 11, 22, {"rise": 0.5})
    rec.add("large", 12, 21, {"rise": 0.25})
    assert rec.per_seed("rise") == {"large": {11: math.inf, 12: 0.25}}
    cell = report.spread(rec.per_seed("rise")["large"].values()).cell()
    assert cell.startswith("inf ± n/a [0.25, inf]"), cell
    # the verdict rules (version 2) leave a non-finite seed out, and n says so
    assert "n = 1 training seeds" in rules.two_conditions(rec.per_seed("rise")["large"], {11: 0.1, 12: 0.1}).reason


def test_basin_area_is_the_ellipse(tmp_path):
    x = y = np.linspace(-1, 1, 201)
    path = quadratic_file(tmp_path / "fine.h5", x, y)
    s = sharpness(path, levels=[0.1, 0.5])
    for b, level in zip(s["basin"], (0.1, 0.5)):
        ellipse = math.pi * level / math.sqrt(A * B)  # area of {A x^2 + B y^2 <= level}, inside the box
        assert b["threshold"] == pytest.approx(1.0 + level)
        assert b["area"] == pytest.approx(ellipse, rel=0.03)
        assert b["fraction"] == pytest.approx(ellipse / 4.0, rel=0.03)


def test_roughness_of_a_quadratic(tmp_path):
    x = np.linspace(-1, 1, 11)
    y = np.linspace(-0.4, 1.6, 6)
    s = sharpness(quadratic_file(tmp_path / "r.h5", x, y), radius=0.4)
    hx, hy = 0.2, 0.4
    # every second difference along x is 2 A hx^2 (9 x 6 of them), along y 2 B hy^2 (11 x 4 of them)
    mean = (9 * 6 * 2 * A * hx ** 2 + 11 * 4 * 2 * B * hy ** 2) / (9 * 6 + 11 * 4)
    span = (A * 1.0 + B * 1.6 ** 2)  # max at (+-1, 1.6), min 0 at the origin: range of L - 1
    assert s["roughness"] == pytest.approx(mean / span, rel=1e-12)


def test_partial_file_counts_done_points_only(tmp_path):
    x = y = np.linspace(-1, 1, 21)
    done = np.ones((21, 21), bool)
    done[8:13, 8:13] = False  # the center region is not computed yet
    s = sharpness(quadratic_file(tmp_path / "p.h5", x, y, done=done))
    assert s["done"] == 441 - 25 and not s["complete"]
    # the lowest done point: |x| = 0.3 (A x^2 = 0.18) or |y| = 0.3 (B y^2 = 0.045) -> (0, +-0.3)
    assert s["minimum"]["value"] == pytest.approx(1.0 + B * 0.09)
    assert abs(s["minimum"]["coords"][1]) == pytest.approx(0.3) and s["minimum"]["coords"][0] == pytest.approx(0.0)
    assert s["center"]["value"] is None and s["max_rise"]["value"] is None
    assert s["curvature"]["x"]["value"] is None and s["basin"][0]["fraction"] is None


def test_interpolation_barrier(tmp_path):
    a = np.linspace(0, 1, 21)
    loss = 0.2 * (1 - a) + 0.4 * a + 2.0 * a * (1 - a)  # endpoints 0.2 and 0.4, peak at a = 0.55
    path = write_surface(tmp_path / "interp.h5", {"x": a}, {"train_loss": loss, "test_loss": loss + 1},
                         config={"x_target": "other.pt"})
    s = sharpness(path)
    peak = 0.2 * 0.45 + 0.4 * 0.55 + 2.0 * 0.55 * 0.45
    assert s["barrier"]["value"] == pytest.approx(peak - 0.3)
    assert s["barrier"]["at"] == pytest.approx(0.55) and s["barrier"]["endpoints"] == pytest.approx([0.2, 0.4])
    info = sharpness_for_info(path)
    assert set(info) == {"train_loss", "test_loss"}
    assert info["test_loss"]["barrier"]["value"] == pytest.approx(peak - 0.3)


def test_eigenvalue_figures(tmp_path):
    x = np.linspace(-1, 1, 5)
    y = np.linspace(-1, 1, 3)
    XX, YY = np.meshgrid(x, y, indexing="ij")
    eig_max, eig_min = 1.0 + XX ** 2, -0.1 * (1.0 + YY ** 2)
    path = write_surface(tmp_path / "eig.h5", {"x": x, "y": y},
                         {"train_loss": XX ** 2 + YY ** 2, "eig_max": eig_max, "eig_min": eig_min})
    e = sharpness(path, radius=0.5)["eig"]
    # the 15 ratios 0.1 (1 + y^2) / (1 + x^2), by hand: x^2 in {1, 0.25, 0, 0.25, 1}, y^2 in {1, 0, 1}
    ratios = [0.1 * (1 + yy) / (1 + xx) for xx in (1, 0.25, 0, 0.25, 1) for yy in (1, 0, 1)]
    assert e["mean_abs_ratio"] == pytest.approx(sum(ratios) / 15)
    assert e["median_clipped_ratio"] == pytest.approx(sorted(ratios)[7]) and e["points"] == 15  # all below 1
    assert e["center"] == pytest.approx({"eig_max": 1.0, "eig_min": -0.1, "abs_ratio": 0.1})


def test_clipped_ratio_by_hand():
    """min(|eig_min / eig_max|, 1), NaN where a point is not computed or 0/0; x/0 and |eig_min| > |eig_max| give 1."""
    eig_max = np.array([2.0, 4.0, 1e-9, np.nan, 0.0, -1.0, 0.0])
    eig_min = np.array([-1.0, 0.0, -0.5, -1.0, 0.0, -3.0, -2.0])
    np.testing.assert_array_equal(clipped_ratio(eig_min, eig_max), [0.5, 0.0, 1.0, np.nan, np.nan, 1.0, 1.0])


def test_eig_summary_is_the_median_of_the_clipped_ratio(tmp_path):
    """One point with eig_max near 0 (ratio 2e5) dominates the unclipped mean but leaves the median at 0.2: the two
    summaries differ on this map, and `info` reports the median."""
    x = np.linspace(-1, 1, 5)
    eig_max, eig_min = np.ones((5, 5)), np.full((5, 5), -0.2)
    eig_max[4, 4] = 1e-6
    done = np.ones((5, 5), bool)
    done[0, 0] = False  # not computed: left out of both
    path = write_surface(tmp_path / "eig.h5", {"x": x, "y": x},
                         {"train_loss": np.zeros((5, 5)), "eig_max": eig_max, "eig_min": eig_min}, done)
    e = sharpness(path, radius=0.5)["eig"]
    old_mean = (23 * 0.2 + 0.2 / 1e-6) / 24  # the unclipped mean over the 24 computed points, by hand
    assert e["mean_abs_ratio"] == pytest.approx(old_mean) and old_mean > 8000
    assert e["median_clipped_ratio"] == pytest.approx(0.2) and e["points"] == 24
    text = "\n".join(format_sharpness(sharpness(path, radius=0.5)))
    assert "median clipped |eig_min/eig_max| 0.2;" in text and "grid max-rise (r=0.5) 0 " in text
    assert "eps-sharpness (" not in text and "sampled lower bound of eps-sharpness" in text
    # compare's eig column is the same median, not the unclipped mean (8000+ here)
    out = run(cli("compare", "--radius", "0.5", path)).stdout.strip().splitlines()
    col = out[1].index("med clip ratio")
    assert out[2][col:].split()[0] == "0.2", out


def test_user_errors(tmp_path):
    x = np.linspace(-1, 1, 11)
    path = quadratic_file(tmp_path / "q.h5", x, x)
    with pytest.raises(UserError, match="no metric 'test_acc'.*train_loss"):
        sharpness(path, "test_acc")
    with pytest.raises(UserError, match="smaller than the grid step"):
        sharpness(path, radius=0.1)  # step 0.2: no neighbour inside
    with pytest.raises(UserError, match="positive"):
        sharpness(path, levels=[0.0])
    hess = write_surface(tmp_path / "h.h5", {"x": x}, {"train_loss": x}, attrs={"file_kind": "hessian"})
    with pytest.raises(UserError, match="hessian file"):
        sharpness(hess)
    with pytest.raises(UserError, match="no such file"):
        sharpness(str(tmp_path / "none.h5"))


def test_compare_cli_table_json_and_errors(tmp_path):
    x = np.linspace(-1, 1, 21)
    sharp = quadratic_file(tmp_path / "sharp.h5", x, x)
    XX, YY = np.meshgrid(x, x, indexing="ij")
    flat = write_surface(tmp_path / "flat.h5", {"x": x, "y": x}, {"train_loss": 1 + 0.1 * XX ** 2 + 0.1 * YY ** 2})
    p = run(cli("compare", sharp, flat))
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 4 and "sharp.h5" in lines[2] and "flat.h5" in lines[3]
    assert lines[0].startswith("metric train_loss, grid max-rise radius 0.25 (sampled lower bound of eps-sharpness)")
    assert "max-rise(r=0.25)" in lines[1].split() and "med clip ratio" in lines[1] and "eps(" not in lines[1], lines[1]
    rows = json.loads(run(cli("compare", sharp, flat, "--json", "--radius", "0.3")).stdout)
    assert [r["file"] for r in rows] == [sharp, flat]
    assert rows[0]["curvature"]["x"]["value"] == pytest.approx(2 * A)
    assert rows[1]["curvature"]["y"]["value"] == pytest.approx(0.2)
    assert rows[0]["max_rise"]["radius"] == 0.3 and "eps_sharpness" not in rows[0]
    assert rows[0]["max_rise"]["value"] > rows[1]["max_rise"]["value"]
    for args, msg in ((["--metric", "nope"], "no metric 'nope'"), (["--radius", "0.01"], "smaller than the grid step"),
                      (["--levels", "a,b"], "comma-separated")):
        p = run(cli("compare", sharp, *args), check_rc=2)
        assert p.stderr.count("\n") == 1 and msg in p.stderr and "Traceback" not in p.stderr


def test_compare_and_sharpness_do_not_import_torch(tmp_path):
    x = np.linspace(-1, 1, 5)
    path = quadratic_file(tmp_path / "q.h5", x, x)
    code = ("import sys; from landscape_mpi.cli import main; "
            "from landscape_mpi.numbers.sharpness import sharpness_for_info; "
            f"sharpness_for_info({path!r}); rc = main(['compare', {path!r}, '--json']); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'mpi4py')]; "
            "sys.exit(3 if bad else rc)")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
