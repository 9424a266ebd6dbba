"""Predicted vs measured per-op latency on held-out layer shapes (the XGBoost latency model).

    .venv/bin/python benchmarks/latency_predicted.py --cache benchmarks/results/latency-cache.json

Reads the measurements of one device namespace from the latency cache (fill it first with
benchmarks/latency_measured.py, for MobileNetV2 and/or MiniLM), and for several seeds holds out
20% of the distinct layer *shapes* (every candidate of a held-out shape together), trains on the
rest and reports on the held-out measurements: median absolute relative error and Spearman rank
correlation (goal: <= 10% and >= 0.9). Then it trains on everything and saves the model as JSON
(``--save``, per target), the file ``tvm_mpq.latency_model.LatencyModel.load`` reads.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from tvm_mpq.latency import LatencyCache
from tvm_mpq.latency_model import LatencyModel, _op_entries, error_report, held_out_split
from tvm_mpq.targets import host_target


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default="benchmarks/results/latency-cache.json")
    ap.add_argument("--namespace", default=None, help="default: this host's target key")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--held-out", type=float, default=0.2)
    ap.add_argument("--save", default="benchmarks/results/latency-models")
    args = ap.parse_args()
    cache = LatencyCache(args.cache)
    ns = args.namespace or host_target().key
    entries = _op_entries(cache.entries(ns))
    print(f"namespace {ns}: {len(entries)} op measurements, "
          f"{len({json.dumps(e['spec']['inputs']) + json.dumps(e['spec']['weight']) for e in entries})} layer shapes")
    target = host_target()
    reports = []
    pooled_m, pooled_p = [], []
    for seed in range(args.seeds):
        train, test = held_out_split([e["spec"] for e in entries], args.held_out, seed)
        model = LatencyModel.fit([entries[i] for i in train], target, held_out=0, seed=seed)
        pred = model.predict_specs([entries[i]["spec"] for i in test])
        meas = [entries[i]["ms"] for i in test]
        r = error_report(meas, pred)
        reports.append(r)
        pooled_m += meas
        pooled_p += list(pred)
        print(f"seed {seed}: train {len(train):4d}, held out {r['count']:3d}: median |rel err| "
              f"{r['median_abs_rel_error'] * 100:5.1f}%, p90 {r['p90_abs_rel_error'] * 100:5.1f}%, "
              f"Spearman {r['spearman']:.3f}")
    pooled = error_report(pooled_m, pooled_p)
    print(f"pooled over seeds: median |rel err| {pooled['median_abs_rel_error'] * 100:.1f}%, "
          f"Spearman {pooled['spearman']:.3f} (goal <= 10%, >= 0.9)")
    model = LatencyModel.fit(entries, target, held_out=args.held_out)
    path = model.save(f"{args.save}/{ns}.json")  # named by the namespace (it may pin the thread count)
    print(f"saved {path} (trained on {model.trained_on}; its own held-out report: "
          f"{ {k: round(v, 3) if isinstance(v, float) else v for k, v in model.report.items()} })")


if __name__ == "__main__":
    main()
