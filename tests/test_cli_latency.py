"""``tvm-mpq`` with a latency cost: --cost, --latency-budget-ms, --latency-cache, --latency-model, --order.

* A search priced by a saved latency model (--latency-model: nothing is timed, so the test is fast
  and deterministic) with --order noise_per_cost: exit 0, and the report (stdout, report.json,
  pareto.png) has relative BOPs and ms for every curve point; an unreachable --latency-budget-ms
  exits 2 with the report written.
* Every bad combination of the new flags exits 2 with one line naming the flag, before any slow
  step (no model import, no calibration).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("matplotlib")
pytest.importorskip("xgboost", reason="the predicted latency model needs xgboost (pip install xgboost-cpu)")

import tvm_mpq  # noqa: E402
from tvm_mpq.cli import build_parser, main  # noqa: E402
from tvm_mpq.latency import op_tasks  # noqa: E402
from tvm_mpq.latency_model import LatencyModel, features  # noqa: E402
from tvm_mpq.targets import host_target  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HW = 8


def _onnx_model(batch: int = 2):
    """Conv(3->8, 3x3) + Relu + Conv(8->8, 3x3) + Relu + Flatten + Gemm(512->5), input 'x'."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    inits = {
        "conv1.weight": rng.standard_normal((8, 3, 3, 3)) * 0.3, "conv1.bias": rng.standard_normal(8) * 0.1,
        "conv2.weight": rng.standard_normal((8, 8, 3, 3)) * 0.15, "conv2.bias": rng.standard_normal(8) * 0.1,
        "fc.weight": rng.standard_normal((8 * HW * HW, 5)) * 0.05, "fc.bias": np.zeros(5),
    }
    nodes = [
        helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Flatten", ["r2"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny2",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, HW, HW])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 5])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


def law(spec) -> float:
    """A synthetic latency law where integer kernels are slower than float ones (as measured on this
    CPU with the template schedules) and 16-bit ones slowest."""
    f = features(spec)
    per_mac = 1e-7 if f["is_float"] else (3e-7 if f["a_bits"] > 8 or f["w_bits"] > 8 else 2e-7)
    return 0.002 + f["macs"] * per_mac + 0.001 * f["int4_unpack"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_latency")
    onnx.save(_onnx_model(), str(d / "tiny.onnx"))
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 3, HW, HW)).astype(np.float32)
    np.savez(d / "cal.npz", x=x)
    # A latency model for this host, trained on the model's own op specs with the synthetic law.
    q = tvm_mpq.Quantizer(str(d / "tiny.onnx"), None, [(x[:2],)], progress=False)
    _, tasks = op_tasks(q, ["w16a16", "w8a16", "w8a8", "w4a8", "float"])
    entries = {t.signature: {"ms": law(t.spec), "spec": t.spec} for t in tasks}
    LatencyModel.fit(entries, host_target(), rounds=50).save(d / "latency-model.json")
    return d


def _run(capsys, argv):
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_cli_latency_model_and_order(files, tmp_path, capsys):
    d, out = files, tmp_path / "out"
    args = [str(d / "tiny.onnx"), "--calib-npz", str(d / "cal.npz"), "--out", str(out), "--sqnr-floor", "20",
            "--latency-model", str(d / "latency-model.json"), "--order", "noise_per_cost", "-q"]
    rc, stdout, err = _run(capsys, args)
    assert rc == 0, err
    data = json.loads((out / "report.json").read_text())
    assert data["budget"]["cost"] == "predicted_latency" and data["budget"]["cost_unit"] == "ms"
    assert data["search"]["order"] == "noise_per_cost"
    for p in data["pareto"]["points"]:
        assert p["bops"] > 0 and p["latency_ms"] > 0
    assert data["chosen"]["latency_ms"] > 0 and data["chosen"]["bops"] > 0 and data["chosen"]["score"] >= 20
    assert all(u["latency_ms"] > 0 and u["bops"] > 0 for u in data["pareto"]["uniform"])
    assert "rel. BOPs" in stdout and "ms (predicted)" in stdout and "flip order: noise_per_cost" in stdout
    assert (out / "pareto.png").read_bytes()[:8] == PNG_MAGIC and (out / "model.so").is_file()
    # The predicted cost is a sum over ops: along the noise_per_cost curve it falls at every point.
    ms = [p["latency_ms"] for p in data["pareto"]["points"]]
    assert len(ms) > 1 and all(b < a for a, b in zip(ms, ms[1:]))

    # The same with the paper's order and a budget in ms nothing meets: exit 2, the report written.
    out2 = tmp_path / "out2"
    rc, stdout, err = _run(capsys, [str(d / "tiny.onnx"), "--calib-npz", str(d / "cal.npz"), "--out", str(out2),
                                    "--cost", "predicted", "--latency-model", str(d / "latency-model.json"),
                                    "--latency-budget-ms", "1e-6", "-q"])
    assert rc == 2 and "ms" in err and "cost budget" in err
    data = json.loads((out2 / "report.json").read_text())
    assert data["chosen"] is None and data["search"]["order"] == "sensitivity"
    assert data["budget"]["cost_budget"] == 1e-6 and not (out2 / "model.so").exists()


@pytest.mark.parametrize("case", ["budget_with_bops", "both_budgets", "model_with_measured", "model_missing",
                                  "cache_with_bops", "bops_budget_in_ms", "order_with_config",
                                  "latency_with_config", "bad_order", "negative_budget"])
def test_cli_latency_flag_errors(files, tmp_path, capsys, case, monkeypatch):
    d = files
    base = [str(d / "tiny.onnx"), "--calib-npz", str(d / "cal.npz"), "--out", str(tmp_path / "out"), "-q"]
    model = str(d / "latency-model.json")
    argv, expect = {
        "budget_with_bops": (["--cost", "bops", "--latency-budget-ms", "5"], "--latency-budget-ms needs a latency cost"),
        "both_budgets": (["--latency-budget-ms", "5", "--bops-budget", "0.5"], "not both"),
        "model_with_measured": (["--cost", "measured", "--latency-model", model], "--latency-model"),
        "model_missing": (["--latency-model", str(d / "absent.json")], "does not exist"),
        "cache_with_bops": (["--latency-cache", str(tmp_path / "l.json")], "--latency-cache"),
        "bops_budget_in_ms": (["--cost", "measured", "--bops-budget", "0.5"], "--latency-budget-ms"),
        "order_with_config": (["--config", "w8a8", "--order", "noise_per_cost"], "--order"),
        "latency_with_config": (["--config", "w8a8", "--cost", "measured"], "--cost"),
        "bad_order": (["--order", "fastest"], "--order"),
        "negative_budget": (["--latency-budget-ms", "-3"], "--latency-budget-ms"),
    }[case]
    # Nothing slow may run before these errors: importing the model would be the first slow step.
    monkeypatch.setattr("tvm_mpq.cli.load_model", lambda path: pytest.fail("the model was imported"))
    t0 = time.perf_counter()
    rc, _, err = _run(capsys, base + argv)
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("tvm-mpq: error:")]
    assert len(lines) == 1 and expect in lines[0], err
    assert "Traceback" not in err and time.perf_counter() - t0 < 30


def test_help_lists_latency_flags():
    text = build_parser().format_help()
    for flag in ("--cost", "--latency-budget-ms", "--latency-cache", "--latency-model", "--order",
                 "noise_per_cost", "latency-cache.json"):
        assert flag in text, flag
