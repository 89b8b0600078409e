"""The trajectory verdict's random-walk baseline is the run's own schedule, end to end: a PCA surface file written by
`landscape-mpi surface --directions pca` from constructed checkpoints stores the step lengths between them
(/trajectory/step_norms); the report reads them from the file and its random walk takes them. Planting other step
lengths in the files moves the walk's numbers to the value computed here independently and flips the verdict.

The independent value: in d >> n dimensions, steps of lengths s_k in isotropic random directions are nearly
orthogonal, so the walk's Gram matrix concentrates on L diag(s^2) L^T (L: the cumulative sum), and PC1+PC2 of the
centered walk on the top two eigenvalues of H L diag(s^2) L^T H over its trace (H: centering)."""

import json
import re
import shutil

import h5py
import numpy as np
import pytest
import torch

from landscape_mpi.cli import main
from landscape_mpi.experiments.report import render
from landscape_mpi.models import build_model

MODEL = "resnet1d_8_w1"
CHECKPOINTS = 16
SEEDS = (11, 12, 13)
WDS = (0.0, 0.0005)


def walk_expected(step_norms: np.ndarray) -> float:
    """PC1+PC2 of the centered walk whose steps have these lengths, in the many-dimensions limit."""
    n = len(step_norms) + 1
    cum = np.tril(np.ones((n, n)))[:, 1:]  # position k: the sum of steps 1..k
    h = np.eye(n) - 1.0 / n
    ev = np.sort(np.linalg.eigvalsh(h @ cum @ np.diag(np.asarray(step_norms) ** 2) @ cum.T @ h))[::-1]
    return float(ev[:2].sum() / ev.sum())


@pytest.fixture(scope="module")
def pca_file(tmp_path_factory):
    """One PCA surface (a single point) of a constructed path: 16 checkpoints on a half circle in a random plane of
    the conv/linear weights plus a little isotropic noise, ending at the model itself; PC1+PC2 about 0.95, the
    steps of nearly equal length."""
    out = tmp_path_factory.mktemp("traj")
    model = build_model(MODEL)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    keys = [k for k, v in state.items() if v.dtype.is_floating_point and v.ndim >= 2]
    dim = sum(state[k].numel() for k in keys)
    rng = np.random.default_rng(0)
    u, v = rng.standard_normal(dim), rng.standard_normal(dim)
    u /= np.linalg.norm(u)
    v -= (v @ u) * u
    v /= np.linalg.norm(v)
    th = np.linspace(0, np.pi, CHECKPOINTS)
    disp = ((np.cos(th) - np.cos(th[-1]))[:, None] * u + (np.sin(th) - np.sin(th[-1]))[:, None] * v
            + 0.22 / np.sqrt(dim) * rng.standard_normal((CHECKPOINTS, dim)))
    disp[-1] = 0
    for i in range(CHECKPOINTS):
        st, off = dict(state), 0
        for k in keys:
            n = state[k].numel()
            st[k] = state[k] + torch.tensor(disp[i, off:off + n], dtype=state[k].dtype).reshape(state[k].shape)
            off += n
        torch.save({"state_dict": st, "epoch": i}, out / f"epoch_{i:03d}.pt")
    shutil.copy(out / f"epoch_{CHECKPOINTS - 1:03d}.pt", out / "final.pt")  # as training writes it
    path = out / "path.h5"
    assert main(["surface", "--model", MODEL, "--checkpoint", str(out / "final.pt"),
                 "--dataset", "mnist1d", "--samples", "16", "--directions", "pca", "--trajectory",
                 str(out / "epoch_*.pt"), "--x=0:0:1", "--y=0:0:1", "--out", str(path), "--device", "cpu"]) == 0
    return path, np.linalg.norm(np.diff(disp, axis=0), axis=1)


