"""plotting/: figures and exports checked for content (levels, labels, blank cells, values), from
non-square, partially complete surface files, including one that a running job is still writing."""

import json
import os
import re
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest

from conftest import ROOT, cli, env, run, wait_for_points
from plotting import export, figures
from plotting.reader import read_surface

X = np.linspace(-1, 1, 7)
Y = np.linspace(-0.5, 1.5, 5)


def f(x, y):
    return 1.0 + x ** 2 + 2.0 * y ** 2


def write_file(path, coords, values, done, extra=None):
    """A schema-1 surface file written directly with h5py: the contract, not landscape_mpi's code."""
    with h5py.File(path, "w") as h:
        h.attrs["schema_version"] = 1
        axes = list(coords)
        h.attrs["config"] = json.dumps({"model": "toy", "x": "-1:1:7", "splits": ["train"]})
        h.attrs["axes"] = json.dumps(axes)
        for a, c in coords.items():
            h[f"coords/{a}"] = c
        for name, v in values.items():
            h[f"results/{name}"] = np.where(done, v, np.nan)
        h["results/done"] = done.astype(np.uint8)
        for k, v in (extra or {}).items():
            h[k] = v
    return str(path)


@pytest.fixture
def partial2d(tmp_path):
    XX, YY = np.meshgrid(X, Y, indexing="ij")
    loss = f(XX, YY)
    done = np.ones(loss.shape, bool)
    done[4:, 3:] = False  # the last points of the grid are not computed yet
    acc = 1.0 / loss
    path = write_file(tmp_path / "partial.h5", {"x": X, "y": Y}, {"train_loss": loss, "train_acc": acc}, done)
    return path, loss, done


def contour_set(ax):
    """The one ContourSet (contour lines or filled contours) an axes drew."""
    from matplotlib.contour import ContourSet

    sets = [c for c in ax.collections if isinstance(c, ContourSet)]
    assert len(sets) == 1, ax.collections
    return sets[0]


def mesh_mask(ax, shape):
    """The masked cells of the axes' heat map (its QuadMesh's array)."""
    from matplotlib.collections import QuadMesh

    meshes = [c for c in ax.collections if isinstance(c, QuadMesh)]
    assert len(meshes) == 1, ax.collections
    return np.ma.getmaskarray(meshes[0].get_array()).reshape(shape)


def lines_in_blank_cells(cs, x, y, missing) -> int:
    """Segments of a contour set (counted by their midpoints) strictly inside the grid cells with at least two
    missing corners: cells that no contour crosses when missing points are masked (with or without corner
    masking), and that real values, or zeros, would have lines across."""
    blank = (missing[:-1, :-1].astype(int) + missing[1:, :-1] + missing[:-1, 1:] + missing[1:, 1:]) >= 2
    n = 0
    for path in cs.get_paths():
        for poly in path.to_polygons(closed_only=False):
            mid = (poly[1:] + poly[:-1]) / 2
            i, j = np.searchsorted(x, mid[:, 0]) - 1, np.searchsorted(y, mid[:, 1]) - 1
            ok = (i >= 0) & (i < len(x) - 1) & (j >= 0) & (j < len(y) - 1)
            i, j, mid = i[ok], j[ok], mid[ok]
            inside = (x[i] < mid[:, 0]) & (mid[:, 0] < x[i + 1]) & (y[j] < mid[:, 1]) & (mid[:, 1] < y[j + 1])
            n += int(blank[i[inside], j[inside]].sum())
    return n


def pixel(fig, ax, x, y):
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())
    px, py = ax.transData.transform((x, y))
    return img[int(round(img.shape[0] - py)), int(round(px)), :3]


def test_contour_levels_labels_and_progress(partial2d):
    path, loss, done = partial2d
    s = read_surface(path)
    assert s.n_done == done.sum() and not s.complete
    assert np.isnan(s.values["train_loss"][~done]).all()
    levels = figures.levels_for([s.metric("train_loss")], n=12)
    np.testing.assert_allclose(levels, np.linspace(loss[done].min(), loss[done].max(), 12))
    fig = figures.plot_contour(s, "train_loss", levels)
    cs = contour_set(fig.axes[0])
    np.testing.assert_allclose(cs.levels, levels)
    labels = [t.get_text() for t in cs.labelTexts]
    assert labels and all(re.fullmatch(r"[0-9.e+-]+", t) for t in labels)
    # missing points are masked, not zeros: the contoured range is the finished points', and no line crosses
    # the cells among missing points (the true values, and zeros, would have lines there)
    assert (cs.zmin, cs.zmax) == (loss[done].min(), loss[done].max())
    assert lines_in_blank_cells(cs, X, Y, ~done) == 0
    full, full_ax = figures.plt.subplots()  # the check can fail: the true values have lines in those cells
    true_lines = full_ax.contour(*np.meshgrid(X, Y, indexing="ij"), loss, levels=levels)
    assert lines_in_blank_cells(true_lines, X, Y, ~done) > 0
    figures.plt.close(full)
    assert f"{done.sum()} of {done.size} points" in fig.axes[0].get_title()
    figures.plt.close(fig)


