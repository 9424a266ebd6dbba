"""The mixed-precision search: index searches, curve, costs, phase-1 cache, end to end.

* ``pareto.search_index`` on many synthetic monotone curves (smooth, cliffs, plateaus; N up to 200;
  targets inside and outside): binary and interpolation find what the sequential scan finds, with
  at most ceil(log2 N) + 2 evaluations; the early exits and the reverse (rising) search.
* The curve: flips skip the start candidate, later flips overwrite earlier ones; BOPs by hand,
  including an activation x activation matmul; weightless groups get one candidate per width.
* Phase 1 on a tiny CNN with a deliberate activation outlier ranks that group most sensitive.
* ``kill -9`` during phase 1 loses nothing finished: the rerun computes only what is missing.
* A stale cache (other candidates, other weights) is refused with a clear error, and kept;
  ``clean_start=True`` recomputes.
* ``search`` with an SQNR floor gives a configuration whose *realized* module meets the floor at a
  lower cost; ``tvm_mpq.compile`` without a config searches (calibration from a generator).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tvm_mpq  # noqa: E402
from tvm_mpq import Candidate, Config, ConfigError  # noqa: E402
from tvm_mpq.cache import ResultsCache, StaleCacheError, fingerprint  # noqa: E402
from tvm_mpq.calibration import sqnr_db  # noqa: E402
from tvm_mpq.config import DEFAULT_CANDIDATES, as_config  # noqa: E402
from tvm_mpq.cost import Bops, RelativeBops, bops, relative_bops  # noqa: E402
from tvm_mpq.graph import QuantGraph, QuantGroup, QuantOp  # noqa: E402
from tvm_mpq.pareto import Flip, curve_configs, first_within, flips_from, knee, search_index  # noqa: E402
from tvm_mpq.search import InfeasibleBudgetError, SimulatedModule, search  # noqa: E402
from tvm_mpq.sensitivity import OutputSqnr, SensitivityEntry, group_options, phase1, sort_entries  # noqa: E402

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("search_child", HERE / "search_child.py")
child = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(child)

TOTAL_ENTRIES = 4 * len(DEFAULT_CANDIDATES)  # FragileCNN: 4 groups, all with weights


# ------------------------------------------------------------------------------------------------
# Index searches on synthetic curves (no TVM)
# ------------------------------------------------------------------------------------------------


def _curves(rng, count):
    """Falling curves of every shape the search meets: smooth, concave with a cliff, plateaus."""
    for t in range(count):
        n = int(rng.integers(1, 201)) if t % 5 else int(rng.choice([1, 2, 3, 128, 200]))
        kind = t % 4
        if kind == 0:
            v = np.sort(rng.uniform(0, 60, n))[::-1]
        elif kind == 1:
            v = 60 - np.cumsum(rng.exponential(1.0, n))
        elif kind == 2:  # mostly flat, then a cliff: plain interpolation search degrades here
            v = 60 - np.cumsum(rng.exponential(1.0, n) ** 4)
        else:
            v = np.round(np.sort(rng.uniform(0, 60, n))[::-1] / 5) * 5
        yield v


def _targets(rng, v):
    return [v[0] + 1.0, v[-1] - 1.0, float(rng.uniform(v.min(), v.max())), float(v[int(rng.integers(len(v)))])]


def test_binary_and_interpolation_agree_with_sequential():
    rng = np.random.default_rng(0)
    counts = {"binary": [], "interpolation": []}
    for v in _curves(rng, 600):
        n = len(v)
        bound = math.ceil(math.log2(n)) + 2
        for target in _targets(rng, v):
            hits = [i for i in range(n) if v[i] >= target]
            expected = max(hits) if hits else None
            seq = search_index(n, lambda i: v[i], target, "sequential")
            assert seq.index == expected
            for mode in counts:
                calls = []
                got = search_index(n, lambda i: calls.append(i) or v[i], target, mode)
                assert got.index == expected, (mode, n, target)
                assert got.evaluations == len(calls) == len(set(calls)) <= bound, (mode, n, got.evaluations)
                counts[mode].append(got.evaluations)
    # On average interpolation needs fewer evaluations than bisection.
    assert np.mean(counts["interpolation"]) < np.mean(counts["binary"])


def test_interpolation_pays_off_on_smooth_curves():
    # Interpolation is confined to the probes that keep bisection's worst case, so it never needs
    # more evaluations than binary; on a smooth curve it needs clearly fewer.
    v = np.linspace(60, 0, 200)
    counts = {"binary": [], "interpolation": []}
    for target in np.random.default_rng(2).uniform(0, 60, 50):
        for mode in counts:
            got = search_index(200, lambda i: v[i], target, mode)
            assert got.index == max(i for i in range(200) if v[i] >= target)
            counts[mode].append(got.evaluations)
    assert all(i <= b for i, b in zip(counts["interpolation"], counts["binary"]))
    assert np.mean(counts["interpolation"]) < 0.75 * np.mean(counts["binary"])


def test_early_exits():
    v = np.linspace(50, 10, 100)
    for mode in ("sequential", "binary", "interpolation"):
        unreachable = search_index(100, lambda i: v[i], 60.0, mode)
        assert (unreachable.index, unreachable.exit, unreachable.evaluations) == (None, "first misses", 1)
        lowest = search_index(100, lambda i: v[i], 5.0, mode)
        assert (lowest.index, lowest.exit, lowest.evaluations) == (99, "last meets", 2)
    with pytest.raises(ValueError, match="golden"):
        search_index(10, lambda i: 0.0, 0.0, "golden")
    assert search_index(0, lambda i: 0.0, 0.0).index is None
    nan = search_index(3, lambda i: [5.0, float("nan"), 1.0][i], 2.0, "binary")
    assert nan.index == 0  # a broken (NaN) score counts as a miss


def test_reverse_search_on_rising_curves():
    rng = np.random.default_rng(1)
    for v in _curves(rng, 300):
        w = v[::-1].copy()  # rising: the reverse search starts at the lowest point
        n = len(w)
        for target in _targets(rng, v):
            hits = [i for i in range(n) if w[i] >= target]
            expected = min(hits) if hits else None
            for mode in ("sequential", "binary", "interpolation"):
                got = search_index(n, lambda i: w[i], target, mode, rising=True)
                assert got.index == expected, (mode, n, target)
                if mode != "sequential":
                    assert got.evaluations <= math.ceil(math.log2(n)) + 2
    w = np.linspace(10, 50, 50)
    assert search_index(50, lambda i: w[i], 5.0, "binary", rising=True).exit == "first meets"
    got = search_index(50, lambda i: w[i], 60.0, "binary", rising=True)
    assert (got.index, got.exit, got.evaluations) == (None, "last misses", 2)
    # Sequential from the cheap end stops at the first hit: both ends, then indices 1, 2, 3.
    got = search_index(50, lambda i: w[i], 12.0, "sequential", rising=True)
    assert (got.index, got.evaluations) == (3, 5)


# ------------------------------------------------------------------------------------------------
# Curve, knee, costs, options (no TVM compile)
# ------------------------------------------------------------------------------------------------


def _e(group, cand, sqnr, bits=16, saved=0.0, order=0):
    return SensitivityEntry(group, cand, sqnr, bits, saved, order)


def test_flips_skip_start_and_later_flips_overwrite():
    start = Config({"a": "w16a16", "b": "w16a16"})
    entries = [_e("a", "w16a16", 90), _e("a", "w4a8", 50), _e("b", "w8a8", 45), _e("a", "w8a8", 40)]
    flips = flips_from(entries, start)
    assert flips == [Flip("a", Candidate(4, 8)), Flip("b", Candidate(8, 8)), Flip("a", Candidate(8, 8))]
    configs = curve_configs(start, flips)
    assert [c.to_dict() for c in configs] == [
        {"a": "w16a16", "b": "w16a16"}, {"a": "w4a8", "b": "w16a16"},
        {"a": "w4a8", "b": "w8a8"}, {"a": "w8a8", "b": "w8a8"},
    ]


def test_sort_ties():
    entries = [
        _e("g2", "w8a8", 40.0, 16, 0.1, 2), _e("g1", "w8a16", 40.0, 24, 0.5, 1),
        _e("g0", "w8a8", 40.0, 16, 0.3, 0), _e("g3", "w4a8", 40.0, 12, 0.0, 3),
        _e("g4", "w8a8", 40.0, 16, 0.3, 4), _e("g5", "w16a16", 70.0, 32, 0.0, 5),
    ]
    assert [e.group for e in sort_entries(entries)] == ["g5", "g3", "g0", "g4", "g2", "g1"]


def test_knee_and_cost_budget_helpers():
    # Score holds while cost falls to 0.4, then collapses: the knee is the last point before the fall.
    pts = [(0, 1.0, 60.0), (1, 0.7, 59.0), (2, 0.4, 57.0), (3, 0.3, 30.0), (4, 0.2, 5.0)]
    assert knee(pts) == 2
    assert knee([(0, 1.0, 10.0), (1, 0.5, 5.0), (2, 0.0, 0.0)]) == 0  # straight: the safe end
    assert first_within([1.0, 0.8, 0.5, 0.6, 0.2], 0.55) == 2
    assert first_within([1.0, 0.8], 0.5) is None


def _fake_quantizer():
    """x -> dense q/k -> activation x activation matmul (q @ k^T): graph only, no TVM module."""
    ops = {
        "q": QuantOp("q", "dense", "lv_q", ("x",), "q.weight", True, macs=100),
        "k": QuantOp("k", "dense", "lv_k", ("x",), "k.weight", True, macs=100),
        "matmul_0": QuantOp("matmul_0", "matmul", "lv_m", ("lv_q", "lv_k"), None, False, macs=10),
    }
    groups = {
        "{q,k}": QuantGroup("{q,k}", "x", (("q", 0), ("k", 0))),
        "matmul_0": QuantGroup("matmul_0", "lv_q", (("matmul_0", 0),)),
        "matmul_0.rhs": QuantGroup("matmul_0.rhs", "lv_k", (("matmul_0", 1),)),
    }
    names = list(groups)
    return SimpleNamespace(graph=QuantGraph(ops, groups), group_names=names, config=lambda c: as_config(c, names))


def test_bops_by_hand_including_activation_matmul():
    q = _fake_quantizer()
    cfg = Config({"{q,k}": "w4a8", "matmul_0": "w8a16", "matmul_0.rhs": "float"})
    assert bops(q, cfg) == 100 * 8 * 4 * 2 + 10 * 16 * 32
    assert bops(q, "float") == (200 + 10) * 32 * 32
    assert relative_bops(q, "w16a16") == 1.0
    assert relative_bops(q, cfg) == pytest.approx((6400 + 5120) / ((200 + 10) * 256))
    assert relative_bops(q, "w8a8", candidates=["w8a8", "w4a8"]) == 1.0
    assert RelativeBops(q).unit and Bops(q).name == "bops"


def test_weightless_groups_get_one_candidate_per_activation_width():
    opts = group_options(_fake_quantizer())
    assert [str(c) for c in opts["{q,k}"]] == list(DEFAULT_CANDIDATES)
    assert [str(c) for c in opts["matmul_0"]] == ["w16a16", "w8a8"]
    assert [str(c) for c in opts["matmul_0.rhs"]] == ["w16a16", "w8a8"]
    opts = group_options(_fake_quantizer(), ["w4a8", "float", "w8a16"])
    assert [str(c) for c in opts["matmul_0"]] == ["float", "w8a16", "w4a8"]


# ------------------------------------------------------------------------------------------------
# On a tiny model
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fragile_entries(fragile, cal):
    return phase1(fragile, cal, progress=False)


def test_fragile_layer_ranks_most_sensitive(fragile, fragile_entries):
    assert len(fragile_entries) == TOTAL_ENTRIES
    sqnr = [e.sqnr_db for e in fragile_entries]
    assert sqnr == sorted(sqnr, reverse=True)
    last_two = fragile_entries[-2:]
    assert {(e.group, e.candidate) for e in last_two} == {("conv2", "w8a8"), ("conv2", "w4a8")}, fragile_entries
    # Every other group's 8-bit entries beat the fragile group's by a wide margin.
    worst_other = min(e.sqnr_db for e in fragile_entries if e.group != "conv2" and e.candidate == "w8a8")
    conv2 = {e.candidate: e.sqnr_db for e in fragile_entries if e.group == "conv2"}
    assert worst_other > conv2["w8a8"] + 15.0
    # A 16-bit activation is what the outlier needs.
    assert conv2["w8a16"] > conv2["w8a8"] + 3.0


def test_kill_during_phase1_loses_no_finished_entry(fragile, cal, tmp_path):
    results = tmp_path / "results"
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "search_child.py"), str(results), "0.4"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    path = results / "sensitivity.json"
    finished = 0
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if path.exists():
                finished = len(json.loads(path.read_text())["entries"])
                if finished >= 3:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    finished = len(json.loads(path.read_text())["entries"])
    assert 3 <= finished < TOTAL_ENTRIES

    cache = ResultsCache(results, fingerprint(fragile, DEFAULT_CANDIDATES, cal))
    scorer = OutputSqnr(fragile, cal)
    entries = phase1(fragile, cal, cache=cache, scorer=scorer, progress=False)
    assert scorer.simulations == TOTAL_ENTRIES - finished
    assert cache.stats["phase1"] == {"reused": finished, "computed": TOTAL_ENTRIES - finished}
    # What was read back is exactly what a fresh run computes (JSON keeps float64 exactly).
    fresh = {(e.group, e.candidate): e.sqnr_db for e in entries}
    assert len(fresh) == TOTAL_ENTRIES
    for r in json.loads(path.read_text())["entries"]:
        assert fresh[(r["group"], r["candidate"])] == float(r["sqnr_db"])
    # Everything is on disk now: a third run computes nothing.
    again = ResultsCache(results, fingerprint(fragile, DEFAULT_CANDIDATES, cal))
    phase1(fragile, cal, cache=again, scorer=scorer, progress=False)
    assert again.stats["phase1"] == {"reused": TOTAL_ENTRIES, "computed": 0}
    assert scorer.simulations == TOTAL_ENTRIES - finished


@pytest.fixture(scope="module")
def plain():
    """The same architecture without the outlier (other weights)."""
    return child.build_quantizer(outlier=1.0)


def test_stale_cache_is_refused_and_kept(fragile, plain, cal, tmp_path):
    d = tmp_path / "cache"
    first = search(fragile, calibration_inputs=cal, candidates=["w8a8", "w4a8"], sqnr_floor_db=20,
                   results_dir=d, progress=False)
    assert first.cache_stats["phase1"] == {"reused": 0, "computed": 8}
    before = (d / "sensitivity.json").read_text()

    with pytest.raises(StaleCacheError, match="candidates") as e:
        search(fragile, calibration_inputs=cal, sqnr_floor_db=20, results_dir=d, progress=False)
    assert "clean_start=True" in str(e.value) and isinstance(e.value, ConfigError)
    with pytest.raises(StaleCacheError, match="weights"):
        search(plain, calibration_inputs=cal, candidates=["w8a8", "w4a8"], results_dir=d, progress=False)
    with pytest.raises(StaleCacheError, match="phase1_inputs"):
        search(fragile, calibration_inputs=cal[:2], candidates=["w8a8", "w4a8"], results_dir=d, progress=False)
    assert (d / "sensitivity.json").read_text() == before  # refused, never deleted

    again = search(fragile, calibration_inputs=cal, candidates=["w8a8", "w4a8"], sqnr_floor_db=20,
                   results_dir=d, progress=False)
    assert again.cache_stats["phase1"] == {"reused": 8, "computed": 0}
    assert again.cache_stats["phase2"]["computed"] == 0 and again.config == first.config

    clean = search(plain, calibration_inputs=cal, sqnr_floor_db=20, results_dir=d, clean_start=True, progress=False)
    assert clean.cache_stats["phase1"] == {"reused": 0, "computed": TOTAL_ENTRIES}
    (d / "sensitivity.json").write_text("{not json")
    with pytest.raises(StaleCacheError, match="clean_start"):
        ResultsCache(d, fingerprint(plain, DEFAULT_CANDIDATES, cal))


def test_outlier_is_what_makes_conv2_fragile(plain, cal, fragile_entries):
    entries = phase1(plain, cal, progress=False)
    conv2 = {e.candidate: e.sqnr_db for e in entries if e.group == "conv2"}
    fragile_conv2 = {e.candidate: e.sqnr_db for e in fragile_entries if e.group == "conv2"}
    assert conv2["w8a8"] > fragile_conv2["w8a8"] + 20.0
    assert ("conv2", "w8a8") not in {(e.group, e.candidate) for e in entries[-2:]}


def test_search_meets_sqnr_floor_when_realized(fragile, cal):
    floor = 40.0
    results = {}
    for mode in ("sequential", "binary", "interpolation"):
        for reverse in (False, True):
            r = search(fragile, calibration_inputs=cal, sqnr_floor_db=floor, search=mode, reverse=reverse,
                       progress=False)
            results[(mode, reverse)] = r
            assert r.feasible and r.target == floor
            point = r.chosen_point
            assert point.score >= floor and point.cost < 1.0
            if r.chosen + 1 < len(r.curve) and r.curve[r.chosen + 1].score is not None:
                assert r.curve[r.chosen + 1].score < floor  # the last point meeting the floor
    # Every mode finds the same point on this (monotone) curve; binary needs fewer evaluations
    # than the sequential scan.
    assert len({r.chosen for r in results.values()}) == 1
    assert results[("binary", False)].evaluations < results[("sequential", False)].evaluations

    r = results[("binary", False)]
    json.dumps(r.to_dict())
    assert r.phase_seconds["phase1"] > 0 and set(r.phase_seconds) == {"phase1", "phase2"}
    assert relative_bops(fragile, r.config) < 1.0
    assert r.config["conv2"] == Candidate(16, 16)  # the fragile group keeps its precision
    module = fragile.realize(r.config)
    x = np.concatenate([b[0] for b in cal])
    ref = np.concatenate([fragile.run_float(b[0])[0] for b in cal])
    assert sqnr_db(ref, module.run(x)) >= floor - 0.5


def test_budgets_in_the_users_terms(fragile, cal, fragile_entries):
    # Cost budget alone: the first point within it, one evaluation to report its score.
    r = search(fragile, calibration_inputs=cal, cost_budget=0.5, progress=False)
    assert r.feasible and r.evaluations == 1 and r.chosen_point.cost <= 0.5
    assert all(p.cost > 0.5 for p in r.curve[: r.chosen])
    # Accuracy budget with a user metric on a SimulatedModule (no compile): negative output MSE.
    x = cal[0][0]
    ref = fragile.run_float(x)[0]
    seen = []

    def neg_mse(module):
        assert isinstance(module, SimulatedModule)
        seen.append(module.config)
        return -float(np.mean((module.run(x) - ref) ** 2))

    r = search(fragile, calibration_inputs=cal, eval_fn=neg_mse, allowed_accuracy_drop=1e-4, progress=False)
    assert r.feasible and r.float_score == 0.0 and r.target == -1e-4
    assert r.chosen_point.score >= r.target and r.config in seen
    # Both budgets, incompatible: a clear infeasibility message.
    r = search(fragile, calibration_inputs=cal, sqnr_floor_db=45, cost_budget=0.2, progress=False)
    assert not r.feasible and "cost budget" in r.message and "infeasible" in r.message
    # Unreachable even at the highest candidate.
    r = search(fragile, calibration_inputs=cal, sqnr_floor_db=200, progress=False)
    assert not r.feasible and r.evaluations == 1 and "unreachable even at the highest candidate" in r.message
    # The lowest point already meets a lax floor: taken after two evaluations.
    r = search(fragile, calibration_inputs=cal, sqnr_floor_db=0.0, progress=False)
    assert r.chosen == len(r.curve) - 1 and r.evaluations == 2
    # No budget at all: the curve is traced and its knee chosen.
    r = search(fragile, calibration_inputs=cal, eval_fn=neg_mse, curve_points=4, progress=False)
    assert r.feasible and r.exit == "traced" and r.evaluations == 6 and r.target is None
    with pytest.raises(ConfigError, match="eval_fn"):
        search(fragile, calibration_inputs=cal, allowed_accuracy_drop=0.1, progress=False)
    with pytest.raises(ConfigError, match="search mode"):
        search(fragile, calibration_inputs=cal, search="golden", progress=False)


def test_compile_searches_when_no_config(cal):
    torch_model = child.FragileCNN().eval()
    example = (torch.from_numpy(cal[0][0]),)
    batches = (b for b in cal)  # a one-shot generator: read once, used for calibration and search
    qm = tvm_mpq.compile(torch_model, calibration=batches, example_inputs=example, sqnr_floor_db=40,
                         search="interpolation", progress=False)
    assert qm.search is not None and qm.search.feasible and qm.config == qm.search.config
    x = np.concatenate([b[0] for b in cal])
    with torch.no_grad():
        ref = torch_model(torch.from_numpy(x)).numpy()
    assert sqnr_db(ref, qm.run(x)) >= 40.0 - 0.5
    with pytest.raises(ConfigError, match="sqnr_floor_db"):
        tvm_mpq.compile(torch_model, calibration=cal, example_inputs=example, config="w8a8", sqnr_floor_db=30)
    with pytest.raises(InfeasibleBudgetError, match="unreachable"):
        tvm_mpq.compile(torch_model, calibration=cal, example_inputs=example, sqnr_floor_db=300,
                        candidates=["w8a8", "w4a8"], progress=False)
