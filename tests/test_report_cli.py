"""The report (``tvm_mpq.report.Report``) and the command line (``tvm-mpq``), on tiny models.

* ``tvm_mpq.compile`` with an SQNR floor attaches a Report: its text names every group and the
  chosen point; ``save`` writes report.json (reloads, has the sections), config.json (reloads as the
  chosen Config) and two valid PNGs. Without a search the report says so and writes no plots.
* ``tvm-mpq`` in-process: a torch ``.pt2`` with a folder of PNG images realizing ``--config w8a8``
  writes a model.so that ``tvm.runtime.load_module`` + ``relax.VirtualMachine`` run close to torch;
  an ONNX model (Conv+Relu+Flatten+Gemm built with onnx.helper) with a ``.npz`` searches under
  ``--sqnr-floor``, and a rerun resumes from the cache and realizes the written config.json.
* Every user error exits with status 2 and one line naming the problem, without a traceback; an
  infeasible floor writes the report but no model. ``tvm-mpq --help`` (the installed console
  script, in a subprocess) exits 0 and shows an example.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("PIL")
pytest.importorskip("matplotlib")

import tvm  # noqa: E402
from tvm import relax  # noqa: E402

import tvm_mpq  # noqa: E402
from tvm_mpq import Config  # noqa: E402
from tvm_mpq.calibration import sqnr_db  # noqa: E402
from tvm_mpq.cli import main  # noqa: E402
from tvm_mpq.report import Report  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HW = 8


class TinyCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * HW * HW, 5)
        rng = np.random.default_rng(0)
        with torch.no_grad():
            for p in self.parameters():
                fan_in = int(np.prod(p.shape[1:])) if p.ndim > 1 else 4
                p.copy_(torch.from_numpy((rng.standard_normal(p.shape) / np.sqrt(fan_in)).astype(np.float32)))

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        y = torch.relu(self.conv2(y))
        return self.fc(y.flatten(1))


def _batches(n=3, batch=1, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((batch, 3, HW, HW)).astype(np.float32),) for _ in range(n)]


def _onnx_model(batch: int = 2):
    """Conv(3->4, 3x3, pad 1) + Relu + Flatten + Gemm(256->5), input 'x' (batch, 3, 8, 8)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    w = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    b = (rng.standard_normal(4) * 0.1).astype(np.float32)
    g = (rng.standard_normal((4 * HW * HW, 5)) * 0.1).astype(np.float32)
    c = np.zeros(5, np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, HW, HW])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 5])],
        [numpy_helper.from_array(w, "conv.weight"), numpy_helper.from_array(b, "conv.bias"),
         numpy_helper.from_array(g, "fc.weight"), numpy_helper.from_array(c, "fc.bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """tiny.pt2 (batch 1), tiny.onnx (batch 2), images/ (4 random PNGs of odd sizes), cal.npz."""
    from PIL import Image

    d = tmp_path_factory.mktemp("cli_inputs")
    model = TinyCNN().eval()
    ep = torch.export.export(model, (torch.zeros(1, 3, HW, HW),))
    torch.export.save(ep, str(d / "tiny.pt2"))
    onnx.save(_onnx_model(), str(d / "tiny.onnx"))
    rng = np.random.default_rng(3)
    (d / "images").mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (12 + 3 * i, 10 + i, 3), dtype=np.uint8)).save(d / "images" / f"im{i}.png")
    (d / "empty").mkdir()
    (d / "empty" / "notes.txt").write_text("not an image")
    np.savez(d / "cal.npz", x=rng.standard_normal((6, 3, HW, HW)).astype(np.float32))
    np.savez(d / "wrong.npz", x=rng.standard_normal((6, 3, 16, 16)).astype(np.float32))
    return {"dir": d, "torch_model": model}


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 100 and path.read_bytes()[:8] == PNG_MAGIC


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def test_report_of_a_searched_compile(tmp_path):
    cal = _batches()
    qm = tvm_mpq.compile(TinyCNN().eval(), calibration=cal, example_inputs=(torch.from_numpy(cal[0][0]),),
                         sqnr_floor_db=30, progress=False)
    report = qm.report
    assert isinstance(report, Report) and report.searched
    chosen = qm.search.chosen
    text = report.text()
    for g in qm.config:
        assert g in text
    assert f"point {chosen} of {len(qm.search.curve) - 1}" in text and "<- chosen" in text
    assert "Per-layer table" in text and qm.summary().splitlines()[0] in text
    assert "phase 1 (sensitivity)" in text and "realize + compile" in text

    written = report.save(tmp_path)
    assert set(written) == {"report.json", "config.json", "sensitivity.png", "pareto.png"}
    data = json.loads((tmp_path / "report.json").read_text())
    for key in ("target", "model", "searched", "outcome", "config", "budget", "search", "chosen",
                "sensitivity", "pareto", "timings", "layers"):
        assert key in data, key
    assert data["searched"] is True and data["chosen"]["index"] == chosen
    assert data["budget"]["target"] == 30.0
    assert set(data["sensitivity"]["table"]) == set(qm.config)
    assert data["sensitivity"]["candidates"] == ["w16a16", "w8a16", "w8a8", "w4a8"]
    points = data["pareto"]["points"]
    assert len(points) == len(qm.search.curve) and sum(p["evaluated"] for p in points) == qm.search.evaluations
    assert [p["index"] for p in points if p["chosen"]] == [chosen]
    assert {"phase1_s", "phase2_s", "calibration_s", "compile_s"} <= set(data["timings"])
    assert data["search"]["evaluations"]["phase2"] == qm.search.evaluations
    assert Config.from_json(tmp_path / "config.json") == qm.config
    assert _is_png(tmp_path / "sensitivity.png") and _is_png(tmp_path / "pareto.png")


def test_report_without_search(tmp_path):
    cal = _batches(2)
    qm = tvm_mpq.compile(TinyCNN().eval(), calibration=cal, example_inputs=(torch.from_numpy(cal[0][0]),),
                         config="w8a8", progress=False)
    report = qm.report
    assert not report.searched and "no search ran" in report.text()
    (tmp_path / "pareto.png").write_bytes(b"stale")  # a plot of an earlier search must not linger
    assert set(report.save(tmp_path)) == {"report.json", "config.json"}
    assert not (tmp_path / "pareto.png").exists()
    data = Report.load(tmp_path)
    assert data["searched"] is False and data["sensitivity"] is None and data["config"]["conv1"] == "w8a8"


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def test_cli_config_pt2_images_runs(files, tmp_path, capsys):
    d, out = files["dir"], tmp_path / "out"
    rc = main([str(d / "tiny.pt2"), "--calib-images", str(d / "images"), "--config", "w8a8",
               "--out", str(out), "-q"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "no search ran" in captured.out and "Per-layer table" in captured.out
    assert {p.name for p in out.iterdir()} == {"model.so", "config.json", "report.json"}
    assert set(Config.from_json(out / "config.json").values()) == {tvm_mpq.Candidate.parse("w8a8")}

    lib = tvm.runtime.load_module(str(out / "model.so"))
    vm = relax.VirtualMachine(lib, tvm.cpu())
    x = _batches(1, seed=7)[0][0]
    y = vm["main"](tvm.runtime.tensor(x))
    y = (y[0] if not hasattr(y, "numpy") else y).numpy()
    with torch.no_grad():
        ref = files["torch_model"](torch.from_numpy(x)).numpy()
    assert y.shape == ref.shape and sqnr_db(ref, y) > 15


def test_cli_search_onnx_npz_resumes(files, tmp_path, capsys):
    d, out = files["dir"], tmp_path / "out"
    args = [str(d / "tiny.onnx"), "--calib-npz", str(d / "cal.npz"), "--out", str(out),
            "--sqnr-floor", "25", "--search", "interpolation", "-q"]
    rc = main(args)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert {"model.so", "config.json", "report.json", "sensitivity.png", "pareto.png", "cache"} <= {
        p.name for p in out.iterdir()}
    assert "conv" in captured.out and "fc" in captured.out and "<- chosen" in captured.out
    data = json.loads((out / "report.json").read_text())
    assert data["searched"] and data["model"]["inputs"][0]["shape"] == [2, 3, HW, HW]
    assert data["chosen"]["score"] >= 25 and data["search"]["mode"] == "interpolation"
    assert data["timings"]["import_s"] > 0 and data["pareto"]["uniform"]
    assert _is_png(out / "sensitivity.png") and _is_png(out / "pareto.png")

    assert main(args) == 0  # rerun: everything comes from the cache
    again = json.loads((out / "report.json").read_text())
    assert again["search"]["evaluations"]["phase1_reused"] == again["search"]["evaluations"]["phase1"]
    assert again["config"] == data["config"]

    # Realize the written configuration without searching.
    out2 = tmp_path / "out2"
    assert main([str(d / "tiny.onnx"), "--calib-npz", str(d / "cal.npz"), "--config", str(out / "config.json"),
                 "--out", str(out2), "-q"]) == 0
    assert Config.from_json(out2 / "config.json") == Config.from_json(out / "config.json")
    capsys.readouterr()


def _rc_err(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err
    return rc, err


@pytest.mark.parametrize("case", ["no_images", "missing_folder", "crop", "npz_shape", "extension",
                                  "missing_model", "config_and_search", "bad_candidate", "npz_batch"])
def test_cli_errors_exit_2_with_one_line(files, tmp_path, capsys, case):
    d = files["dir"]
    onnx_path, pt2 = str(d / "tiny.onnx"), str(d / "tiny.pt2")
    images, out = str(d / "images"), str(tmp_path / "out")
    argv, expect = {
        "no_images": ([pt2, "--calib-images", str(d / "empty"), "--out", out], "holds no images"),
        "missing_folder": ([pt2, "--calib-images", str(d / "nope"), "--out", out], "does not exist"),
        "crop": ([pt2, "--calib-images", images, "--crop", "224", "--out", out], "--crop 8x8"),
        "npz_shape": ([onnx_path, "--calib-npz", str(d / "wrong.npz"), "--out", out], "expects (2, 3, 8, 8)"),
        "extension": ([str(d / "cal.npz"), "--calib-images", images, "--out", out], "unsupported model file"),
        "missing_model": ([str(d / "absent.onnx"), "--calib-images", images, "--out", out], "does not exist"),
        "config_and_search": ([pt2, "--calib-images", images, "--config", "w8a8", "--sqnr-floor", "20",
                               "--out", out], "--sqnr-floor"),
        "bad_candidate": ([pt2, "--calib-images", images, "--candidates", "w8a8,w3a8", "--out", out], "w3a8"),
        "npz_batch": ([onnx_path, "--calib-npz", str(d / "cal.npz"), "--batch", "3", "--out", out],
                      "multiple of the model's batch size 2"),
    }[case]
    rc, err = _rc_err(capsys, argv + ["-q"])
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("tvm-mpq: error:")]
    assert len(lines) == 1 and expect in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "model.so").exists()


def test_cli_infeasible_floor_writes_report_only(files, tmp_path, capsys):
    d, out = files["dir"], tmp_path / "out"
    rc, err = _rc_err(capsys, [str(d / "tiny.onnx"), "--calib-npz", str(d / "cal.npz"), "--out", str(out),
                               "--sqnr-floor", "300", "--candidates", "w8a8,w4a8", "-q"])
    assert rc == 2 and "unreachable" in err
    assert (out / "report.json").is_file() and _is_png(out / "pareto.png")
    assert not (out / "model.so").exists() and not (out / "config.json").exists()
    assert json.loads((out / "report.json").read_text())["chosen"] is None


def test_console_script_help():
    exe = Path(sys.executable).parent / "tvm-mpq"
    if not exe.exists():
        found = shutil.which("tvm-mpq")
        if found is None:
            pytest.skip("the tvm-mpq console script is not installed (pip install -e . --no-deps)")
        exe = Path(found)
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "example:" in proc.stdout and "tvm-mpq mobilenet_v2.onnx" in proc.stdout
    for flag in ("--calib-images", "--calib-npz", "--sqnr-floor", "--bops-budget", "--config", "model.so"):
        assert flag in proc.stdout
