"""The predicted latency model: features, training, held-out report, JSON save / load, and the
PredictedLatency cost model -- on measurement entries with a known latency law, so the test is
exact about what the model must learn and needs no timing (real timings: benchmarks/)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
xgboost = pytest.importorskip("xgboost", reason="the predicted latency model needs xgboost (pip install xgboost-cpu)")

import tvm_mpq  # noqa: E402
from tvm_mpq.latency import LatencyCache, op_tasks  # noqa: E402
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


def test_too_few_measurements_is_a_clear_error():
    with pytest.raises(tvm_mpq.TvmMpqError, match="too few"):
        LatencyModel.fit({}, host_target())
