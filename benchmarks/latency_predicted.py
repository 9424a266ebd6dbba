"""Predicted vs measured per-op latency on held-out layer shapes (the XGBoost latency model).

    TVM_NUM_THREADS=1 .venv/bin/python benchmarks/latency_predicted.py --cache benchmarks/results/latency-cache.json

Reads the measurements of one device namespace from the latency cache -- those of the current
timing method (``tvm_mpq.latency.METHOD``) and of one compilation pipeline (the current one when
the cache has it, else the most measured; ``--pipeline any`` mixes them) -- fill it first with
benchmarks/latency_measured.py (MobileNetV2, MiniLM) and benchmarks/latency_zoo.py (random
layers). For several seeds it holds out 20% of the distinct layer *shapes* (every candidate of a
held-out shape together), trains on the rest and reports on the held-out measurements: median
absolute relative error and Spearman rank correlation (goal: <= 10% and >= 0.9), for

* ``v1 model`` -- the model before issue 4 (log-linear baseline + depth-3 trees on the v1
  features, reproduced here), for comparison;
* ``roofline baseline`` -- the v2 model's non-negative work-rate baseline alone;
* ``v2 model`` -- ``tvm_mpq.latency_model.LatencyModel`` (baseline x boosted trees).

``--repeat-cache OTHER`` adds the noise floor: the median relative difference between this
cache's and OTHER's measurements of the same signatures (two independent runs of
latency_measured.py; no predictor can beat it). ``--tune`` runs a grouped (by layer shape)
cross-validation grid over XGBoost's parameters first and prints the best. Then the v2 model is
trained on everything and saved as JSON (``--save``, named by the namespace), the file
``tvm_mpq.latency_model.LatencyModel.load`` reads; the per-seed table goes to
``latency-predicted-summary.json`` beside the cache.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from tvm_mpq.latency import METHOD, LatencyCache, LocalDevice, pipeline_digest, signature_of
from tvm_mpq.latency_model import (
    FEATURES,
    LatencyModel,
    _matrix,
    _op_entries,
    error_report,
    held_out_split,
    shape_key,
)
from tvm_mpq.targets import host_target

# ---------------------------------------------------------------------------------------------
# The v1 model (tvm_mpq before issue 4), reproduced for the before / after comparison
# ---------------------------------------------------------------------------------------------

V1_FEATURES = FEATURES[:44]  # the v1 feature set is the first 44 features, unchanged
V1_PARAMS = {"objective": "reg:squarederror", "eta": 0.05, "max_depth": 3, "min_child_weight": 1.0,
             "subsample": 0.9, "colsample_bytree": 0.9, "lambda": 1.0, "nthread": 1}


def _v1_baseline(X):
    fi = {f: i for i, f in enumerate(FEATURES)}
    cols = [np.log10(X[:, fi[k]] + 1.0) for k in ("macs", "in_bytes", "weight_bytes", "out_bytes")]
    cols += [X[:, fi[k]] for k in ("kind_depthwise", "kind_dense", "kind_matmul", "is_float", "int4_unpack",
                                    "zero_point")]
    cols += [X[:, fi["a_bits"]] / 16.0, np.ones(len(X))]
    return np.stack(cols, axis=1)


def fit_predict_v1(train, test_specs, target, seed):
    import xgboost as xgb

    X = _matrix([e["spec"] for e in train], target)
    y = np.log([e["ms"] for e in train])
    A = _v1_baseline(X)
    coef = np.linalg.solve(A.T @ A + 1e-3 * np.eye(A.shape[1]), A.T @ y)
    n = len(V1_FEATURES)
    d = xgb.DMatrix(X[:, :n].astype(np.float32), label=y, base_margin=A @ coef, feature_names=list(V1_FEATURES))
    booster = xgb.train({**V1_PARAMS, "seed": seed}, d, 300)
    Xt = _matrix(test_specs, target)
    dt = xgb.DMatrix(Xt[:, :n].astype(np.float32), base_margin=_v1_baseline(Xt) @ coef, feature_names=list(V1_FEATURES))
    return np.exp(booster.predict(dt))


# ---------------------------------------------------------------------------------------------


def select_entries(cache: LatencyCache, ns: str, method: str, pipeline: str) -> tuple[list[dict], str]:
    entries = _op_entries(cache.entries(ns))
    if method != "any":
        entries = [e for e in entries if e["spec"].get("method") == (METHOD if method == "current" else method)]
    by_pipe = collections.Counter(e["spec"].get("pipeline") for e in entries)
    if pipeline == "any":
        return entries, f"pipelines {dict(by_pipe)}"
    if pipeline == "current":
        pipeline = pipeline_digest() if by_pipe.get(pipeline_digest()) else (by_pipe.most_common(1) or [(None, 0)])[0][0]
    chosen = [e for e in entries if e["spec"].get("pipeline") == pipeline]
    note = f"pipeline {pipeline}{' (current)' if pipeline == pipeline_digest() else ' (NOT the current ' + pipeline_digest() + ')'}"
    return chosen, note


def cross_validate(entries, fit_predict, seeds: int, held_out: float, first_seed: int = 0):
    specs = [e["spec"] for e in entries]
    per, pooled_m, pooled_p = [], [], []
    for seed in range(first_seed, first_seed + seeds):
        train, test = held_out_split(specs, held_out, seed)
        pred = fit_predict([entries[i] for i in train], [specs[i] for i in test], seed)
        meas = [entries[i]["ms"] for i in test]
        per.append(error_report(meas, pred))
        pooled_m += meas
        pooled_p += list(pred)
    return per, error_report(pooled_m, pooled_p)


def tune(entries, target, seeds: int, held_out: float) -> dict:
    """Grouped-CV grid over the trees' parameters, on splits (seeds 100, 101, ...) other than the
    ones the comparison reports, so that choosing the parameters does not flatter the report."""
    grid = {"max_depth": [3, 4, 6, 8], "eta": [0.05, 0.1], "min_child_weight": [1.0, 4.0],
            "colsample_bytree": [0.5, 1.0], "rounds": [150, 400]}
    rows = []
    t0 = time.perf_counter()
    for values in itertools.product(*grid.values()):
        p = dict(zip(grid, values))
        rounds = p.pop("rounds")
        per, _ = cross_validate(
            entries, lambda tr, te, s: LatencyModel.fit(tr, target, held_out=0, seed=s, rounds=rounds,
                                                        params=p).predict_specs(te), seeds, held_out, first_seed=100)
        rows.append((float(np.mean([r["median_abs_rel_error"] for r in per])),
                     float(np.mean([r["spearman"] for r in per])), {**p, "rounds": rounds}))
    rows.sort(key=lambda r: r[0])
    print(f"\ntuning: {len(rows)} settings x {seeds} splits (seeds 100..) in {time.perf_counter() - t0:.0f} s; best 8 "
          f"(mean per-split median |rel err|, Spearman):")
    for err, rho, p in rows[:8]:
        print(f"  {err * 100:5.1f}%  {rho:.3f}  {p}")
    per, _ = cross_validate(entries, lambda tr, te, s: LatencyModel.fit(tr, target, held_out=0, seed=s).predict_specs(te),
                            seeds, held_out, first_seed=100)
    print(f"  {np.mean([r['median_abs_rel_error'] for r in per]) * 100:5.1f}%  "
          f"{np.mean([r['spearman'] for r in per]):.3f}  LatencyModel.DEFAULT_PARAMS, {LatencyModel.DEFAULT_ROUNDS} rounds")
    return rows[0][2]


def noise_floor(entries, other_path: str, ns: str) -> dict | None:
    """Relative difference between ``entries`` and another run's measurements of the same ops."""
    other = LatencyCache(other_path).entries(ns)
    pairs = [(e["ms"], other[sig]["ms"]) for e in entries if (sig := signature_of(e["spec"])) in other]
    if not pairs:
        return None
    d = np.array([abs(a - b) / min(a, b) for a, b in pairs])
    return {"count": len(d), "median_rel_diff": float(np.median(d)), "p90_rel_diff": float(np.quantile(d, 0.9))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default="benchmarks/results/latency-cache.json")
    ap.add_argument("--namespace", default=None, help="default: this host's target key (+ -tN for TVM_NUM_THREADS)")
    ap.add_argument("--method", default="current", help="timing method of the entries: current (default), any, or a string")
    ap.add_argument("--pipeline", default="current", help="pipeline digest: current (default), any, or a digest")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--held-out", type=float, default=0.2)
    ap.add_argument("--tune", action="store_true", help="grouped-CV grid over the XGBoost parameters first")
    ap.add_argument("--repeat-cache", default=None, help="a second, independent measurement run (noise floor)")
    ap.add_argument("--save", default="benchmarks/results/latency-models")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress shows when piped
    cache = LatencyCache(args.cache)
    ns = args.namespace or LocalDevice().namespace
    entries, note = select_entries(cache, ns, args.method, args.pipeline)
    kinds = collections.Counter(e["spec"]["kind"] for e in entries)
    print(f"namespace {ns}: {len(entries)} op measurements ({dict(kinds)}), "
          f"{len({shape_key(e['spec']) for e in entries})} layer shapes; {note}")
    if len(entries) < 8:
        raise SystemExit("too few measurements: run benchmarks/latency_measured.py / latency_zoo.py first")
    target = host_target()
    summary = {"namespace": ns, "entries": len(entries), "selection": note, "seeds": args.seeds,
               "held_out": args.held_out, "results": {}}
    if args.repeat_cache:
        nf = noise_floor(entries, args.repeat_cache, ns)
        if nf:
            summary["noise_floor"] = nf
            print(f"noise floor ({nf['count']} ops measured again in {args.repeat_cache}): median |a-b|/min "
                  f"{nf['median_rel_diff'] * 100:.1f}%, p90 {nf['p90_rel_diff'] * 100:.1f}%")
    if args.tune:
        best = tune(entries, target, args.seeds, args.held_out)
        print(f"best: {best} (the comparison below and the saved model use LatencyModel.DEFAULT_PARAMS)")
        summary["tuned"] = best

    models = {
        "v1 model (before)": lambda tr, te, s: fit_predict_v1(tr, te, target, s),
        "roofline baseline": lambda tr, te, s: LatencyModel.fit(tr, target, held_out=0, seed=s, trees=False).predict_specs(te),
        "v2 model": lambda tr, te, s: LatencyModel.fit(tr, target, held_out=0, seed=s).predict_specs(te),
    }
    print(f"\n{'model':20} " + " ".join(f"{'seed ' + str(s):>14}" for s in range(args.seeds))
          + f" {'mean':>14} {'pooled':>14}   (median |rel err| / Spearman on held-out shapes)")
    for name, fp in models.items():
        per, pooled = cross_validate(entries, fp, args.seeds, args.held_out)
        mean_err = float(np.mean([r["median_abs_rel_error"] for r in per]))
        mean_rho = float(np.mean([r["spearman"] for r in per]))
        cell = lambda e, r: f"{e * 100:6.1f}% {r:6.3f}"  # noqa: E731
        print(f"{name:20} " + " ".join(cell(r["median_abs_rel_error"], r["spearman"]) for r in per)
              + f" {cell(mean_err, mean_rho)} {cell(pooled['median_abs_rel_error'], pooled['spearman'])}")
        summary["results"][name] = {"per_seed": per, "mean_median_abs_rel_error": mean_err,
                                    "mean_spearman": mean_rho, "pooled": pooled}
    print("goal: median |rel err| <= 10%, Spearman >= 0.9")

    model = LatencyModel.fit(entries, target, held_out=args.held_out)
    path = model.save(f"{args.save}/{ns}.json")  # named by the namespace (it may pin the thread count)
    rep = {k: round(v, 3) if isinstance(v, float) and math.isfinite(v) else v for k, v in model.report.items()}
    print(f"saved {path} (trained on {model.trained_on}; its own held-out report: {rep})")
    out = Path(args.cache).with_name("latency-predicted-summary.json")
    out.write_text(json.dumps(summary, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
