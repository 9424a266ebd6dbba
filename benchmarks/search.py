"""The mixed-precision search on real models: what it finds, what it costs, sequential vs binary vs
interpolation.

    .venv/bin/python benchmarks/search.py                       # both models, defaults (see below)
    .venv/bin/python benchmarks/search.py --models mobilenet_v2 --mnv2-search-eval 200
    .venv/bin/python benchmarks/search.py --sequential-max-seconds 0   # let sequential finish (slow)

Per model, it prints one markdown table of configurations -- float, uniform w8a16 / w8a8 / w4a8 and
the searched configuration at each budget -- with relative BOPs (``tvm_mpq.cost.relative_bops``:
1.0 = every group at w16a16, float counts 32 bits) and accuracy, and one table of search costs.

Data and splits (disjoint, drawn with ``--seed`` from the shared data in ../shared/data):

* **MobileNetV2** (torchvision weights), ImageNet sample (500 images): ``--mnv2-calib`` images
  calibrate the activation observers, and the first ``--mnv2-phase1`` of them are phase 1's data
  (and the SQNR budget's score); ``--mnv2-search-eval`` other images are what ``eval_fn`` scores
  (top-1 through the ``SimulatedModule`` the search passes in); the remaining images (``--mnv2-test``,
  default all the rest) are held apart: every reported accuracy is measured there on the
  **realized** integer module (``quantizer.realize(config).run``). Budgets: an allowed top-1 drop
  (``drop:0.5``, ``drop:1.0`` points below float on the search-eval split) and a label-free
  output-SQNR floor (``sqnr:25``, on the phase-1 images: the library's 30 dB default costs
  MobileNetV2 more than uniform w8a16).
* **all-MiniLM-L6-v2**, STS-B dev (1500 sentence pairs, shuffled by pair): calibration sentences,
  phase-1 sentences (the first of them), search-eval sentences and test sentences, as above. The
  score is the mean cosine agreement of the sentence embeddings (mean-pooled, L2-normalised) with
  the float model's; on the test pairs also Spearman correlation of the pair cosine with the gold
  similarity (float's on the same pairs beside it). Budgets: ``drop:0.01`` (agreement >= 0.99) and
  ``sqnr:30``.

Phase 1 runs once per model into ``--results-dir/<model>/phase1`` (a ``ResultsCache``: a rerun, or a
crash, reuses every finished entry: rerunning the benchmark skips phase 1). Each (budget, mode)
search then runs from a fresh directory holding a copy of that phase-1 file, so its phase 2 --
the number of evaluations and their wall time -- is measured from scratch and the modes are
compared on equal terms. Each budget's searched configuration -- realized and tested -- is binary
search's (``tvm_mpq.compile``'s default); where another mode chose another point (the curve is
not exactly monotone) the search table shows its cost and score, and ``--realize-all-modes`` tests
it too. The float score of an ``eval_fn`` budget is known (the float outputs are
computed once per split) and is not counted as an evaluation.

Sequential search evaluates curve points one by one and on MobileNetV2 with an accuracy budget
needs about as many evaluations as the chosen point's index (tens, ~10 s each). So that the
default run finishes, a sequential search is stopped after ``--sequential-max-seconds`` of phase 2
(0 = never); the table then shows what it had spent and an estimate of what it would need: under the
search's own monotonicity assumption sequential evaluates both ends and points 1 .. k+1, where k is
the point binary search chose, i.e. k + 3 evaluations, timed at its measured seconds per evaluation.

Timings are wall-clock on this machine with TVM's runtime using TVM_NUM_THREADS threads (unset =
every core); the thread count and the load average are printed, because the machine may be shared.
The defaults took 10.6 min from scratch on the 2-core development machine when it was otherwise idle,
and 27 min (phase 1 already cached) while other jobs kept its load average near 3: every time in the
tables scales with the load, the evaluation counts do not.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import tvm_mpq
from tvm_mpq.cache import ResultsCache, fingerprint
from tvm_mpq.calibration import sqnr_db
from tvm_mpq.config import FLOAT, Config
from tvm_mpq.cost import RelativeBops, relative_bops
from tvm_mpq.errors import ModelUnavailable
from tvm_mpq.search import SimulatedModule, search
from tvm_mpq.sensitivity import group_options, parse_candidates, phase1

REPO = Path(__file__).resolve().parent.parent
MODES = ("binary", "interpolation", "sequential")
BASELINES = ("w8a16", "w8a8", "w4a8")


# ------------------------------------------------------------------------------------ helpers


def log(*args) -> None:
    print(*args, flush=True)


def rank(a: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (for Spearman without scipy)."""
    a = np.asarray(a, dtype=np.float64)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a))
    ranks[order] = np.arange(len(a), dtype=np.float64)
    _, inv, counts = np.unique(a, return_inverse=True, return_counts=True)
    sums = np.zeros(len(counts))
    np.add.at(sums, inv, ranks)
    return (sums / counts)[inv]


