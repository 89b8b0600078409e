"""PCA directions of training trajectories (landscape_mpi/directions/pca.py) and the reference code's direction
files (landscape_mpi/directions/reference.py): checked against constructions with known answers and against
numpy.linalg.svd of a matrix the test builds itself."""

import h5py
import numpy as np
import pytest
import torch

from landscape_mpi.config.errors import UserError
from landscape_mpi.directions.pca import pca_directions, pca_from_files, trajectory_files
from landscape_mpi.directions.reference import read_reference_directions
from landscape_mpi.models import build_model

SHAPES = {"l1.weight": (6, 5), "l1.bias": (6,), "l2.weight": (3, 6), "l2.bias": (3,)}
KEYS = list(SHAPES)
WEIGHTS = ["l1.weight", "l2.weight"]
P = 6 * 5 + 3 * 6  # entries of the weight tensors


def unflat(vec, template_keys=WEIGHTS):
    out, o = {}, 0
    for k in template_keys:
        n = int(np.prod(SHAPES[k]))
        out[k] = torch.tensor(vec[o:o + n], dtype=torch.float64).reshape(SHAPES[k])
        o += n
    return out


def flat(d, keys=WEIGHTS):
    return np.concatenate([d[k].double().numpy().ravel() for k in keys])


def plane_trajectory(noise=1e-7, seed=0):
    """Checkpoints theta_final + a_i u + b_i v + noise, with orthonormal u, v (weight entries only) and
    coordinates whose centered versions are uncorrelated with var(a) > var(b): PC1 = u, PC2 = v exactly."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((P, 2)))
    u, v = q[:, 0], q[:, 1]
    a = np.array([-2.0, -1.0, 0.0, 1.0, 2.0]) + 3.0  # odd around its mean ...
    b = np.array([1.0, -0.5, -1.0, -0.5, 1.0]) - 0.2  # ... b even around it: centered covariance 0
    final = {k: torch.tensor(rng.standard_normal(s)) for k, s in SHAPES.items()}
    ckpts = []
    for ai, bi in zip(a, b):
        d = unflat(ai * u + bi * v + noise * rng.standard_normal(P))
        state = {k: final[k] + d[k] for k in WEIGHTS}
        for k in ("l1.bias", "l2.bias"):  # large bias changes: ignored with biasbn
            state[k] = final[k] + torch.tensor(rng.standard_normal(SHAPES[k]) * 10)
        ckpts.append(state)
    return final, ckpts, u, v, a, b


@pytest.mark.parametrize("method", ["exact", "randomized"])
def test_plane_plus_noise_recovers_the_construction(method):
    final, ckpts, u, v, a, b = plane_trajectory()
    r = pca_directions(final, ckpts, KEYS, "biasbn", method)
    assert r.method == method and r.centered
    assert r.explained_total > 0.999 and r.explained_variance[0] > r.explained_variance[1]
    # centered variances 2.0 and 0.56 of a and b (population): the ratios are those shares of the total
    ca, cb = a - a.mean(), b - b.mean()
    total = (ca ** 2).sum() + (cb ** 2).sum()
    assert r.explained_variance[0] == pytest.approx((ca ** 2).sum() / total, rel=1e-5)
    assert r.explained_variance[1] == pytest.approx((cb ** 2).sum() / total, rel=1e-5)
    sx, sy = np.sign(r.coords[0, 0] * a[0]), np.sign(r.coords[0, 1] * b[0])
    np.testing.assert_allclose(sx * r.coords[:, 0], a, atol=1e-5)  # the constructed coordinates, up to sign
    np.testing.assert_allclose(sy * r.coords[:, 1], b, atol=1e-5)
    np.testing.assert_allclose(sx * flat(r.dx), u, atol=1e-5)
    np.testing.assert_allclose(sy * flat(r.dy), v, atol=1e-5)
    assert (r.residual < 1e-5).all()  # the noise only
    for k in ("l1.bias", "l2.bias"):
        assert not r.dx[k].any() and not r.dy[k].any()
        assert r.dx[k].shape == SHAPES[k]
    assert np.linalg.norm(np.concatenate([flat(r.dx, KEYS)])) == pytest.approx(1.0, abs=1e-12)


def test_residual_measures_distance_off_the_plane():
    final, ckpts, u, v, a, b = plane_trajectory(noise=0.0)
    rng = np.random.default_rng(5)
    w = rng.standard_normal(P)
    w -= u * (u @ w) + v * (v @ w)
    w /= np.linalg.norm(w)
    d = unflat(0.05 * w)
    ckpts[2] = {k: (t + d[k] if k in d else t) for k, t in ckpts[2].items()}  # one checkpoint off the plane
    r = pca_directions(final, ckpts, KEYS, "biasbn", "exact")
    # independent: the plane of numpy's SVD of the centered rows, distances by least squares onto it
    rows = np.stack([flat(c) - flat(final) for c in ckpts])
    _, _, vh = np.linalg.svd(rows - rows.mean(axis=0), full_matrices=False)
    basis = vh[:2].T
    coef, *_ = np.linalg.lstsq(basis, rows.T, rcond=None)
    expected = np.linalg.norm(rows.T - basis @ coef, axis=0)
    np.testing.assert_allclose(r.residual, expected, rtol=1e-8, atol=1e-12)
    assert np.argmax(r.residual) == 2 and r.residual[2] > 0.02  # the tilted plane absorbs part of the 0.05


def test_step_norms_are_the_distances_between_consecutive_checkpoints():
    final, ckpts, *_ = plane_trajectory(noise=1e-3)
    r = pca_directions(final, ckpts, KEYS, "biasbn", "exact")
    rows = np.stack([flat(c) for c in ckpts])  # the weights of every checkpoint (biases left out by biasbn)
    np.testing.assert_allclose(r.step_norms, np.linalg.norm(np.diff(rows, axis=0), axis=1), rtol=1e-10)


def test_against_numpy_svd_uncentered_and_ignore_none():
    rng = np.random.default_rng(1)
    final = {k: torch.tensor(rng.standard_normal(s)) for k, s in SHAPES.items()}
    ckpts = [{k: t + torch.tensor(rng.standard_normal(t.shape)) * (i + 1) for k, t in final.items()}
             for i in range(4)]
    for center in (False, True):
        r = pca_directions(final, ckpts, KEYS, "none", "exact", center=center)
        rows = np.stack([flat(c, KEYS) - flat(final, KEYS) for c in ckpts])  # biases included: ignore none
        m = rows - rows.mean(axis=0) if center else rows
        _, s, vh = np.linalg.svd(m, full_matrices=False)
        ratios = s ** 2 / (s ** 2).sum()
        np.testing.assert_allclose(r.explained_variance, ratios[:2], rtol=1e-10)
        np.testing.assert_allclose(np.abs(rows @ vh[0]), np.abs(r.coords[:, 0]), rtol=1e-9)
        np.testing.assert_allclose(np.abs(rows @ vh[1]), np.abs(r.coords[:, 1]), rtol=1e-9)


def test_randomized_agrees_with_exact_on_many_checkpoints():
    rng = np.random.default_rng(2)
    final = {k: torch.tensor(rng.standard_normal(s), dtype=torch.float32) for k, s in SHAPES.items()}
    # 30 checkpoints along a noisy curve: more rows than the randomized method's 10 columns
    t = np.linspace(0, 1, 30)
    q, _ = np.linalg.qr(rng.standard_normal((P, 3)))
    path = np.outer(np.cos(3 * t), q[:, 0]) * 3 + np.outer(np.sin(3 * t), q[:, 1]) + np.outer(t, q[:, 2]) * 0.3
    ckpts = []
    for row in path + 0.01 * rng.standard_normal((30, P)):
        d = unflat(row)
        ckpts.append({k: (final[k] + d[k].float() if k in d else final[k].clone()) for k in KEYS})
    exact = pca_directions(final, ckpts, KEYS, "biasbn", "exact")
    rand = pca_directions(final, ckpts, KEYS, "biasbn", "randomized")
    assert rand.iterations >= 1 and rand.tol < 1e-6
    np.testing.assert_allclose(rand.explained_variance, exact.explained_variance, rtol=1e-4)
    assert abs(flat(rand.dx) @ flat(exact.dx)) == pytest.approx(1.0, abs=1e-5)
    assert abs(flat(rand.dy) @ flat(exact.dy)) == pytest.approx(1.0, abs=1e-5)


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    from landscape_mpi.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("mlp")
    final = train(TrainConfig(model="digits_mlp", out_dir=str(out), epochs=3, batch_size=64, lr=0.05), quiet=True)
    return out, final


def test_real_training_against_numpy_svd(mlp_run):
    out, final_path = mlp_run
    model = build_model("digits_mlp")
    keys = [n for n, _ in model.named_parameters()]
    final = torch.load(final_path, weights_only=True)["state_dict"]
    # '*.pt' also matches final.pt, which is left out; epoch_003.pt (a copy of it) stays: the path's last point
    r = pca_from_files(final, str(out / "*.pt"), keys, "biasbn", final_path=final_path)
    assert [p.rsplit("/", 1)[1] for p in r.sources] == [f"epoch_{i:03d}.pt" for i in range(4)]
    assert r.epochs.tolist() == [0, 1, 2, 3] and r.method == "exact"
    rows = []
    for i in range(4):
        sd = torch.load(out / f"epoch_{i:03d}.pt", weights_only=True)["state_dict"]
        rows.append(np.concatenate([(sd[k] - final[k]).double().numpy().ravel() if sd[k].dim() > 1
                                    else np.zeros(sd[k].numel()) for k in keys]))
    rows = np.stack(rows)
    _, s, vh = np.linalg.svd(rows - rows.mean(axis=0), full_matrices=False)
    ratios = s ** 2 / (s ** 2).sum()
    np.testing.assert_allclose(r.explained_variance, ratios[:2], rtol=1e-6)
    np.testing.assert_allclose(np.abs(r.coords), np.abs(np.stack([rows @ vh[0], rows @ vh[1]], axis=1)),
                               rtol=1e-6, atol=1e-9)
    assert np.abs(r.coords[3]).max() < 1e-12 and r.residual[3] < 1e-12  # epoch 3 is the final model


def test_trajectory_user_errors(mlp_run, tmp_path):
    out, final_path = mlp_run
    final = torch.load(final_path, weights_only=True)["state_dict"]
    keys = list(final)
    cases = [
        (str(tmp_path / "nothing_*.pt"), "no checkpoint files match"),
        (str(out / "epoch_001.pt"), "1 checkpoint(s)"),
        (final_path, "no checkpoint files match"),  # the glob holds only --checkpoint itself
    ]
    for pattern, msg in cases:
        with pytest.raises(UserError) as e:
            pca_from_files(final, pattern, keys, "biasbn", final_path=final_path)
        assert msg in str(e.value) and "\n" not in str(e.value)
    other = tmp_path / "other"
    other.mkdir()
    cnn = build_model("digits_cnn").state_dict()
    for i in range(3):
        torch.save(cnn if i == 1 else final, other / f"e{i}.pt")
    with pytest.raises(UserError, match="e1.pt.*same architecture") as e:
        pca_from_files(final, str(other / "e*.pt"), keys, "biasbn")
    assert "\n" not in str(e.value)
    same = tmp_path / "same"
    same.mkdir()
    for i in range(3):
        torch.save(final, same / f"e{i}.pt")
    with pytest.raises(UserError, match="fewer than two dimensions"):
        pca_from_files(final, str(same / "e*.pt"), keys, "biasbn")
    with pytest.raises(UserError, match="choose one of"):
        pca_directions(final, [final] * 3, keys, "biasbn", method="svd")


def test_trajectory_files_natural_order(tmp_path):
    for name in ("ep_10.pt", "ep_2.pt", "ep_1.pt", "final.pt"):
        (tmp_path / name).write_bytes(b"x")
    got = trajectory_files(str(tmp_path / "*.pt"), str(tmp_path / "final.pt"))
    assert [p.rsplit("/", 1)[1] for p in got] == ["ep_1.pt", "ep_2.pt", "ep_10.pt"]


# ------------------------------------------------------------------------------ reference direction files
def write_reference(path, groups):
    """The reference code's layout (h5_util.write_list): one dataset per tensor, named by position."""
    with h5py.File(path, "w") as f:
        for name, arrays in groups.items():
            g = f.create_group(name)
            for i, a in enumerate(arrays):
                g.create_dataset(str(i), data=a)
    return str(path)


