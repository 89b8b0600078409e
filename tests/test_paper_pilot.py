"""The paper's own setting (landscape_mpi/experiments/paper.py), its pilot and the device-hours estimate
(landscape_mpi/experiments/pilot.py), and the job scripts that run them (jobs/paper_pilot.sbatch,
jobs/experiment_array.sbatch at scale paper).

Oracles: the paper's setup as its text states it (ResNet-20/56/110, WRN-56 with k = 1, 2, 4, 8, lr 0.1 divided by
10 at epochs 150, 225, 275 of 300; the learning rate a trained checkpoint's optimizer holds, against that rule);
the pilot's record against the files it wrote (checkpoint times, the surface files' seconds and products, read
with h5py); the estimate against sums by hand over planted rates; the scripts' command lines against the lines
written here.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess

import h5py
import pytest
import torch

from conftest import ROOT
from landscape_mpi.cli import main
from landscape_mpi.config.train import TrainConfig
from landscape_mpi.experiments import experiment, paper, pilot
from landscape_mpi.experiments.definitions import SCALE_SETTINGS
from landscape_mpi.training.train import train

SEEDS = SCALE_SETTINGS["paper"].train_seeds
DIRECTIONS = SCALE_SETTINGS["paper"].direction_seeds


def test_the_paper_scale_has_the_papers_nets_recipe_and_hard_nets():
    skip, width, batch = (experiment(n, "paper") for n in ("skip", "width", "batch"))
    assert {r.config["model"] for r in skip.runs} == {f"resnet{d}{s}" for d in (20, 56, 110) for s in ("", "_noshort")}
    # width: WRN-56 with k = 1 (ResNet-56), 2, 4, 8 without shortcuts; no depth 110
    assert {r.config["model"] for r in width.runs} == {"resnet56_noshort", *(f"wrn56_{k}_noshort" for k in (2, 4, 8))}
    assert len(width.runs) == 4 * len(SEEDS) and len(width.surfaces) == 4 * len(SEEDS) * len(DIRECTIONS)
    # width's k = 1 nets are the skip experiment's (one training folder)
    assert {r.name for r in width.runs if r.config["model"].startswith("resnet56")} <= {r.name for r in skip.runs}
    for r in (*skip.runs, *width.runs, *batch.runs):
        c = r.config
        assert (c["schedule"], c["epochs"], c["momentum"] if "momentum" in c else 0.9) == ("step3", 300, 0.9), r.name
        hard = c["model"].endswith("_noshort") and c["model"] not in ("resnet20_noshort",)
        assert (c.get("warmup_epochs", 0), c.get("clip_grad_norm", 0)) == ((5, 5.0) if hard else
                                                                           (5 if c["lr"] != 0.1 else 0, 0)), r.name
        assert c["lr"] in ((0.1, 6.4) if c["model"] == "vgg9" else (0.1,)), r.name
    large = [r.config for r in batch.runs if r.config["batch_size"] == 8192]
    assert sorted(c["lr"] for c in large) == [0.1] * (2 * len(SEEDS)) + [6.4] * (2 * len(SEEDS))
    assert all(c["warmup_epochs"] == 5 for c in large if c["lr"] == 6.4)
    # an interpolation names its (renamed) runs, and every step's run exists
    for s in batch.surfaces:
        assert {s.run, s.target_run or s.run, s.role.get("large_run", s.run)} <= {r.name for r in batch.runs}, s


def test_step3_divides_the_rate_by_ten_at_half_three_quarters_and_eleven_twelfths(tmp_path):
    """8 epochs: /10 after epochs 4, 6 and 7 (as 150, 225, 275 of 300, rounded down); the rate each epoch
    checkpoint's optimizer holds for the next epoch, against 0.1 x 0.1^(milestones passed)."""
    cfg = TrainConfig(model="digits_mlp", out_dir=str(tmp_path), dataset="digits", samples=64, epochs=8,
                      batch_size=64, lr=0.1, schedule="step3", seed=0)
    train(cfg, torch.device("cpu"), quiet=True)
    for e in range(9):
        ck = torch.load(tmp_path / f"epoch_{e:03d}.pt", weights_only=True)
        lr = ck["resume"]["optimizer"]["param_groups"][0]["lr"]
        assert lr == pytest.approx(0.1 * 0.1 ** sum(e >= m for m in (4, 6, 7))), (e, lr)
    assert paper.PAPER_MILESTONES == (150, 225, 275) and [300 * f for f in (1 / 2, 3 / 4, 11 / 12)] == [150, 225, 275]


