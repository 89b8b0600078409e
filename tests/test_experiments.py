"""The findings experiments: measures against independent computations, the tiny configuration of every experiment
end to end through the CLI (every step computed for real, resumable, a rerun costs nothing), and a report generated
from the files alone."""

import os
import shutil

import h5py
import numpy as np
import pytest
import scipy.stats

from conftest import assert_same_results, cli, mpiexec, run
from landscape_mpi.config.errors import UserError
from landscape_mpi.experiments import experiment, experiments, measures
from landscape_mpi.models import ZOO
from landscape_mpi.numbers.sharpness import roughness

TINY = ("--tiny",)


# ------------------------------------------------------------------------------------------ measures
def test_roughness_of_known_surfaces():
    x = np.linspace(-1, 1, 21)
    h = x[1] - x[0]
    # a parabola's second difference is 2 h^2 everywhere; its range over [-1, 1] is 1
    assert roughness(x**2) == pytest.approx(2 * h**2, rel=1e-12)
    assert roughness(3 * x + 1) == pytest.approx(0, abs=1e-12)  # a line
    zigzag = np.where(np.arange(21) % 2 == 0, 0.0, 1.0)  # every second difference is 2, range 1
    assert roughness(zigzag) == pytest.approx(2.0)
    with_gap = x**2
    with_gap[5] = np.nan  # not computed: the three runs through it are left out
    assert roughness(with_gap) == pytest.approx(2 * h**2, rel=1e-12)


def test_nonconvex_fraction():
    """(The grid max-rise, the curvature and the eigenvalue-ratio summary are shared with info:
    tests/test_sharpness.py.)"""
    x = np.linspace(-1, 1, 11)
    X, Y = np.meshgrid(x, x, indexing="ij")
    assert measures.nonconvex_fraction(X**2 + 2 * Y**2, x, x) == 0
    assert measures.nonconvex_fraction(X**2 - Y**2, x, x) == 1
    assert measures.nonconvex_fraction(X * Y, x, x) == 1  # Hessian [[0, 1], [1, 0]]: eigenvalue -1


def test_convexity_split_by_construction():
    """L = (x - 1/6)^3 + y^2 on a 7x7 grid (step 1/3): the central second difference of the cubic is exactly
    6 (x - 1/6), that of y^2 is 2, the mixed one 0, so the surface is locally non-convex exactly at the interior
    points with x <= 0 (3 columns x 5 rows) and convex at the 10 others. The ratios are set per point, so both
    groups are known."""
    x = np.linspace(-1, 1, 7)
    X, Y = np.meshgrid(x, x, indexing="ij")
    loss = (X - 1 / 6) ** 3 + Y**2
    below = X < 0.1  # the non-convex columns
    rng = np.random.RandomState(1)
    ratio = rng.rand(7, 7) * 0.6
    ratio[below] += 0.3  # larger ratios where the surface is non-convex, overlapping the convex ones
    ratio[4, 5] = 7.0  # a convex point above 1: clipped to 1
    eig_max = np.ones((7, 7))
    eig_min = -ratio
    eig_max[5, 2] = np.nan  # a convex point not computed: left out
    sp = measures.convexity_split(loss, x, x, eig_min, eig_max)
    inner = (slice(1, 6), slice(1, 6))
    nonconvex_mask = below[inner]
    defined = np.isfinite(eig_max)[inner]
    nc = np.minimum(ratio[inner][nonconvex_mask & defined], 1)
    c = np.minimum(ratio[inner][~nonconvex_mask & defined], 1)
    assert (sp.nonconvex, sp.convex) == (15, 9) == (nc.size, c.size)
    assert sp.median_nonconvex == pytest.approx(np.median(nc)) and sp.median_convex == pytest.approx(np.median(c))
    u = scipy.stats.mannwhitneyu(nc, c, alternative="two-sided").statistic  # U of the first sample
    assert sp.rank_biserial == pytest.approx(2 * u / (nc.size * c.size) - 1)
    assert 0 < sp.rank_biserial < 1
    # separated groups give +1 and -1; an empty group gives NaN
    assert measures.convexity_split(loss, x, x, -np.where(below, 0.9, 0.1), np.ones((7, 7))).rank_biserial == 1
    assert measures.convexity_split(loss, x, x, -np.where(below, 0.1, 0.9), np.ones((7, 7))).rank_biserial == -1
    empty = measures.convexity_split(X**2 + Y**2, x, x, eig_min, eig_max)
    assert empty.nonconvex == 0 and np.isnan(empty.rank_biserial) and np.isnan(empty.median_nonconvex)


