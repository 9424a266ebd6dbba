"""Measure a zoo of random CNN / transformer layer shapes: training data for the latency model.

    .venv/bin/python benchmarks/latency_zoo.py --layers 40 --seed 0 --cache benchmarks/results/latency-cache.json

Builds one multi-input model whose layers are independent (each reads its own input, so each is
its own quantizer group): pointwise / 3x3 / depthwise 3x3 convolutions at ImageNet-CNN resolutions
and channel counts, dense layers at transformer sizes (M = tokens) and, with ``--matmul`` > 0,
activation x activation matmuls at attention sizes (heads x tokens x head width; each operand its
own input, so every mix of operand widths is measured). Every layer x candidate is
measured like a real model's (tvm_mpq.latency.MeasuredLatency's per-op path) into the same cache,
where benchmarks/latency_predicted.py trains on it. Layers above ``--max-mmacs`` are redrawn.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import tvm_mpq
from tvm_mpq.latency import LatencyCache, LocalDevice, Timing, op_tasks, run_tasks

CANDIDATES = ["w16a16", "w8a16", "w8a8", "w4a8"]
SIZES = [7, 14, 28, 56, 112]
CHANNELS = [16, 24, 32, 48, 64, 96, 128, 144, 160, 192, 256, 320, 384, 576, 960]
FEATURES = [128, 256, 384, 512, 768, 1024, 1536, 3072]
TOKENS = [1, 8, 32, 64, 128]
HEADS = [4, 8, 12, 16]
HEAD_DIMS = [32, 64, 128]
SEQ = [16, 32, 64, 128, 256]


class MatMul(torch.nn.Module):
    def forward(self, a, b):
        return torch.matmul(a, b)


def draw(rng, max_mmacs: float, p_matmul: float = 0.0):
    p = np.array([0.3, 0.2, 0.25, 0.25]) * (1.0 - p_matmul)
    while True:
        kind = rng.choice(["pw", "3x3", "dw", "dense", "matmul"], p=list(p) + [p_matmul])
        if kind == "matmul":  # scores (M x d) @ (d x N) or context (M x N) @ (N x d), per head
            h, m, d = int(rng.choice(HEADS)), int(rng.choice(SEQ)), int(rng.choice(HEAD_DIMS))
            k, n = (d, m) if rng.random() < 0.5 else (m, d)
            layer = ("matmul", ((h, m, k), (h, k, n)), MatMul())
            macs = h * m * k * n
        elif kind == "dense":
            m, k, n = int(rng.choice(TOKENS)), int(rng.choice(FEATURES)), int(rng.choice(FEATURES))
            layer = ("dense", ((1, m, k),), torch.nn.Linear(k, n))
            macs = m * k * n
        else:
            h = int(rng.choice(SIZES))
            ci = int(rng.choice(CHANNELS))
            co = ci if kind == "dw" else int(rng.choice(CHANNELS))
            k = 1 if kind == "pw" else 3
            s = 1 if kind == "pw" else int(rng.choice([1, 2]))
            g = ci if kind == "dw" else 1
            conv = torch.nn.Conv2d(ci, co, k, stride=s, padding=k // 2, groups=g)
            if kind == "3x3" and ci > 192:
                continue  # with int64 accumulators these compile for minutes (960 -> 32 channels: 225 s)
            ho = (h + 2 * (k // 2) - k) // s + 1
            macs = ho * ho * co * (ci // g) * k * k
            layer = (kind, ((1, ci, h, h),), conv)
        if macs <= max_mmacs * 1e6:
            return layer


class Zoo(torch.nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.layers = torch.nn.ModuleList(m for _, _, m in layers)

        self.arity = [len(shapes) for _, shapes, _ in layers]

    def forward(self, *xs):
        out, i = [], 0
        for m, n in zip(self.layers, self.arity):
            out.append(m(*xs[i : i + n]))
            i += n
        return tuple(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-mmacs", type=float, default=60.0)
    ap.add_argument("--matmul", type=float, default=0.0, help="probability of an activation x activation matmul")
    ap.add_argument("--cache", default="benchmarks/results/latency-cache.json")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    layers = [draw(rng, args.max_mmacs, args.matmul) for _ in range(args.layers)]
    torch.manual_seed(args.seed)
    xrng = np.random.default_rng(args.seed + 1)
    xs = tuple(xrng.standard_normal(s).astype(np.float32) for _, shapes, _ in layers for s in shapes)
    t0 = time.perf_counter()
    q = tvm_mpq.Quantizer(Zoo(layers).eval(), None, [xs], tuple(torch.from_numpy(x) for x in xs), progress=False)
    table, tasks = op_tasks(q, CANDIDATES)
    print(f"{len(layers)} layers ({', '.join(k for k, _, _ in layers)}); {len(tasks)} modules; "
          f"setup {time.perf_counter() - t0:.1f} s")
    device = LocalDevice(timing=Timing())
    cache = LatencyCache(args.cache)
    t0 = time.perf_counter()
    run_tasks(device, tasks, cache, progress=True)
    print(f"measured in {time.perf_counter() - t0:.1f} s into {args.cache} ({device.namespace})")


if __name__ == "__main__":
    main()