def test_nan_and_inf_results_are_blank_not_zero(tmp_path):
    XX, YY = np.meshgrid(X, Y, indexing="ij")
    loss = f(XX, YY)
    loss[0, 0], loss[1, 1] = np.inf, np.nan  # diverged points: finished results, but nothing to draw
    s = read_surface(write_file(tmp_path / "div.h5", {"x": X, "y": Y}, {"train_loss": loss}, np.ones((7, 5), bool)))
    levels = figures.levels_for([s.metric("train_loss")], n=5)
    assert levels[0] == f(0, 0) and levels[-1] == np.nanmax(loss[np.isfinite(loss)])
    finite = loss[np.isfinite(loss)]
    fig = figures.plot_contour(s, "train_loss", levels)
    cs = contour_set(fig.axes[0])
    assert (cs.zmin, cs.zmax) == (finite.min(), finite.max())  # neither inf nor a NaN-as-zero was contoured
    figures.plt.close(fig)
    fig = figures.plot_heatmap(s, "train_loss", levels)
    mask = mesh_mask(fig.axes[0], loss.shape)
    assert mask[0, 0] and mask[1, 1] and mask.sum() == 2
    figures.plt.close(fig)


def test_log_levels_and_explicit_range(partial2d):
    levels = figures.levels_for([read_surface(partial2d[0]).metric("train_loss")], vmin=0.1, vmax=100, n=4, log=True)
    np.testing.assert_allclose(levels, [0.1, 1, 10, 100])


def test_scale_follows_the_data_by_default(tmp_path, capsys):
    """--scale auto: a loss spanning two decades or more (a trained minimum: 0.01 at the centre, 20 at the
    corners) gets log-spaced levels, so the basin is not one empty ring; a loss within one decade stays linear;
    --scale linear forces linear. The contour figure has a colorbar."""
    from plotting import cli as plot_cli

    XX, YY = np.meshgrid(X, Y, indexing="ij")
    done = np.ones(XX.shape, bool)
    deep = write_file(tmp_path / "deep.h5", {"x": X, "y": Y}, {"train_loss": 0.01 + 8.0 * (XX ** 2 + YY ** 2)}, done)
    shallow = write_file(tmp_path / "shallow.h5", {"x": X, "y": Y}, {"train_loss": f(XX, YY)}, done)
    assert figures.spans_decades([read_surface(deep).metric("train_loss")])
    assert not figures.spans_decades([read_surface(shallow).metric("train_loss")])
    assert not figures.spans_decades([np.array([-1.0, 500.0])])  # log needs positive values

    def levels(path, *extra):
        fig = {}
        real_save = figures.save

        def keep(figure, out, dpi=200):
            fig["f"] = figure
            return real_save(figure, out, dpi)

        figures.save = keep
        try:
            assert plot_cli.main([path, "--kind", "contour", "--out", str(tmp_path / "figs"), *extra]) == 0
        finally:
            figures.save = real_save
        ax = fig["f"].axes[0]
        assert len(fig["f"].axes) == 2 and fig["f"].axes[1].get_ylabel() == "train_loss"  # the colorbar
        return np.asarray(contour_set(ax).levels)

    capsys.readouterr()
    log_levels = levels(deep)
    ratios = log_levels[1:] / log_levels[:-1]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-9)  # geometric: log-spaced
    assert ratios[0] > 1.2
    for linear in (levels(shallow), levels(deep, "--scale", "linear")):
        np.testing.assert_allclose(np.diff(linear), np.diff(linear)[0], rtol=1e-9)  # arithmetic: linear


