"""Measured per-op latency of a real model on this CPU, and sum-of-layers vs end-to-end.

    .venv/bin/python benchmarks/latency_measured.py --model mobilenet_v2 --cache benchmarks/results/latency-cache.json

For every quantizable op x candidate (w16a16, w8a16, w8a8, w4a8, float) the one-op realized module
is compiled with tvm_mpq's pipeline and timed (tvm_mpq.latency.Timing: warm-up 3, 15 repeats of
>= 5 ms, the minimum; in thread CPU time at TVM_NUM_THREADS=1, else wall time). Then every uniform
configuration is realized whole and timed end to end (``--no-check``: only the float model, for C),
and the sum-of-layers estimate (+ the float-model constant C) is compared with it. Prints a per-op
table of the first ``--show`` ops and writes a JSON summary next to the cache. Measurements are
cached (JSON): a rerun reuses them. The runtime thread count is TVM_NUM_THREADS (printed).

The noise floor of the timing protocol (what no latency predictor can beat)::

    TVM_NUM_THREADS=1 .venv/bin/python benchmarks/latency_measured.py --noise 30

compiles ``--noise`` randomly chosen one-op modules of the model once, then times each of them in
two passes minutes apart under three protocols, interleaved op by op so that all see the same load:
v1 (wall clock, median of 7 repeats of >= 20 ms), wall clock minimum of 15 repeats of >= 5 ms, and
the default (``Timing()``). It prints, per protocol, the median and p90 over ops of the relative
difference between the two passes, and writes ``latency-noise-<model>[-tN].json`` next to the cache.
Nothing is written to the cache.
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


NOISE_PROTOCOLS = {
    "v1: wall, median of 7 x >= 20 ms": Timing(warmup=3, repeat=7, number=1, min_repeat_ms=20.0, clock="wall",
                                              statistic="median"),
    "wall, min of 15 x >= 5 ms": Timing(clock="wall"),
    "default (Timing())": Timing(),
}


def noise_floor(q, n: int, seed: int, out: Path) -> None:
    """Time ``n`` one-op modules twice under each NOISE_PROTOCOLS entry; print the repeatability."""
    import tvm
    from tvm import relax

    from tvm_mpq.latency import op_tasks, random_inputs, summarize, time_vm

    _, tasks = op_tasks(q, CANDIDATES)
    rng = np.random.default_rng(seed)
    sample = [tasks[i] for i in sorted(rng.choice(len(tasks), size=min(n, len(tasks)), replace=False))]
    dev = tvm.cpu()
    target = tvm_mpq.targets.host_target()
    t0 = time.perf_counter()
    vms = []
    for t in sample:
        vm = relax.VirtualMachine(t.compile(target), dev)
        vms.append((t, vm, [tvm.runtime.tensor(a, dev) for a in random_inputs(t.inputs)]))
    print(f"compiled {len(vms)} one-op modules in {time.perf_counter() - t0:.0f} s; "
          f"default clock here: {time_vm(vms[0][1], dev, vms[0][2], Timing(repeat=1, min_repeat_ms=0)).clock}")
    passes = []
    for p in range(2):
        t0 = time.perf_counter()
        res = {name: {} for name in NOISE_PROTOCOLS}
        for i, (t, vm, args) in enumerate(vms):
            names = list(NOISE_PROTOCOLS)
            for name in names[i % len(names):] + names[: i % len(names)]:  # rotate the order
                res[name][t.label] = summarize(time_vm(vm, dev, args, NOISE_PROTOCOLS[name]))["ms"]
        passes.append(res)
        print(f"pass {p + 1}: {time.perf_counter() - t0:.0f} s, load average {os.getloadavg()[0]:.1f}")
    summary = {}
    print(f"\n{'protocol':36} {'median |a-b|/min':>17} {'p90':>7} {'max':>7}   (two passes, {len(vms)} ops)")
    for name in NOISE_PROTOCOLS:
        a, b = passes[0][name], passes[1][name]
        d = np.array([abs(a[k] - b[k]) / min(a[k], b[k]) for k in a])
        summary[name] = {"median_rel_diff": float(np.median(d)), "p90_rel_diff": float(np.quantile(d, 0.9)),
                         "max_rel_diff": float(d.max()), "pass1_ms": a, "pass2_ms": b}
        print(f"{name:36} {np.median(d) * 100:16.1f}% {np.quantile(d, 0.9) * 100:6.1f}% {d.max() * 100:6.1f}%")
    out.write_text(json.dumps({"ops": len(vms), "threads": os.environ.get("TVM_NUM_THREADS"),
                               "protocols": {k: v.to_dict() for k, v in NOISE_PROTOCOLS.items()},
                               "noise": summary}, indent=1))
    print(f"wrote {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mobilenet_v2", choices=["mobilenet_v2", "minilm"])
    ap.add_argument("--calib", type=int, default=4)
    ap.add_argument("--cache", default="benchmarks/results/latency-cache.json")
    ap.add_argument("--show", type=int, default=8)
    ap.add_argument("--no-check", action="store_true",
                    help="time only the float model end to end (for C), not every uniform configuration")
    ap.add_argument("--noise", type=int, default=0, metavar="N",
                    help="measure the timing noise floor on N one-op modules instead (see the docstring)")
    ap.add_argument("--seed", type=int, default=0, help="--noise: which modules")
    args = ap.parse_args()
    threads = os.environ.get("TVM_NUM_THREADS", "unset (all cores)")
    print(f"{args.model}: TVM_NUM_THREADS={threads}, target {tvm_mpq.targets.host_target()}")
    t0 = time.perf_counter()
    q = build_quantizer(args.model, args.calib)
    print(f"import + calibration {time.perf_counter() - t0:.1f} s; {len(q.graph.ops)} quantizable ops")
    suffix = f"-t{os.environ['TVM_NUM_THREADS']}" if os.environ.get("TVM_NUM_THREADS") else ""
    if args.noise:
        noise_floor(q, args.noise, args.seed, Path(args.cache).with_name(f"latency-noise-{args.model}{suffix}.json"))
        return
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
    checks = cost.end_to_end_check({k: k for k in (["float"] if args.no_check else keys)})
    print(f"\n{'uniform':8} {'sum of layers':>14} {'+ C':>9} {'end to end':>11} {'SoL err':>8} {'est err':>8}")
    for c in checks:
        print(f"{c['config']:8} {c['sum_of_layers_ms']:14.3f} {c['estimate_ms']:9.3f} {c['end_to_end_ms']:11.3f} "
              f"{c['sum_of_layers_error'] * 100:7.1f}% {c['estimate_error'] * 100:7.1f}%")
    out = Path(args.cache).with_name(f"latency-{args.model}{suffix}-summary.json")
    out.write_text(json.dumps({"model": args.model, "threads": threads, "target": str(cost.device.target),
                               "constant_ms": cost.constant_ms, "ops": rows, "end_to_end": checks}, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