def test_reference_weights_file_read_back_exactly(tmp_path):
    model = build_model("digits_cnn")
    rng = np.random.default_rng(0)
    params = list(model.named_parameters())
    xs = [rng.standard_normal(tuple(p.shape)).astype(np.float32) for _, p in params]
    ys = [rng.standard_normal(tuple(p.shape)).astype(np.float32) for _, p in params]
    path = write_reference(tmp_path / "dirs.h5", {"xdirection": xs, "ydirection": ys})
    dx, dy = read_reference_directions(path, model, "weights")
    assert list(dx) == [n for n, _ in params]
    for (name, _), x, y in zip(params, xs, ys):
        assert torch.equal(dx[name], torch.from_numpy(x)) and torch.equal(dy[name], torch.from_numpy(y))
    (only_x,) = read_reference_directions(write_reference(tmp_path / "x.h5", {"xdirection": xs}), model, "weights")
    assert torch.equal(only_x["fc.weight"], dx["fc.weight"])


@pytest.mark.parametrize("with_int_buffers", [True, False])
def test_reference_states_file(tmp_path, with_int_buffers):
    model = build_model("digits_cnn")
    state = model.state_dict()
    rng = np.random.default_rng(1)
    entries = [(k, v) for k, v in state.items() if with_int_buffers or v.is_floating_point()]
    arrays = [rng.standard_normal(tuple(v.shape)).astype(np.float32) if v.is_floating_point()
              else np.zeros((), np.float32) for _, v in entries]  # the reference code wrote 0 for num_batches_tracked
    (dx,) = read_reference_directions(write_reference(tmp_path / "s.h5", {"xdirection": arrays}), model, "states")
    floating = [k for k, v in state.items() if v.is_floating_point()]
    assert list(dx) == floating and "bn1.running_var" in dx and "bn1.num_batches_tracked" not in dx
    for (k, v), a in zip(entries, arrays):
        if v.is_floating_point():
            assert torch.equal(dx[k], torch.from_numpy(a))


def test_reference_file_errors(tmp_path):
    model = build_model("digits_cnn")
    shapes = [tuple(p.shape) for p in model.parameters()]
    n = len(shapes)
    too_few = write_reference(tmp_path / "few.h5", {"xdirection": [np.zeros(s) for s in shapes[:-1]]})
    with pytest.raises(UserError, match=f"{n - 1} tensors per direction, but the model has {n} parameters"):
        read_reference_directions(too_few, model, "weights")
    with pytest.raises(UserError, match="state_dict has"):
        read_reference_directions(too_few, model, "states")
    swapped = [np.zeros(s) for s in shapes]
    swapped[0], swapped[-2] = swapped[-2], swapped[0]
    with pytest.raises(UserError, match="xdirection/0 has shape .* but conv1.weight has"):
        read_reference_directions(write_reference(tmp_path / "sw.h5", {"xdirection": swapped}), model, "weights")
    with pytest.raises(UserError, match="no 'xdirection' group"):
        read_reference_directions(write_reference(tmp_path / "e.h5", {"other": [np.zeros(1)]}), model, "weights")
    with pytest.raises(UserError, match="no such file"):
        read_reference_directions(str(tmp_path / "none.h5"), model, "weights")
