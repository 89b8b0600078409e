"""`landscape-mpi path` against independent computations: a plain loop that rebuilds each model on the path and
evaluates it (BatchNorm re-estimated by a plain recompute), `surface` with a target direction, a planted
permutation that alignment must undo, one process against three ranks and a group of ranks, a killed run
against an uninterrupted one; and every bad input as one line, exit 2, no file."""

from __future__ import annotations

import os
import subprocess

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import cli, mpiexec, one_line_error, run
from landscape_mpi.cli import main
from landscape_mpi.data.datasets import load_eval_set
from landscape_mpi.models import build_model

A = os.path.join(os.path.dirname(__file__), "data", "demo_checkpoint.pt")  # the demo's trained digits_cnn
SAMPLES = 240
COMMON = ["--model", "digits_cnn", "--dataset", "digits", "--samples", str(SAMPLES)]


def state_of(path: str) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def permuted(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """digits_cnn with its conv channels permuted by hand (a planted permutation): the same function."""
    g = torch.Generator().manual_seed(seed)
    p1, p2 = torch.randperm(8, generator=g), torch.randperm(16, generator=g)
    s = {k: v.clone() for k, v in state.items()}
    for k in ("conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"):
        s[k] = state[k][p1]
    s["conv2.weight"] = state["conv2.weight"][p2][:, p1]
    for k in ("conv2.bias", "bn2.weight", "bn2.bias", "bn2.running_mean", "bn2.running_var"):
        s[k] = state[k][p2]
    s["fc.weight"] = state["fc.weight"].reshape(10, 16, 4, 4)[:, p2].reshape(10, 256)
    return s


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """A (trained), B (A's weights moved by 30% noise: another model of the same architecture), P (A with its
    units permuted), and a checkpoint of another architecture."""
    out = tmp_path_factory.mktemp("path_models")
    a = state_of(A)
    g = torch.Generator().manual_seed(1)
    b = {k: (v + 0.3 * v.std() * torch.randn(v.shape, generator=g) if v.is_floating_point() and v.dim() > 1 else
             v.clone()) for k, v in a.items()}
    paths = {"A": A, "B": str(out / "b.pt"), "P": str(out / "p.pt"), "mlp": str(out / "mlp.pt")}
    torch.save({"state_dict": b}, paths["B"])
    torch.save({"state_dict": permuted(a, 3)}, paths["P"])
    torch.save({"state_dict": build_model("digits_mlp").state_dict()}, paths["mlp"])
    return paths


def plain_values(state: dict[str, torch.Tensor], recalibrate: bool) -> dict[str, float]:
    """The oracle: a fresh digits_cnn with `state`; with `recalibrate`, each BatchNorm's statistics set to the
    mean and unbiased variance (numpy, float64) of every input it received while the first --bn-samples training
    samples (the path's default, 2,048: the whole digits training split of 1,437) passed through the model in
    train mode in batches of 128 (the CPU batch size); then loss and accuracy of each split."""
    model = build_model("digits_cnn")
    model.load_state_dict(state)
    if recalibrate:
        train = load_eval_set("digits", "train", None, None, 0)
        seen: dict[torch.nn.Module, list[np.ndarray]] = {}
        layers = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        hooks = [m.register_forward_pre_hook(lambda m, args: seen.setdefault(m, []).append(
            args[0].detach().transpose(0, 1).reshape(args[0].shape[1], -1).double().numpy())) for m in layers]
        model.train()
        with torch.no_grad():
            for i in range(0, len(train), 128):
                model(train.inputs[i:i + 128])
        for h in hooks:
            h.remove()
        for m in layers:
            x = np.concatenate(seen[m], axis=1)
            m.running_mean.copy_(torch.from_numpy(x.mean(axis=1)))
            m.running_var.copy_(torch.from_numpy(x.var(axis=1, ddof=1)))
    model.eval()
    out = {}
    for split in ("train", "test"):
        data = load_eval_set("digits", split, None, SAMPLES, 0)
        with torch.no_grad():
            logits = model(data.inputs)
        out[f"{split}_loss"] = float(F.cross_entropy(logits.double(), data.labels, reduction="mean"))
        out[f"{split}_acc"] = float((logits.argmax(1) == data.labels).double().mean())
    return out


def interpolate(states, weights) -> dict[str, torch.Tensor]:
    first = states[0]
    return {k: (sum(w * s[k].double() for w, s in zip(weights, states)).to(first[k].dtype)
                if first[k].is_floating_point() else first[k]) for k in first}


def results(path: str) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f["results"][k][()] for k in f["results"]}