def test_random_walk_baseline_takes_the_runs_step_sizes():
    """With the run's step norms, the walk follows them: one big first step and tiny ones after is nearly a
    line (PC1+PC2 close to 1), far above the equal-step walk; wrong lengths are refused."""
    n = 20
    line = measures.random_walk_explained(n, dim=500, trials=20, step_norms=np.r_[100.0, np.full(n - 2, 1e-3)])
    equal = measures.random_walk_explained(n, dim=500, trials=20, step_norms=np.ones(n - 1))
    gaussian = measures.random_walk_explained(n, dim=500, trials=20)
    assert line[0] > 0.999 and equal[0] < 0.9
    assert abs(equal[0] - gaussian[0]) < 0.05  # equal lengths: the isotropic Gaussian walk, up to length noise
    with pytest.raises(ValueError):
        measures.random_walk_explained(n, step_norms=np.ones(n))


def test_random_walk_baseline():
    """A walk in many more dimensions than points concentrates on its expected spectrum: the eigenvalues of
    H L L^T H (L: lower-triangular ones, the cumulative sum; H: centering), which for long walks give
    (1 + 1/4) / (pi^2 / 6) = 0.76 for PC1+PC2 (Antognini and Sohl-Dickstein 2018)."""
    n = 100
    L, H = np.tril(np.ones((n, n))), np.eye(n) - np.ones((n, n)) / n
    mu = np.sort(np.linalg.eigvalsh(H @ L @ L.T @ H))[::-1]
    expected = (mu[0] + mu[1]) / mu.sum()
    assert expected == pytest.approx(1.25 / (np.pi**2 / 6), abs=0.01)
    mean, q95 = measures.random_walk_explained(n, dim=1000, trials=5)
    assert mean == pytest.approx(expected, abs=0.02) and mean <= q95 < 1
    assert np.isnan(measures.random_walk_explained(2)[0])
    assert measures.random_walk_explained(10, trials=20) == measures.random_walk_explained(10, trials=20)  # seeded


def test_spearman_against_scipy():
    rng = np.random.RandomState(0)
    for _ in range(5):
        a, b = rng.rand(6), rng.rand(6)
        b[2] = b[3]  # a tie
        assert measures.spearman(list(a), list(b)) == pytest.approx(scipy.stats.spearmanr(a, b)[0])


# ------------------------------------------------------------------------------------------ definitions
def test_definitions():
    for exp in experiments("all", "tiny"):
        # one epoch, but the equal-steps large-batch nets (epochs x the batch ratio 8)
        assert {r.config["epochs"] for r in exp.runs} <= {1, 8}
        assert all(r.config["epochs"] == 1 for r in exp.runs if not r.prune)
        assert {r.config["model"] for r in exp.runs} <= set(ZOO)
        grids = [s.options[a].num for s in exp.surfaces for a in ("x", "y") if a in s.options]
        assert set(grids) <= {5, 3, 1}, grids
    assert {r.config["model"] for r in experiment("skip", "tiny").runs} == {"resnet1d_8_w1", "resnet1d_8_noshort_w1"}
    for scale in ("quick", "small", "paper"):
        for exp in experiments("all", scale):
            assert {r.config["model"] for r in exp.runs} <= set(ZOO)
    assert len({r.config["model"] for r in experiment("skip", "small").runs}) == 6  # 3 depths x shortcut or not
    assert len({r.config["model"] for r in experiment("skip", "quick").runs}) == 4  # depths 8, 20
    # the width experiment's narrow net is the skip experiment's net of that depth: one training, shared by name
    for scale in ("tiny", "small"):
        assert experiment("width", scale).runs[0] in experiment("skip", scale).runs
    # quick: fewer epochs for the skip and batch nets (a machine under load), so the x1 net is trained apart
    assert {r.config["epochs"] for r in experiment("skip", "quick").runs} == {4}
    assert {r.config["epochs"] for r in experiment("width", "quick").runs} == {10}
    with pytest.raises(UserError, match="unknown"):
        experiment("nope", "tiny")
    # the depth-56 no-shortcut nets (skip, and both width nets) get their own, longer training at the small scale
    hard = {r.name: r.config for r in experiment("width", "small").runs}
    assert {(c["lr"], c["epochs"], c["warmup_epochs"], c["clip_grad_norm"]) for c in hard.values()} == {
        (0.02, 150, 5, 5.0)}
    assert {n.rsplit("_s", 1)[0] for n in hard} == {"resnet1d_56_noshort_w1_e150_wu5_clip5",
                                                     "resnet1d_56_noshort_w4_e150_wu5_clip5"}
    assert {r.config["epochs"] for r in experiment("skip", "small").runs if "56_noshort" not in r.name} == {60}
    from landscape_mpi.config.experiments import SCALES as declared
    from landscape_mpi.experiments.definitions import SCALES

    assert SCALES is declared  # one declaration, in the config layer (the CLI's parser imports no torch)