def test_surface3d_looks_over_its_lowest_corner(tmp_path):
    """The camera stands nearest the grid's lowest corner (a high corner in front would hide the basin)."""
    XX, YY = np.meshgrid(X, Y, indexing="ij")
    done = np.ones(XX.shape, bool)
    for corner in [(1, 1), (1, -1), (-1, 1), (-1, -1)]:
        tilt = 3.0 + 0.5 * (corner[0] * -XX + corner[1] * -(YY - 0.5))  # lowest at `corner` of the grid
        path = write_file(tmp_path / f"tilt{corner}.h5", {"x": X, "y": Y}, {"train_loss": tilt}, done)
        surface = read_surface(path)
        levels = figures.levels_for([surface.metric("train_loss")])
        ax = figures.plot_surface3d(surface, "train_loss", levels).axes[0]
        eye = np.array([np.cos(np.radians(ax.azim)), np.sin(np.radians(ax.azim))])  # matplotlib's camera azimuth
        nearest = max([(1, 1), (1, -1), (-1, 1), (-1, -1)], key=lambda c: float(np.dot(eye, c)))
        assert nearest == corner, (corner, ax.azim)


def test_heatmap_blank_cells_where_missing(partial2d):
    path, loss, done = partial2d
    s = read_surface(path)
    levels = figures.levels_for([s.metric("train_loss")])
    fig = figures.plot_heatmap(s, "train_loss", levels)
    ax = fig.axes[0]
    assert np.array_equal(mesh_mask(ax, done.shape), ~done)
    white = np.array([255, 255, 255])
    assert np.array_equal(pixel(fig, ax, X[6], Y[4]), white)  # not computed: blank
    assert not np.array_equal(pixel(fig, ax, X[0], Y[0]), white)  # computed: colored
    lo_color = pixel(fig, ax, X[3], Y[1])  # the minimum (x=0, y=0) takes the colormap's low end
    expected = np.array(figures.plt.get_cmap(figures.CMAP)(0.0)[:3]) * 255
    assert np.abs(lo_color.astype(float) - expected).max() < 12
    figures.plt.close(fig)


def test_contourf_surface3d_are_not_blank(tmp_path, partial2d):
    s = read_surface(partial2d[0])
    levels = figures.levels_for([s.metric("train_loss")])
    for plot in (figures.plot_contourf, figures.plot_surface3d):
        out = figures.save(plot(s, "train_loss", levels), str(tmp_path / f"{plot.__name__}.png"))
        img = figures.plt.imread(out)
        assert img[..., :3].std() > 0.05, plot.__name__
        assert (img[..., :3] < 0.9).mean() > 0.02  # a real share of colored pixels


def test_1d_overlay_with_partial_file(tmp_path):
    x = np.linspace(-1, 1, 11)
    a = write_file(tmp_path / "small_batch.h5", {"x": x}, {"train_loss": x ** 2, "train_acc": 1 - x ** 2 / 2,
                                                           "test_loss": x ** 2 + 0.1, "test_acc": 0.9 - x ** 2 / 2},
                   np.ones(11, bool))
    done = np.arange(11) < 6
    b = write_file(tmp_path / "large_batch.h5", {"x": x}, {"train_loss": 4 * x ** 2, "train_acc": 1 - x ** 2,
                                                           "test_loss": 4 * x ** 2 + 0.2, "test_acc": 0.9 - x ** 2},
                   done)
    fig = figures.plot_1d([read_surface(a), read_surface(b)], log=False)
    ax, acc_ax = fig.axes
    assert len(ax.lines) == 4 and len(acc_ax.lines) == 4
    labels = [line.get_label() for line in ax.lines]
    assert any("small_batch" in label for label in labels) and any("large_batch" in label for label in labels)
    assert np.isnan(ax.lines[2].get_ydata()[6:]).all()  # the partial file's missing points: gaps
    assert "6 of 11 points" in ax.get_title()
    figures.plt.close(fig)


def test_legend_labels_from_configs(tmp_path):
    from plotting.reader import legend_labels

    x = np.linspace(-1, 1, 5)
    paths = []
    for bs in (128, 8192):
        p = write_file(tmp_path / f"f{bs}.h5", {"x": x}, {"train_loss": x ** 2, "train_acc": 1 - x ** 2},
                       np.ones(5, bool))
        with h5py.File(p, "a") as h:
            h.attrs["config"] = json.dumps({"model": "vgg9", "checkpoint": f"/runs/bs{bs}/final.pt", "seed": 0})
        paths.append(p)
    surfaces = [read_surface(p) for p in paths]
    assert legend_labels(surfaces) == ["checkpoint=bs128/final.pt", "checkpoint=bs8192/final.pt"]
    fig = figures.plot_1d(surfaces)
    assert fig.axes[0].lines[0].get_label() == "checkpoint=bs128/final.pt train loss"
    figures.plt.close(fig)