def check_against(path: str, expected: dict[tuple[int, int], dict[str, float]]) -> None:
    got = results(path)
    assert got["done"].all()
    for (c, j), values in expected.items():
        for name, want in values.items():
            if name.endswith("_acc"):
                assert abs(got[name][c, j] - want) <= 1.01 / SAMPLES, (name, c, j)
            else:
                np.testing.assert_allclose(got[name][c, j], want, rtol=2e-5, atol=1e-6, err_msg=f"{name} at {(c, j)}")


def test_linear_path_with_batchnorm_re_estimated_equals_a_plain_loop(models, tmp_path):
    out = str(tmp_path / "lin.h5")
    assert main(["path", *COMMON, "--checkpoint", models["A"], "--checkpoint", models["B"], "--points", "5",
                 "--out", out]) == 0
    a, b = state_of(models["A"]), state_of(models["B"])
    t = np.linspace(0, 1, 5)
    check_against(out, {(0, j): plain_values(interpolate([a, b], [1 - tj, tj]), True) for j, tj in enumerate(t)})
    with h5py.File(out, "r") as f:
        assert f.attrs["file_kind"] == "path" and f.attrs["path_kind"] == "linear"
        assert '"bn": "recalibrate"' in f.attrs["config"]  # the default for a net with BatchNorm, recorded
        assert np.array_equal(f["coords/t"][()], t) and f["coords/t"][0] == 0.0 and f["coords/t"][-1] == 1.0


def test_chain_bezier_pairs_and_layers_equal_the_models_they_describe(models, tmp_path):
    a, b, p = state_of(models["A"]), state_of(models["B"]), state_of(models["P"])
    common = [*COMMON, "--bn", "eval", "--points", "3"]
    chain, bezier, pairs, layers = (str(tmp_path / f"{n}.h5") for n in ("chain", "bezier", "pairs", "layers"))
    assert main(["path", *common, "--kind", "chain", "--checkpoint", models["A"], "--checkpoint", models["B"],
                 "--checkpoint", models["P"], "--out", chain]) == 0
    # the chain's t: 0, .25, .5 (B), .75, 1 (P)
    check_against(chain, {(0, 2): plain_values(b, False), (0, 3): plain_values(interpolate([b, p], [.5, .5]), False)})
    assert main(["path", *common, "--kind", "bezier", "--checkpoint", models["A"], "--checkpoint", models["B"],
                 "--bend", models["P"], "--out", bezier]) == 0
    check_against(bezier, {(0, 1): plain_values(interpolate([a, p, b], [.25, .5, .25]), False),
                           (0, 2): plain_values(b, False)})
    assert main(["path", *common, "--kind", "pairs", "--checkpoint", models["A"], "--checkpoint", models["B"],
                 "--checkpoint", models["P"], "--out", pairs]) == 0
    with h5py.File(pairs, "r") as f:
        assert [c.decode() for c in f["path/curves"][()]] == ["0-1", "0-2", "1-2"]
    check_against(pairs, {(2, 1): plain_values(interpolate([b, p], [.5, .5]), False), (1, 2): plain_values(p, False)})
    assert main(["path", *common, "--kind", "layers", "--checkpoint", models["A"], "--checkpoint", models["B"],
                 "--out", layers]) == 0
    with h5py.File(layers, "r") as f:
        blocks = [c.decode() for c in f["path/curves"][()]]
    assert blocks == ["conv1", "bn1", "conv2", "bn2", "fc"]
    half_fc = {k: (v.clone() if not k.startswith("fc.") else interpolate([a, b], [.5, .5])[k]) for k, v in a.items()}
    check_against(layers, {(4, 1): plain_values(half_fc, False), (0, 0): plain_values(a, False)})


def test_linear_path_equals_surface_with_a_target_direction(models, tmp_path):
    path, surface = str(tmp_path / "p.h5"), str(tmp_path / "s.h5")
    assert main(["path", *COMMON, "--bn", "eval", "--checkpoint", models["A"], "--checkpoint", models["B"],
                 "--points", "5", "--out", path]) == 0
    assert main(["surface", *COMMON, "--checkpoint", models["A"], "--x-target", models["B"], "--x=0:1:5",
                 "--out", surface]) == 0
    p, s = results(path), results(surface)
    for name in ("train_loss", "test_loss", "train_acc", "test_acc"):
        np.testing.assert_allclose(p[name][0], s[name], rtol=1e-6, err_msg=name)


