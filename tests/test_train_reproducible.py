"""Training is bit-reproducible for a fixed seed and thread count: two in-process runs of one config give identical
weights and optimizer states, under torch's deterministic algorithms (on during training, restored after); every
checkpoint records the thread count, and a resume under another count says it will not match, while a resume under
the same count equals the uninterrupted run. (Resumes at every kind of checkpoint: tests/test_train.py.)"""

import shutil

import pytest
import torch

import landscape_mpi.training.train as train_mod
from landscape_mpi.config.errors import UserError
from landscape_mpi.config.train import TrainConfig
from landscape_mpi.training.train import train

CPU = torch.device("cpu")
# 160 MNIST-1D samples, batch 32: 5 steps per epoch, 2 epochs, sample order reshuffled each epoch, cosine schedule
BASE = dict(model="resnet1d_8_w1", dataset="mnist1d", samples=160, epochs=2, batch_size=32, lr=0.05, seed=5)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_bit_identical(a, b):
    sa, sb = load(a), load(b)
    assert sa["state_dict"].keys() == sb["state_dict"].keys()
    for k in sa["state_dict"]:
        assert torch.equal(sa["state_dict"][k], sb["state_dict"][k]), k
    ma, mb = sa["resume"]["optimizer"]["state"], sb["resume"]["optimizer"]["state"]
    assert ma.keys() == mb.keys() and all(torch.equal(ma[i]["momentum_buffer"], mb[i]["momentum_buffer"]) for i in ma)
    assert torch.equal(sa["resume"]["generator"], sb["resume"]["generator"])
    assert sa["train_loss"] == sb["train_loss"]


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """One uninterrupted training, recording whether deterministic algorithms were on at each step's loss."""
    out = tmp_path_factory.mktemp("first")
    seen = []
    original = train_mod.batch_loss

    def recording(*args):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return original(*args)

    train_mod.batch_loss = recording
    try:
        train(TrainConfig(out_dir=str(out), **BASE), CPU, quiet=True)
    finally:
        train_mod.batch_loss = original
    return out, seen


def test_two_runs_of_one_config_are_bit_identical(first, tmp_path):
    out, seen = first
    assert seen == [True] * 10  # every optimizer step under deterministic algorithms
    assert not torch.are_deterministic_algorithms_enabled()  # and the setting restored afterwards
    train(TrainConfig(out_dir=str(tmp_path), **BASE), CPU, quiet=True)
    assert_bit_identical(out / "final.pt", tmp_path / "final.pt")
    assert_bit_identical(out / "epoch_001.pt", tmp_path / "epoch_001.pt")
    # a different seed is a different training (the comparison can fail)
    other = tmp_path / "other"
    train(TrainConfig(out_dir=str(other), **{**BASE, "seed": 6}), CPU, quiet=True)
    with pytest.raises(AssertionError):
        assert_bit_identical(out / "final.pt", other / "final.pt")


def test_checkpoints_record_the_thread_count_and_a_resume_under_another_says_so(first, tmp_path, capfd):
    out, _ = first
    threads = torch.get_num_threads()
    assert load(out / "epoch_001.pt")["reproducibility"] == {"threads": threads, "torch": str(torch.__version__),
                                                             "device": "cpu"}
    # the same thread count: the resumed run equals the uninterrupted one, and nothing is said
    same = tmp_path / "same"
    same.mkdir()
    for name in ("epoch_000.pt", "epoch_001.pt"):
        shutil.copy(out / name, same / name)
    train(TrainConfig(out_dir=str(same), **BASE), CPU)
    assert_bit_identical(out / "final.pt", same / "final.pt")
    assert "thread(s)" not in capfd.readouterr().err
    # another thread count: the resume warns, naming both counts
    other = tmp_path / "other"
    other.mkdir()
    for name in ("epoch_000.pt", "epoch_001.pt"):
        shutil.copy(out / name, other / name)
    torch.set_num_threads(threads + 1)
    try:
        train(TrainConfig(out_dir=str(other), **BASE), CPU)
    finally:
        torch.set_num_threads(threads)
    err = capfd.readouterr().err
    assert f"written with {threads} thread(s), this process has {threads + 1}" in err
    assert f"OMP_NUM_THREADS={threads}" in err


def test_target_loss_stops_at_the_first_epoch_at_or_below_it(first, tmp_path):
    """--target-loss: the training stops after the first epoch whose train loss meets it, and that epoch is
    final.pt: the uninterrupted run's epoch 1, bit for bit; a rerun after final.pt is lost trains nothing more."""
    out, _ = first
    loss1 = load(out / "epoch_001.pt")["train_loss"]
    assert load(out / "epoch_002.pt")["train_loss"] < loss1  # without a target, epoch 2 is trained
    cfg = TrainConfig(out_dir=str(tmp_path), **BASE, target_loss=loss1)
    train(cfg, CPU, quiet=True)
    assert not (tmp_path / "epoch_002.pt").exists()
    assert_bit_identical(out / "epoch_001.pt", tmp_path / "final.pt")
    (tmp_path / "final.pt").unlink()
    train(cfg, CPU, quiet=True)
    assert not (tmp_path / "epoch_002.pt").exists() and (tmp_path / "final.pt").exists()
    with pytest.raises(UserError, match="--target-loss"):
        TrainConfig(out_dir=str(tmp_path), **BASE, target_loss=-1.0)