def test_compare_shares_scale_and_levels(tmp_path, partial2d):
    XX, YY = np.meshgrid(X, Y, indexing="ij")
    other = write_file(tmp_path / "noshort.h5", {"x": X, "y": Y}, {"train_loss": 3 * f(XX, YY)},
                       np.ones((7, 5), bool))
    surfaces = [read_surface(partial2d[0]), read_surface(other)]
    levels = figures.levels_for([s.metric("train_loss") for s in surfaces], n=10)
    fig = figures.plot_compare(surfaces, "train_loss", levels)
    panels = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    assert len(panels) == 2
    for ax in panels:  # the same levels and one color scale on every panel
        cs = contour_set(ax)
        np.testing.assert_allclose(cs.levels, levels)
        assert cs.norm.vmin == pytest.approx(1.0) and cs.norm.vmax == pytest.approx(3 * f(1, 1.5))
    bar = contour_set(panels[-1]).colorbar
    assert bar is not None and bar.ax.get_ylabel() == "train_loss"
    assert (bar.norm.vmin, bar.norm.vmax) == (cs.norm.vmin, cs.norm.vmax)
    figures.plt.close(fig)


def test_trajectory_and_eig_ratio(tmp_path):
    XX, YY = np.meshgrid(X, Y, indexing="ij")
    path = write_file(tmp_path / "pca.h5", {"x": X, "y": Y},
                      {"train_loss": f(XX, YY), "eig_min": -0.1 * np.abs(XX), "eig_max": 1 + YY ** 2},
                      np.ones((7, 5), bool),
                      {"trajectory/x": np.linspace(-1, 0, 6), "trajectory/y": np.linspace(1, 0, 6),
                       "trajectory/epochs": np.arange(6)})
    with h5py.File(path, "a") as h:
        h["trajectory"].attrs["explained_variance"] = [0.8, 0.15]
    s = read_surface(path)
    fig = figures.plot_trajectory(s, "train_loss", figures.levels_for([s.metric("train_loss")]))
    assert "80.0%" in fig.axes[0].get_xlabel() and "15.0%" in fig.axes[0].get_ylabel()
    figures.plt.close(fig)
    np.testing.assert_allclose(s.values["eig_ratio"], np.abs(-0.1 * np.abs(XX) / (1 + YY ** 2)))
    fig = figures.plot_eig_ratio(s)
    assert not mesh_mask(fig.axes[0], XX.shape).any()
    figures.plt.close(fig)
    out = run([sys.executable, "-m", "plotting", path, "--out", str(tmp_path / "figs")]).stdout
    assert "trajectory" in out and "eig_ratio" in out


def test_vtp_opens_in_vtk_reader_with_file_values(tmp_path, partial2d):
    vtk = pytest.importorskip("vtk")
    from vtk.util.numpy_support import vtk_to_numpy

    path, loss, done = partial2d
    out = export.write_vtp(read_surface(path), "train_loss", str(tmp_path / "s.vtp"))
    r = vtk.vtkXMLPolyDataReader()
    r.SetFileName(out)
    r.Update()
    poly = r.GetOutput()
    assert poly.GetNumberOfPoints() == done.sum()
    cells = sum(done[i, j] and done[i + 1, j] and done[i, j + 1] and done[i + 1, j + 1]
                for i in range(6) for j in range(4))
    assert poly.GetNumberOfPolys() == cells
    np.testing.assert_allclose(vtk_to_numpy(poly.GetPointData().GetArray("train_loss")), loss[done])
    pts = vtk_to_numpy(poly.GetPoints().GetData())
    np.testing.assert_allclose(pts[:, 2], loss[done])  # z = loss
    # log scale, clipping and smooth upsampling
    out = export.write_vtp(read_surface(path), "train_loss", str(tmp_path / "l.vtp"), log=True, zmax=0.5, upsample=3)
    r.SetFileName(out)
    r.Update()
    z = vtk_to_numpy(r.GetOutput().GetPoints().GetData())[:, 2]
    assert z.max() <= 0.5 and z.min() == pytest.approx(0.0, abs=1e-9)
    assert r.GetOutput().GetNumberOfPoints() > done.sum()


