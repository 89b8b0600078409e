"""Why K grid points per forward gain little for digits_cnn on an idle CPU: three ways to run K parameter sets.

digits_cnn's forward (conv 1->8, BN folded, ReLU; conv 8->16, ReLU, 2x2 max-pool; linear 256->10) on one batch
of digit-shaped inputs, for K parameter sets:
- one at a time: K ordinary forwards (what `folded` does, one point per forward);
- grouped: the first convolution with K*8 output channels (its input is shared), the second as a grouped
  convolution (groups = K), the classifier as a batched matmul: what `torch.func.vmap` turns the forward into
  (the `batched` engine);
- im2col + bmm: the second convolution unfolded into columns and run as one batched matmul over the K sets.
Prints milliseconds per point and per batch, and checks the three agree. Run:
``.venv/bin/python benchmarks/bench_kconv.py [--k 32] [--batch 128] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_engine import machine  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=20)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    B, K, C = a.batch, a.k, 8
    x = torch.randn(B, 1, 8, 8, generator=g)
    w1, b1 = torch.randn(K, C, 1, 3, 3, generator=g), torch.randn(K, C, generator=g)
    w2, b2 = torch.randn(K, 2 * C, C, 3, 3, generator=g) / 8, torch.randn(K, 2 * C, generator=g)
    wf, bf = torch.randn(K, 10, 2 * C * 16, generator=g) / 16, torch.randn(K, 10, generator=g)

    def one(k: int) -> torch.Tensor:
        h = F.relu(F.conv2d(x, w1[k], b1[k], padding=1))
        h = F.max_pool2d(F.relu(F.conv2d(h, w2[k], b2[k], padding=1)), 2)
        return F.linear(h.flatten(1), wf[k], bf[k])

    def first_layer() -> torch.Tensor:  # shared input: one dense convolution with K*C outputs, (B, K, C, 8, 8)
        return F.relu(F.conv2d(x, w1.reshape(K * C, 1, 3, 3), b1.reshape(-1), padding=1)).reshape(B, K, C, 8, 8)

    def head(h: torch.Tensor) -> torch.Tensor:  # h: (K, B, 2C, 8, 8) -> (K, B, 10)
        h = F.max_pool2d(h.reshape(K * B, 2 * C, 8, 8), 2).reshape(K, B, -1)
        return torch.baddbmm(bf.unsqueeze(1), h, wf.transpose(1, 2))

    def grouped() -> torch.Tensor:
        h = first_layer().reshape(B, K * C, 8, 8)
        h = F.relu(F.conv2d(h, w2.reshape(K * 2 * C, C, 3, 3), b2.reshape(-1), padding=1, groups=K))
        return head(h.reshape(B, K, 2 * C, 8, 8).transpose(0, 1))

    def im2col_bmm() -> torch.Tensor:
        h = first_layer().transpose(0, 1).reshape(K * B, C, 8, 8)
        cols = F.unfold(h, 3, padding=1).reshape(K, B, C * 9, 64).permute(0, 1, 3, 2).reshape(K, B * 64, C * 9)
        out = torch.baddbmm(b2.unsqueeze(1), cols, w2.reshape(K, 2 * C, C * 9).transpose(1, 2))
        return head(F.relu(out).reshape(K, B, 8, 8, 2 * C).permute(0, 1, 4, 2, 3))

    def timed(fn) -> float:
        fn()
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(a.reps):
                fn()
            best = min(best, (time.perf_counter() - t) / a.reps)
        return best

    print(machine())
    print(f"torch {torch.__version__}, threads {a.threads}; K = {K} parameter sets, batch {B}; best of 3 x {a.reps}")
    with torch.inference_mode():
        ref = torch.stack([one(k) for k in range(K)])
        for name, fn in (("grouped", grouped), ("im2col + bmm", im2col_bmm)):
            err = float((fn() - ref).abs().max() / ref.abs().max())
            assert err < 1e-5, (name, err)
        rows = [("one at a time (folded)", timed(lambda: [one(k) for k in range(K)])),
                ("grouped (vmap, the batched engine)", timed(grouped)), ("im2col + bmm", timed(im2col_bmm))]
    print("\n| K parameter sets as | ms per point per batch | vs one at a time |\n|---|---|---|")
    for name, s in rows:
        print(f"| {name} | {s / K * 1e3:.3f} | {rows[0][1] / s:.2f}x |")


if __name__ == "__main__":
    main()