def test_report_names_each_models_training_recipe():
    """The report's models line says how each condition was trained, warm-up and clipping included where set
    (the small scale's depth-56 no-shortcut nets), from the manifest's run configs."""
    from types import SimpleNamespace

    from landscape_mpi.experiments.report import _models_line

    runs = [{"name": r.name, "label": r.label, "config": r.config} for r in experiment("width", "small").runs]
    line = _models_line(SimpleNamespace(manifest={"runs": runs}))
    assert line.count("150 epochs, batch 64, lr 0.02, warm-up 5 epochs, gradient norm clipped at 5") == 2, line
    plain = [{"name": r.name, "label": r.label, "config": r.config} for r in experiment("skip", "small").runs
             if "_8_" in r.name]
    assert "warm-up" not in _models_line(SimpleNamespace(manifest={"runs": plain}))


def test_seeds_are_data():
    """Every condition once per training seed, every random-direction surface once per direction seed; names and
    roles carry them; the confirmatory scales use fresh seeds (the first findings used training seeds 0 and 1,
    direction seed 0)."""
    from landscape_mpi.experiments.definitions import SCALE_SETTINGS

    for scale in ("quick", "small", "paper"):
        s = SCALE_SETTINGS[scale]
        assert len(s.train_seeds) >= 3 and len(s.direction_seeds) >= 3
        assert not {0, 1} & set(s.train_seeds) and 0 not in s.direction_seeds
    assert len(SCALE_SETTINGS["tiny"].train_seeds) == 1
    for scale in ("tiny", "quick", "small", "paper"):
        s = SCALE_SETTINGS[scale]
        for exp in experiments("all", scale):
            for r in exp.runs:
                assert r.name.endswith(f"_s{r.seed}") and r.seed in s.train_seeds
            names = [st.name for st in exp.surfaces]
            assert len(names) == len(set(names))
            for st in exp.surfaces:
                t, d = st.role["train_seed"], st.role["direction_seed"]
                assert exp.run(st.run).seed == t and f"_s{t}" in st.name
                if d is None:  # PCA and interpolation: the seed picks only the evaluation subset
                    assert st.role["kind"] in ("probe", "pca2d", "interp1d")
                else:
                    assert st.name.endswith(f"_s{t}_d{d}") and st.options["seed"] == d
                # every run a step needs is trained in the step's array task
                task = next(g for g in exp.tasks() if st.run in {r.name for r in g})
                assert set(exp.step_runs(st)) <= {r.name for r in task}
            conds = {}
            for st in exp.surfaces:
                key = tuple(sorted((k, str(v)) for k, v in st.role.items()
                                   if k not in ("train_seed", "direction_seed", "small_run", "large_run")))
                conds.setdefault(key, set()).add((st.role["train_seed"], st.role["direction_seed"]))
            for key, seeds in conds.items():
                kind = dict(key)["kind"]
                ds = (s.eig_direction_seeds or s.direction_seeds) if kind == "eig2d" else s.direction_seeds
                ds = (None,) if kind in ("probe", "pca2d", "interp1d") else ds
                assert seeds == {(t, d) for t in s.train_seeds for d in ds}, (scale, exp.name, key)