def test_vti_3d_grid(tmp_path):
    vtk = pytest.importorskip("vtk")
    from vtk.util.numpy_support import vtk_to_numpy

    x, y, z = np.linspace(-1, 1, 4), np.linspace(0, 1, 3), np.linspace(-2, 2, 5)
    XX, YY, ZZ = np.meshgrid(x, y, z, indexing="ij")
    v = XX + 10 * YY + 100 * ZZ
    done = np.ones(v.shape, bool)
    done[-1, -1, -1] = False
    path = write_file(tmp_path / "vol.h5", {"x": x, "y": y, "z": z}, {"train_loss": v}, done)
    out = export.write_vti(read_surface(path), str(tmp_path / "vol.vti"))
    r = vtk.vtkXMLImageDataReader()
    r.SetFileName(out)
    r.Update()
    img = r.GetOutput()
    assert img.GetDimensions() == (4, 3, 5) and img.GetNumberOfPoints() == 60
    np.testing.assert_allclose(img.GetOrigin(), (-1, 0, -2))
    data = vtk_to_numpy(img.GetPointData().GetArray("train_loss"))
    for (i, j, k) in [(0, 0, 0), (1, 2, 3), (3, 0, 4)]:
        pid = img.ComputePointId([i, j, k])
        assert data[pid] == pytest.approx(v[i, j, k])
        assert img.GetPoint(pid) == pytest.approx((x[i], y[j], z[k]))
    assert np.isnan(data[img.ComputePointId([3, 2, 4])])


def test_html_holds_data_and_no_remote_resource(tmp_path, partial2d):
    path, loss, done = partial2d
    out = export.write_html(read_surface(path), "train_loss", str(tmp_path / "s.html"))
    html = open(out).read()
    assert not re.search(r"""<script[^>]+src=["']?(https?:)?//""", html)
    assert not re.search(r"""<link[^>]+href=["']?(https?:)?//""", html)
    assert "plotly" in html.lower() and len(html) > 1_000_000  # plotly.js embedded
    assert repr(float(loss[1, 2])) in html and repr(float(loss[6, 0])) in html
    assert "null" in html  # missing points


def test_cli_on_partial_real_file_and_errors(tmp_path, digits_ckpt):
    out = tmp_path / "p.h5"
    run(cli("surface", "--model", "digits_cnn", "--checkpoint", digits_ckpt, "--x=-1:1:7", "--y=-1:1:4",
            "--samples", "100", "--out", str(out)), check_rc=1, LANDSCAPE_MPI_TEST_FAIL="0:17")
    figs = tmp_path / "figs"
    p = run(["landscape-plot", str(out), "--out", str(figs), "--format", "pdf"])
    made = p.stdout.split()
    assert len(made) == 6 and all(os.path.getsize(m) > 1000 for m in made)
    assert {os.path.splitext(m)[1] for m in made} == {".pdf", ".vtp", ".html"}
    p = run([sys.executable, "-m", "plotting", str(tmp_path / "none.h5")], check_rc=2)
    assert p.stderr.count("\n") == 1 and "no such file" in p.stderr
    p = run([sys.executable, "-m", "plotting", str(out), "--kind", "1d"], check_rc=2)
    assert "2D grid" in p.stderr and "Traceback" not in p.stderr


def test_plot_while_job_is_writing(tmp_path, digits_ckpt):
    out = tmp_path / "live.h5"
    proc = subprocess.Popen(cli("surface", "--model", "digits_cnn", "--checkpoint", digits_ckpt, "--x=-1:1:9",
                                "--y=-1:1:6", "--samples", "50", "--out", str(out), "--flush-seconds", "0.1"),
                            cwd=ROOT, env=env(LANDSCAPE_MPI_TEST_DELAY="0.05"), stderr=subprocess.PIPE, text=True)
    try:
        wait_for_points(out, 3, timeout=120)
        # Freeze the job (it holds the file open, possibly mid-write): the file stays partial for as long as the
        # checks take, however slow the machine, with no time window to hit.
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            p = run([sys.executable, "-m", "plotting", str(out), "--kind", "heatmap", "--kind", "contour",
                     "--out", str(tmp_path / "figs")])
            assert len(p.stdout.split()) == 2
            p = run([sys.executable, "-m", "plotting", str(out), "--kind", "contour", "--fill-missing",
                     "--out", str(tmp_path / "filled")])
            assert len(p.stdout.split()) == 1
            s = read_surface(str(out))
            assert 0 < s.n_done < s.n_total  # it really was partial while we drew it
            info = json.loads(run(cli("info", str(out), "--json")).stdout)  # info reads it too, mid-run
            assert not info["complete"] and info["done"] == s.n_done and info["total"] == 54
        finally:
            os.kill(proc.pid, signal.SIGCONT)
    finally:
        proc.wait(timeout=300)
    assert proc.returncode == 0, proc.stderr.read()