def spearman(a, b) -> float:
    return float(np.corrcoef(rank(a), rank(b))[0, 1])


def composition(config: Config) -> str:
    counts: dict[str, int] = {}
    for c in config.values():
        counts[str(c)] = counts.get(str(c), 0) + 1
    order = ["float", "w16a16", "w8a16", "w8a8", "w4a8"]
    keys = sorted(counts, key=lambda k: order.index(k) if k in order else len(order))
    return " ".join(f"{k}x{counts[k]}" for k in keys)


def batches_of(arrays: tuple[np.ndarray, ...], batch: int) -> list[tuple[np.ndarray, ...]]:
    n = arrays[0].shape[0]
    return [tuple(a[i : i + batch] for a in arrays) for i in range(0, n, batch)]


class Stop(Exception):
    """Raised inside a sequential search when its phase-2 time allowance is spent."""


class SimulationMeter:
    """Wraps ``quantizer.simulate`` (on the instance) to count the distinct configurations a search
    simulates and to stop a search past a deadline. Float configurations (the reference outputs)
    are neither counted nor stopped."""

    def __init__(self, quantizer):
        self.quantizer = quantizer
        self.inner = quantizer.simulate
        self.deadline = None
        self.configs: set = set()
        quantizer.simulate = self  # instance attribute: shadows the method for everyone

    def __call__(self, config, *inputs):
        cfg = self.quantizer.config(config)
        if not all(c.is_float for c in cfg.values()):
            if cfg not in self.configs and self.deadline is not None and time.perf_counter() > self.deadline:
                raise Stop()
            self.configs.add(cfg)
        return self.inner(config, *inputs)

    def arm(self, seconds: float | None) -> None:
        self.configs = set()
        self.deadline = None if not seconds else time.perf_counter() + seconds


@dataclass
class Budget:
    kind: str  # "drop" | "sqnr"
    value: float

    @staticmethod
    def parse(text: str) -> Budget:
        kind, _, value = text.partition(":")
        if kind not in ("drop", "sqnr") or not value:
            raise SystemExit(f"budget {text!r}: write drop:<points> or sqnr:<dB>")
        return Budget(kind, float(value))

    def __str__(self) -> str:
        return f"{self.kind}:{self.value:g}"


@dataclass
class Task:
    """One model with its splits, metrics and budgets."""

    name: str
    quantizer: tvm_mpq.Quantizer
    phase1_inputs: list
    eval_fn: object  # SimulatedModule -> float, higher is better
    eval_desc: str
    test_metrics: object  # run(*inputs) callable -> dict
    test_columns: list  # (key, header, format)
    primary: str  # key of test_metrics compared with float for the goal
    budgets: list
    setup: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------ models


