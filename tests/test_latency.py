"""Measured latency: one-op modules, the JSON cache, local and RPC measurement, faults.

* One-op modules compute what the op computes (SQNR against the float op) and identical layers
  share one signature, hence one measurement.
* ``MeasuredLatency`` locally: every (op, candidate) positive and finite; cost = sum of layers + C;
  the end-to-end check; a rerun on the same cache measures nothing.
* Through a TVM RPC tracker with two servers on 127.0.0.1 (subprocesses in their own process
  groups, killed by group at the end whatever happens): both servers take sessions, and the
  results agree with local measurement in magnitude (timings are noisy on shared cores: no tighter
  timing assertion than that).
* Faults: a server SIGKILLed mid-run -- the other server finishes the run and nothing finished is
  lost; the last server killed -- the run fails with a clear RPCError, the finished measurements
  stay in the cache and the rerun on a restarted server measures only what is missing. A server
  that accepts connections and never answers (hung) fails within the deadline.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tvm  # noqa: E402
from tvm import relax  # noqa: E402

import tvm_mpq  # noqa: E402
from tvm_mpq.calibration import sqnr_db  # noqa: E402
from tvm_mpq.latency import (  # noqa: E402
    LatencyCache,
    code_digest_text,
    LocalDevice,
    MeasuredLatency,
    Timing,
    measure_ops,
    one_op_module,
    op_candidate_key,
    op_tasks,
)
from tvm_mpq.rpc import RPCDevice, RPCError  # noqa: E402
from tvm_mpq.targets import host_target  # noqa: E402
from tvm_mpq.targets.pipeline import build  # noqa: E402

HERE = Path(__file__).resolve().parent
import sys  # noqa: E402

sys.path.insert(0, str(HERE))
import search_child as child  # noqa: E402
from rpc_cluster import RPCCluster  # noqa: E402

FAST = Timing(warmup=1, repeat=3, number=1, min_repeat_ms=2)
KEY = "tvm-mpq-test"


@pytest.fixture(scope="module", autouse=True)
def cluster(tmp_path_factory):
    """A tracker and two servers (key KEY), booting in the background while the local tests run;
    every process is killed by process group at the end, whatever happened."""
    import importlib.util

    missing = [m for m in ("tornado", "cloudpickle") if importlib.util.find_spec(m) is None]
    if missing:  # TVM's tracker / server processes need them (apache-tvm's "rpc" extra)
        yield f"TVM's RPC tracker and server need {' and '.join(missing)} (pip install {' '.join(missing)})"
        return
    c = RPCCluster(tmp_path_factory.mktemp("rpc"))
    try:
        c.start_async(KEY, 2)
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def servers(cluster):
    if isinstance(cluster, str):
        pytest.skip(cluster)
    cluster.wait(KEY, 2)
    return cluster


@pytest.fixture(scope="module")
def quantizer():
    return child.build_quantizer()


@pytest.fixture(scope="module")
def local_cache(tmp_path_factory):
    """Local measurements shared by the local and the RPC comparison tests."""
    return tmp_path_factory.mktemp("local") / "latency.json"


class TwinConvs(torch.nn.Module):
    """Two identical 3x3 convs in a row (no ReLU between: both inputs have a zero point)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.b = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.b(self.a(x))


# ------------------------------------------------------------------------------------------------
# Local
# ------------------------------------------------------------------------------------------------


def _float_op(quantizer, op_name: str, x: np.ndarray) -> np.ndarray:
    m = one_op_module(quantizer, op_name, "float")
    vm = relax.VirtualMachine(build(m.mod, host_target()), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


@pytest.mark.parametrize("key", ["w16a16", "w8a16", "w8a8", "w4a8"])
def test_one_op_module_computes_the_op(quantizer, key):
    m = one_op_module(quantizer, "conv3", key)
    assert m.spec["candidate"] == key and m.spec["kind"] == "conv2d"
    assert m.spec["realized"]["accumulator"] in ("int32", "int64")
    hi = quantizer.observers[quantizer.graph.group_of("conv3", 0).name].max  # the calibrated range
    x = np.random.default_rng(0).uniform(0, hi, m.inputs[0][0]).astype(np.float32)
    vm = relax.VirtualMachine(build(m.mod, host_target()), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x)).numpy()
    ref = _float_op(quantizer, "conv3", x)
    assert out.shape == ref.shape
    assert sqnr_db(ref, out) > {"w16a16": 70, "w8a16": 38, "w8a8": 38, "w4a8": 20}[key]


