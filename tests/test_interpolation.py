"""The batch experiment's interpolation between the small-batch and large-batch minimisers: its ends are the two
models (loss and accuracy equal to each model's own, computed here with a plain PyTorch loop over the same
samples), and its range is shortened only where an interpolated BatchNorm variance would turn negative."""

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from landscape_mpi.config.surface import Axis
from landscape_mpi.data.datasets import load_eval_set
from landscape_mpi.experiments import experiment
from landscape_mpi.experiments.definitions import Experiment
from landscape_mpi.experiments.runner import interpolation_axis, run_dir, run_experiment
from landscape_mpi.models import build_model


def own_metrics(model_name: str, checkpoint: str, split: str, samples: int, seed: int) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of a checkpoint in eval mode over the surface's subset of `split`."""
    model = build_model(model_name)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"])
    model.eval()
    data = load_eval_set("mnist1d", split, None, samples, seed)
    x, y = data.inputs, data.labels
    loss, hits = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(y), 37):  # a batch size of its own: the mean must not depend on it
            out = model(x[i:i + 37]).double()
            loss += float(F.cross_entropy(out, y[i:i + 37], reduction="sum"))
            hits += int((out.argmax(1) == y[i:i + 37]).sum())
    return loss / len(y), hits / len(y)


@pytest.fixture(scope="module")
def trained_pair(tmp_path_factory):
    """The tiny batch experiment's first task cut down to the small-batch net, its equal-steps large-batch
    partner and the interpolation between them: two short trainings and one 5-point line."""
    out = tmp_path_factory.mktemp("interp")
    full = experiment("batch", "tiny")
    step = next(s for s in full.surfaces if s.role["kind"] == "interp1d" and s.role["variant"] == "steps")
    runs = tuple(r for r in full.runs if r.name in (step.run, step.target_run))
    exp = Experiment(full.name, full.claim, full.scale, runs, (step,))
    run_experiment(exp, str(out), device="cpu", log=lambda m: None)
    return out, exp, step


def test_ends_of_the_line_are_the_two_models(trained_pair):
    out, exp, step = trained_pair
    with h5py.File(out / "batch" / f"{step.name}.h5", "r") as f:
        a = f["coords/x"][()]
        values = {k: f[f"results/{k}"][()] for k in ("train_loss", "train_acc", "test_loss", "test_acc")}
    samples, seed = step.options["samples"], step.options["seed"]
    assert a[0] >= -0.5 and a[-1] <= 1.5
    for end, run in ((0.0, step.run), (1.0, step.target_run)):
        i = int(np.argmin(np.abs(a - end)))
        assert abs(a[i] - end) < 1e-12  # the end is a grid point
        checkpoint = str(run_dir(str(out), run) + "/final.pt")
        for split in ("train", "test"):
            loss, acc = own_metrics(exp.run(run).config["model"], checkpoint, split, samples, seed)
            assert values[f"{split}_loss"][i] == pytest.approx(loss, rel=1e-6), (end, split)
            assert values[f"{split}_acc"][i] == pytest.approx(acc, abs=1e-12), (end, split)
    # the two models differ, so the check above tells the ends apart
    i0, i1 = int(np.argmin(np.abs(a))), int(np.argmin(np.abs(a - 1)))
    assert values["train_loss"][i0] != pytest.approx(values["train_loss"][i1], rel=1e-3)


def test_interpolation_is_in_the_states_space_and_not_normalized(trained_pair):
    out, _, step = trained_pair
    import json

    with h5py.File(out / "batch" / f"{step.name}.h5", "r") as f:
        config = json.loads(f.attrs["config"])
    assert config["dir_space"] == "states" and config["norm"] == "none"
    assert config["x_target"].endswith(f"{step.target_run}/final.pt")
    assert config["checkpoint"].endswith(f"{step.run}/final.pt")


def test_axis_is_shortened_where_a_batchnorm_variance_turns_negative(tmp_path):
    """running_var 1 -> 5 is negative below a = -0.25, 4 -> 1 above a = 4/3: with steps of 0.1 the line keeps
    -0.2 .. 1.3 (16 points), a = 0 and a = 1 among them; equal variances keep the whole range."""
    def save(name, var):
        path = tmp_path / name
        torch.save({"state_dict": {"bn.running_var": torch.tensor(var), "bn.weight": torch.ones(2)}}, path)
        return str(path)

    axis = Axis(-0.5, 1.5, 21)
    cut = interpolation_axis(save("a.pt", [1.0, 4.0]), save("b.pt", [5.0, 1.0]), axis)
    assert (cut.start, cut.stop, cut.num) == (pytest.approx(-0.2), pytest.approx(1.3), 16)
    x = cut.values()
    assert np.min(np.abs(x)) < 1e-12 and np.min(np.abs(x - 1)) < 1e-12
    v = np.array([1.0, 4.0]) + np.outer(x, [4.0, -3.0])
    assert (v >= 0).all()
    assert interpolation_axis(save("c.pt", [1.0, 2.0]), save("d.pt", [1.0, 2.0]), axis) == axis
    assert interpolation_axis(save("e.pt", [1.0, 2.0]), save("f.pt", [1.0, 2.0]), Axis(-1, 1, 5)) == Axis(-1, 1, 5)