def mobilenet_task(args) -> Task:
    from tvm_mpq.datasets import imagenet_sample
    from tvm_mpq.models.mobilenet_v2 import load_mobilenet_v2

    b = args.batch
    model = load_mobilenet_v2()
    x, y = imagenet_sample()
    perm = np.random.default_rng(args.seed).permutation(len(x))
    c, e = args.mnv2_calib, args.mnv2_search_eval
    t = args.mnv2_test or len(x) - c - e
    t -= t % b
    if any(v % b for v in (c, e, args.mnv2_phase1)) or args.mnv2_phase1 > c or c + e + t > len(x) or t <= 0:
        raise SystemExit(f"MobileNetV2 splits: calib {c}, phase-1 {args.mnv2_phase1} (<= calib), search-eval {e}, "
                         f"test {t} must be multiples of --batch {b} and fit in {len(x)} images")
    ci, ei, ti = perm[:c], perm[c : c + e], perm[c + e : c + e + t]
    calib = [x[ci[i : i + b]] for i in range(0, c, b)]
    q = tvm_mpq.Quantizer(model, None, calib, example_inputs=(calib[0],), progress=False)
    xe, ye, xt, yt = x[ei], y[ei], x[ti], y[ti]
    ref_e = q.run_float(xe)[0]
    ref_t = q.run_float(xt)[0]
    float_top1_e = 100.0 * np.mean(ref_e.argmax(1) == ye)

    def top1_search_eval(module) -> float:
        """Top-1 (%) on the search-eval images, through the simulated module."""
        if all(cand.is_float for cand in module.config.values()):
            return float_top1_e  # known: the float outputs were computed once
        return 100.0 * float(np.mean(module.run(xe).argmax(1) == ye))

    def test_metrics(run) -> dict:
        out = run(xt)
        return {
            "top1": 100.0 * float(np.mean(out.argmax(1) == yt)),
            "agree": 100.0 * float(np.mean(out.argmax(1) == ref_t.argmax(1))),
            "sqnr": sqnr_db(ref_t, out),
        }

    return Task(
        name="MobileNetV2",
        quantizer=q,
        phase1_inputs=[(x[ci[i : i + b]],) for i in range(0, args.mnv2_phase1, b)],
        eval_fn=top1_search_eval,
        eval_desc=f"top-1 % on {e} search-eval images (simulated)",
        test_metrics=test_metrics,
        test_columns=[("top1", f"test top-1 % ({t} img, realized)", "{:.2f}"),
                      ("d_top1", "Δ top-1 vs float", "{:+.2f}"),
                      ("agree", "top-1 agreement w/ float %", "{:.1f}"),
                      ("sqnr", "logit SQNR dB", "{:.1f}")],
        primary="top1",
        budgets=[Budget.parse(s) for s in args.mnv2_budgets.split(",") if s],
        setup={"images": len(x), "calib": c, "phase1": args.mnv2_phase1, "search_eval": e, "test": t,
               "batch": b, "seed": args.seed, "float_top1_search_eval": float_top1_e},
    )