#: What plotting may load of landscape_mpi: the files layer's reader and contract (and the packages and the error
#: class they sit on); never torch, MPI or a heavy layer.
PLOTTING_MAY_LOAD = {"landscape_mpi", "landscape_mpi.files", "landscape_mpi.files.reader",
                     "landscape_mpi.files.contract", "landscape_mpi.config", "landscape_mpi.config.errors",
                     "landscape_mpi.config.options", "landscape_mpi.config.plot",  # landscape-plot's options
                     # path files: their reader, and the barriers computed from them (torch-free, one place)
                     "landscape_mpi.files.path_reader", "landscape_mpi.numbers", "landscape_mpi.numbers.barriers",
                     # the contract's schema names every task's metrics from the surface options (torch-free)
                     "landscape_mpi.config.surface", "landscape_mpi.config.imports",
                     "landscape_mpi.config.hub"}  # the surface options' hf: specs (os only; huggingface_hub lazily)


def test_plotting_needs_neither_torch_nor_mpi():
    code = ("import sys, json, plotting.cli, plotting.figures, plotting.export, plotting.reader, plotting.fill, "
            "plotting.paths; "
            "print(json.dumps(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('torch', 'mpi4py', 'landscape_mpi'))))")
    p = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True, text=True)
    loaded = set(json.loads(p.stdout))
    assert loaded <= PLOTTING_MAY_LOAD, loaded - PLOTTING_MAY_LOAD
    allowed = re.compile(r"^\s*from\s+landscape_mpi\.(files(\.reader|\.contract|\.path_reader)?|config\.(options|plot)"
                         r"|numbers\.barriers)\s+import\s+[\w, ]+$")
    for py in (ROOT / "plotting").glob("*.py"):
        for line in re.findall(r"^\s*(?:from|import)\s+landscape_mpi.*$", py.read_text(), re.M):
            assert allowed.match(line) and not re.search(r"import .*\b(store|hessian_store)\b", line), (py, line)


# ------------------------------------------------------------------ schema, selective reading, fill, residual
def test_plotting_checks_the_contracts_schema_version(tmp_path, partial2d):
    """plotting keeps no copy of the schema version: the files layer's check (files/contract.py) refuses a newer
    file with one line, in the reader and through landscape-plot."""
    from landscape_mpi.files import contract
    from plotting import reader

    assert not hasattr(reader, "SCHEMA_VERSION")
    newer = max(contract.READABLE_SCHEMA_VERSIONS) + 1
    with h5py.File(partial2d[0], "a") as h:
        h.attrs["schema_version"] = newer
    with pytest.raises(reader.UserError, match=f"schema_version {newer}, this landscape-mpi reads 1; use the"):
        reader.read_surface(partial2d[0])
    p = run([sys.executable, "-m", "plotting", partial2d[0], "--out", str(tmp_path / "figs")], check_rc=2)
    assert p.stderr.count("\n") == 1 and f"schema_version {newer}" in p.stderr and "Traceback" not in p.stderr