def test_alignment_undoes_a_planted_permutation(models, tmp_path):
    """P is A with its channels permuted: the same function. Unaligned, the path from A to P climbs; aligned,
    every point of it is A itself."""
    plain, aligned = str(tmp_path / "plain.h5"), str(tmp_path / "aligned.h5")
    for out, extra in ((plain, []), (aligned, ["--align"])):
        assert main(["path", *COMMON, "--bn", "eval", "--checkpoint", models["A"], "--checkpoint", models["P"],
                     "--points", "5", "--out", out, *extra]) == 0
    at_a = plain_values(state_of(models["A"]), False)["train_loss"]
    assert results(plain)["train_loss"][0, 2] > 2 * at_a  # a real barrier without alignment
    np.testing.assert_allclose(results(aligned)["train_loss"][0], at_a, rtol=1e-5)
    with h5py.File(aligned, "r") as f:
        assert '"1"' in f.attrs["alignment"]
    assert os.path.isfile(aligned + ".align-1.h5")


def test_the_barrier_matrix_of_six_models_on_three_ranks_equals_one_process_and_resumes_after_a_kill(models,
                                                                                                     tmp_path):
    args = ["path", *COMMON, "--bn", "eval", "--kind", "pairs", "--points", "3"]
    for m in ("A", "B", "P", "B", "A", "P"):
        args += ["--checkpoint", models[m]]
    one, three, killed = (str(tmp_path / f"{n}.h5") for n in ("one", "three", "killed"))
    assert main([*args, "--out", one]) == 0
    run([*mpiexec(3), *cli(*args, "--out", three)], timeout=600)
    a, b = results(one), results(three)
    assert b["rank"].shape == (15, 3) and len(set(b["rank"].ravel())) >= 2  # 15 pairs x 3 points, shared out
    for name in ("train_loss", "test_loss", "train_acc", "test_acc"):
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, err_msg=name)
    p = run(cli(*args, "--out", killed), check_rc=None, LANDSCAPE_MPI_TEST_FAIL="0:5",
            LANDSCAPE_MPI_TEST_DELAY="0")
    assert p.returncode not in (0, 2), p.stderr
    assert 0 < results(killed)["done"].sum() < 45
    run(cli(*args, "--out", killed))
    c = results(killed)
    for name in ("train_loss", "test_loss"):
        np.testing.assert_allclose(a[name], c[name], rtol=1e-6, err_msg=name)


def test_a_linear_path_in_a_sharded_group_equals_one_process(models, tmp_path):
    args = ["path", *COMMON, "--bn", "eval", "--dir-space", "weights", "--checkpoint", models["A"],
            "--checkpoint", models["B"], "--points", "4"]
    one, group = str(tmp_path / "one.h5"), str(tmp_path / "group.h5")
    assert main([*args, "--out", one]) == 0
    p = run([*mpiexec(2), *cli(*args, "--ranks-per-point", "2", "--group-mode", "shard", "--out", group)],
            timeout=600)
    assert "each rank builds only its shards" in p.stderr
    for name in ("train_loss", "test_loss"):
        np.testing.assert_allclose(results(one)[name], results(group)[name], rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("case", ["one model", "other architecture", "bend of another model", "bezier no bend",
                                  "points"])
def test_bad_input_is_one_line_and_no_file(models, tmp_path, case, capsys):
    """In process (the CLI's own guard, `main`, maps the error to its line and exit code); one case also as the
    console command a user runs."""
    out = str(tmp_path / "bad.h5")
    base = ["path", *COMMON, "--out", out]
    args, needles = {
        "one model": (["--checkpoint", models["A"]], ["--kind linear takes 2 --checkpoint"]),
        "other architecture": (["--checkpoint", models["A"], "--checkpoint", models["mlp"]],
                               ["--checkpoint", "same architecture"]),
        "bend of another model": (["--kind", "bezier", "--checkpoint", models["A"], "--checkpoint", models["B"],
                                   "--bend", models["mlp"]], ["--bend"]),
        "bezier no bend": (["--kind", "bezier", "--checkpoint", models["A"], "--checkpoint", models["B"]],
                           ["--bend"]),
        "points": (["--checkpoint", models["A"], "--checkpoint", models["B"], "--points", "1"], ["--points"]),
    }[case]
    if case == "other architecture":
        p = run(cli(*base, *args), check_rc=None)
    else:
        capsys.readouterr()
        code = main([*base, *args])
        p = subprocess.CompletedProcess(base, code, *capsys.readouterr())
    one_line_error(p, *needles)
    assert not os.path.exists(out)