def test_identical_layers_share_a_signature():
    x = np.random.default_rng(0).standard_normal((1, 4, 6, 6)).astype(np.float32)
    q = tvm_mpq.Quantizer(TwinConvs().eval(), None, [(x,)], (torch.from_numpy(x),), progress=False)
    table, tasks = op_tasks(q, ["w8a8", "w4a8"])
    assert len(table) == 6  # 2 ops x (w8a8, w4a8, float)
    assert len(tasks) == 3  # one measurement per distinct signature
    for key in ("w8a8", "w4a8", "float"):
        assert table[("a", key)] == table[("b", key)]
    assert len({table[("a", k)] for k in ("w8a8", "w4a8", "float")}) == 3


def test_pipeline_digest_ignores_comments_and_docstrings():
    """Cached timings are keyed by a digest of the schedules' code: editing a comment or a
    docstring keeps it (and every timing), changing the code does not."""
    src = 'def f(x):\n    """Doc."""\n    return x + 1  # why\n'
    assert code_digest_text(src) == code_digest_text("def f(x):\n    # another note\n    return x + 1\n")
    assert code_digest_text(src) != code_digest_text('def f(x):\n    """Doc."""\n    return x + 2\n')
    assert code_digest_text('"""Module doc."""\nX = 1\n') == code_digest_text("X = 1\n")


class TinyAttention(torch.nn.Module):
    """q @ k^T: an activation x activation matmul between two dense layers."""

    def __init__(self):
        super().__init__()
        self.q = torch.nn.Linear(8, 8)
        self.k = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.q(x) @ self.k(x).transpose(-1, -2)


def test_activation_matmul_candidates():
    x = np.random.default_rng(0).standard_normal((1, 6, 8)).astype(np.float32)
    q = tvm_mpq.Quantizer(TinyAttention().eval(), None, [(x,)], (torch.from_numpy(x),), progress=False)
    mm = next(n for n, o in q.graph.ops.items() if o.kind == "matmul")
    keys = tvm_mpq.latency.op_candidate_keys(q, mm, ["w8a8", "w8a16"])
    assert set(keys) == {"a8xa8", "a8xa16", "a8xf", "a16xa8", "a16xa16", "a16xf", "fxa8", "fxa16", "float"}
    ref = None
    for key in ("float", "a16xa16", "a8xf"):
        m = one_op_module(q, mm, key)
        assert len(m.inputs) == 2 and m.spec["kind"] == "matmul"
        vm = relax.VirtualMachine(build(m.mod, host_target()), tvm.cpu())
        args = [np.random.default_rng(i).uniform(-1, 1, s).astype(np.float32) for i, (s, _) in enumerate(m.inputs)]
        out = vm["main"](*[tvm.runtime.tensor(a) for a in args]).numpy()
        ref = out if ref is None else ref
        assert sqnr_db(ref, out) > 15
    cfg = q.config({g: ("w8a16" if i == 0 else "float") for i, g in enumerate(q.group_names)})
    assert op_candidate_key(q, mm, cfg) in keys


class CountingDevice(LocalDevice):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.measured = 0

    def measure(self, tasks, on_result, progress=False):
        self.measured += len(tasks)
        super().measure(tasks, on_result, progress)