def test_the_reduced_pilot_times_a_hard_net_and_records_what_its_files_hold(tmp_path):
    out = tmp_path / "pilot"
    assert main(["experiments", "pilot", "--reduced", "--device", "cpu", "--out-dir", str(out), "--models",
                 "resnet56_noshort", "--epochs", "2", "--train-samples", "32", "--samples", "16",
                 "--eig-samples", "16", "--points", "2", "--eig-points", "1"]) == 0
    record = json.loads((out / "pilot.json").read_text())
    assert record["reduced"] and record["device"] == "cpu" and list(record["units"]) == ["resnet56_noshort_bs128"]
    u = record["units"]["resnet56_noshort_bs128"]
    assert u["ran"] == "landscape_mpi.experiments.pilot:resnet8_noshort"
    unit = out / "pilot" / "resnet56_noshort_bs128"
    stored = json.loads(torch.load(unit / "train" / "final.pt", weights_only=True)["config"])
    # the hard net's recipe, its warm-up shortened to the pilot's 2 epochs
    assert (stored["model"], stored["warmup_epochs"], stored["clip_grad_norm"], stored["schedule"]) == (
        u["ran"], 2, 5.0, "step3")
    times = [os.path.getmtime(unit / "train" / f"epoch_{e:03d}.pt") for e in range(3)]
    assert u["epoch_seconds"] == pytest.approx([times[1] - times[0], times[2] - times[1]])
    with h5py.File(unit / "surface.h5", "r") as f:
        assert f["results/done"][()].all()
        point = statistics.median(f["results/seconds"][()].ravel().tolist())
    with h5py.File(unit / "eig.h5", "r") as f:
        eig_s, products = f["results/seconds"][()].ravel().tolist(), f["results/eig_iters"][()].ravel().tolist()
    assert u["point_seconds"] == pytest.approx(point) and u["point_samples"] == 32  # 16 train + 16 test
    assert u["products_per_eig_point"] == products and min(products) > 2
    rate = point / 32
    assert u["hvp_seconds_per_sample"] == pytest.approx(
        statistics.median([max(s - rate * 16, 0) / p / 16 for s, p in zip(eig_s, products)]))
    md = (out / "pilot.md").read_text()
    assert "reduced size" in md and "No estimate" in md and "resnet56_noshort_bs128" in md


def _planted(train_rate: float, eval_rate: float, hvp_rate: float, products: int, hessian_rate: float) -> dict:
    """A record with the same planted per-sample rates for every unit of the paper set."""
    units = {}
    for key, c in pilot.pilot_units(pilot.paper_experiments()).items():
        epoch = train_rate * 1000 + eval_rate * (1000 + 500)
        units[key] = {"model": c["model"], "ran": c["model"], "batch_size": c["batch_size"], "train_samples": 1000,
                      "test_samples": 500, "epoch_seconds": [99.0, epoch, epoch], "train_loss": [2.3],
                      "eval_seconds_per_sample": eval_rate, "hvp_seconds_per_sample": hvp_rate,
                      "products_per_eig_point": [products, products + 2, products - 2],
                      "hessian_seconds_per_sample": hessian_rate}
    return {"units": units, "splits": {"train": 50_000, "test": 10_000}, "reduced": False, "device": "planted"}


