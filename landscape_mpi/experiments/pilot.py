"""The pilot of the paper's setting (`landscape-mpi experiments pilot`) and the device-hours estimate from it.

The pilot runs every training configuration of the ``paper`` set (one per model and batch size, the first training
seed, its recipe from experiments/paper.py, hard nets first) for a few epochs on a subset of the training split,
then, on its last checkpoint, a short line of the loss surface, a short line of the eigenvalue map (the set's
settings: train split, ARPACK tolerance 1e-2) and, for a model with Hessian steps, one Hessian step (the set's
options), all through the commands' own code (`train`, `run_surface`, `run_hessian`) on the device given. It
records what was measured (``OUT/pilot.json``, ``OUT/pilot.md``):

- seconds per epoch: the time between consecutive epoch checkpoints (their files' modification times; the first
  epoch is left out where there are more, it holds the device's warm-up), an epoch being the optimizer steps
  and the evaluation of the train and test splits that training does after every epoch;
- seconds per surface point: the median of the surface file's ``/results/seconds`` over the line's points, and
  per evaluated sample (train and test samples of the point);
- Hessian-vector products per eigenvalue point: the median of ``/results/eig_iters`` over the line's points
  (what ARPACK took for lambda_max and lambda_min), and seconds per product per sample: (the point's seconds -
  its loss forward at the surface's rate) / products / samples;
- a Hessian step: its seconds (``/checkpoints/seconds``) per sample, and its products (lambda_max, lambda_min,
  trace).

`estimate` turns a record into device-hours per experiment: each training epochs x (train rate x training samples
+ evaluation rate x (training + test samples)); each loss surface points x samples x the evaluation rate; each
eigenvalue map points x samples x (the evaluation rate + measured products x the product rate); each Hessian step
samples x its measured rate. Every rate is the pilot's, per sample, so it scales to the whole splits linearly
(the evaluation batches are large enough to keep a GPU busy, which a pilot on a subset should check: compare two
pilots' rates). A run shared by two experiments (the ResNet-56 nets of skip and width) counts once, in the first.
Not counted: the PCA of the trajectories (300 checkpoints, minutes) and the report.

``--reduced`` runs the same steps on stand-ins (`STAND_INS`: depth-8 CIFAR ResNets with the model's shortcuts,
a two-layer CNN for VGG-9) and random 3-channel 8 x 8 images (`synthetic_cifar`), so that the pilot runs on a CPU in
seconds; its rates are the stand-ins', and its estimate says so.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from landscape_mpi.config.errors import EXIT_COMPLETE, UserError
from landscape_mpi.config.surface import Axis
from landscape_mpi.experiments import definitions as d
from landscape_mpi.experiments import paper
from landscape_mpi.models.cifar import CifarResNet

PILOT_JSON, PILOT_MD = "pilot.json", "pilot.md"
#: Split sizes the estimate is computed for: CIFAR-10's.
PAPER_SPLITS = {"train": 50_000, "test": 10_000}
SYNTHETIC = "landscape_mpi.experiments.pilot:synthetic_cifar"
SYNTHETIC_SIZES = {"train": 256, "test": 64}
SYNTHETIC_SHAPE = (3, 8, 8)
#: The seed of the pilot's surface directions and evaluation subsets (a fresh one: no finding reads the pilot).
PILOT_SEED = 91


def synthetic_cifar(split: str) -> torch.utils.data.TensorDataset:
    """Random 3-channel 8 x 8 images and 10 labels, for timing the path only (``--reduced``; CIFAR's 32 x 32 would
    cost 16x more on a CPU and tell nothing more about the paper's cost)."""
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    n = SYNTHETIC_SIZES[split]
    return torch.utils.data.TensorDataset(torch.randn(n, *SYNTHETIC_SHAPE, generator=g),
                                          torch.randint(0, 10, (n,), generator=g))


def resnet8() -> nn.Module:
    return CifarResNet(8)


def resnet8_noshort() -> nn.Module:
    return CifarResNet(8, shortcut=False)


def small_cnn() -> nn.Module:
    """VGG-9's stand-in: two conv layers with BatchNorm and a linear layer."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(4),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, 10))


def stand_in(model: str) -> str:
    """The ``--reduced`` stand-in of a paper model (a ``package.module:factory`` name)."""
    here = "landscape_mpi.experiments.pilot:"
    if model.startswith("vgg"):
        return here + "small_cnn"
    return here + ("resnet8_noshort" if model.endswith("_noshort") else "resnet8")


def paper_experiments() -> list[d.Experiment]:
    return [paper.paper_experiment(n) for n in d.NAMES]


def unit_key(model: str, batch_size: int) -> str:
    return f"{model}_bs{batch_size}"


def pilot_units(exps: Sequence[d.Experiment]) -> dict[str, dict[str, Any]]:
    """One training configuration per model and batch size (the first training seed's), hard nets first:
    {unit key: TrainConfig dict}."""
    units: dict[str, dict[str, Any]] = {}
    for exp in exps:
        for r in exp.runs:
            units.setdefault(unit_key(r.config["model"], r.config["batch_size"]), r.config)
    return dict(sorted(units.items(), key=lambda kv: not paper.is_hard(kv[1]["model"])))


def _hessian_options(exps: Sequence[d.Experiment]) -> dict[str, dict[str, Any]]:
    """{model: the options of its first Hessian step} for the models that have Hessian steps."""
    return {e.run(h.run).config["model"]: h.options for e in exps for h in e.hessians}


def _eig_options(exps: Sequence[d.Experiment]) -> dict[str, Any]:
    return next(s.options for e in exps for s in e.surfaces if s.options.get("eig"))


def epoch_seconds(folder: str, epochs: int) -> list[float]:
    """Seconds of each epoch 1..`epochs`: the time between consecutive epoch checkpoints."""
    times = [os.path.getmtime(os.path.join(folder, f"epoch_{e:03d}.pt")) for e in range(epochs + 1)]
    return [b - a for a, b in zip(times, times[1:])]


def _median_steady(values: list[float]) -> float:
    """The median, the first value left out where there are more (a device's warm-up)."""
    return statistics.median(values[1:] if len(values) > 1 else values)


def _guarded(body: Callable[[], int], what: str) -> None:
    from landscape_mpi.runtime.lifecycle import run_main

    code = run_main(body)
    if code != EXIT_COMPLETE:
        raise UserError(f"pilot: {what} exited {code}")


def pilot_unit(key: str, cfg: dict[str, Any], out_dir: str, device: str, data_root: str | None, *, epochs: int,
               train_samples: int | None, samples: int, eig_samples: int, points: int, eig_points: int,
               hessian: dict[str, Any] | None, hessian_samples: int, eig_tol: float, reduced: bool,
               measure_points: bool = True) -> dict[str, Any]:
    """Train one configuration for `epochs` and time its steps (see the module's docstring); returns its record."""
    from landscape_mpi.config.hessian import HessianConfig
    from landscape_mpi.config.surface import RunOptions, SurfaceConfig
    from landscape_mpi.config.train import TrainConfig
    from landscape_mpi.data.datasets import load_eval_set
    from landscape_mpi.files import reader
    from landscape_mpi.training.train import train

    model = stand_in(cfg["model"]) if reduced else cfg["model"]
    dataset = SYNTHETIC if reduced else cfg["dataset"]
    folder = os.path.join(out_dir, "pilot", key)
    tcfg = TrainConfig(**{**cfg, "model": model, "dataset": dataset, "epochs": epochs, "samples": train_samples,
                          "warmup_epochs": min(cfg.get("warmup_epochs", 0), epochs), "target_loss": 0.0,
                          "out_dir": os.path.join(folder, "train"), "data_root": data_root})
    torch_device = None if device == "auto" else torch.device(device)
    final = train(tcfg, torch_device, quiet=True)
    per_epoch = epoch_seconds(tcfg.out_dir, epochs)
    losses = [float(torch.load(os.path.join(tcfg.out_dir, f"epoch_{e:03d}.pt"), weights_only=True)["train_loss"])
              for e in range(epochs + 1)]
    n = {sp: len(load_eval_set(dataset, sp, data_root, train_samples if sp == "train" else None, cfg["seed"]))
         for sp in ("train", "test")}
    rec: dict[str, Any] = {"model": cfg["model"], "ran": model, "batch_size": cfg["batch_size"],
                           "recipe": {k: cfg.get(k) for k in ("lr", "schedule", "warmup_epochs", "clip_grad_norm")},
                           "epochs": epochs, "train_samples": n["train"], "test_samples": n["test"],
                           "epoch_seconds": per_epoch, "train_loss": losses}
    if not measure_points:
        return rec
    common = {"model": model, "checkpoint": final, "dataset": dataset, "data_root": data_root, "seed": PILOT_SEED}
    surf = os.path.join(folder, "surface.h5")
    scfg = SurfaceConfig(**common, x=Axis(-1, 1, points), samples=samples)
    from landscape_mpi.surface.run import run_surface

    _guarded(lambda: run_surface(scfg, RunOptions(out=surf, device=device)), "the surface line")
    with reader.open_surface(surf) as f:
        point_s = statistics.median(f.raw("seconds").ravel().tolist())
    evaluated = min(samples, n["train"]) + min(samples, n["test"])
    eig = os.path.join(folder, "eig.h5")
    ecfg = SurfaceConfig(**common, x=Axis(-1, 1, eig_points), samples=eig_samples, eig=True, eig_tol=eig_tol,
                         splits=("train",))
    _guarded(lambda: run_surface(ecfg, RunOptions(out=eig, device=device)), "the eigenvalue line")
    with reader.open_surface(eig) as f:
        eig_s = f.raw("seconds").ravel().tolist()
        products = [int(p) for p in f.raw("eig_iters").ravel().tolist()]
    eig_n = min(eig_samples, n["train"])
    rate = point_s / evaluated
    hvp = [max(s - rate * eig_n, 0.0) / p / eig_n for s, p in zip(eig_s, products) if p > 0]
    rec.update(point_seconds=point_s, point_samples=evaluated, eval_seconds_per_sample=rate,
               eig_point_seconds=eig_s, eig_samples=eig_n, products_per_eig_point=products,
               hvp_seconds_per_sample=statistics.median(hvp))
    if hessian is not None:
        from landscape_mpi.config.hessian import HessianRun
        from landscape_mpi.hessian.run import run_hessian
        from landscape_mpi.runtime.context import make_context

        hpath = os.path.join(folder, "hessian.h5")
        hcfg = HessianConfig(**{**common, **hessian, "samples": hessian_samples, "out": hpath})
        run = HessianRun(device=device)
        if not os.path.exists(hpath):
            _guarded(lambda: run_hessian(hcfg, make_context(run.device, run.threads)), "the Hessian step")
        h = reader.read_hessian_file(hpath, "pilot")
        hn = sum(min(hessian_samples, n[sp]) for sp in hcfg.splits)
        seconds = float(h["checkpoints/seconds"][0])
        rec.update(hessian_seconds=seconds, hessian_samples=hn, hessian_seconds_per_sample=seconds / hn,
                   hessian_products={"top": int(h["eigen/products_top"][0]), "min": int(h["eigen/products_min"][0]),
                                     "trace": int(h["trace/products"][0]) if "trace/products" in h else 0})
    return rec


def run_pilot(out_dir: str, device: str = "auto", data_root: str | None = None, *, epochs: int = 3,
              train_samples: int | None = 5000, samples: int = 1000, eig_samples: int = 500, points: int = 5,
              eig_points: int = 3, hessian_samples: int = 500, models: Sequence[str] | None = None,
              reduced: bool = False, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)
              ) -> dict[str, Any]:
    """Pilot every unit of the paper set (or those of `models`), write the record and its estimate; returns the
    record. A unit already in ``OUT/pilot.json`` (same sizes) is kept."""
    from landscape_mpi.surface.run import device_name

    exps = paper_experiments()
    units = pilot_units(exps)
    if models:
        unknown = sorted(set(models) - {c["model"] for c in units.values()})
        if unknown:
            raise UserError(f"--models {','.join(unknown)}: not in the paper set; choose among "
                            f"{', '.join(dict.fromkeys(c['model'] for c in units.values()))}")
        units = {k: c for k, c in units.items() if c["model"] in models}
    if not reduced and data_root is None:
        raise UserError("--data-root: the pilot trains on CIFAR-10; give the folder holding cifar-10-batches-py/, "
                        "or --reduced for stand-ins on random data")
    sizes = {"epochs": epochs, "train_samples": train_samples, "samples": samples, "eig_samples": eig_samples,
             "points": points, "eig_points": eig_points, "hessian_samples": hessian_samples}
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out-dir {out_dir}: cannot create it ({exc}); choose another folder") from None
    path = os.path.join(out_dir, PILOT_JSON)
    record: dict[str, Any] = {}
    if os.path.exists(path):
        record = json.load(open(path))
        if record.get("sizes") != sizes or record.get("reduced") != reduced:
            record = {}
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    record.update(sizes=sizes, reduced=reduced, device=device_name(dev), threads=torch.get_num_threads(),
                  torch=torch.__version__, splits=PAPER_SPLITS)
    record.setdefault("units", {})
    hessians, eig_opts = _hessian_options(exps), _eig_options(exps)
    measured: set[str] = {u["model"] for u in record["units"].values() if "eval_seconds_per_sample" in u}
    for key, cfg in units.items():
        if key in record["units"]:
            continue
        log(f"pilot: {key} ({'hard, ' if paper.is_hard(cfg['model']) else ''}{epochs} epochs)")
        t = time.perf_counter()
        record["units"][key] = pilot_unit(
            key, cfg, out_dir, device, data_root, epochs=epochs, train_samples=train_samples, samples=samples,
            eig_samples=eig_samples, points=points, eig_points=eig_points, hessian=hessians.get(cfg["model"]),
            hessian_samples=hessian_samples, eig_tol=eig_opts["eig_tol"], reduced=reduced,
            measure_points=cfg["model"] not in measured)
        measured.add(cfg["model"])
        log(f"pilot: {key} in {time.perf_counter() - t:.1f} s")
        _write(out_dir, record)
    _write(out_dir, record)
    return record


def _write(out_dir: str, record: dict[str, Any]) -> None:
    from landscape_mpi.runtime.lifecycle import write_whole

    write_whole(os.path.join(out_dir, PILOT_JSON), json.dumps(record, indent=2, sort_keys=True) + "\n")
    write_whole(os.path.join(out_dir, PILOT_MD), markdown(record))


# ----------------------------------------------------------------------------------------------- the estimate
def rates(record: dict[str, Any]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """({unit key: training seconds per training sample}, {model: per-sample seconds: ``eval``, ``hvp``,
    ``products`` (per eigenvalue point, the median), ``hessian``}) from a pilot record."""
    per_model: dict[str, dict[str, float]] = {}
    for u in record["units"].values():
        if "eval_seconds_per_sample" in u:
            m = {"eval": u["eval_seconds_per_sample"], "hvp": u["hvp_seconds_per_sample"],
                 "products": float(statistics.median(u["products_per_eig_point"]))}
            if "hessian_seconds_per_sample" in u:
                m["hessian"] = u["hessian_seconds_per_sample"]
            per_model[u["model"]] = m
    train: dict[str, float] = {}
    for key, u in record["units"].items():
        ev = per_model.get(u["model"], {}).get("eval")
        if ev is None:
            continue
        epoch = _median_steady(u["epoch_seconds"])
        steps = epoch - ev * (u["train_samples"] + u["test_samples"])  # the epoch's own evaluation left out
        train[key] = max(steps, 0.0) / u["train_samples"]
    return train, per_model


def _samples(options: dict[str, Any], splits: dict[str, int], default: tuple[str, ...]) -> int:
    n = options.get("samples")
    return sum(min(n, splits[sp]) if n else splits[sp] for sp in options.get("splits", default))


def estimate(record: dict[str, Any], exps: Sequence[d.Experiment] | None = None) -> list[dict[str, Any]]:
    """Device-seconds per experiment from the record's rates: {experiment, training, surfaces, eig, hessian,
    total}. Raises UserError naming a training configuration or model the record has no rate for."""
    exps = paper_experiments() if exps is None else exps
    splits = record["splits"]
    train, per_model = rates(record)
    missing = sorted({unit_key(r.config["model"], r.config["batch_size"]) for e in exps for r in e.runs} - set(train))
    if missing:
        raise UserError(f"pilot record: no measured rate for {', '.join(missing)}; run the pilot for them")
    seen: set[str] = set()
    rows = []
    for e in exps:
        t = surf = eig = hess = 0.0
        for r in e.runs:
            if r.name in seen:
                continue
            seen.add(r.name)
            c = r.config
            n_train = min(c.get("samples") or splits["train"], splits["train"])
            ev = per_model[c["model"]]["eval"]
            t += c["epochs"] * (train[unit_key(c["model"], c["batch_size"])] * n_train
                                + ev * (n_train + splits["test"]))
        for s in e.surfaces:
            m = per_model[e.run(s.run).config["model"]]
            pts = 1
            for k in ("x", "y", "z"):
                if s.options.get(k) is not None:
                    pts *= s.options[k].num
            if s.options.get("eig"):
                eig += pts * _samples(s.options, splits, ("train",)) * (m["eval"] + m["products"] * m["hvp"])
            else:
                surf += pts * _samples(s.options, splits, ("train", "test")) * m["eval"]
        for h in e.hessians:
            m = per_model[e.run(h.run).config["model"]]
            if "hessian" not in m:
                raise UserError(f"pilot record: no measured Hessian step for {e.run(h.run).config['model']}")
            hess += _samples(h.options, splits, ("train",)) * m["hessian"]
        rows.append({"experiment": e.name, "training": t, "surfaces": surf, "eig": eig, "hessian": hess,
                     "total": t + surf + eig + hess})
    return rows


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.3g}"


def markdown(record: dict[str, Any]) -> str:
    """The record and its estimate as markdown (``OUT/pilot.md``)."""
    scope = "reduced size (stand-ins on random data): not an estimate of the paper's cost" if record["reduced"] \
        else "the paper's models on CIFAR-10"
    lines = [f"# Pilot of the paper's setting: {record['device']}, {scope}", "",
             f"torch {record['torch']}, {record['threads']} CPU thread(s); sizes: "
             + ", ".join(f"{k} {v}" for k, v in record["sizes"].items()), "",
             "| unit | ran | hard | s/epoch (pilot) | train loss (epochs 0..) | s/point | products/eig point "
             "| s/HVP/sample | Hessian step s |", "|---|---|---|---|---|---|---|---|---|"]
    for key, u in record["units"].items():
        cells = [_num(u.get(k)) for k in ("point_seconds", "hvp_seconds_per_sample", "hessian_seconds")]
        lines.append(f"| {key} | `{u['ran']}` | {'yes' if paper.is_hard(u['model']) else ''} "
                     f"| {_median_steady(u['epoch_seconds']):.3g} | {' '.join(f'{x:.3g}' for x in u['train_loss'])} "
                     f"| {cells[0]} | {' '.join(map(str, u.get('products_per_eig_point', [])))} | {cells[1]} "
                     f"| {cells[2]} |")
    try:
        rows = estimate(record)
    except UserError as exc:
        lines += ["", f"No estimate: {exc}"]
        return "\n".join(lines) + "\n"
    label = "CPU, reduced size" if record["reduced"] else record["device"]
    lines += ["", f"Device-hours of the `paper` set from these rates ({label}):", "",
              "| experiment | training | loss surfaces | eigenvalue maps | Hessian steps | total |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['experiment']} | " + " | ".join(f"{r[k] / 3600:.3g}" for k in
                                                            ("training", "surfaces", "eig", "hessian", "total")) + " |")
    lines.append(f"| all | | | | | {sum(r['total'] for r in rows) / 3600:.3g} |")
    return "\n".join(lines) + "\n"