def test_measured_latency_local(quantizer, local_cache):
    path = local_cache
    dev = CountingDevice(timing=FAST)
    cost = MeasuredLatency(quantizer, ["w8a8", "w4a8"], device=dev, cache=path, progress=False)
    assert cost.unit == "ms" and isinstance(cost, tvm_mpq.cost.CostModel)
    assert len(cost.table) == 4 * 3
    assert all(math.isfinite(v) and v > 0 for v in cost.table.values())
    assert math.isfinite(cost.constant_ms) and cost.float_end_to_end_ms > 0
    cfg = quantizer.config("w8a8")
    per_op = cost.per_op(cfg)
    assert cost(cfg) == pytest.approx(sum(per_op.values()) + cost.constant_ms)
    assert per_op["conv1"] == cost.table[("conv1", op_candidate_key(quantizer, "conv1", cfg))]
    rows = cost.end_to_end_check({"w8a8": "w8a8", "w4a8": "w4a8"})
    assert [r["config"] for r in rows] == ["w8a8", "w4a8"]
    for r in rows:
        assert r["end_to_end_ms"] > 0 and math.isfinite(r["sum_of_layers_error"])

    data = json.loads(path.read_text())
    assert data["format"] == "tvm_mpq.latency-cache/1"
    entries = data["namespaces"][dev.namespace]
    assert len(entries) == dev.measured  # 12 ops + float, w8a8 and w4a8 end to end
    some = next(iter(entries.values()))
    assert some["ms"] > 0 and some["spec"]["method"] and len(some["runs_ms"]) == FAST.repeat

    # A rerun on the same cache measures nothing.
    dev2 = CountingDevice(timing=FAST)
    cost2 = MeasuredLatency(quantizer, ["w8a8", "w4a8"], device=dev2, cache=path, progress=False)
    assert dev2.measured == 0
    assert cost2.table == cost.table and cost2.constant_ms == cost.constant_ms


# ------------------------------------------------------------------------------------------------
# RPC
# ------------------------------------------------------------------------------------------------


def test_rpc_tracker_matches_local(quantizer, servers, local_cache):
    cache = LatencyCache(local_cache)
    device = RPCDevice(tracker=servers.tracker, key=KEY, timing=FAST, connect_timeout_s=30)
    assert device.num_servers() == 2
    remote = measure_ops(quantizer, ["w8a8", "w4a8"], device=device, cache=cache)
    assert device.last_run["workers"] == 2 and device.last_run["sessions"] == 2
    local = measure_ops(quantizer, ["w8a8", "w4a8"], device=LocalDevice(timing=FAST), cache=cache)
    assert set(remote) == set(local)
    assert all(math.isfinite(v) and v > 0 for v in remote.values())
    # Same machine, other processes: the same order of magnitude (shared cores are noisy).
    ratio = sum(remote.values()) / sum(local.values())
    assert 0.1 < ratio < 10, (remote, local)
    assert set(cache.namespaces) == {device.namespace, LocalDevice().namespace}


def _wait_entries(path: Path, namespace: str, count: int, timeout: float, thread: threading.Thread, box) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and thread.is_alive():
        try:
            entries = json.loads(path.read_text())["namespaces"].get(namespace, {})
        except (OSError, ValueError, KeyError):
            entries = {}
        if len(entries) >= count:
            return entries
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} measurements cached in {timeout} s ({box})")


def _run_in_thread(fn):
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    th = threading.Thread(target=target, daemon=True)
    th.start()
    return th, box