def _experiment(tmp_path, pca_file, step_norms=None):
    """A trajectory experiment of 3 training seeds x 2 weight decays, every path the constructed one; with
    `step_norms`, planted in every file as the run's step lengths."""
    src, _ = pca_file
    d = tmp_path / "trajectory"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    runs, surfaces = [], []
    for wd in WDS:
        for t in SEEDS:
            run = f"traj_wd{wd:g}_s{t}"
            runs.append({"name": run, "label": f"SGD, weight decay {wd:g}", "task": run,
                         "config": {"model": MODEL, "epochs": CHECKPOINTS - 1, "batch_size": 32, "lr": 0.02,
                                    "seed": t, "weight_decay": wd}})
            name = f"wd{wd:g}_pca_s{t}"
            shutil.copy(src, d / f"{name}.h5")
            if step_norms is not None:
                with h5py.File(d / f"{name}.h5", "r+") as f:
                    f["trajectory/step_norms"][...] = step_norms
            surfaces.append({"name": name, "run": run, "options": {}, "range_from": None, "target_run": None,
                             "role": {"kind": "pca2d", "wd": wd, "train_seed": t, "direction_seed": None}})
    (d / "manifest.json").write_text(json.dumps({"name": "trajectory", "claim": "low-dimensional", "scale": "tiny",
                                                 "runs": runs, "surfaces": surfaces, "hessians": []}))
    return render(str(tmp_path), str(tmp_path / "fig"), "fig")


def _walk_cells(text: str) -> list[tuple[float, float, float]]:
    """(PC1+PC2, walk mean, walk 95th percentile) of each per-seed row of the trajectory table."""
    rows = re.findall(r"^\| (?:0|0\.0005) \| 1[123] \| ([^|]+) \| ([^|]+) \| ([^|]+) \| ([^|]+) \| ([^|]+) \|", text,
                      re.M)
    assert len(rows) == len(WDS) * len(SEEDS), text
    return [(float(r[2]), float(r[3]), float(r[4])) for r in rows]


def _verdict(text: str) -> str:
    return re.search(r"\*\*Trajectories lie in a low-dimensional space: ([a-z ]+?)\.\*\*", text).group(1)


def test_the_report_takes_each_runs_stored_step_lengths(pca_file, tmp_path):
    path, built = pca_file
    with h5py.File(path, "r") as f:
        stored = f["trajectory/step_norms"][()]
        explained = float(np.sum(f["trajectory"].attrs["explained_variance"]))
    np.testing.assert_allclose(stored, built, rtol=1e-4)  # the file holds the path's own step lengths
    assert 0.9 < explained < 0.97
    # as stored (nearly equal steps): the walk explains about 0.77, the path beats it on every seed
    text = _experiment(tmp_path, pca_file)
    for e12, mean, q95 in _walk_cells(text):
        assert e12 == pytest.approx(explained, abs=1e-3)
        assert mean == pytest.approx(walk_expected(stored), abs=2e-3) and mean < q95 < e12
    assert _verdict(text) == "reproduced"
    assert "no step lengths" not in text
    # planted: a schedule that decays a million-fold, so the walk is nearly a line; the same paths no longer beat it
    planted = np.geomspace(1, 1e-6, CHECKPOINTS - 1)
    assert walk_expected(planted) > explained + 0.01
    text = _experiment(tmp_path, pca_file, planted)
    for e12, mean, q95 in _walk_cells(text):
        assert mean == pytest.approx(walk_expected(planted), abs=2e-3) and q95 > e12
    assert _verdict(text) == "not reproduced"


def test_a_file_without_step_lengths_says_so(pca_file, tmp_path):
    """A file written before the step lengths were stored: the equal-step walk, and a note naming the file."""
    _experiment(tmp_path, pca_file)
    for p in (tmp_path / "trajectory").glob("*.h5"):
        with h5py.File(p, "r+") as f:
            del f["trajectory/step_norms"]
    text = render(str(tmp_path), str(tmp_path / "fig"), "fig")
    assert "`wd0_pca_s11` holds no step lengths" in text
    for _, mean, _ in _walk_cells(text):
        assert mean == pytest.approx(walk_expected(np.ones(CHECKPOINTS - 1)), abs=0.01)
