"""The searched configuration under a latency budget vs under a BOPs budget, at equal accuracy:
which is faster on this CPU, measured end to end.

    .venv/bin/python benchmarks/latency_search.py                          # both models (20-30 min here)
    .venv/bin/python benchmarks/latency_search.py --models mobilenet_v2     # one model
    .venv/bin/python benchmarks/latency_search.py --models mobilenet_v2 \
        --candidates w16a16,w8a16,w8a8,w7a8,w4a8 --out benchmarks/results/latency-search-w7a8-summary.json

Per model (MobileNetV2 with torchvision's weights on the ImageNet sample; all-MiniLM-L6-v2 on STS-B
dev sentences; both from ../shared/data through tvm_mpq.datasets, batch 1):

1. Calibrate on ``--calib`` inputs (MobileNetV2: 32 images); phase 1 on the first ``--phase1`` of
   them (the searches' SQNR score is on those too). Held out, never seen by calibration or search:
   ``--heldout`` inputs (MobileNetV2: 256 images, top-1 against the labels and logit SQNR against
   float; MiniLM: sentences, SQNR of the last hidden state and mean cosine of the sentence
   embeddings against float).
2. Price configurations two ways: relative BOPs (``tvm_mpq.cost.RelativeBops``) and the measured
   latency (``tvm_mpq.latency.MeasuredLatency``: every op x candidate compiled alone and timed here
   at one runtime thread, where tvm_mpq.latency clocks the thread's CPU time -- what the op costs
   with a core to itself, nearly blind to the other jobs on this shared machine; sum of the ops +
   the float model's constant C), cached in
   ``--cache`` (benchmarks/results/latency-search-cache.json: minutes from scratch, resumed after a
   crash, reused on a rerun while the kernels' schedules are unchanged -- the cache keys every
   measurement by a digest of the pipeline and schedule sources, so new kernels are measured afresh).
   The script starts TVM's thread pool at 2 threads (TVM_NUM_THREADS=2: TVM's default here is ONE
   thread -- it halves the logical CPU count on x86 -- and the pool cannot grow afterwards) and
   lowers it to 1 with ``runtime.config_threadpool`` where it measures at 1 thread.
3. Search, every search with the same SQNR floor ``F`` (``--mnv2-floor`` 25 dB / ``--minilm-floor``
   30 dB on the phase-1 inputs), so every chosen point meets the same accuracy bar:

   * ``bops``: cost = relative BOPs, the paper's order -- AIMET's AMP;
   * ``bops/npc``: relative BOPs, the ``noise_per_cost`` order (noise added per BOP saved);
   * ``ms<=L``: cost = measured ms, budget ``L`` = the measured-cost estimate of the ``bops`` choice
     ("at least as fast as the BOPs choice"), once in the paper's order and once in noise_per_cost;
   * ``ms<=L2 only``: the latency budget alone (no floor) at ``L2`` = the estimate of the
     noise_per_cost choice, in both orders: the accuracy each order buys for the same milliseconds.
4. Realize every distinct chosen configuration (plus float, uniform w16a16 -- the search's start --
   uniform w8a16 and uniform w8a8: the estimate's error per candidate), and time the whole module with TVM's time_evaluator, finely interleaved
   against the shared machine's changing load: ``--rounds`` (10) rounds, each timing every
   configuration, in an order rotated per round, at 1 thread (thread CPU time, as the per-op table)
   and then at 2 threads (wall time: at the mercy of the load), ``--repeat`` (5) repeats of >= 20 ms
   each; the median and the min of all repeats, and -- the figure least moved by the load -- the
   ratio to the BOPs choice paired by round (median over rounds of this configuration's round
   median over the BOPs choice's round median). Held-out accuracy of the realized module.

Prints one table per model (rel. BOPs, the estimate in ms, measured end-to-end ms at 1 and 2
threads, held-out SQNR / top-1) and writes it with everything else to
``benchmarks/results/latency-search-summary.json``. The machine is shared (load average printed):
the absolute ms move with the load and with the kernels, the ordering is what to read.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

#: Thread counts of the end-to-end timings. TVM sizes its thread pool once, from TVM_NUM_THREADS
#: (unset: half the logical CPUs on x86 -- ONE thread on this 2-vCPU machine), and
#: runtime.config_threadpool can only lower it: start the pool at the largest count.
THREADS = (1, 2)
#: The per-op table (the search's latency cost) is measured at one runtime thread, where
#: tvm_mpq.latency times the calling thread's CPU time: what the op costs with a core to itself,
#: nearly blind to the other jobs on this shared machine (wall time at 2 threads is not).
TABLE_THREADS = 1
os.environ["TVM_NUM_THREADS"] = str(max(THREADS))

import numpy as np  # noqa: E402
import tvm  # noqa: E402

import tvm_mpq  # noqa: E402
from tvm_mpq.calibration import sqnr_db  # noqa: E402
from tvm_mpq.config import FLOAT, Config  # noqa: E402
from tvm_mpq.cost import RelativeBops  # noqa: E402
from tvm_mpq.latency import LocalDevice, MeasuredLatency, Timing, random_inputs, time_vm  # noqa: E402
from tvm_mpq.search import search  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
#: The searches' candidates (--candidates; e.g. add w7a8, which AVX2 runs at int4 speed).
CANDS = ["w16a16", "w8a16", "w8a8", "w4a8"]
DEFAULT_CANDS = list(CANDS)


def log(*a):
    print(*a, flush=True)


def composition(config: Config) -> str:
    counts: dict[str, int] = {}
    for c in config.values():
        counts[str(c)] = counts.get(str(c), 0) + 1
    order = ["float", "w16a16", "w8a16", "w8a8", "w7a8", "w4a8"]
    return " ".join(f"{k}x{counts[k]}" for k in sorted(counts, key=lambda k: order.index(k) if k in order else 9))


@dataclass
class Task:
    name: str
    quantizer: tvm_mpq.Quantizer
    phase1: list
    heldout: tuple  # input arrays, batch dimension first
    metrics: object  # outputs of run(*heldout) -> dict
    metric_cols: list  # (key, header, fmt)
    floor: float
    setup: dict = field(default_factory=dict)


def mobilenet_task(args) -> Task:
    from tvm_mpq.datasets import imagenet_sample
    from tvm_mpq.models.mobilenet_v2 import load_mobilenet_v2

    x, y = imagenet_sample()
    perm = np.random.default_rng(args.seed).permutation(len(x))
    c, h = args.calib, args.heldout
    ci, hi = perm[:c], perm[c : c + h]
    calib = [x[i : i + 1] for i in ci]
    q = tvm_mpq.Quantizer(load_mobilenet_v2(), None, calib, example_inputs=(calib[0],), progress=False)
    xh, yh = x[hi], y[hi]
    ref = q.run_float(xh)[0]

    def metrics(out) -> dict:
        return {"sqnr": sqnr_db(ref, out), "top1": 100.0 * float(np.mean(out.argmax(1) == yh)),
                "agree": 100.0 * float(np.mean(out.argmax(1) == ref.argmax(1)))}

    return Task("MobileNetV2", q, calib[: args.phase1], (xh,), metrics,
                [("sqnr", "held-out SQNR dB", "{:.1f}"), ("top1", f"top-1 % ({h} img)", "{:.1f}"),
                 ("agree", "top-1 agree w/ float %", "{:.1f}")],
                args.mnv2_floor, {"images": len(x), "calib": c, "phase1": args.phase1, "heldout": h, "seed": args.seed})


def minilm_task(args) -> Task:
    from tvm_mpq.datasets import sts_dev
    from tvm_mpq.models.minilm import encode_batch, load_minilm, mean_pool

    model, tok = load_minilm()
    pairs = sts_dev()
    sents = [s for p in pairs for s in p[:2]]
    perm = np.random.default_rng(args.seed).permutation(len(sents))
    c, h = args.calib, args.minilm_heldout
    ci, cm = encode_batch(tok, [sents[i] for i in perm[:c]], args.seq_len)
    hi_, hm = encode_batch(tok, [sents[i] for i in perm[c : c + h]], args.seq_len)
    calib = [(ci[i : i + 1], cm[i : i + 1]) for i in range(c)]
    q = tvm_mpq.Quantizer(model, None, calib, example_inputs=calib[0], progress=False)
    ref = q.run_float(hi_, hm)[0]
    ref_emb = mean_pool(ref, hm)

    def metrics(out) -> dict:
        emb = mean_pool(out, hm)
        cos = (emb * ref_emb).sum(1)
        return {"sqnr": sqnr_db(ref, out), "cos": float(cos.mean()), "cos_min": float(cos.min())}

    return Task("all-MiniLM-L6-v2", q, calib[: args.phase1], (hi_, hm), metrics,
                [("sqnr", "held-out SQNR dB", "{:.1f}"), ("cos", f"emb. cos w/ float ({h} sent.)", "{:.4f}"),
                 ("cos_min", "min cos", "{:.4f}")],
                args.minilm_floor, {"sentences": len(sents), "calib": c, "phase1": args.phase1, "heldout": h,
                                    "seq_len": args.seq_len, "seed": args.seed})


def set_threads(n: int) -> None:
    """The TVM runtime's thread count for the next calls (AffinityMode kBig = 1), and
    TVM_NUM_THREADS to match: tvm_mpq.latency.LocalDevice names its cache namespace after it."""
    tvm.get_global_func("runtime.config_threadpool")(1, n)
    os.environ["TVM_NUM_THREADS"] = str(n)


def measured_latency(q, cache_path: Path, progress: bool) -> MeasuredLatency:
    """Every op x candidate timed alone at TABLE_THREADS runtime thread(s) (cached)."""
    set_threads(TABLE_THREADS)
    try:
        return MeasuredLatency(q, CANDS, device=LocalDevice(timing=Timing()), cache=cache_path, progress=progress)
    finally:
        set_threads(max(THREADS))


def run_task(task: Task, args, cache_path: Path) -> dict:
    q = task.quantizer
    t0 = time.perf_counter()
    lat = measured_latency(q, cache_path, args.progress)
    log(f"[{task.name}] per-op latency at {TABLE_THREADS} thread(s): {len(lat.table)} (op, candidate) from "
        f"{len(set(lat.signatures.values()))} measurements in {time.perf_counter() - t0:.0f} s; float end to end "
        f"{lat.float_end_to_end_ms:.2f} ms, C = {lat.constant_ms:.2f} ms")
    bops = RelativeBops(q, CANDS)
    tag = "-".join(f"{k}{v}" for k, v in sorted(task.setup.items()))
    if CANDS != DEFAULT_CANDS:  # the search's results cache is per candidate list
        tag += "-" + "-".join(CANDS)
    results_dir = REPO / "out" / "latency-search" / f"{task.name}-{tag}"
    common = dict(candidates=CANDS, calibration_inputs=task.phase1, results_dir=results_dir, progress=args.progress)
    F = task.floor

    searches = []

    def run_search(label, **kw):
        t = time.perf_counter()
        r = search(q, **common, **kw)
        searches.append((label, r))
        cfg = r.config
        log(f"[{task.name}] {label}: {r.message} [{time.perf_counter() - t:.0f} s]"
            + ("" if cfg is None else f" -> {composition(cfg)}, {bops(cfg):.3f} x BOPs, {lat(cfg):.2f} ms est."))
        return r

    a = run_search(f"bops, SQNR>={F:g}", cost=bops, sqnr_floor_db=F)
    run_search(f"bops/npc, SQNR>={F:g}", cost=bops, sqnr_floor_db=F, order="noise_per_cost")
    L = lat(a.config) if a.config is not None else None
    if L is not None:
        run_search(f"ms<={L:.1f}, SQNR>={F:g}", cost=lat, sqnr_floor_db=F, latency_budget_ms=L, order="sensitivity")
        d = run_search(f"ms<={L:.1f}/npc, SQNR>={F:g}", cost=lat, sqnr_floor_db=F, latency_budget_ms=L,
                       order="noise_per_cost")
        if d.config is not None:
            L2 = lat(d.config)
            run_search(f"ms<={L2:.1f} only", cost=lat, latency_budget_ms=L2, order="sensitivity")
            run_search(f"ms<={L2:.1f}/npc only", cost=lat, latency_budget_ms=L2, order="noise_per_cost")

    # Distinct configurations to realize: references, then the searched ones in order.
    rows: dict[Config, dict] = {}
    for name, cand in (("float", FLOAT), ("uniform w16a16 (start)", "w16a16"), ("uniform w8a16", "w8a16"),
                       ("uniform w8a8", "w8a8")):
        rows.setdefault(Config.uniform(q.group_names, cand), {"labels": []})["labels"].append(name)
    for label, r in searches:
        if r.config is not None:
            rows.setdefault(r.config, {"labels": []})["labels"].append(label)

    modules = {}
    for cfg, row in rows.items():
        t = time.perf_counter()
        m = q.realize(cfg)
        modules[cfg] = m
        out = m.run(*task.heldout)
        row.update(config=cfg, bops=bops(cfg), est_ms=lat(cfg), metrics=task.metrics(out),
                   compile_s=m.compile_seconds)
        log(f"[{task.name}] realized {' | '.join(row['labels'])}: compile {m.compile_seconds:.0f} s, held-out "
            f"{row['metrics']} [{time.perf_counter() - t:.0f} s]")

    # End to end, finely interleaved so that the load of the shared machine, which changes by the
    # minute, falls on every configuration alike: --rounds rounds, each timing every configuration
    # (in an order rotated from round to round) at 1 thread, then at 2 threads, --repeat repeats.
    # tvm_mpq.latency's clock: thread CPU time at 1 runtime thread, wall time at 2.
    timing = Timing(warmup=1, repeat=args.repeat, number=1, min_repeat_ms=20.0)
    clocks = {}
    runs = {(cfg, n): [] for cfg in rows for n in THREADS}
    per_round = {(cfg, n): [] for cfg in rows for n in THREADS}  # median of each round's repeats
    dev = tvm.cpu()
    spec = [(tuple(s), d) for _, s, d in q.float_model.input_signature()]
    xs = [tvm.runtime.tensor(v, dev) for v in random_inputs(spec)]
    cfgs = list(modules)
    loads = [os.getloadavg()[0]]
    for m in modules.values():  # warm every module once (first-call allocation, page faults)
        time_vm(m.vm, dev, xs, Timing(warmup=2, repeat=1, number=1, min_repeat_ms=0))
    try:
        for r in range(args.rounds):
            for n in THREADS:
                set_threads(n)
                for cfg in cfgs[r % len(cfgs):] + cfgs[: r % len(cfgs)]:
                    t = time_vm(modules[cfg].vm, dev, xs, timing)
                    clocks[n] = getattr(t, "clock", "wall")
                    runs[(cfg, n)] += list(t)
                    per_round[(cfg, n)].append(float(np.median(t)))
            loads.append(os.getloadavg()[0])
    finally:
        set_threads(max(THREADS))
    # Paired against the BOPs choice: per round, this configuration's median over the BOPs choice's
    # median in the same round (seconds apart, under the same load); the median of those ratios.
    ref = a.config if a.config is not None else Config.uniform(q.group_names, FLOAT)
    for cfg, row in rows.items():
        for n in THREADS:
            ms = np.array(runs[(cfg, n)]) * 1e3
            row[f"e2e_t{n}"] = float(np.median(ms))
            row[f"e2e_t{n}_min"] = float(ms.min())
            row[f"ratio_t{n}"] = float(np.median(np.array(per_round[(cfg, n)]) / np.array(per_round[(ref, n)])))

    # ---- table
    cols = ([("config", "configuration"), ("comp", "candidates"), ("bops", "rel. BOPs"),
             ("est_ms", f"est. ms, {TABLE_THREADS} thr (ops + C)")]
            + [(f"e2e_t{n}", f"measured ms, {n} thr ({clocks[n]} clock): median (min)") for n in THREADS]
            + [("ratio", f"measured / BOPs choice, {' / '.join(f'{n} thr' for n in THREADS)} (paired)")]
            + [(k, h) for k, h, _ in task.metric_cols])
    fmts = {k: f for k, _, f in task.metric_cols}
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for cfg, row in rows.items():
        cells = []
        for k, _ in cols:
            if k == "config":
                cells.append(" = ".join(row["labels"]))
            elif k == "comp":
                cells.append(composition(cfg))
            elif k == "bops":
                cells.append(f"{row['bops']:.3f}")
            elif k == "est_ms":
                cells.append(f"{row['est_ms']:.1f}")
            elif k.startswith("e2e"):
                cells.append(f"{row[k]:.1f} (min {row[k + '_min']:.1f})")
            elif k == "ratio":
                cells.append(" / ".join(f"{row[f'ratio_t{n}']:.2f}" for n in THREADS))
            else:
                cells.append(fmts[k].format(row["metrics"][k]))
        lines.append("| " + " | ".join(cells) + " |")
    infeasible = [f"- {label}: {r.message}" for label, r in searches if r.config is None]
    table = "\n".join(lines + ([""] + ["infeasible searches:"] + infeasible if infeasible else []))
    log(f"\n## {task.name} (SQNR floor {F:g} dB on {len(task.phase1)} phase-1 inputs; est. ms = per-op "
        f"table at {TABLE_THREADS} thread + C; measured: {args.rounds} x {args.repeat} repeats per thread count; "
        f"load average {min(loads):.1f}-{max(loads):.1f} while timing)\n\n{table}\n")
    return {
        "model": task.name, "setup": task.setup, "floor_db": F,
        "float_end_to_end_ms": lat.float_end_to_end_ms, "constant_ms": lat.constant_ms, "load_while_timing": loads,
        "table_threads": TABLE_THREADS, "clocks": {str(n): c for n, c in clocks.items()},
        "searches": [{"label": label, "order": r.order, "cost": r.cost_name, "budget": r.cost_budget,
                      "message": r.message, "chosen": r.chosen, "points": len(r.curve), "evaluations": r.evaluations,
                      "dropped": len(r.dropped), "config": None if r.config is None else r.config.to_dict()}
                     for label, r in searches],
        "rows": [{"labels": row["labels"], "composition": composition(cfg), "bops": row["bops"],
                  "est_ms": row["est_ms"], "e2e_t2_ms": row["e2e_t2"], "e2e_t1_ms": row["e2e_t1"],
                  "e2e_t2_min_ms": row["e2e_t2_min"], "e2e_t1_min_ms": row["e2e_t1_min"],
                  "ratio_to_bops_choice_t2": row["ratio_t2"], "ratio_to_bops_choice_t1": row["ratio_t1"],
                  "metrics": row["metrics"], "compile_s": row["compile_s"], "config": cfg.to_dict()}
                 for cfg, row in rows.items()],
        "table": table,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="mobilenet_v2,minilm", help="comma list: mobilenet_v2, minilm")
    ap.add_argument("--cache", default=str(REPO / "benchmarks" / "results" / "latency-search-cache.json"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "latency-search-summary.json"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calib", type=int, default=32, help="calibration inputs (images / sentences)")
    ap.add_argument("--phase1", type=int, default=8, help="phase-1 inputs (the first calibration ones)")
    ap.add_argument("--heldout", type=int, default=256, help="MobileNetV2 held-out images")
    ap.add_argument("--minilm-heldout", type=int, default=128, help="MiniLM held-out sentences")
    ap.add_argument("--seq-len", type=int, default=64, help="MiniLM tokens per sentence")
    ap.add_argument("--mnv2-floor", type=float, default=25.0, help="SQNR floor (dB) of every MobileNetV2 search")
    ap.add_argument("--minilm-floor", type=float, default=30.0, help="SQNR floor (dB) of every MiniLM search")
    ap.add_argument("--repeat", type=int, default=5, help="time_evaluator repeats per round")
    ap.add_argument("--rounds", type=int, default=10, help="rounds of end-to-end timing (interleaved)")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--candidates", default=",".join(CANDS), help="comma list, highest precision first")
    args = ap.parse_args()
    CANDS[:] = [c.strip() for c in args.candidates.split(",") if c.strip()]
    log(f"target {tvm_mpq.targets.host_target()}; TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS', 'unset')}; "
        f"load average {os.getloadavg()[0]:.2f}; cache {args.cache}")
    t0 = time.perf_counter()
    results = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        task = {"mobilenet_v2": mobilenet_task, "minilm": minilm_task}[name](args)
        log(f"[{task.name}] {len(task.quantizer.group_names)} groups, {len(task.quantizer.graph.ops)} ops; {task.setup}")
        results.append(run_task(task, args, Path(args.cache)))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"target": str(tvm_mpq.targets.host_target()), "load_average": os.getloadavg(),
                               "args": vars(args), "results": results}, indent=1, default=str))
    log(f"total {time.perf_counter() - t0:.0f} s; load average now {os.getloadavg()[0]:.2f}; wrote {out}")
    for r in results:
        log(f"\n## {r['model']}\n\n{r['table']}")


if __name__ == "__main__":
    main()