def minilm_task(args) -> Task:
    from tvm_mpq.datasets import sts_dev
    from tvm_mpq.models.minilm import encode_batch, load_minilm, mean_pool

    b, s = args.batch, args.seq_len
    model, tok = load_minilm()
    pairs = sts_dev()
    perm = np.random.default_rng(args.seed).permutation(len(pairs))
    c, e, t = args.minilm_calib, args.minilm_search_eval, args.minilm_test
    if any(v % (2 * b) for v in (c, e, t)) or args.minilm_phase1 % b or args.minilm_phase1 > c:
        raise SystemExit(f"MiniLM splits (sentences): calib {c}, search-eval {e}, test {t} must be multiples of "
                         f"2 x --batch ({2 * b}: whole pairs), phase-1 {args.minilm_phase1} a multiple of {b} <= calib")
    if (c + e + t) // 2 > len(pairs):
        raise SystemExit(f"MiniLM splits need {(c + e + t) // 2} pairs; STS dev has {len(pairs)}")

    def sentences(pair_idx):
        chosen = [pairs[i] for i in pair_idx]
        # first sentences, then second sentences: pair k is (k, k + n)
        return [p[0] for p in chosen] + [p[1] for p in chosen], np.array([p[2] for p in chosen])

    cp, ep, tp = perm[: c // 2], perm[c // 2 : (c + e) // 2], perm[(c + e) // 2 : (c + e + t) // 2]
    (cs, _), (es, _), (ts, gold) = sentences(cp), sentences(ep), sentences(tp)
    ci, cm = encode_batch(tok, cs, s)
    ei, em = encode_batch(tok, es, s)
    ti, tm = encode_batch(tok, ts, s)
    truncated = int(sum((m.sum(1) >= s).sum() for m in (cm, em, tm)))  # no room left for padding
    calib = batches_of((ci, cm), b)
    q = tvm_mpq.Quantizer(model, None, calib, example_inputs=calib[0], progress=False)
    ref_e = mean_pool(q.run_float(ei, em)[0], em)
    ref_t = mean_pool(q.run_float(ti, tm)[0], tm)
    n_t = len(ts) // 2
    float_rho = spearman((ref_t[:n_t] * ref_t[n_t:]).sum(1), gold)

    def cosine_search_eval(module) -> float:
        """Mean cosine agreement of the sentence embeddings with float (simulated module)."""
        if all(cand.is_float for cand in module.config.values()):
            return 1.0
        emb = mean_pool(module.run(ei, em), em)
        return float(np.mean((emb * ref_e).sum(1)))

    def test_metrics(run) -> dict:
        emb = mean_pool(run(ti, tm), tm)
        cos = (emb * ref_t).sum(1)
        return {"cos": float(cos.mean()), "cos_min": float(cos.min()),
                "rho": spearman((emb[:n_t] * emb[n_t:]).sum(1), gold)}

    p1 = args.minilm_phase1
    return Task(
        name="all-MiniLM-L6-v2",
        quantizer=q,
        phase1_inputs=batches_of((ci[:p1], cm[:p1]), b),
        eval_fn=cosine_search_eval,
        eval_desc=f"mean cosine agreement with float on {e} search-eval sentences (simulated)",
        test_metrics=test_metrics,
        test_columns=[("cos", f"test mean cos w/ float ({t} sent, realized)", "{:.4f}"),
                      ("cos_min", "min cos", "{:.4f}"),
                      ("rho", f"Spearman vs gold ({n_t} pairs; float {float_rho:.4f})", "{:.4f}")],
        primary="cos",
        budgets=[Budget.parse(x) for x in args.minilm_budgets.split(",") if x],
        setup={"pairs": len(pairs), "calib_sentences": c, "phase1_sentences": p1, "search_eval_sentences": e,
               "test_sentences": t, "seq_len": s, "truncated_sentences": truncated, "batch": b, "seed": args.seed,
               "float_spearman_test": float_rho},
    )


# ------------------------------------------------------------------------------------ the run


def run_task(task: Task, args, results_dir: Path) -> dict:
    q = task.quantizer
    cands = parse_candidates(None)
    meter = SimulationMeter(q)
    model_dir = results_dir / task.name
    p1_dir = model_dir / "phase1"

    # ---- phase 1, once (cached on disk)
    n_entries = sum(len(v) for v in group_options(q, cands).values())
    cache = ResultsCache(p1_dir, fingerprint(q, cands, task.phase1_inputs))
    t0 = time.perf_counter()
    entries = phase1(q, task.phase1_inputs, cands, cost_model=RelativeBops(q, cands), cache=cache,
                     progress=args.progress)
    p1_seconds = time.perf_counter() - t0
    p1_computed = cache.stats["phase1"]["computed"]
    recorded = json.loads((p1_dir / "sensitivity.json").read_text())["entries"]
    p1_recorded = sum(r.get("seconds", 0.0) for r in recorded)
    n_imgs = sum(b[0].shape[0] for b in task.phase1_inputs)
    log(f"[{task.name}] phase 1: {n_entries} (group, candidate) entries on {n_imgs} inputs: "
        f"{p1_computed} computed in {p1_seconds:.1f} s this run, {n_entries - p1_computed} reused from the cache; "
        f"{p1_recorded:.1f} s of simulation recorded in the cache")

    # ---- searches: every budget x mode from a fresh copy of the phase-1 cache
    searches = []
    for budget in task.budgets:
        answers = {}
        for mode in MODES:
            run_dir = model_dir / "runs" / f"{budget.kind}{budget.value:g}-{mode}"
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
            shutil.copy(p1_dir / "sensitivity.json", run_dir / "sensitivity.json")
            kw = {"sqnr_floor_db": budget.value} if budget.kind == "sqnr" else {
                "eval_fn": task.eval_fn, "allowed_accuracy_drop": budget.value}
            cap = args.sequential_max_seconds if mode == "sequential" else 0
            row = {"budget": str(budget), "mode": mode}
            t0 = time.perf_counter()
            meter.arm(cap or None)
            try:
                res = search(q, calibration_inputs=task.phase1_inputs, search=mode, results_dir=run_dir,
                             progress=args.progress, **kw)
            except Stop:
                wall = time.perf_counter() - t0
                row.update(stopped=True, evaluations=len(meter.configs), phase2_s=wall, chosen=None, config=None,
                           exit=f"stopped after {cap:g} s")
            else:
                row.update(stopped=False, evaluations=res.evaluations, phase2_s=res.phase_seconds["phase2"],
                           phase1_s=res.phase_seconds["phase1"], chosen=res.chosen, n=len(res.curve) - 1,
                           config=res.config, exit=res.exit, message=res.message, target=res.target,
                           float_score=res.float_score,
                           chosen_score=None if res.chosen is None else res.curve[res.chosen].score,
                           cost=None if res.chosen is None else res.curve[res.chosen].cost,
                           cache=res.cache_stats)
                answers[mode] = res
            if row["stopped"]:
                ref = answers.get("binary") or answers.get("interpolation")
                if ref is not None and ref.chosen is not None:
                    n = len(ref.curve)
                    k = ref.chosen
                    est = 2 if ref.exit == "last meets" else (1 if ref.exit == "first misses" else min(k + 3, n))
                    per = wall / max(1, row["evaluations"])
                    row.update(est_evaluations=est, est_phase2_s=est * per, target=ref.target)
            searches.append(row)
            log(f"[{task.name}] {budget} {mode:13s}: "
                + (f"stopped after {row['evaluations']} evaluations, {row['phase2_s']:.1f} s"
                   if row["stopped"] else
                   f"{row['evaluations']} evaluations, phase 2 {row['phase2_s']:.1f} s -> point {row['chosen']} "
                   f"of {row['n']} ({row['exit']}): {row['message']}"))
    meter.arm(None)

    # ---- realize and test: float, uniform baselines, every distinct chosen configuration
    rows = []
    t0 = time.perf_counter()
    ref_metrics = task.test_metrics(lambda *a: q.run_float(*a)[0])
    rows.append({"name": "float", "config": Config.uniform(q.group_names, FLOAT), "metrics": ref_metrics,
                 "compile_s": None, "test_s": time.perf_counter() - t0})
    uniform = [(c, Config.uniform(q.group_names, c)) for c in BASELINES]
    # The searched configuration of each budget is binary search's (tvm_mpq.compile's default); the
    # other modes' choices are realized too where they differ only with --realize-all-modes.
    chosen: dict[Config, list[str]] = {}
    for row in searches:
        if row["config"] is not None and (args.realize_all_modes or row["mode"] == "binary"):
            chosen.setdefault(row["config"], []).append(f"{row['budget']} {row['mode']}")
    for row in searches:
        if row["config"] is not None and row["config"] in chosen and row["mode"] != "binary":
            label = f"{row['budget']} {row['mode']}"
            if label not in chosen[row["config"]]:
                chosen[row["config"]].append(label)
    todo = uniform + [(f"searched {', '.join(labels)}", cfg) for cfg, labels in chosen.items()]
    for name, cfg in todo:
        module = q.realize(cfg)
        t1 = time.perf_counter()
        m = task.test_metrics(module.run)
        rows.append({"name": name, "config": cfg, "metrics": m, "compile_s": module.compile_seconds,
                     "test_s": time.perf_counter() - t1})
        log(f"[{task.name}] realized {name}: {m} (compile {module.compile_seconds:.1f} s)")
    for r in rows:
        cfg = r["config"]
        r["bops"] = relative_bops(q, cfg)
        r["composition"] = composition(cfg)
        r["metrics"]["d_" + task.primary] = r["metrics"][task.primary] - ref_metrics[task.primary]
    # the search-eval score of each row (simulated), to read the budgets against
    known = {s["config"]: s["chosen_score"] for s in searches
             if s["config"] is not None and s["budget"].startswith("drop")}
    for r in rows:
        r["search_eval"] = known.get(r["config"])
        if r["search_eval"] is None:
            r["search_eval"] = float(task.eval_fn(SimulatedModule(q, r["config"])))
    return {"task": task, "phase1": {"entries": n_entries, "inputs": n_imgs, "computed": p1_computed,
                                     "seconds_this_run": p1_seconds, "seconds_recorded": p1_recorded,
                                     "least_sensitive": [e.to_dict() for e in entries[:5]]},
            "searches": searches, "rows": rows}


# ------------------------------------------------------------------------------------ report


def fmt(v, f="{:.3f}"):
    if v is None:
        return "—"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return f.format(v)


def report(result: dict) -> str:
    task: Task = result["task"]
    rows, searches = result["rows"], result["searches"]
    lines = [f"### {task.name}", ""]
    lines.append("Setup: " + ", ".join(f"{k} {v if not isinstance(v, float) else round(v, 4)}"
                                        for k, v in task.setup.items()))
    lines.append("")
    head = ["configuration", "relative BOPs", "groups", task.eval_desc.split(" on ")[0] + " (search-eval)"]
    head += [h for _, h, _ in task.test_columns] + ["compile s"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in rows:
        m = r["metrics"]
        cells = [r["name"], f"{r['bops']:.3f}", r["composition"], fmt(r["search_eval"], "{:.4g}")]
        cells += [fmt(m.get(k), f) for k, _, f in task.test_columns]
        cells.append(fmt(r["compile_s"], "{:.1f}"))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    p1 = result["phase1"]
    lines.append(f"Phase 1 (shared by every search below): {p1['entries']} (group, candidate) simulations on "
                 f"{p1['inputs']} input(s); {p1['seconds_recorded']:.0f} s of simulation (recorded in the cache; "
                 f"{p1['computed']} computed this run in {p1['seconds_this_run']:.0f} s).")
    lines.append("")
    head = ["budget", "target", "mode", "phase-2 evaluations", "phase-2 s", "chosen point", "relative BOPs",
            "search score", "exit"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for s in searches:
        if s["stopped"]:
            est = ""
            if "est_evaluations" in s:
                est = f" (needs ≈{s['est_evaluations']} ≈ {s['est_phase2_s']:.0f} s, est.)"
            cells = [s["budget"], fmt(s.get("target"), "{:.4g}"), s["mode"], f"> {s['evaluations']}{est}", f"> {s['phase2_s']:.0f}", "—", "—",
                     "—", s["exit"]]
        else:
            cells = [s["budget"], fmt(s.get("target"), "{:.4g}"), s["mode"], str(s["evaluations"]),
                     f"{s['phase2_s']:.1f}", "—" if s["chosen"] is None else f"{s['chosen']} / {s['n']}",
                     fmt(s.get("cost"), "{:.3f}"), fmt(s.get("chosen_score"), "{:.4g}"), s["exit"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goals(results: dict) -> list[str]:
    out = []
    mn = results.get("MobileNetV2")
    if mn:
        rows = {r["name"]: r for r in mn["rows"]}
        w816 = rows["w8a16"]["bops"]
        for r in mn["rows"]:
            if not r["name"].startswith("searched"):
                continue
            d = r["metrics"]["d_top1"]
            ok = d >= -0.5 and r["bops"] < w816
            out.append(f"MobileNetV2 {r['name']}: Δ top-1 {d:+.2f} points (goal ≥ -0.5), relative BOPs "
                       f"{r['bops']:.3f} (goal < w8a16's {w816:.3f}) -> {'MET' if ok else 'MISSED'}")
    ml = results.get("all-MiniLM-L6-v2")
    if ml:
        for r in ml["rows"]:
            if not r["name"].startswith("searched"):
                continue
            c = r["metrics"]["cos"]
            out.append(f"MiniLM {r['name']}: mean cosine agreement {c:.4f} (goal ≥ 0.99), relative BOPs "
                       f"{r['bops']:.3f} -> {'MET' if c >= 0.99 else 'MISSED'}")
    return out


def to_json(results: dict) -> dict:
    def clean(v):
        if isinstance(v, Config):
            return v.to_dict()
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, (np.floating, np.integer)):
            return v.item()
        return v

    return {name: {"setup": r["task"].setup, "phase1": clean(r["phase1"]),
                   "searches": clean([{k: v for k, v in s.items()} for s in r["searches"]]),
                   "rows": clean(r["rows"])} for name, r in results.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mobilenet_v2,minilm", help="comma list: mobilenet_v2, minilm")
    ap.add_argument("--results-dir", default=str(REPO / "out" / "search-benchmark"),
                    help="phase-1 caches and per-search directories (default out/search-benchmark, git-ignored)")
    ap.add_argument("--seed", type=int, default=0, help="shuffles the data before splitting")
    ap.add_argument("--batch", type=int, default=8, help="the models' batch size (splits are multiples of it)")
    ap.add_argument("--realize-all-modes", action="store_true",
                    help="also realize and test the configurations other modes chose where they differ from binary's")
    ap.add_argument("--sequential-max-seconds", type=float, default=40.0,
                    help="stop a sequential search after this much phase-2 time (0 = let it finish)")
    ap.add_argument("--mnv2-calib", type=int, default=32)
    ap.add_argument("--mnv2-phase1", type=int, default=8, help="phase-1 images (the first calibration images)")
    ap.add_argument("--mnv2-search-eval", type=int, default=128)
    ap.add_argument("--mnv2-test", type=int, default=0, help="held-apart test images (0 = all the rest)")
    ap.add_argument("--mnv2-budgets", default="drop:0.5,drop:1.0,sqnr:25")
    ap.add_argument("--seq-len", type=int, default=64, help="MiniLM tokens per sentence")
    ap.add_argument("--minilm-calib", type=int, default=64, help="calibration sentences")
    ap.add_argument("--minilm-phase1", type=int, default=8, help="phase-1 sentences (the first calibration ones)")
    ap.add_argument("--minilm-search-eval", type=int, default=32, help="search-eval sentences")
    ap.add_argument("--minilm-test", type=int, default=192, help="test sentences (pairs x 2)")
    ap.add_argument("--minilm-budgets", default="drop:0.01,sqnr:30")
    ap.add_argument("--json", default=None, help="also write the results here (default <results-dir>/report.json)")
    ap.add_argument("--progress", action="store_true", help="show progress bars")
    args = ap.parse_args(argv)

    threads = os.environ.get("TVM_NUM_THREADS")
    command = "python " + " ".join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])
    log(f"command: {command}")
    log(f"threads: TVM_NUM_THREADS={threads or f'unset (all {os.cpu_count()} cores)'}; "
        f"load average at start {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    results_dir = Path(args.results_dir)
    builders = {"mobilenet_v2": mobilenet_task, "minilm": minilm_task}
    results = {}
    t_all = time.perf_counter()
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name not in builders:
            raise SystemExit(f"unknown model {name!r}: use {', '.join(builders)}")
        t0 = time.perf_counter()
        try:
            task = builders[name](args)
        except (ModelUnavailable, FileNotFoundError) as e:
            log(f"[{name}] skipped: {e}")
            continue
        log(f"[{task.name}] setup (import, calibration, float references) {time.perf_counter() - t0:.1f} s; "
            f"{len(task.quantizer.group_names)} groups")
        r = run_task(task, args, results_dir)
        r["seconds"] = time.perf_counter() - t0
        results[task.name] = r
        log(f"[{task.name}] done in {r['seconds']:.0f} s")
    total = time.perf_counter() - t_all

    log("")
    log(f"## tvm_mpq search benchmark\n\n`{command}`\n")
    log(f"TVM_NUM_THREADS={threads or f'unset (all {os.cpu_count()} cores)'}; load average now "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; total {total / 60:.1f} min")
    for r in results.values():
        log("")
        log(report(r))
        log(f"\n({r['task'].name}: {r['seconds'] / 60:.1f} min in all)")
    log("")
    for g in goals(results):
        log("- " + g)
    path = Path(args.json) if args.json else results_dir / "report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"command": command, "threads": threads, "cpu_count": os.cpu_count(), "total_seconds": total,
            "models": to_json(results), "goals": goals(results)}
    path.write_text(json.dumps(data, indent=2, default=str))
    log(f"\nresults written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
