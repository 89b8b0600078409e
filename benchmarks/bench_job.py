"""Whole-job benchmark: our CLI against a naive job, and 1 -> 2 ranks parallel efficiency.

    PYTHONPATH=benchmarks .venv/bin/python benchmarks/bench_job.py [--rounds 5] [--scaling-rounds 3]
        [--only compare|scaling] [--json-out FILE]

Part 1 (the issue's comparison): ResNet-20 (untrained, `build_model("resnet20")` saved as a checkpoint: the
cost of a point does not depend on the weights), 1,000 CIFAR-shaped random images per point (`cifar_shaped`
below, given to the CLI as `--dataset bench_job:cifar_shaped --splits train`), a 5x5 grid. Timed from the
outside as whole processes (Python start-up, imports, data, directions, file creation included):
    ours   landscape-mpi surface --model resnet20 ... --x=-1:1:5 --y=-1:1:5 (its defaults: 2 threads here)
    naive  `python benchmarks/bench_job.py naive-job ...`: the same job done the straightforward way: the
           checkpoint loaded, the same seeded filter-normalized directions, and at every grid point
           `naive_baseline.naive_point` (state_dict rebuilt and loaded with load_state_dict, a DataLoader at
           batch 128 iterated anew, eager NCHW forward, `.item()` per batch); results saved to .npz at the end.
Interleaved: each round runs both, the order alternating between rounds; medians over rounds. Seconds per
point: the median of the per-point evaluation seconds (ours: /results/seconds in the file; naive: timed
around each naive_point). The naive job's losses are compared with ours (the same directions and seed).

Part 2 (scaling), our CLI only: 1 rank x 1 thread (`--threads 1`, no launcher), 2 ranks x 1 thread
(`mpiexec -n 2 --bind-to core ... --threads 1`) and 1 rank x 2 threads (`--threads 2`), for ResNet-20 as
above and for the digits demo model (digits_cnn, untrained, on the embedded digits data, train+test, 21x21).
Points/s over the scheduled run (rank 0's wall seconds in the per-rank summary: start-up excluded) and over
the whole job; efficiency = (2 ranks' points/s) / (2 x 1 rank's points/s).

Prints the machine (lscpu), versions and the load average (before and after every run), then markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)
CIFAR_SAMPLES = 1000


# ------------------------------------------------------------------------------------------ the dataset
def cifar_shaped(split: str):
    """`--dataset bench_job:cifar_shaped`: 1,000 random 3x32x32 float32 images with labels 0-9 (seeded, the
    same for every split and run), as a TensorDataset. Pixel values do not change the cost of a point."""
    import torch
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(1234)
    x = torch.randn(CIFAR_SAMPLES, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (CIFAR_SAMPLES,), generator=g)
    return TensorDataset(x, y)


# ------------------------------------------------------------------------------------------ the naive job
def naive_job(argv: list[str]) -> None:
    """The whole job written the straightforward way (see the module docstring); prints one JSON line."""
    p = argparse.ArgumentParser(prog="bench_job.py naive-job")
    p.add_argument("--model", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--x", default="-1:1:5")
    p.add_argument("--y", default="-1:1:5")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    t_start = time.perf_counter()
    import numpy as np
    import torch

    sys.path.insert(0, HERE)
    from naive_baseline import naive_point

    from landscape_mpi.directions.base import random_direction, space_keys
    from landscape_mpi.models import build_model

    torch.set_num_threads(a.threads)
    model = build_model(a.model)
    state = torch.load(a.checkpoint, map_location="cpu")
    model.load_state_dict(state)
    theta = {k: v.clone() for k, v in model.state_dict().items()}
    # The CLI's directions for --seed S (landscape_mpi.directions.base: one generator, x then y, weights space,
    # filter-normalized, zero on biases and BatchNorm), so the two jobs evaluate the same points.
    g = torch.Generator().manual_seed(a.seed)
    keys = space_keys(model, "weights")
    dirs = [random_direction(theta, keys, g, "filter", "biasbn") for _ in range(2)]
    dataset = cifar_shaped("train")

    def axis(spec: str) -> np.ndarray:
        lo, hi, n = spec.split(":")
        return np.linspace(float(lo), float(hi), int(n))

    xs, ys = axis(a.x), axis(a.y)
    loss = np.full((len(xs), len(ys)), np.nan)
    acc = np.full_like(loss, np.nan)
    seconds = np.full_like(loss, np.nan)
    t_first = time.perf_counter()
    for i, cx in enumerate(xs):
        for j, cy in enumerate(ys):
            t = time.perf_counter()
            loss[i, j], acc[i, j] = naive_point(model, theta, dirs, (float(cx), float(cy)), dataset)
            seconds[i, j] = time.perf_counter() - t
    np.savez(a.out, loss=loss, acc=acc, seconds=seconds)
    print(json.dumps({"setup_s": t_first - t_start, "loop_s": time.perf_counter() - t_first}), flush=True)


# ------------------------------------------------------------------------------------------ helpers
def load_average() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = re.search(r"Model name:\s*(.+)", lscpu).group(1).strip()
    except (OSError, AttributeError):
        model = platform.processor() or "?"
    import h5py
    import numpy as np
    import torch

    mpi = subprocess.run(["mpiexec", "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    return (f"machine: {platform.node()}, {model}, {os.cpu_count()} cores (lscpu), load average {load_average()}\n"
            f"versions: python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
            f"h5py {h5py.version.version} (HDF5 {h5py.version.hdf5_version}), {' '.join(mpi)}")


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([HERE, ROOT, e.get("PYTHONPATH", "")])
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    for k in list(e):
        if k.startswith("LANDSCAPE_MPI_TEST_"):  # test hooks must never reach a benchmark
            e.pop(k)
    return e


SUMMARY = re.compile(r"rank\s+(\d+)\s+.*?\s(\d+) points\s+([\d.]+) s busy\s+([\d.]+) s wall")


def timed(cmd: list[str], label: str) -> dict:
    """Run `cmd`, return wall seconds, the load average before and after, and its stderr; raise on failure."""
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=ROOT)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{label}: exit {r.returncode}\n{' '.join(cmd)}\n{r.stderr[-3000:]}")
    load1 = os.getloadavg()[0]
    print(f"  {label}: {wall:.1f} s (load {load0:.2f} -> {load1:.2f})", file=sys.stderr, flush=True)
    return {"wall_s": wall, "load": (load0 + load1) / 2, "stdout": r.stdout, "stderr": r.stderr}


def cli(args: list[str], ranks: int = 0) -> list[str]:
    exe = [os.path.join(BIN, "landscape-mpi"), "surface", *args]
    if ranks:
        return ["mpiexec", "--allow-run-as-root", "--bind-to", "core", "-n", str(ranks), *exe]
    return exe


def ours_result(run: dict, path: str) -> dict:
    import h5py
    import numpy as np

    with h5py.File(path, "r", locking=False) as f:
        done = f["results/done"][()]
        seconds = f["results/seconds"][()]
        loss = f["results/train_loss"][()]
    if not done.all():
        raise SystemExit(f"{path}: {int((done == 0).sum())} points not done")
    ranks = {int(m.group(1)): float(m.group(4)) for m in SUMMARY.finditer(run["stderr"])}
    sched_s = ranks.get(0, float("nan"))
    return {**run, "points": int(done.size), "s_per_point": float(np.median(seconds)), "sched_s": sched_s,
            "loss": loss}


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def runs(rows: list[dict]) -> str:
    """The whole-job seconds of every run, in run order."""
    return ", ".join(f"{r['wall_s']:.1f}" for r in rows)


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the ours-vs-naive comparison")
    p.add_argument("--scaling-rounds", type=int, default=3)
    p.add_argument("--only", choices=("compare", "scaling"), default=None)
    p.add_argument("--json-out", default=None, help="also write every measurement here (JSON)")
    a = p.parse_args()
    import numpy as np
    import torch

    from landscape_mpi.models import build_model

    print(machine(), flush=True)
    work = tempfile.mkdtemp(prefix="bench_job_")
    out: dict = {"machine": machine()}
    try:
        torch.manual_seed(0)
        checkpoints = {}
        for name in ("resnet20", "digits_cnn"):
            checkpoints[name] = os.path.join(work, f"{name}.pt")
            torch.save(build_model(name).state_dict(), checkpoints[name])
        resnet = ["--model", "resnet20", "--checkpoint", checkpoints["resnet20"], "--dataset", "bench_job:cifar_shaped",
                  "--splits", "train", "--x=-1:1:5", "--y=-1:1:5"]
        digits = ["--model", "digits_cnn", "--checkpoint", checkpoints["digits_cnn"], "--dataset", "digits",
                  "--x=-1:1:21", "--y=-1:1:21"]

        if a.only in (None, "compare"):
            print(f"\n## ResNet-20, 1,000 CIFAR-shaped images, 5x5 grid: ours vs naive, {a.rounds} rounds",
                  file=sys.stderr, flush=True)
            ours, naive, rel = [], [], []
            for r in range(a.rounds):
                h5, npz = os.path.join(work, f"ours{r}.h5"), os.path.join(work, f"naive{r}.npz")

                # B023: both closures run in this same iteration (the loop over step below): r, h5 and npz are current.
                def run_ours():
                    ours.append(ours_result(timed(cli([*resnet, "--out", h5]), f"round {r} ours"), h5))  # noqa: B023

                def run_naive():
                    cmd = [sys.executable, os.path.abspath(__file__), "naive-job", "--model", "resnet20",
                           "--checkpoint", checkpoints["resnet20"], "--out", npz]  # noqa: B023
                    run = timed(cmd, f"round {r} naive")  # noqa: B023
                    z = np.load(npz)  # noqa: B023
                    naive.append({**run, **json.loads(run["stdout"].strip().splitlines()[-1]),
                                  "s_per_point": float(np.median(z["seconds"])), "loss": z["loss"]})

                for step in ((run_ours, run_naive) if r % 2 == 0 else (run_naive, run_ours)):
                    step()
                rel.append(float(np.max(np.abs(ours[-1]["loss"] - naive[-1]["loss"]) / np.abs(naive[-1]["loss"]))))
                os.remove(h5)
            compare = {
                "rounds": a.rounds,
                "ours": {k: [r[k] for r in ours] for k in ("wall_s", "s_per_point", "sched_s", "load")},
                "naive": {k: [r[k] for r in naive] for k in ("wall_s", "s_per_point", "setup_s", "load")},
                "max_rel_loss_diff": max(rel),
            }
            out["compare"] = compare
            ow, nw = median(ours, "wall_s"), median(naive, "wall_s")
            op, np_ = median(ours, "s_per_point"), median(naive, "s_per_point")
            print(f"\nResNet-20, 1,000 CIFAR-shaped images per point, 5x5 grid; medians of {a.rounds} interleaved "
                  f"rounds; load average during the runs {min(r['load'] for r in ours + naive):.1f}-"
                  f"{max(r['load'] for r in ours + naive):.1f}\n")
            print("| job | whole job s (median) | s/point (median) | job speed-up | per-point speed-up "
                  "| runs (whole job s) |")
            print("|---|---|---|---|---|---|")
            print(f"| naive (DataLoader 128, load_state_dict, .item()) | {nw:.1f} | {np_:.3f} | 1.00x | 1.00x | "
                  f"{runs(naive)} |")
            print(f"| ours (`landscape-mpi surface`, defaults) | {ow:.1f} | {op:.3f} | {nw / ow:.2f}x "
                  f"| {np_ / op:.2f}x | {runs(ours)} |")
            print(f"\nlargest relative train-loss difference ours vs naive over all points and rounds: {max(rel):.1e}",
                  flush=True)

        if a.only in (None, "scaling"):
            configs = [("1 rank x 1 thread", 0, ["--threads", "1"]), ("2 ranks x 1 thread", 2, ["--threads", "1"]),
                       ("1 rank x 2 threads", 0, ["--threads", "2"])]
            out["scaling"] = {}
            for model, args in (("resnet20", resnet), ("digits_cnn", digits)):
                print(f"\n## scaling, {model}, {a.scaling_rounds} rounds", file=sys.stderr, flush=True)
                rows: dict[str, list[dict]] = {c[0]: [] for c in configs}
                for r in range(a.scaling_rounds):
                    order = configs if r % 2 == 0 else configs[::-1]
                    for label, ranks, extra in order:
                        h5 = os.path.join(work, f"scale_{model}.h5")
                        run = timed(cli([*args, *extra, "--out", h5], ranks), f"round {r} {model} {label}")
                        rows[label].append(ours_result(run, h5))
                        os.remove(h5)
                points = rows[configs[0][0]][0]["points"]
                for label in rows:
                    for row in rows[label]:
                        row["rate"] = row["points"] / row["sched_s"]
                        row["job_rate"] = row["points"] / row["wall_s"]
                keys = ("wall_s", "sched_s", "rate", "job_rate", "load")
                out["scaling"][model] = {label: {k: [row[k] for row in rs] for k in keys} for label, rs in rows.items()}
                base = median(rows[configs[0][0]], "rate")
                base_job = median(rows[configs[0][0]], "job_rate")
                loads = [row["load"] for rs in rows.values() for row in rs]
                print(f"\n{model}, {points} points, medians of {a.scaling_rounds} rounds (interleaved); load average "
                      f"during the runs {min(loads):.1f}-{max(loads):.1f}\n")
                print("| ranks x threads | points/s (scheduled run) | vs 1x1 | whole job s | points/s (whole job) "
                      "| vs 1x1 |")
                print("|---|---|---|---|---|---|")
                for label in rows:
                    rate, job_rate = median(rows[label], "rate"), median(rows[label], "job_rate")
                    print(f"| {label} | {rate:.2f} | {rate / base:.2f}x | {median(rows[label], 'wall_s'):.1f} | "
                          f"{job_rate:.3f} | {job_rate / base_job:.2f}x |")
                eff = median(rows["2 ranks x 1 thread"], "rate") / (2 * base)
                print(f"\nparallel efficiency 1 -> 2 ranks (scheduled run): {eff:.0%}", flush=True)
        if a.json_out:
            with open(a.json_out, "w") as f:
                json.dump(out, f, indent=1, default=float)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "naive-job":
        naive_job(sys.argv[2:])
    else:
        main()