def test_batch_variants():
    """Large-batch nets: as many epochs (the paper's), as many optimizer steps (epochs x the batch ratio), or the
    learning rate x the batch ratio; an interpolation from each small-batch net to each of its partners."""
    from landscape_mpi.experiments.definitions import SCALE_SETTINGS

    for scale in ("tiny", "small"):
        s = SCALE_SETTINGS[scale]
        exp = experiment("batch", scale)
        ratio = s.large_batch // s.small_batch
        small = [r for r in exp.runs if r.config["batch_size"] == s.small_batch]
        assert len(small) == 2 * len(s.train_seeds)
        for r in small:
            partners = [q for q in exp.runs if q.task == r.task and q is not r]
            got = sorted((q.config["epochs"] // r.config["epochs"], q.config["lr"] / r.config["lr"]) for q in partners)
            assert got == sorted([(1, 1.0), (ratio, 1.0), (1, float(ratio))])
            assert all(q.config["weight_decay"] == r.config["weight_decay"] and q.seed == r.seed for q in partners)
            interps = [st for st in exp.surfaces if st.role["kind"] == "interp1d" and st.run == r.name]
            assert sorted(st.target_run for st in interps) == sorted(q.name for q in partners)
            assert all(st.options["norm"] == "none" and st.options["dir_space"] == "states" for st in interps)
        assert [q.prune for q in exp.runs].count(True) == 2 * len(s.train_seeds)  # the equal-steps nets
    assert {st.options["x"].spec() for st in experiment("batch", "small").surfaces
            if st.role["kind"] == "interp1d"} == {"-0.5:1.5:21"}


def test_steps_are_typed_surface_configs(tmp_path):
    """Every step of every scale builds a valid SurfaceConfig (the in-process path), and its launcher argv
    (`to_argv`) parses back to the same config through the `surface` parser."""
    from landscape_mpi.cli import build_parser
    from landscape_mpi.config.options import from_args, to_argv
    from landscape_mpi.config.surface import RunOptions, SurfaceConfig
    from landscape_mpi.experiments.runner import surface_configs

    parser = build_parser()
    for scale in ("tiny", "quick", "small", "paper"):
        for exp in experiments("all", scale):
            for step in exp.surfaces:
                config, options = surface_configs(exp, step, str(tmp_path), "cpu", None,
                                                  0.37 if step.range_from else None)
                assert config.model == exp.run(step.run).config["model"] and options.device == "cpu"
                if step.range_from:
                    assert config.x.start == -0.37 and config.x.stop == 0.37
                if config.trajectory:
                    assert config.trajectory.startswith(os.path.join(str(tmp_path), "runs", step.run))
                if step.target_run:
                    assert config.x_target == os.path.join(str(tmp_path), "runs", step.target_run, "final.pt")
                a = parser.parse_args(["surface", *to_argv(config), *to_argv(options)])
                assert from_args(SurfaceConfig, a) == config and from_args(RunOptions, a) == options
    manifest = experiment("skip", "tiny").manifest()
    assert manifest["surfaces"][1]["options"]["x"] == "-1.0:1.0:3" and manifest["surfaces"][1]["options"]["eig"]
    assert manifest["surfaces"][1]["role"] == {"kind": "eig2d", "depth": 8, "shortcut": True, "train_seed": 11,
                                               "direction_seed": 21}


def test_user_errors_exit_2(tmp_path):
    p = run(cli("experiments", "run", "nope", "--tiny", "--out-dir", str(tmp_path)), check_rc=2)
    assert len(p.stderr.strip().splitlines()) == 1 and "choose one of" in p.stderr
    p = run(cli("experiments", "run", "width", "--tiny", "--task", "7", "--out-dir", str(tmp_path)), check_rc=2)
    assert "--task 7" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = run(cli("experiments", "report", "--out-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "r.md")),
            check_rc=2)
    assert "holds no experiment" in p.stderr


# ------------------------------------------------------------------------------------------ end to end
DSEEDS = ("_s11_d21",)
EXPECTED = {
    "skip": [f"d8_{k}{e}{d}" for k in ("short", "noshort") for e in ("", "_eig") for d in DSEEDS],
    "batch": [f"{v}bs{b}_wd{wd}_{n}{d}" for v, b in (("", 32), ("epochs_", 256), ("steps_", 256), ("lr_", 256))
              for wd in ("0", "0.0005") for n in ("filter", "none") for d in DSEEDS]
    + [f"interp_{v}_wd{wd}_s11" for v in ("epochs", "steps", "lr") for wd in ("0", "0.0005")],
    "width": [f"d8_noshort_w{w}{d}" for w in (1, 4) for d in DSEEDS],
    "trajectory": ["wd0_probe_s11", "wd0_pca_s11", "wd0.0005_probe_s11", "wd0.0005_pca_s11"],
}
#: The batch experiment's Hessian files: one per net and probe seed.
HESSIANS = [f"hess_{v}bs{b}_wd{wd}_s11_p21" for v, b in (("", 32), ("epochs_", 256), ("steps_", 256), ("lr_", 256))
            for wd in ("0", "0.0005")]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """`experiments run all --tiny` once, through the CLI: 13 short trainings (one training seed), every surface
    step of every experiment (one direction seed: 5x5 loss grids, 3x3 eigenvalue maps, 1D lines; interpolations,
    PCA planes)."""
    out = tmp_path_factory.mktemp("exp")
    p = run(cli("experiments", "run", "all", *TINY, "--out-dir", str(out), "--device", "cpu"), timeout=600)
    return out, p.stderr


def test_every_step_of_every_experiment_is_computed(tiny_run):
    out, log = tiny_run
    assert sorted(p.stem for p in (out / "batch").glob("hess_*.h5")) == sorted(HESSIANS)
    for name, steps in EXPECTED.items():
        stems = sorted(p.stem for p in (out / name).glob("*.h5") if not p.stem.startswith("hess_"))
        assert stems == sorted(steps), name
        assert not list((out / name).glob("*.skipped"))
        for step in steps:
            with h5py.File(out / name / f"{step}.h5", "r") as f:
                assert f["results/done"][()].all(), (name, step)
                assert np.isfinite(f["results/train_loss"][()]).all(), (name, step)
    for step in ("d8_short_s11_d21", "d8_noshort_s11_d21"):
        with h5py.File(out / "skip" / f"{step}.h5", "r") as f:
            assert f["results/train_loss"].shape == (5, 5)
    assert "complete in" in log and log.count("experiment ") > 20


def test_eig_maps_hold_both_eigenvalues(tiny_run):
    out, _ = tiny_run
    for step in ("d8_short_eig_s11_d21", "d8_noshort_eig_s11_d21"):
        with h5py.File(out / "skip" / f"{step}.h5", "r") as f:
            hi, lo, iters = f["results/eig_max"][()], f["results/eig_min"][()], f["results/eig_iters"][()]
        assert hi.shape == (3, 3) and np.isfinite(hi).all() and np.isfinite(lo).all()
        assert (lo <= hi).all() and (hi > 0).all() and (iters > 0).all()


def test_pca_grid_covers_the_trajectory(tiny_run):
    """The runner probes the PCA plane on one point, then sizes the grid to the path (weight units)."""
    out, _ = tiny_run
    for wd in ("0", "0.0005"):
        with h5py.File(out / "trajectory" / f"wd{wd}_pca_s11.h5", "r") as f:
            tx, ty = f["trajectory/x"][()], f["trajectory/y"][()]
            x, y = f["coords/x"][()], f["coords/y"][()]
            ev = list(f["trajectory"].attrs["explained_variance"])
        extent = max(np.abs(tx).max(), np.abs(ty).max())
        assert len(tx) >= 3 and len(ev) == 2 and 0 < ev[1] <= ev[0] and sum(ev) <= 1 + 1e-9
        # the grid reaches past the path (1.25x, rounded up to two significant digits), but not absurdly far
        assert extent <= x.max() == y.max() <= 1.4 * extent and x.min() == -x.max()


def test_rerun_of_finished_experiments_costs_nothing(tiny_run):
    out, _ = tiny_run
    files = sorted(p for p in out.rglob("*") if p.is_file())
    before = {p: os.path.getmtime(p) for p in files if p.name != "manifest.json"}
    p = run(cli("experiments", "run", "all", *TINY, "--out-dir", str(out)))
    assert "training" not in p.stderr and "landscape-mpi surface" not in p.stderr, p.stderr
    assert "landscape-mpi hessian" not in p.stderr, p.stderr  # a Hessian file with the step's settings is kept
    assert before == {q: os.path.getmtime(q) for q in before}


def test_surfaces_under_a_launcher_equal_in_process(tiny_run, tmp_path):
    """--launcher runs each surface as `mpiexec -n 2 python -m landscape_mpi surface ...`: same files."""
    out, _ = tiny_run
    os.symlink(out / "runs", tmp_path / "runs")  # finished trainings: only the surfaces are computed
    p = run(cli("experiments", "run", "width", *TINY, "--out-dir", str(tmp_path), "--device", "cpu",
                "--launcher", " ".join(mpiexec(2))), timeout=900)
    assert "training" not in p.stderr and "2 rank(s)" in p.stderr, p.stderr[-2000:]
    assert sorted(q.stem for q in (tmp_path / "width").glob("*.h5")) == sorted(EXPECTED["width"])
    for step in EXPECTED["width"]:
        assert_same_results(out / "width" / f"{step}.h5", tmp_path / "width" / f"{step}.h5")


def test_stop_signal_ends_the_run_between_steps(tiny_run, tmp_path):
    """A stop flag set (as SIGTERM/SIGUSR1 do) ends the run with 75 before the next step, writing nothing."""
    import landscape_mpi.experiments.runner as runner
    from landscape_mpi.runtime.lifecycle import STOP

    out, _ = tiny_run
    os.symlink(out / "runs", tmp_path / "runs")
    STOP.request("SIGUSR1")
    try:
        with pytest.raises(runner.StepFailed) as info:
            runner.run_experiment(experiment("width", "tiny"), str(tmp_path), device="cpu", log=lambda m: None)
    finally:
        STOP.reset()
    assert info.value.code == 75 and "SIGUSR1" in str(info.value)
    assert not list((tmp_path / "width").glob("*.h5"))


def test_missing_surface_option_is_an_error_not_a_skip(tiny_run, tmp_path):
    """A step whose options `surface` does not have fails the run (exit 2, as a user error) and leaves no file
    behind: nothing is silently skipped."""
    import landscape_mpi.experiments.runner as runner

    out, _ = tiny_run
    exp = experiment("width", "tiny")
    bad = type(exp)(exp.name, exp.claim, exp.scale, exp.runs,
                    tuple(type(s)(s.name, s.run, {**s.options, "no_such_option": 1}, s.range_from, s.role)
                          for s in exp.surfaces))
    os.symlink(out / "runs", tmp_path / "runs")  # finished trainings: nothing to train
    with pytest.raises(runner.StepFailed) as info:
        runner.run_experiment(bad, str(tmp_path), device="cpu", log=lambda m: None)
    assert info.value.code == 2 and "no_such_option" in str(info.value)
    assert not list((tmp_path / "width").glob("*.h5")) and not list((tmp_path / "width").glob("*.skipped"))


def _hand_hessian_extremes(model_name, checkpoint, samples, seed):
    """(mean train loss, largest Hessian eigenvalue) of a checkpoint on the `samples`-subset of seed `seed`, written
    here: double backprop by torch.autograd in float64, BatchNorm in eval mode, scipy's eigsh (independent of
    landscape_mpi.curvature)."""
    import scipy.sparse.linalg as sla
    import torch

    from landscape_mpi.data.datasets import load_eval_set
    from landscape_mpi.models import build_model, load_checkpoint

    model = build_model(model_name)
    load_checkpoint(model, str(checkpoint))
    model = model.double().eval()
    data = load_eval_set("mnist1d", "train", None, samples, seed)
    x, y = data.inputs.double(), data.labels
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)

    def loss():
        return torch.nn.functional.cross_entropy(model(x), y)

    def hvp(v):
        grads = torch.autograd.grad(loss(), params, create_graph=True)
        flat = torch.cat([g.reshape(-1) for g in grads])
        hv = torch.autograd.grad(flat @ torch.as_tensor(np.ravel(v), dtype=torch.float64), params)
        return torch.cat([h.reshape(-1) for h in hv]).numpy()

    with torch.no_grad():
        value = float(loss())
    top = sla.eigsh(sla.LinearOperator((n, n), matvec=hvp, dtype=np.float64), k=1, which="LA", tol=1e-6,
                    v0=np.random.default_rng(0).standard_normal(n), return_eigenvectors=False)
    return value, float(top[0])


def test_hessian_steps_at_the_batch_minimisers(tiny_run):
    """Each batch net's Hessian file is the analysis of that net's final checkpoint on the probe seed's subset:
    its loss and lambda_max equal a Hessian computed here by hand (the wrong net or subset differs by far more)."""
    import json

    out, _ = tiny_run
    exp = experiment("batch", "tiny")
    for step in ("hess_bs32_wd0_s11_p21", "hess_steps_bs256_wd0.0005_s11_p21"):
        h = next(x for x in exp.hessians if x.name == step)
        with h5py.File(out / "batch" / f"{step}.h5", "r") as f:
            cfg = json.loads(f.attrs["config"])
            lam, loss = float(f["eigen/values"][0, 0]), float(f["checkpoints/loss"][0])
            assert f["trace/samples"].shape == (1, 30) and f["adaptive/values"].shape == (1, 20)
            assert "density" not in f and not len(f["eigenvectors/row_000"])
        final = out / "runs" / h.run / "final.pt"
        assert cfg["checkpoint"] == str(final) and cfg["seed"] == h.role["probe_seed"] == 21
        assert cfg["samples"] == 64 and cfg["splits"] == ["train"] and cfg["model"] == "resnet1d_8_w1"
        hand_loss, hand_lam = _hand_hessian_extremes(cfg["model"], final, 64, 21)
        assert loss == pytest.approx(hand_loss, rel=1e-4), step
        assert lam == pytest.approx(hand_lam, rel=1e-2), step


def test_a_hessian_file_with_other_settings_is_refused(tiny_run, tmp_path):
    """A kept Hessian file must hold the step's settings: another number of probes is a one-line user error
    naming the file and the setting, and the file is left as it was."""
    import dataclasses

    import landscape_mpi.experiments.runner as runner

    out, _ = tiny_run
    exp = experiment("batch", "tiny")
    h = exp.hessians[0]
    changed = dataclasses.replace(exp, surfaces=(), hessians=(dataclasses.replace(
        h, options={**h.options, "trace_probes": 31}),))
    os.symlink(out / "runs", tmp_path / "runs")
    (tmp_path / "batch").mkdir()
    kept = tmp_path / "batch" / f"{h.name}.h5"
    shutil.copy(out / "batch" / f"{h.name}.h5", kept)
    before = kept.read_bytes()
    with pytest.raises(runner.StepFailed) as info:
        runner.run_experiment(changed, str(tmp_path), device="cpu", task=0, log=lambda m: None)
    message = str(info.value)
    assert info.value.code == 2 and "trace_probes 30" in message and "31" in message and str(kept) in message
    assert "\n" not in message and kept.read_bytes() == before


def test_hessian_steps_under_a_launcher_equal_in_process(tiny_run, tmp_path):
    """--launcher runs a Hessian step as `mpiexec -n 2 python -m landscape_mpi hessian ...` (the ranks divide the
    samples): the same loss and lambda_max as the step computed in process."""
    import dataclasses

    import landscape_mpi.experiments.runner as runner

    out, _ = tiny_run
    exp = experiment("batch", "tiny")
    h = exp.hessians[0]
    one = dataclasses.replace(exp, surfaces=(), hessians=(h,))
    os.symlink(out / "runs", tmp_path / "runs")
    runner.run_experiment(one, str(tmp_path), device="cpu", task=0, launcher=mpiexec(2), log=lambda m: None)
    with h5py.File(out / "batch" / f"{h.name}.h5", "r") as a, h5py.File(tmp_path / "batch" / f"{h.name}.h5", "r") as b:
        assert int(b.attrs["ranks"]) == 2 and int(a.attrs["ranks"]) == 1
        assert float(b["checkpoints/loss"][0]) == pytest.approx(float(a["checkpoints/loss"][0]), rel=1e-5)
        assert float(b["eigen/values"][0, 0]) == pytest.approx(float(a["eigen/values"][0, 0]), rel=1e-3)


def hand_roughness(v):
    """Mean abs second difference along both axes over the loss range (independent of measures.py)."""
    d2 = np.concatenate([np.abs(v[:-2] - 2 * v[1:-1] + v[2:]).ravel(),
                         np.abs(v[:, :-2] - 2 * v[:, 1:-1] + v[:, 2:]).ravel()])
    return d2.mean() / (v.max() - v.min())


def test_report_has_every_section_figure_and_number(tiny_run, tmp_path):
    from landscape_mpi.experiments import rules

    out, _ = tiny_run
    md = tmp_path / "docs" / "findings.md"
    run(cli("experiments", "report", "--out-dir", str(out), "--out", str(md)))
    text = md.read_text()
    for title in ("## Skip connections and depth", "## Small vs large batch", "## Width", "## Training trajectories",
                  "## Verdict rules (version 2, fixed before the confirmatory run)"):
        assert title in text
    for fig in ("skip_surfaces", "skip_eig_ratio", "batch_1d", "batch_interpolation", "width_surfaces",
                "trajectory_paths"):
        assert f"(findings/{fig}.png)" in text and (tmp_path / "docs" / "findings" / f"{fig}.png").is_file(), fig
    assert "Not computed" not in text and "missing" not in text
    # 17 verdicts (skip 2, eigenvalue ratio 2, batch 6 + 1 + 3, width 2, trajectory 1), in the summary and in their
    # sections, and one line per rule
    assert text.count("- **") == 2 * 17 + len(rules.RULES)
    assert text.count("one representative model: training seed 11, direction seed 21") == 4  # skip 2, batch, width
    assert text.count("one representative model: training seed 11:") == 2  # interpolation, trajectories
    assert "fewer than 3 training seeds" in text and "reproduced.**" not in text.replace("not reproduced.**", "")
    assert "eps-sharpness |" not in text and "| grid max-rise (filter) |" in text and "not its maximisation" in text
    # numbers recomputed here from the files by hand (independent of measures.py)
    with h5py.File(out / "skip" / "d8_noshort_eig_s11_d21.h5", "r") as f:
        hi, lo, loss = f["results/eig_max"][()], f["results/eig_min"][()], f["results/train_loss"][()]
    ratio = np.median(np.minimum(np.abs(lo / hi), 1))
    assert "| 8 | no | 1 |" in text and f" {ratio:.4g} |" in text
    # the exploratory within-map split: the one interior point of the 3x3 map, convex or not by its 2x2 Hessian
    (hx,), (hy,) = np.diff(np.linspace(-1, 1, 3)[:2]), np.diff(np.linspace(-1, 1, 3)[:2])
    hess = [[(loss[2, 1] - 2 * loss[1, 1] + loss[0, 1]) / hx**2,
             (loss[2, 2] - loss[2, 0] - loss[0, 2] + loss[0, 0]) / (4 * hx * hy)],
            [0.0, (loss[1, 2] - 2 * loss[1, 1] + loss[1, 0]) / hy**2]]
    hess[1][0] = hess[0][1]
    n_nc = int(np.linalg.eigvalsh(np.array(hess))[0] < 0)
    assert "Exploratory (added after the results were seen; no verdict), added in commit 71fb083:" in text
    assert f"| 8 | no | 1 | {n_nc} | {1 - n_nc} |" in text
    with h5py.File(out / "skip" / "d8_short_s11_d21.h5", "r") as f:
        assert f" {hand_roughness(f['results/train_loss'][()]):.4g} |" in text
    for wd in ("0", "0.0005"):
        with h5py.File(out / "trajectory" / f"wd{wd}_pca_s11.h5", "r") as f:
            e1, e2 = (float(v) for v in f["trajectory"].attrs["explained_variance"])
            res = float(np.max(f["trajectory/residual"][()]))
        assert f"| {wd} | 11 | {e1:.4g} | {e2:.4g} | {e1 + e2:.4g} |" in text and f" {res:.4g} |" in text
    assert "random walk 95th percentile" in text
    # the interpolation's ends: the train loss at a = 0 and a = 1 of the file
    with h5py.File(out / "batch" / "interp_steps_wd0_s11.h5", "r") as f:
        a, tl = f["coords/x"][()], f["results/train_loss"][()]
    assert f"| steps | 0 | 1 | {tl[np.argmin(np.abs(a))]:.4g} | {tl[np.argmin(np.abs(a - 1))]:.4g} |" in text
    # the Hessian numbers beside the grid max-rise, read here from the file
    with h5py.File(out / "batch" / "hess_lr_bs256_wd0.0005_s11_p21.h5", "r") as f:
        lam, tr, ad = f["eigen/values"][0, 0], f["trace/estimate"][0], f["adaptive/sharpness"][0]
    assert "| Hessian lambda_max | Hessian trace | average adaptive rise |" in text
    assert f" {lam:.4g} | {tr:.4g} | {ad:.4g} |" in text


def test_report_is_deterministic_and_follows_the_files(tiny_run, tmp_path):
    out, _ = tiny_run
    md = tmp_path / "docs" / "findings.md"
    args = cli("experiments", "report", "--out-dir", str(out), "--out", str(md))
    run(args)
    first = md.read_text()
    assert "![narrow vs wide no-shortcut ResNet](findings/width_surfaces.png)" in first
    assert "**Wider networks are smoother (roughness): " in first
    assert "**Wider networks are smoother (non-convex fraction): " in first
    run(args)
    assert md.read_text() == first  # same files, same report
    # the width cells are the files' values (recomputed by hand)
    path = out / "width" / "d8_noshort_w4_s11_d21.h5"
    with h5py.File(path, "r") as f:
        v = f["results/train_loss"][()]
    assert f"| x4 | 8 | 1 | {v[2, 2]:.4g} |" in first and f" {hand_roughness(v):.4g} |" in first
    # change one value in a file: the report changes with it
    with h5py.File(path, "r+") as f:
        f["results/train_loss"][2, 2] = 0.123456
    try:
        run(args)
        assert md.read_text() != first and "| x4 | 8 | 1 | 0.1235 |" in md.read_text()
    finally:
        with h5py.File(path, "r+") as f:
            f["results/train_loss"][2, 2] = v[2, 2]


def test_report_aggregates_training_seeds(tiny_run, tmp_path):
    """Constructed files for 3 training x 2 direction seeds (the tiny width files, shifted per seed by a known
    pattern): each condition's row is mean ± sd [min, max] over the training seeds of each seed's mean over its
    direction seeds, with n = 3; the per-seed table gives those means; the verdict states n = 3."""
    import json

    from landscape_mpi.experiments.report import render

    out, _ = tiny_run
    (tmp_path / "width").mkdir()
    manifest = json.loads((out / "width" / "manifest.json").read_text())
    pattern = (np.arange(25).reshape(5, 5) % 3).astype(float)
    steps, runs, per_seed = [], [], {}
    for t, shift in ((11, 0.0), (12, 0.05), (13, 0.2)):
        for r in manifest["runs"]:
            runs.append({**r, "name": r["name"].replace("_s11", f"_s{t}"), "config": {**r["config"], "seed": t}})
        for st in manifest["surfaces"]:
            for d, extra in ((21, 0.0), (22, 0.03)):
                name = st["name"].replace("_s11_d21", f"_s{t}_d{d}")
                shutil.copy(out / "width" / f"{st['name']}.h5", tmp_path / "width" / f"{name}.h5")
                with h5py.File(tmp_path / "width" / f"{name}.h5", "r+") as f:
                    f["results/train_loss"][...] = f["results/train_loss"][()] + (shift + extra) * pattern
                    v = f["results/train_loss"][()]
                w = st["role"]["width"]
                per_seed.setdefault(w, {}).setdefault(t, []).append((v[2, 2], hand_roughness(v)))
                steps.append({**st, "name": name, "run": st["run"].replace("_s11", f"_s{t}"),
                              "role": {**st["role"], "train_seed": t, "direction_seed": d}})
    manifest.update(runs=runs, surfaces=steps)
    (tmp_path / "width" / "manifest.json").write_text(json.dumps(manifest))
    text = render(str(tmp_path), str(tmp_path / "fig"), "fig")
    assert "training seeds 11, 12, 13; direction seeds 21, 22" in text
    assert "| width | depth | n | train loss | test error |" in text
    assert "one representative model: training seed 11, direction seed 21" in text

    def cell(xs):
        xs = np.array(xs)
        return f"{xs.mean():.4g} ± {xs.std(ddof=1):.4g} [{xs.min():.4g}, {xs.max():.4g}]"

    for w, seeds in per_seed.items():
        loss = [np.mean([c for c, _ in seeds[t]]) for t in (11, 12, 13)]
        rough = [np.mean([r for _, r in seeds[t]]) for t in (11, 12, 13)]
        assert len(set(rough)) == 3
        assert f"| x{w} | 8 | 3 | {cell(loss)} |" in text
        assert f" {cell(rough)} |" in text
        for t, lo, ro in zip((11, 12, 13), loss, rough):
            assert f"| x{w} | 8 | {t} | 2 | no | {lo:.4g} |" in text and f" {ro:.4g} |" in text
    assert "(means over n = 3 training seeds)" in text
    assert "## Verdict rules (version 2, fixed before the confirmatory run)" in text


def test_report_says_when_a_surface_is_partial(tiny_run, tmp_path):
    """A file whose grid is not complete is reported as partial (k of n points), not silently used."""
    from landscape_mpi.experiments.report import render

    out, _ = tiny_run
    shutil.copytree(out / "width", tmp_path / "width")
    with h5py.File(tmp_path / "width" / "d8_noshort_w4_s11_d21.h5", "r+") as f:
        f["results/done"][0, 0] = False
    text = render(str(tmp_path), str(tmp_path / "fig"), "fig")
    assert "`d8_noshort_w4_s11_d21` partial: 24 of 25 points" in text
    assert "`d8_noshort_w1_s11_d21` partial" not in text
