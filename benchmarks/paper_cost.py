"""The compute of each experiment at a scale (default `paper`), from the definitions alone, and the GPU-hours it
takes at a sustained rate you give (docs/reproducing.md#gpu-hours-at-the-paper-scale).

Counted from `landscape_mpi/experiments/definitions.py` (the same runs and surfaces `experiments run` makes) and
each model's forward FLOPs per sample (torch's FlopCounterMode on one CIFAR-10 image; multiply-adds count 2):

- training: epochs x training samples x 3 forward-equivalents (forward, and a backward of about twice its cost);
- a loss surface or interpolation: grid points x evaluated samples x 1 forward;
- an eigenvalue map: grid points x the samples of its split x (1 forward for the loss + PRODUCTS Hessian-vector
  products of HVP_COST forward-equivalents each: a product is a forward, a backward and a backward of the
  backward). PRODUCTS = 21 per point is what the small scale's maps took for most points (docs/reproducing.md);
  it is an assumption at the paper scale;
- a Hessian step (the batch experiment's, `HessianStep`): its samples x (1 forward for the loss + (EXTREME_PRODUCTS
  + its trace probes) products of HVP_COST + its adaptive perturbations x 1 forward). EXTREME_PRODUCTS = 232 is the
  median of what lambda_max and lambda_min took together at tolerance 1e-3 over the small scale's 72 Hessian
  steps (92 to 532); an assumption at the paper scale.

The rate is the one number this cannot know: what the engine sustains on your GPU for these small convolutional
nets (bf16/tf32, batch sizes of thousands). `benchmarks/gpu_check.sh` measures points per second for ResNet-56
on one GPU; divide its FLOPs per point by that to get a rate. Default: 50 TFLOP/s, an assumption, not a
measurement.

    python benchmarks/paper_cost.py [--scale paper] [--tflops 50]
"""

from __future__ import annotations

import argparse
import math

import torch

from landscape_mpi.experiments.definitions import NAMES, SCALE_SETTINGS, experiment
from landscape_mpi.models import INPUT_SHAPES, ZOO, build_model

PRODUCTS, HVP_COST = 21, 4.0
EXTREME_PRODUCTS = 232
#: split sizes of the datasets the scales use (CIFAR-10; MNIST-1D: 4,000 train / 1,000 test)
SPLITS = {"cifar10": {"train": 50_000, "test": 10_000}, "mnist1d": {"train": 4_000, "test": 1_000}}


def forward_flops(model_name: str) -> float:
    """FLOPs of one forward of one sample (a multiply-add counts 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(model_name).eval()
    shape = INPUT_SHAPES[ZOO[model_name][1]]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *shape))
    return float(counter.get_total_flops())


def points(options: dict) -> int:
    return math.prod(a.num for k, a in options.items() if k in ("x", "y", "z"))


def samples_of(options: dict, sizes: dict[str, int], splits: tuple[str, ...]) -> int:
    """Samples a step evaluates: its ``samples`` subset per split (None: the whole split) over `splits`."""
    n = options.get("samples")
    return sum(min(n, sizes[sp]) if n else sizes[sp] for sp in splits)


def costs(scale: str) -> list[tuple[str, int, int, float, float, float, float]]:
    """(experiment, trainings, surfaces, training FLOPs, loss-surface FLOPs, eigenvalue-map FLOPs, Hessian-step
    FLOPs) per experiment."""
    flops: dict[str, float] = {}
    out = []
    for name in NAMES:
        exp = experiment(name, scale)
        sizes = SPLITS[SCALE_SETTINGS[scale].dataset]
        train = 0.0
        for r in exp.runs:
            model = r.config["model"]
            flops.setdefault(model, forward_flops(model))
            train += r.config["epochs"] * (r.config.get("samples") or sizes["train"]) * 3 * flops[model]
        surf = eig = 0.0
        for s in exp.surfaces:
            model = exp.run(s.run).config["model"]
            samples = samples_of(s.options, sizes, s.options.get("splits", ("train", "test")))
            if s.options.get("eig"):
                eig += points(s.options) * samples * (1 + PRODUCTS * HVP_COST) * flops[model]
            else:
                surf += points(s.options) * samples * flops[model]
        hess = 0.0
        for h in exp.hessians:
            model = exp.run(h.run).config["model"]
            samples = samples_of(h.options, sizes, h.options["splits"])
            products = EXTREME_PRODUCTS + h.options["trace_probes"]
            hess += samples * (1 + products * HVP_COST + h.options["adaptive_samples"]) * flops[model]
        out.append((name, len(exp.runs), len(exp.surfaces), train, surf, eig, hess))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", default="paper", choices=tuple(SCALE_SETTINGS))
    p.add_argument("--tflops", type=float, default=50.0, help="sustained rate, TFLOP/s per GPU (an assumption)")
    a = p.parse_args()
    hours = lambda f: f / (a.tflops * 1e12) / 3600  # noqa: E731
    print(f"| experiment ({a.scale}) | trainings | surfaces | training GPU-h | loss surfaces GPU-h "
          f"| eigenvalue maps GPU-h | Hessian steps GPU-h | total GPU-h |")
    print("|---|---|---|---|---|---|---|---|")
    total = 0.0
    for name, runs, surfaces, train, surf, eig, hess in costs(a.scale):
        t = hours(train + surf + eig + hess)
        total += t
        print(f"| {name} | {runs} | {surfaces} | {hours(train):.0f} | {hours(surf):.0f} | {hours(eig):.0f} "
              f"| {hours(hess):.1f} | {t:.0f} |")
    print(f"| all | | | | | | | {total:.0f} |")
    print(f"\nat {a.tflops:g} TFLOP/s sustained per GPU; {PRODUCTS} Hessian-vector products per eigenvalue-map point "
          f"of {HVP_COST:g} forward-equivalents each (assumptions: see the module's docstring)")


if __name__ == "__main__":
    main()
