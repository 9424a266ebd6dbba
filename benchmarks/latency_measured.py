"""Measured per-op latency of a real model on this CPU, and sum-of-layers vs end-to-end.

    .venv/bin/python benchmarks/latency_measured.py --model mobilenet_v2 --cache benchmarks/results/latency-cache.json

For every quantizable op x candidate (w16a16, w8a16, w8a8, w4a8, float) the one-op realized module
is compiled with tvm_mpq's pipeline and timed (tvm_mpq.latency; warm-up 3, 7 repeats of >= 20 ms,
median). Then every uniform configuration is realized whole and timed end to end, and the
sum-of-layers estimate (+ the float-model constant C) is compared with it. Prints a per-op table of
the first ``--show`` ops and writes a JSON summary next to the cache. Measurements are cached (JSON):
a rerun reuses them. The runtime thread count is TVM_NUM_THREADS (printed).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

import tvm_mpq
from tvm_mpq.latency import LocalDevice, MeasuredLatency, Timing, op_candidate_keys

CANDIDATES = ["w16a16", "w8a16", "w8a8", "w4a8"]


def build_quantizer(model: str, calib: int):
    if model == "mobilenet_v2":
        from tvm_mpq.models.mobilenet_v2 import load_mobilenet_v2

        try:
            from tvm_mpq.datasets import imagenet_sample

            x, _ = imagenet_sample(limit=calib)
        except FileNotFoundError:
            from tvm_mpq.datasets import bundled_images

            x = bundled_images()[:calib]
        batches = [x[i : i + 1] for i in range(len(x))]
        return tvm_mpq.Quantizer(load_mobilenet_v2(), None, batches, (x[:1],), progress=False)
    if model == "minilm":
        from tvm_mpq.datasets import sts_dev
        from tvm_mpq.models.minilm import encode_batch, load_minilm

        m, tok = load_minilm()
        sents = [a for a, _, _ in sts_dev(limit=calib)]
        batches = [tuple(encode_batch(tok, [s])) for s in sents]
        return tvm_mpq.Quantizer(m, None, batches, batches[0], progress=False)
    raise SystemExit(f"unknown model {model}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mobilenet_v2", choices=["mobilenet_v2", "minilm"])
    ap.add_argument("--calib", type=int, default=4)
    ap.add_argument("--cache", default="benchmarks/results/latency-cache.json")
    ap.add_argument("--show", type=int, default=8)
    args = ap.parse_args()
    threads = os.environ.get("TVM_NUM_THREADS", "unset (all cores)")
    print(f"{args.model}: TVM_NUM_THREADS={threads}, target {tvm_mpq.targets.host_target()}")
    t0 = time.perf_counter()
    q = build_quantizer(args.model, args.calib)
    print(f"import + calibration {time.perf_counter() - t0:.1f} s; {len(q.graph.ops)} quantizable ops")
    t0 = time.perf_counter()
    cost = MeasuredLatency(q, CANDIDATES, device=LocalDevice(timing=Timing()), cache=args.cache, progress=True)
    print(f"measured in {time.perf_counter() - t0:.1f} s (cache {args.cache}); "
          f"float end to end {cost.float_end_to_end_ms:.3f} ms, C = {cost.constant_ms:.3f} ms")
    keys = ["w16a16", "w8a16", "w8a8", "w4a8", "float"]
    print(f"\n{'op':34} {'MMACs':>7} " + " ".join(f"{k:>8}" for k in keys) + "   (ms)")
    rows = []
    for name in list(q.graph.ops):
        lat = {k: cost.table[(name, k)] for k in op_candidate_keys(q, name, CANDIDATES) if (name, k) in cost.table}
        rows.append({"op": name, "macs": q.graph.ops[name].macs, "ms": lat})
    for r in rows[: args.show]:
        print(f"{r['op']:34} {r['macs'] / 1e6:7.2f} " + " ".join(f"{r['ms'].get(k, float('nan')):8.4f}" for k in keys))
    totals = {k: sum(r["ms"].get(k, 0.0) for r in rows) for k in keys}
    print(f"{'sum over all ops':34} {sum(r['macs'] for r in rows) / 1e6:7.1f} " + " ".join(f"{totals[k]:8.3f}" for k in keys))
    checks = cost.end_to_end_check({k: k for k in keys})
    print(f"\n{'uniform':8} {'sum of layers':>14} {'+ C':>9} {'end to end':>11} {'SoL err':>8} {'est err':>8}")
    for c in checks:
        print(f"{c['config']:8} {c['sum_of_layers_ms']:14.3f} {c['estimate_ms']:9.3f} {c['end_to_end_ms']:11.3f} "
              f"{c['sum_of_layers_error'] * 100:7.1f}% {c['estimate_error'] * 100:7.1f}%")
    suffix = f"-t{os.environ['TVM_NUM_THREADS']}" if os.environ.get("TVM_NUM_THREADS") else ""
    out = Path(args.cache).with_name(f"latency-{args.model}{suffix}-summary.json")
    out.write_text(json.dumps({"model": args.model, "threads": threads, "target": str(cost.device.target),
                               "constant_ms": cost.constant_ms, "ops": rows, "end_to_end": checks}, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