def test_reader_reads_done_first_then_only_the_requested_metric(tmp_path, partial2d, monkeypatch):
    from plotting import reader

    read = []
    original = h5py.Dataset.__getitem__

    def spy(self, key):
        read.append(self.name)
        return original(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    s = reader.read_surface(partial2d[0], metrics=["train_loss"])
    results = [n for n in read if n.startswith("/results/")]
    assert results == ["/results/done", "/results/train_loss"]  # never train_acc, rank or seconds
    assert set(s.values) == {"train_loss"} and set(s.available) == {"train_loss", "train_acc"}
    read.clear()
    reader.read_metrics(s, ["train_acc"])
    assert [n for n in read if n.startswith("/results/")] == ["/results/train_acc"]
    with pytest.raises(reader.PlotError, match="no metric 'test_loss'; choose one of train_acc, train_loss"):
        reader.read_metrics(s, ["test_loss"])


def coarse_file(tmp_path, fn, stride=2):
    """A partial file as a coarse-to-fine job leaves it: a strided sub-grid with the corners finished."""
    x = np.linspace(-1, 1, 9)
    y = np.linspace(0, 2, 7)
    XX, YY = np.meshgrid(x, y, indexing="ij")
    done = np.zeros((9, 7), bool)
    done[::stride, ::stride] = True
    done[-1, -1] = done[0, -1] = done[-1, 0] = True
    return write_file(tmp_path / "coarse.h5", {"x": x, "y": y}, {"train_loss": fn(XX, YY)}, done), XX, YY, done


def test_fill_missing_is_exact_for_a_plane_and_marked(tmp_path):
    from plotting.fill import fill_missing

    def plane(x, y):
        return 2.0 + 0.5 * x - 0.25 * y

    path, XX, YY, done = coarse_file(tmp_path, plane)
    s = read_surface(path)
    filled = fill_missing(s, ["train_loss"])
    # linear interpolation of a plane inside the hull of the finished points is the plane itself
    np.testing.assert_allclose(filled.values["train_loss"], plane(XX, YY), atol=1e-12)
    assert np.isnan(s.values["train_loss"][~done]).all()  # the original is untouched
    levels = figures.levels_for([filled.metric("train_loss")])
    x, y = XX[:, 0], YY[0]
    for plot in (figures.plot_contour, figures.plot_heatmap, figures.plot_contourf):
        fig = plot(filled, "train_loss", levels)
        ax = fig.axes[0]
        assert "INTERPOLATED" in ax.get_title() and f"{done.sum()} of {done.size} points" in ax.get_title()
        dots = [line for line in ax.lines if line.get_label() == "computed points"]  # exactly the finished points
        assert len(dots) == 1
        assert np.array_equal(dots[0].get_xdata(), XX[done]) and np.array_equal(dots[0].get_ydata(), YY[done])
        if plot is figures.plot_heatmap:
            assert not mesh_mask(ax, done.shape).any()  # no gaps left
        else:
            assert lines_in_blank_cells(contour_set(ax), x, y, ~done) > 0  # drawn across the gaps
        figures.plt.close(fig)
    fig = figures.plot_contour(s, "train_loss", levels)  # without the option: gaps, no mark
    ax = fig.axes[0]
    assert "INTERPOLATED" not in ax.get_title()
    assert not [line for line in ax.lines if line.get_label() == "computed points"]
    assert lines_in_blank_cells(contour_set(ax), x, y, ~done) == 0
    figures.plt.close(fig)
    fig = figures.plot_heatmap(s, "train_loss", levels)
    assert np.array_equal(mesh_mask(fig.axes[0], done.shape), ~done)
    figures.plt.close(fig)


def test_fill_missing_nearest_outside_the_hull_and_nan_kept(tmp_path):
    from plotting.fill import fill_missing

    x = np.linspace(0, 1, 5)
    y = np.linspace(0, 1, 5)
    XX, YY = np.meshgrid(x, y, indexing="ij")
    loss = 1.0 + XX + 10 * YY
    done = np.zeros((5, 5), bool)
    done[:3, :3] = True  # the lower-left block only: the rest lies outside its hull
    loss[1, 1] = np.nan  # a finished, diverged point
    s = read_surface(write_file(tmp_path / "block.h5", {"x": x, "y": y}, {"train_loss": loss}, done))
    v = fill_missing(s, ["train_loss"]).values["train_loss"]
    assert np.isnan(v[1, 1])  # a finished NaN is a result: not interpolated over
    # (4, 4) is nearest to the finished corner (2, 2); (4, 0) to (2, 0); (0, 4) to (0, 2)
    assert v[4, 4] == loss[2, 2] and v[4, 0] == loss[2, 0] and v[0, 4] == loss[0, 2]
    assert v[2, 2] == loss[2, 2]


def test_fill_missing_1d_and_cli(tmp_path, capsys):
    from plotting import cli as plot_cli
    from plotting.fill import fill_missing

    a = np.linspace(-1, 1, 11)
    done = np.zeros(11, bool)
    done[::5] = True  # -1, 0, 1
    path = write_file(tmp_path / "line.h5", {"x": a}, {"train_loss": a ** 2, "train_acc": 1 - a ** 2 / 2}, done)
    v = fill_missing(read_surface(path), ["train_loss"]).values["train_loss"]
    np.testing.assert_allclose(v, np.abs(a))  # linear between (−1, 1), (0, 0), (1, 1)
    out = tmp_path / "figs"
    assert plot_cli.main([path, "--fill-missing", "--out", str(out)]) == 0
    assert (out / "line_1d.png").stat().st_size > 1000
    path2d, *_ = coarse_file(tmp_path, lambda x, y: x ** 2 + y)
    assert plot_cli.main([path2d, "--fill-missing", "--kind", "contour", "--kind", "vtp", "--out", str(out)]) == 0
    vol = write_file(tmp_path / "vol.h5", {"x": a[:3], "y": a[:3], "z": a[:3]}, {"train_loss": np.ones((3, 3, 3))},
                     np.eye(3, dtype=bool)[:, :, None] & np.ones((3, 3, 3), bool))
    capsys.readouterr()
    assert plot_cli.main([vol, "--fill-missing", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--fill-missing draws 1D and 2D" in err


def test_trajectory_residual_kind(tmp_path, capsys):
    XX, YY = np.meshgrid(X, Y, indexing="ij")
    residual = np.array([0.5, 0.3, 0.2, 0.05, 0.0])
    tx, ty = np.array([-1.0, -0.6, -0.3, -0.1, 0.0]), np.array([1.0, 0.8, 0.4, 0.1, 0.0])
    path = write_file(tmp_path / "pca.h5", {"x": X, "y": Y}, {"train_loss": f(XX, YY)}, np.ones((7, 5), bool),
                      {"trajectory/x": tx, "trajectory/y": ty, "trajectory/epochs": np.array([0, 2, 4, 6, 8]),
                       "trajectory/residual": residual})
    with h5py.File(path, "a") as h:
        h["trajectory"].attrs["explained_variance"] = [0.7, 0.2]
    s = read_surface(path)
    fig = figures.plot_trajectory_residual(s)
    ax = fig.axes[0]
    off, within = ax.lines
    np.testing.assert_array_equal(off.get_ydata(), residual)
    np.testing.assert_array_equal(off.get_xdata(), [0, 2, 4, 6, 8])
    np.testing.assert_array_equal(within.get_xdata(), [0, 2, 4, 6, 8])
    np.testing.assert_allclose(within.get_ydata(), np.sqrt(tx ** 2 + ty ** 2))
    assert off.get_label().startswith("off the plane") and within.get_label().startswith("in the plane")
    assert ax.get_xlabel() == "epoch" and "70.0%" in ax.get_title() and "20.0%" in ax.get_title()
    figures.plt.close(fig)
    fig = figures.plot_trajectory(s, "train_loss", figures.levels_for([s.metric("train_loss")]))
    assert "90.0% of variance" in fig.axes[0].get_legend().get_texts()[0].get_text()
    figures.plt.close(fig)
    from plotting import cli as plot_cli

    assert "trajectory_residual" in plot_cli.default_kinds([s])
    figs = tmp_path / "figs"
    assert plot_cli.main([path, "--kind", "trajectory_residual", "--out", str(figs)]) == 0
    assert (figs / "pca_trajectory_residual.png").stat().st_size > 1000
    no_res = write_file(tmp_path / "old.h5", {"x": X, "y": Y}, {"train_loss": f(XX, YY)}, np.ones((7, 5), bool),
                        {"trajectory/x": tx, "trajectory/y": ty})
    assert "trajectory_residual" not in plot_cli.default_kinds([read_surface(no_res)])
    capsys.readouterr()
    assert plot_cli.main([no_res, "--kind", "trajectory_residual", "--out", str(figs)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no /trajectory/residual" in err


def test_hessian_files_are_handed_to_plotting_hessian(tmp_path, partial2d, monkeypatch):
    from plotting import cli as plot_cli
    from plotting import hessian

    calls = []

    def fake(path, out_dir, fmt, dpi):
        calls.append((path, out_dir, fmt, dpi))
        return [os.path.join(out_dir, "h_density.png")]

    monkeypatch.setattr(hessian, "draw_hessian", fake)
    h = str(tmp_path / "H.h5")
    with h5py.File(h, "w") as f:
        f.attrs["schema_version"] = 1
        f.attrs["file_kind"] = "hessian"
    out = tmp_path / "figs"
    assert plot_cli.main([h, partial2d[0], "--kind", "contour", "--out", str(out), "--format", "svg",
                          "--dpi", "50"]) == 0
    assert calls == [(h, str(out), "svg", 50)]
    assert (out / "partial_train_loss_contour.svg").exists()  # the surface beside it is drawn as usual