def test_server_killed_mid_run(quantizer, servers, tmp_path):
    path = tmp_path / "latency.json"
    slow = Timing(warmup=1, repeat=3, number=1, min_repeat_ms=30)
    device = RPCDevice(tracker=servers.tracker, key=KEY, timing=slow, connect_timeout_s=30, retries=1,
                       backoff_s=0.2)
    ns = device.namespace
    table, tasks = op_tasks(quantizer, ["w8a8", "w4a8"])

    # 1. One of two servers dies: the other finishes the run; nothing finished is lost.
    th, box = _run_in_thread(lambda: measure_ops(quantizer, ["w8a8", "w4a8"], device=device, cache=LatencyCache(path)))
    before = _wait_entries(path, ns, 2, 60, th, box)
    victim = servers.alive(KEY)[0]
    servers.kill(victim)
    th.join(120)
    assert not th.is_alive()
    assert "error" not in box, box.get("error")
    after = json.loads(path.read_text())["namespaces"][ns]
    assert len(after) == len(tasks)
    for sig, e in before.items():
        assert after[sig] == e  # measured before the kill, kept as it was

    # 2. The last server dies: a clear error; what finished is cached; a rerun resumes.
    cands2 = ["w16a16", "w8a16"]
    _, tasks2 = op_tasks(quantizer, cands2)
    todo2 = {t.signature for t in tasks2} - set(after)
    th, box = _run_in_thread(lambda: measure_ops(quantizer, cands2, device=device, cache=LatencyCache(path)))
    _wait_entries(path, ns, len(after) + 1, 60, th, box)
    servers.kill(servers.alive(KEY)[0])
    th.join(120)
    assert not th.is_alive()
    err = box.get("error")
    assert isinstance(err, RPCError), box
    assert "rerun to resume" in str(err) and "not measured" in str(err)
    kept = json.loads(path.read_text())["namespaces"][ns]
    done_before_rerun = len(set(kept) & todo2)
    assert 1 <= done_before_rerun < len(todo2)

    servers.start_server(KEY)
    result = measure_ops(quantizer, cands2, device=device, cache=LatencyCache(path))
    assert device.last_run["done"] == len(todo2) - done_before_rerun  # only what was missing
    assert all(v > 0 for v in result.values())
    final = json.loads(path.read_text())["namespaces"][ns]
    assert all(final[s] == kept[s] for s in kept)


def test_hung_server_times_out(quantizer, tmp_path):
    """A 'server' that accepts TCP connections and never answers: the deadline fires."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    try:
        device = RPCDevice("127.0.0.1", port, timing=FAST, connect_timeout_s=1.0, timeout_s=1.0, retries=1,
                           backoff_s=0.1)
        t0 = time.monotonic()
        with pytest.raises(RPCError, match="did not finish within"):
            measure_ops(quantizer, ["w8a8"], device=device, cache=LatencyCache(tmp_path / "l.json"), ops=["fc"])
        assert time.monotonic() - t0 < 20
    finally:
        listener.close()


def test_rpc_errors_are_clear(tmp_path):
    with pytest.raises(RPCError, match="tracker"):
        RPCDevice()
    with pytest.raises(RPCError, match="key"):
        RPCDevice(tracker=("127.0.0.1", 9190))


# ------------------------------------------------------------------------------------------------
# Search integration (reuses the local measurements above: nothing is re-measured)
# ------------------------------------------------------------------------------------------------


def test_compile_with_latency_budget(local_cache):
    from tvm_mpq.search import search

    cal = child.calibration()
    model = child.FragileCNN().eval()
    kw = dict(candidates=["w8a8", "w4a8"], cost="measured", latency_cache=str(local_cache), progress=False)
    module = tvm_mpq.compile(model, None, cal, example_inputs=(torch.from_numpy(cal[0][0]),),
                             latency_budget_ms=1e6, **kw)
    res = module.search
    assert res.cost_unit == "ms" and res.cost_name == "measured_latency"
    assert res.chosen == 0 and res.cost_budget == 1e6
    assert all(p.cost > 0 and math.isfinite(p.cost) for p in res.curve)
    assert res.to_dict()["cost"]["unit"] == "ms"
    q = module.quantizer
    res = search(q, calibration_inputs=cal, latency_budget_ms=1e-6, **kw)
    assert not res.feasible and "ms" in res.message
    with pytest.raises(tvm_mpq.ConfigError, match="latency cost"):
        search(q, calibration_inputs=cal, latency_budget_ms=1.0, candidates=["w8a8"], cost="bops", progress=False)