def test_the_estimate_is_the_planted_rates_summed_over_the_set_by_hand():
    rows = {r["experiment"]: r for r in pilot.estimate(_planted(2e-4, 1e-4, 3e-4, 21, 5e-3))}
    t, dseeds = len(SEEDS), len(DIRECTIONS)
    # skip: 6 nets x t seeds, 300 epochs of (50,000 x train rate + 60,000 x eval rate); 51x51 loss surfaces on
    # both whole splits; 21x21 eigenvalue maps on 5,000 training samples, 21 products each (the median)
    assert rows["skip"]["training"] == pytest.approx(6 * t * 300 * (50_000 * 2e-4 + 60_000 * 1e-4))
    assert rows["skip"]["surfaces"] == pytest.approx(6 * t * dseeds * 51 * 51 * 60_000 * 1e-4)
    assert rows["skip"]["eig"] == pytest.approx(6 * t * dseeds * 21 * 21 * 5_000 * (1e-4 + 21 * 3e-4))
    # width: its 4 nets per seed, less the ResNet-56 the skip experiment trained (counted once)
    assert rows["width"]["training"] == pytest.approx(3 * t * 300 * (50_000 * 2e-4 + 60_000 * 1e-4))
    # batch: the Hessian steps (3 probe seeds x 6 nets per training seed) on 5,000 training samples each
    assert rows["batch"]["hessian"] == pytest.approx(6 * t * dseeds * 5_000 * 5e-3)
    # a planted rate moves its own part proportionally, and nothing else
    twice = {r["experiment"]: r for r in pilot.estimate(_planted(2e-4, 1e-4, 6e-4, 21, 5e-3))}
    assert twice["skip"]["eig"] - rows["skip"]["eig"] == pytest.approx(6 * t * dseeds * 441 * 5_000 * 21 * 3e-4)
    assert (twice["skip"]["training"], twice["skip"]["surfaces"]) == (rows["skip"]["training"],
                                                                     rows["skip"]["surfaces"])
    slow = {r["experiment"]: r for r in pilot.estimate(_planted(4e-4, 1e-4, 3e-4, 21, 5e-3))}
    assert slow["width"]["training"] == pytest.approx(3 * t * 300 * (50_000 * 4e-4 + 60_000 * 1e-4))


def _script_argv(tmp_path, script: str, *args: str, **env: str) -> list[str]:
    """The argv a job script execs, caught by a `landscape-mpi` on PATH that writes its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "landscape-mpi"
    fake.write_text('#!/usr/bin/env python3\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n')
    fake.chmod(0o755)
    p = subprocess.run(["bash", str(ROOT / "jobs" / script), *args], capture_output=True, text=True, timeout=60,
                       env={"PATH": f"{bin_dir}:/usr/bin:/bin", "ENV_SETUP": ":", **env})
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_the_pilot_job_and_the_paper_array_run_these_lines(tmp_path, capsys):
    argv = _script_argv(tmp_path, "paper_pilot.sbatch", "--epochs", "2", DATA_ROOT="/data", OUT_DIR="/o")
    assert argv == ["experiments", "pilot", "--data-root", "/data", "--out-dir", "/o", "--device", "cuda",
                    "--epochs", "2"]
    argv = _script_argv(tmp_path, "experiment_array.sbatch", "width", "--data-root", "/data",
                        SLURM_ARRAY_TASK_ID="5")
    assert argv == ["experiments", "run", "width", "--scale", "paper", "--task", "5", "--launcher",
                    "srun --mpi=pmix --kill-on-bad-exit=1", "--data-root", "/data"]
    # the array's size and its task 5 (k = 1, 2, 4, 8 per training seed: the second seed's k = 2)
    assert main(["experiments", "list", "--scale", "paper", "--count", "width"]) == 0
    assert capsys.readouterr().out.strip() == str(4 * len(SEEDS))
    assert main(["experiments", "list", "--scale", "paper"]) == 0
    listing = capsys.readouterr().out
    assert f"  task 5: wrn56_2_noshort_e300_step3_wu5_clip5_s{SEEDS[1]} (" in listing, listing
