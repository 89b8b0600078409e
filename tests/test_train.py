"""Training for the analyses: exact resume, iteration saves, vectorized augmentation, MNIST-1D, small ResNets."""

import json
import os
import shutil
import signal
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import landscape_mpi.training.train as train_mod
from conftest import cli, env, run, wait_for_files
from landscape_mpi.config.errors import UserError
from landscape_mpi.config.train import TrainConfig
from landscape_mpi.data.datasets import load_split
from landscape_mpi.models import INPUT_SHAPES, ZOO, build_model
from landscape_mpi.models.resnet_small import zoo_entries
from landscape_mpi.training.train import _augment, train

CPU = torch.device("cpu")
# 200 MNIST-1D samples, batch 32: 7 steps per epoch; iteration saves every 4 steps fall inside epochs.
BASE = dict(model="resnet1d_8_w1", dataset="mnist1d", samples=200, epochs=3, batch_size=32, lr=0.05,
            schedule="step", save_every_iters=4, seed=3)


def state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_training(a, b):
    sa, sb = state(a), state(b)
    for k in sa["state_dict"]:
        assert torch.equal(sa["state_dict"][k], sb["state_dict"][k]), k
    ma = sa["resume"]["optimizer"]["state"]
    mb = sb["resume"]["optimizer"]["state"]
    assert ma.keys() == mb.keys() and all(torch.equal(ma[i]["momentum_buffer"], mb[i]["momentum_buffer"]) for i in ma)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 3-epoch training with iteration saves."""
    out = tmp_path_factory.mktemp("ref")
    train(TrainConfig(out_dir=str(out), **BASE), CPU, quiet=True)
    return out


def test_files_and_weights_only(reference):
    names = sorted(os.listdir(reference))
    assert names[:4] == ["epoch_000.pt", "epoch_001.pt", "epoch_002.pt", "epoch_003.pt"] and names[4] == "final.pt"
    assert [n for n in names if n.startswith("iter_")] == [f"iter_{i:07d}.pt" for i in (4, 8, 12, 16, 20)]
    it = state(reference / "iter_0000008.pt")  # step 8 = second step of epoch 2
    assert it["iteration"] == 8 and it["epoch"] == 1 and it["resume"]["next_batch"] == 1
    assert state(reference / "epoch_002.pt")["epoch"] == 2 and "test_acc" in state(reference / "epoch_002.pt")


@pytest.mark.parametrize("keep", ["epoch_001.pt", "iter_0000012.pt", "iter_0000020.pt", "epoch_003.pt"])
def test_resume_equals_uninterrupted(reference, tmp_path, keep):
    """A training killed after `keep` (later files lost) resumes to exactly the uninterrupted weights."""
    steps = {"epoch_001.pt": 7, "iter_0000012.pt": 12, "iter_0000020.pt": 20, "epoch_003.pt": 21}[keep]
    for name in os.listdir(reference):
        if name == "final.pt":
            continue
        n = int(name.split("_")[1].split(".")[0]) * (7 if name.startswith("epoch") else 1)
        if n <= steps:
            shutil.copy(reference / name, tmp_path / name)
    train(TrainConfig(out_dir=str(tmp_path), **BASE), CPU, quiet=True)
    assert_same_training(reference / "final.pt", tmp_path / "final.pt")
    assert_same_training(reference / "epoch_003.pt", tmp_path / "epoch_003.pt")


def test_rerun_of_finished_training_loads_nothing(reference, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a finished training must not load data")

    monkeypatch.setattr(train_mod, "load_eval_set", refuse)
    monkeypatch.setattr(train_mod, "build_model", refuse)
    before = {n: os.path.getmtime(reference / n) for n in os.listdir(reference)}
    assert train(TrainConfig(out_dir=str(reference), **BASE), CPU, quiet=True) == str(reference / "final.pt")
    assert before == {n: os.path.getmtime(reference / n) for n in os.listdir(reference)}


def test_resume_with_other_settings_is_refused(reference, tmp_path):
    shutil.copy(reference / "epoch_001.pt", tmp_path / "epoch_001.pt")
    with pytest.raises(UserError, match=r"lr: 0.05 there, 0.1 now"):
        train(TrainConfig(out_dir=str(tmp_path), **{**BASE, "lr": 0.1}), CPU, quiet=True)
    with pytest.raises(UserError, match="other settings"):  # a finished one too
        train(TrainConfig(out_dir=str(reference), **{**BASE, "epochs": 4}), CPU, quiet=True)


def test_old_checkpoint_without_resume_state_is_refused(tmp_path):
    torch.save({"state_dict": build_model("resnet1d_8_w1").state_dict(), "epoch": 1}, tmp_path / "epoch_001.pt")
    with pytest.raises(UserError, match="no training config"):
        train(TrainConfig(out_dir=str(tmp_path), **BASE), CPU, quiet=True)


def test_bad_save_every_iters():
    with pytest.raises(UserError, match="--save-every-iters"):
        TrainConfig(model="digits_cnn", out_dir="x", save_every_iters=-1)


def _hand_trained(cfg: TrainConfig, lr_of_step, clip: float, loss=F.cross_entropy) -> tuple[dict, int]:
    """SGD written out: the training's initialization, sample order and data, each step at `lr_of_step(k)` on
    `loss(model output, labels)`, the gradient scaled to norm `clip` where it is larger (0: never); returns the
    weights and how many steps were clipped."""
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    model = build_model(cfg.model)
    data = train_mod.load_eval_set(cfg.dataset, "train", None, cfg.samples, cfg.seed)
    n = len(data)
    per_epoch = -(-n // cfg.batch_size)
    params = list(model.parameters())
    velocity = [torch.zeros_like(p) for p in params]
    clipped, k = 0, 0
    for _ in range(cfg.epochs):
        model.train()
        order = torch.randperm(n, generator=generator)
        for b in range(per_epoch):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            model.zero_grad(set_to_none=True)
            loss(model(data.inputs[idx]), data.labels[idx]).backward()
            with torch.no_grad():
                grads = [p.grad + cfg.weight_decay * p for p in params]
                norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params))
                scale = 1.0
                if clip and norm > clip:  # torch's rule: the gradient before weight decay, clip / (norm + 1e-6)
                    scale, clipped = clip / (norm.item() + 1e-6), clipped + 1
                    grads = [p.grad * scale + cfg.weight_decay * p for p in params]
                for p, g, v in zip(params, grads, velocity):
                    v.mul_(cfg.momentum).add_(g)
                    p.sub_(lr_of_step(k) * v)
            k += 1
    return {n: v.detach() for n, v in model.state_dict().items()}, clipped


def test_warmup_and_clipping_equal_sgd_written_out(tmp_path):
    """Warm-up over 2 of 3 epochs (7 steps each) under the step schedule (x0.1 after epochs 1 and 2) and gradient
    clipping at norm 0.5 give the weights of plain SGD written out with the rate of step k
    lr(epoch) * min(1, (k + 1) / 14) and torch's clipping rule; the run without either differs."""
    cfg = TrainConfig(out_dir=str(tmp_path / "wc"), **{**BASE, "save_every_iters": 0, "warmup_epochs": 2,
                                                        "clip_grad_norm": 0.5})
    final = state(train(cfg, CPU, quiet=True))["state_dict"]

    def rate(k):
        return 0.05 * 0.1 ** (k // 7) * min(1.0, (k + 1) / 14)

    want, clipped = _hand_trained(cfg, rate, 0.5)
    assert clipped > 0  # the clipping was exercised
    for name, value in want.items():
        torch.testing.assert_close(final[name], value, rtol=1e-4, atol=1e-5, msg=name)
    plain, _ = _hand_trained(cfg, lambda k: 0.05 * 0.1 ** (k // 7), 0)
    assert max((plain[n].float() - want[n].float()).abs().max().item() for n in want) > 1e-3


def plain_next_token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The mean over every predicted token of -log p(the next token), written out (float64): position j of a
    sequence predicts its token j + 1, the last position predicts nothing."""
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    return -logp.gather(-1, ids[:, 1:, None]).mean()


def test_language_model_trains_on_the_mean_next_token_loss(tmp_path):
    """A text training minimises the lm task's loss: gpt_tiny after 3 SGD steps (48 sequences, batch 16) has
    the weights of SGD written out on the mean over predicted tokens of -log p(next token); the epoch files'
    train_loss and train_acc are that loss and the token accuracy over the split, computed here by hand."""
    cfg = TrainConfig(model="gpt_tiny", dataset="text", out_dir=str(tmp_path / "lm"), samples=48, epochs=1,
                      batch_size=16, lr=0.5, momentum=0.9, weight_decay=0.0, seed=4)
    final = state(train(cfg, CPU, quiet=True))
    want, _ = _hand_trained(cfg, lambda k: 0.5, 0, loss=plain_next_token_loss)
    for name, value in want.items():
        torch.testing.assert_close(final["state_dict"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    start = state(tmp_path / "lm" / "epoch_000.pt")
    assert max((start["state_dict"][n] - want[n]).abs().max().item() for n in want) > 1e-3  # the steps moved it
    model = build_model("gpt_tiny").eval()
    model.load_state_dict(final["state_dict"])
    ids = train_mod.load_eval_set("text", "train", None, 48, 4).inputs
    with torch.no_grad():
        logits = model(ids)
    hits = (logits[:, :-1].argmax(dim=-1) == ids[:, 1:]).double().mean().item()
    assert final["train_loss"] == pytest.approx(plain_next_token_loss(logits, ids).item(), rel=1e-5)
    assert final["train_acc"] == pytest.approx(hits, abs=1e-12)


def test_resume_inside_warmup_equals_uninterrupted(tmp_path):
    """A training stopped inside its warm-up (after step 4 of 14) resumes to the uninterrupted weights: the
    warm-up factor is a function of the step, and the scheduler's state never holds it."""
    settings = {**BASE, "warmup_epochs": 2, "clip_grad_norm": 0.5}
    ref = tmp_path / "ref"
    train(TrainConfig(out_dir=str(ref), **settings), CPU, quiet=True)
    part = tmp_path / "part"
    part.mkdir()
    for name in ("epoch_000.pt", "iter_0000004.pt"):
        shutil.copy(ref / name, part / name)
    train(TrainConfig(out_dir=str(part), **settings), CPU, quiet=True)
    assert_same_training(ref / "final.pt", part / "final.pt")


def test_checkpoint_from_before_warmup_and_clipping_resumes(reference, tmp_path):
    """A checkpoint written before the two options existed (its config lacks them) resumes as trained: off."""
    ck = state(reference / "epoch_001.pt")
    stored = json.loads(ck["config"])
    del stored["warmup_epochs"], stored["clip_grad_norm"]
    ck["config"] = json.dumps(stored)
    torch.save(ck, tmp_path / "epoch_001.pt")
    train(TrainConfig(out_dir=str(tmp_path), **BASE), CPU, quiet=True)
    assert_same_training(reference / "final.pt", tmp_path / "final.pt")
    with pytest.raises(UserError, match=r"warmup_epochs: 0 there, 1 now"):
        train(TrainConfig(out_dir=str(tmp_path), **{**BASE, "warmup_epochs": 1}), CPU, quiet=True)


@pytest.mark.parametrize("settings,flag", [({"warmup_epochs": 4}, "--warmup-epochs"),
                                           ({"warmup_epochs": -1}, "--warmup-epochs"),
                                           ({"clip_grad_norm": -1.0}, "--clip-grad-norm")])
def test_bad_warmup_or_clipping(settings, flag):
    with pytest.raises(UserError, match=flag):
        TrainConfig(out_dir="x", **{**BASE, **settings})


def test_augment_matches_per_sample_crop_and_flip():
    """The vectorized crop/flip equals a plain per-image loop with the same random draws."""
    x = torch.randn(37, 3, 32, 32)
    out = _augment(x, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    dx = torch.randint(0, 9, (37,), generator=g)
    dy = torch.randint(0, 9, (37,), generator=g)
    flip = torch.rand(37, generator=g) < 0.5
    padded = F.pad(x, (4, 4, 4, 4))
    for i in range(37):
        crop = padded[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32]
        assert torch.equal(out[i], crop.flip(-1) if flip[i] else crop), i
    assert flip.any() and (~flip).any()


def test_mnist1d_is_the_package_dataset(tmp_path, monkeypatch):
    """Generated offline, equal to mnist1d.data.make_dataset(); cached; global RNG streams untouched."""
    from mnist1d.data import get_dataset_args, make_dataset

    monkeypatch.setenv("LANDSCAPE_MPI_CACHE", str(tmp_path))
    np.random.seed(123)
    x, y = load_split("mnist1d", "train")
    assert np.random.randint(1 << 30) == np.random.RandomState(123).randint(1 << 30)
    assert len(os.listdir(tmp_path)) == 1  # the cache file
    xt, yt = load_split("mnist1d", "test")  # from the cache
    ref = make_dataset(get_dataset_args())
    assert x.shape == (4000, 1, 40) and xt.shape == (1000, 1, 40)
    np.testing.assert_array_equal(x[:, 0].numpy(), ref["x"].astype(np.float32))
    np.testing.assert_array_equal(yt.numpy(), ref["y_test"])
    np.testing.assert_array_equal(y.numpy(), ref["y"])


def test_small_resnets_in_zoo():
    names = [n for n in ZOO if n.startswith(("resnet1d_", "resnet2d_"))]
    assert len(names) == 36 and "resnet1d_20_noshort_w4" in names
    for name in names:
        dim, depth, width, shortcut = zoo_entries()[name]
        model = build_model(name).eval()
        with torch.no_grad():
            assert model(torch.randn(2, *INPUT_SHAPES[ZOO[name][1]])).shape == (2, 10)
        convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d))]
        main_path = [c for c in convs if c.kernel_size[0] == 3]
        assert len(main_path) + 1 == depth  # 6n+1 convolutions and the classifier
        assert (len(convs) > len(main_path)) == shortcut  # projection shortcuts only with shortcuts
        assert main_path[-1].out_channels == 32 * width


TRAIN_ARGS = ["--model", "resnet1d_8_w1", "--dataset", "mnist1d", "--samples", "200", "--epochs", "3",
              "--batch-size", "32", "--lr", "0.05", "--schedule", "step", "--save-every-iters", "4", "--seed", "3",
              "--device", "cpu"]


@pytest.fixture(scope="module")
def cli_reference(tmp_path_factory):
    """The same training as the stopped ones below, by the CLI, uninterrupted."""
    out = tmp_path_factory.mktemp("cli_ref")
    run(cli("train", *TRAIN_ARGS, "--out-dir", str(out)), timeout=300)
    return out


@pytest.mark.parametrize("signum,at_step", [(signal.SIGTERM, 10), (signal.SIGUSR1, 7)])
def test_stop_signal_during_training_resumes_exactly(cli_reference, tmp_path, signum, at_step):
    """A stop signal during `landscape-mpi train` (step 10: inside epoch 2; step 7: the last step of epoch 1)
    ends it with exit 75 and a checkpoint of every step taken; the same command resumes it to exactly the
    uninterrupted weights, and the stop checkpoint is removed once the training completes."""
    gate, out = tmp_path / "gate", tmp_path / "run"
    cmd = cli("train", *TRAIN_ARGS, "--out-dir", str(out))
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                            env=env(LANDSCAPE_MPI_TEST_GATE=f"train_step:{at_step}:{gate}"))
    wait_for_files([f"{gate}.reached.0"])
    proc.send_signal(signum)
    gate.touch()
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 75, stderr
    assert f"stopped by {signal.Signals(signum).name} at step {at_step}" in stderr
    assert "rerun the same command" in stderr
    assert not (out / "final.pt").exists() and (out / f"stopped_{at_step:07d}.pt").exists()
    p = run(cmd, timeout=300)
    assert f"resuming {out} from" in p.stderr
    assert_same_training(cli_reference / "final.pt", out / "final.pt")
    assert not list(out.glob("stopped_*.pt"))
