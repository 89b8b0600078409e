"""Benchmark: GGN/Fisher products against the Hessian product and one forward(-backward), time and peak anonymous
memory, for the lm task on a Hugging Face GPT-2 config of a few million parameters at a vocabulary of 32k
(docs/hessian.md#curvature-operators-ggn-fisher-empirical-fisher).

Each case runs in a fresh process (so that its peak is its own): the model and a batch of token ids are built,
one warm-up call is made, then `--reps` timed calls (median reported); the peak RssAnon (sampled every 2 ms from
/proc/self/status) over the warm-up and the timed calls is reported above the level before them (the model, data
and imports), as MB. Cases:

- ``forward``: the lm task's loss sum, no graph; ``forward-backward``: loss and its gradient;
- ``hessian``: `HessianOperator` (plain: forward + double backward) product;
- ``ggn``: `CurvatureOperator` GGN product, forward-mode J v (``ggn-reverse``: the double-vjp trick);
- ``fisher``, ``empirical-fisher``: their products (forward-mode);
- ``curvlinops-ggn``: curvlinops' `GGNLinearOperator` on the same model and batch (if installed).

    .venv/bin/python benchmarks/bench_curvature.py                        # every case, the table
    .venv/bin/python benchmarks/bench_curvature.py --vocab 32000 --width 128 --layers 2 --batch 8 --seq 128

Run it on an idle machine (the lead schedules that); numbers from a loaded machine are sanity checks only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

CASES = ("forward", "forward-backward", "hessian", "ggn", "ggn-reverse", "fisher", "empirical-fisher",
         "curvlinops-ggn")


def _anon_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Peak:
    """The largest RssAnon seen while active (a sampling thread, every 2 ms)."""

    def __init__(self) -> None:
        self.value = 0.0
        self._on = True
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while self._on:
            self.value = max(self.value, _anon_mb())
            time.sleep(0.002)

    def stop(self) -> float:
        self._on = False
        return max(self.value, _anon_mb())


def build(a):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=a.vocab, n_positions=a.seq, n_embd=a.width, n_layer=a.layers, n_head=a.heads,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    # eager attention: torch's CPU flash attention has neither a double backward (Hessian products) nor a
    # forward-mode rule here (the GGN's J v), so the SDPA default would measure the fallbacks' failure
    cfg._attn_implementation = "eager"
    model = GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, a.vocab, (a.batch, a.seq), generator=torch.Generator().manual_seed(1))
    return model, ids


def one_case(a) -> dict:
    import numpy as np
    import torch

    from landscape_mpi.curvature.hessian import HessianOperator
    from landscape_mpi.curvature.operators import CurvatureOperator
    from landscape_mpi.data.datasets import EvalSet
    from landscape_mpi.tasks import LanguageModelTask

    torch.set_num_threads(a.threads)
    model, ids = build(a)
    task = LanguageModelTask()
    data = EvalSet("train", ids, None)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    v = np.random.default_rng(0).standard_normal(n)
    case = a.case
    if case == "forward":
        def call():
            with torch.no_grad():
                task.loss_sum(task.forward(model, ids), ids, None)
    elif case == "forward-backward":
        params = [p for p in model.parameters() if p.requires_grad]

        def call():
            torch.autograd.grad(task.loss_sum(task.forward(model, ids), ids, None), params)
    elif case == "hessian":
        op = HessianOperator(model, data, task, batch_size=a.batch, product="plain")

        def call():
            op.local_product_sum(v)
    elif case == "curvlinops-ggn":
        from curvlinops import GGNLinearOperator

        class Flat(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, x):
                out = self.m(x).logits[:, :-1]
                return out.reshape(-1, out.shape[-1])

        flat = Flat(model)
        params = [p for p in flat.parameters() if p.requires_grad]
        theirs = GGNLinearOperator(flat, torch.nn.CrossEntropyLoss(reduction="sum"), params,
                                   [(ids, ids[:, 1:].reshape(-1))], check_deterministic=False, progressbar=False)
        tv = torch.from_numpy(v).float()

        def call():
            theirs @ tv
    else:
        curvature = "ggn" if case.startswith("ggn") else case
        op = CurvatureOperator(model, data, task, curvature, batch_size=a.batch, fisher_seed=0,
                               jvp="reverse" if case == "ggn-reverse" else "forward")

        def call():
            op.local_product_sum(v)
    base = _anon_mb()  # model, data, imports; freed memory stays in the process (glibc), so the peak is taken
    peak = Peak()      # from here over the warm-up and the timed calls
    call()  # warm-up (first-call costs: forward-mode decompositions, allocator)
    times = []
    for _ in range(a.reps):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    top = peak.stop()
    out = {"case": case, "params": n, "seconds": statistics.median(times), "peak_mb": top - base,
           "base_mb": base}
    if case in ("ggn", "ggn-reverse") and getattr(op, "fallback", None):
        out["fallback"] = op.fallback
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=CASES, help="run one case in this process (the driver's child)")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="also write the rows here")
    a = p.parse_args(argv)
    if a.case:
        print(json.dumps(one_case(a)), flush=True)
        return 0
    rows = []
    passed = [f"--{k}={getattr(a, k)}" for k in ("vocab", "width", "layers", "heads", "seq", "batch", "reps",
                                                  "threads")]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    for case in a.cases.split(","):
        r = subprocess.run([sys.executable, __file__, "--case", case, *passed], capture_output=True, text=True,
                           env=env)
        if r.returncode != 0:
            print(f"{case}: failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
            continue
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    fb = next((r for r in rows if r["case"] == "forward-backward"), None)
    print(f"GPT-2 config: vocab {a.vocab}, width {a.width}, layers {a.layers}, batch {a.batch} x {a.seq} tokens, "
          f"{rows[0]['params'] if rows else '?'} parameters, {a.threads} thread(s), median of {a.reps}")
    print("| case | s per call | x forward-backward | peak anon MB above base | x forward-backward |")
    print("|---|---|---|---|---|")
    for r in rows:
        rel_t = f"{r['seconds'] / fb['seconds']:.2f}" if fb else "-"
        rel_m = f"{r['peak_mb'] / fb['peak_mb']:.2f}" if fb and fb["peak_mb"] > 0 else "-"
        print(f"| {r['case']} | {r['seconds']:.3f} | {rel_t} | {r['peak_mb']:.0f} | {rel_m} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"settings": vars(a), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
