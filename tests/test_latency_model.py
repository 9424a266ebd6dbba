"""The predicted latency model: features (tile shapes, arithmetic path), training, held-out report,
JSON save / load, and the PredictedLatency cost model -- on measurement entries with a known
latency law (a synthetic roofline with noise among them), so the test is exact about what the
model must learn and asserts no timing value (real timings: benchmarks/); and the timing protocol
the training data is measured with (thread CPU clock, minimum over repeats)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
xgboost = pytest.importorskip("xgboost", reason="the predicted latency model needs xgboost (pip install xgboost-cpu)")

import tvm_mpq  # noqa: E402
from tvm_mpq.latency import LatencyCache, LatencyError, Timing, op_tasks, random_inputs, summarize, time_vm  # noqa: E402
from tvm_mpq.latency_model import FEATURES, LatencyModel, PredictedLatency, features, spearman  # noqa: E402
from tvm_mpq.targets import host_target  # noqa: E402

# (c_in, c_out, kernel, stride, groups) of a small zoo of layers, chained at 16x16.
LAYERS = [(8, 16, 3, 1, 1), (16, 16, 3, 1, 16), (16, 32, 1, 1, 1), (32, 32, 3, 2, 32), (32, 24, 1, 1, 1),
          (24, 48, 3, 1, 1), (48, 48, 3, 1, 48), (48, 16, 1, 1, 1), (16, 64, 1, 1, 1), (64, 64, 3, 1, 64),
          (64, 32, 1, 1, 1), (32, 32, 3, 1, 1)]  # fmt: skip


class Zoo(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.convs = torch.nn.ModuleList(
            torch.nn.Conv2d(ci, co, k, stride=s, padding=k // 2, groups=g) for ci, co, k, s, g in LAYERS
        )
        self.fc = torch.nn.Linear(32, 10)

    def forward(self, x):
        for c in self.convs:
            x = torch.relu(c(x))
        return self.fc(x.mean((2, 3)))


def law(spec) -> float:
    """A latency law with the shape of the real one: launch overhead + compute by bits + traffic."""
    f = features(spec)
    bits = 32.0 if f["is_float"] else max(f["a_bits"], 8.0)
    return 0.005 + f["macs"] * bits / 8.0 * 2e-9 + (f["in_bytes"] + f["weight_bytes"]) * 1e-8 + 0.01 * f["int4_unpack"]


@pytest.fixture(scope="module")
def zoo():
    x = np.random.default_rng(0).standard_normal((1, 8, 16, 16)).astype(np.float32)
    q = tvm_mpq.Quantizer(Zoo().eval(), None, [(x,)], (torch.from_numpy(x),), progress=False)
    table, tasks = op_tasks(q, ["w16a16", "w8a16", "w8a8", "w4a8"])
    entries = {t.signature: {"ms": law(t.spec), "spec": t.spec} for t in tasks}
    return q, table, tasks, entries


def test_features_are_complete_and_numeric(zoo):
    _, _, tasks, _ = zoo
    for t in tasks:
        f = features(t.spec, host_target())
        assert list(f) == list(FEATURES)
        assert all(math.isfinite(v) for v in f.values())
    dw = next(t for t in tasks if t.spec["attrs"].get("groups", 1) > 1)
    assert features(dw.spec)["kind_depthwise"] == 1.0
    assert features(dw.spec, host_target())["vector_bits"] == host_target().vector_bits


def test_fit_reports_held_out_error_and_round_trips(zoo, tmp_path):
    _, _, tasks, entries = zoo
    model = LatencyModel.fit(entries, host_target(), held_out=0.25)
    r = model.report
    assert r["count"] > 0 and r["train"] + r["count"] == len(entries)
    assert r["median_abs_rel_error"] < 0.35 and r["spearman"] > 0.8, r
    pred = model.predict_specs([t.spec for t in tasks])
    assert np.all(pred > 0)
    path = model.save(tmp_path)  # a directory: <target key>.json inside
    assert path.endswith(f"{host_target().key}.json")
    saved = json.loads(open(path).read())
    assert "learner" in saved  # XGBoost's own JSON format
    loaded = LatencyModel.load(tmp_path, host_target())
    np.testing.assert_allclose(loaded.predict_specs([t.spec for t in tasks]), pred, rtol=1e-6)
    assert loaded.report == r and loaded.trained_on == len(entries)
    with pytest.raises(tvm_mpq.TvmMpqError, match="per target"):
        LatencyModel.load(path, "llvm -mtriple=aarch64-linux-gnu -mattr=+neon")


def test_predicted_latency_uses_measurements_and_predicts_the_rest(zoo, tmp_path):
    q, table, tasks, entries = zoo
    ns = host_target().key
    cache = LatencyCache(tmp_path / "latency.json")
    measured = dict(list(entries.items())[: len(entries) // 2])
    for sig, e in measured.items():
        cache.put(ns, sig, e)
    model = LatencyModel.fit(cache.entries(ns), host_target(), held_out=0)
    cost = PredictedLatency(q, model, ["w16a16", "w8a16", "w8a8", "w4a8"], cache, namespace=ns)
    assert cost.unit == "ms" and 0.4 < cost.measured_fraction < 0.6
    for (op, key), sig in table.items():
        if sig in measured:
            assert cost.table[(op, key)] == measured[sig]["ms"]
    truth = [entries[table[k]]["ms"] for k in table]
    assert spearman(truth, [cost.table[k] for k in table]) > 0.9
    lo, hi = cost(q.config("w8a8")), cost(q.config("w16a16"))
    assert 0 < lo < hi


# ---------------------------------------------------------------------------------------------
# Synthetic specs (as tvm_mpq.latency.one_op_module records them), no compilation: fast enough for
# a few hundred layer shapes.
# ---------------------------------------------------------------------------------------------

REALIZED = {  # candidate -> (activation dtype, weight storage, accumulator)
    "float": ("float", "float", "float32"), "w8a8": ("uint8", "int8", "int32"),
    "w8a16": ("int16", "int8", "int32"), "w4a8": ("uint8", "int4 (packed uint8)", "int32"),
    "w16a16": ("int16", "int16", "int64"),
}  # fmt: skip


def conv_spec(ci, co, hw, k=1, stride=1, groups=1, cand="w8a8"):
    ho = (hw + 2 * (k // 2) - k) // stride + 1
    act, wt, acc = REALIZED[cand]
    return {"kind": "conv2d", "candidate": cand, "inputs": [[1, ci, hw, hw]], "weight": [co, ci // groups, k, k],
            "output": [1, co, ho, ho], "weight_transposed": False,
            "attrs": {"strides": [stride, stride], "padding": [k // 2] * 4, "dilation": [1, 1], "groups": groups,
                      "layout": "NCHW/OIHW"},
            "macs": ho * ho * co * (ci // groups) * k * k, "zero_points": [act == "uint8"],
            "realized": {"activation": act, "weight": wt, "accumulator": acc}}


def dense_spec(m, k, n, cand="w8a8"):
    act, wt, acc = REALIZED[cand]
    return {"kind": "dense", "candidate": cand, "inputs": [[m, k]], "weight": [n, k], "output": [m, n],
            "weight_transposed": True, "attrs": {}, "macs": m * k * n, "zero_points": [act == "uint8"],
            "realized": {"activation": act, "weight": wt, "accumulator": acc}}


def random_specs(n_shapes: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    chans = [16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 384]
    specs = []
    for _ in range(n_shapes):
        kind = rng.choice(["pw", "3x3", "dw", "dense"])
        if kind == "dense":
            shape = dict(m=int(rng.choice([1, 8, 32, 128])), k=int(rng.choice([128, 256, 384, 768])),
                         n=int(rng.choice([128, 256, 384, 1536])))
            specs += [dense_spec(**shape, cand=c) for c in REALIZED]
        else:
            ci, hw = int(rng.choice(chans)), int(rng.choice([7, 14, 28, 56]))
            co = ci if kind == "dw" else int(rng.choice(chans))
            k, s = (1, 1) if kind == "pw" else (3, int(rng.choice([1, 2])))
            specs += [conv_spec(ci, co, hw, k, s, ci if kind == "dw" else 1, c) for c in REALIZED]
    return specs


#: ms per unit of work of the synthetic roofline: call overhead, MACs by arithmetic, elements
#: quantized, output elements, int4 weights unpacked.
RATES = {"call": 0.004, "float": 2e-8, "pair": 1e-8, "int8": 3e-8, "int64": 5e-8, "quant": 1e-7, "out": 2e-7,
         "int4": 2e-8}


def roofline_law(spec) -> float:
    f = features(spec)
    arith = ("float" if f["float_kernel"] else "int64" if f["acc_bits"] == 64 else "pair" if f["pair_path"]
             else "int8")
    return (RATES["call"] + f["eff_macs"] * RATES[arith] + f["quant_elems"] * RATES["quant"]
            + f["out_elems"] * RATES["out"] + f["weight_elems"] * f["int4_unpack"] * RATES["int4"])


def test_tile_and_arithmetic_features():
    # a pointwise conv on 56x56 pixels: the vector axis is the 56 output columns (7 whole vectors)
    f = features(conv_spec(32, 64, 56, cand="w8a8"), host_target())
    assert (f["vec_ext"], f["blk_ext"], f["vec_ragged"], f["vec_waste"]) == (56, 64, 0, 1.0)
    assert f["pair_path"] == 1 and f["acc_lanes"] == 8 and f["quant_elems"] == 32 * 56 * 56
    assert f["eff_macs"] == f["macs"] and f["out_elems"] == 64 * 56 * 56
    # 7x7 pixels and 96 channels: rows too short for vectors -> vectorized over the channels
    f = features(conv_spec(32, 96, 7, cand="float"), host_target())
    assert f["vec_swapped"] == 1 and (f["vec_ext"], f["blk_ext"]) == (96, 7) and f["quant_elems"] == 0
    # a depthwise conv on 14x14: one ragged vector of 14 (2 registers: 16 lanes for 14 useful)
    f = features(conv_spec(64, 64, 14, 3, 1, 64, "w8a8"), host_target())
    assert f["kind_depthwise"] == 1 and f["vec_ragged"] == 1 and f["vec_waste"] == pytest.approx(16 / 14)
    assert f["pair_path"] == 0 and f["eff_macs"] > f["macs"]
    # ... at 8 bits realized as exact float32 sums, tiled like targets/depthwise.py: the whole
    # 14-pixel row, 2 rows (4 accumulators); w16a16 stays integer
    assert f["int_as_float"] == 1 and (f["tile_vi"], f["tile_bf"]) == (14, 2)
    f = features(conv_spec(64, 64, 56, 3, 1, 64, "w8a8"), host_target())
    assert (f["tile_vi"], f["tile_bf"]) == (8, 8)
    assert features(conv_spec(64, 64, 14, 3, 1, 64, "w16a16"))["int_as_float"] == 0
    # int64 accumulators halve the lanes; an RGB stem at 8 bits runs as float32 arithmetic
    assert features(conv_spec(32, 64, 56, cand="w16a16"))["acc_lanes"] == 4
    stem = features(conv_spec(3, 32, 56, 3, 2, cand="w8a8"))
    assert stem["k_odd"] == 1 and stem["int_as_float"] == 1 and stem["pair_path"] == 0
    assert stem["pair_waste"] == pytest.approx(4 / 3)
    # a dense layer of 8 tokens: rows (8) are the block axis, 384 columns the vector axis
    f = features(dense_spec(8, 256, 384, "w4a8"))
    assert (f["vec_ext"], f["blk_ext"], f["int4_unpack"], f["pair_path"]) == (384, 8, 1, 1)


def test_fit_recovers_a_noisy_roofline():
    """Latencies from a known roofline (per-class MAC rates, per-element quantize / epilogue cost,
    int4 unpacking) with 5% log-normal noise: on held-out layer shapes the baseline alone and the
    full model both land within the noise (median error < 6%) and rank almost perfectly."""
    specs = random_specs(80)
    rng = np.random.default_rng(1)
    entries = [{"ms": roofline_law(s) * float(np.exp(rng.normal(0.0, 0.05))), "spec": s} for s in specs]
    base = LatencyModel.fit(entries, host_target(), held_out=0.25, trees=False)
    full = LatencyModel.fit(entries, host_target(), held_out=0.25)
    for m in (base, full):
        assert m.report["median_abs_rel_error"] < 0.06 and m.report["spearman"] > 0.98, m.report
    # the baseline's MAC rates are the law's: a float 1x1 conv's prediction is the law's (no noise)
    probe = [conv_spec(96, 160, 28, cand=c) for c in REALIZED] + [dense_spec(64, 512, 512, c) for c in REALIZED]
    truth = np.array([roofline_law(s) for s in probe])
    np.testing.assert_allclose(base.predict_specs(probe), truth, rtol=0.06)


def test_timing_protocol_thread_clock_and_minimum(zoo):
    """The v2 protocol the training data is measured with: at one runtime thread the clock is the
    calling thread's CPU time (time_evaluator inside), ``ms`` is the minimum repeat; asking for the
    thread clock where the runtime has several threads is a clear error."""
    import tvm
    from tvm import relax

    _, _, tasks, _ = zoo
    task = next(t for t in tasks if t.spec["candidate"] == "w8a8")
    dev = tvm.cpu()
    vm = relax.VirtualMachine(task.compile(host_target()), dev)
    args = [tvm.runtime.tensor(a, dev) for a in random_inputs(task.inputs)]
    config = tvm.get_global_func("runtime.config_threadpool")
    before = int(tvm.get_global_func("runtime.NumThreads")())
    try:
        config(1, 1)
        runs = time_vm(vm, dev, args, Timing(warmup=1, repeat=4, min_repeat_ms=1))
        assert runs.clock == "thread" and len(runs) == 4 and all(r > 0 for r in runs)
        res = summarize(runs)
        assert res["ms"] == res["min_ms"] == pytest.approx(min(res["runs_ms"]), abs=1e-6) and res["clock"] == "thread"
        assert res["wall_min_ms"] > 0.5 * res["ms"]  # the work ran on this thread: CPU time ~ wall time
        wall = summarize(time_vm(vm, dev, args, Timing(warmup=1, repeat=3, min_repeat_ms=1, clock="wall",
                                                       statistic="median")))
        assert wall["clock"] == "wall" and wall["ms"] == wall["median_ms"]
        config(1, 2)
        if int(tvm.get_global_func("runtime.NumThreads")()) > 1:
            assert time_vm(vm, dev, args, Timing(warmup=1, repeat=2, min_repeat_ms=1)).clock == "wall"  # auto
            with pytest.raises(LatencyError, match="TVM_NUM_THREADS=1"):
                time_vm(vm, dev, args, Timing(repeat=2, min_repeat_ms=1, clock="thread"))
    finally:
        config(1, before)
    with pytest.raises(tvm_mpq.TvmMpqError, match="clock"):
        Timing(clock="cpu")


def test_too_few_measurements_is_a_clear_error():
    with pytest.raises(tvm_mpq.TvmMpqError, match="too few"):
        LatencyModel.fit({}, host_target())
