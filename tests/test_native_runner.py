"""The native runner ``tvm-mpq-benchmark`` (native/runner/, built by ``pip install``).

It loads a module written by ``QuantizedModule.export_library`` with TVM's C++ runtime alone and
must compute exactly what Python's ``relax.VirtualMachine`` computes on the same input (the
kernels are integer, so bit for bit), report positive timings, and refuse bad input with a
non-zero exit code and a message naming the problem. No timing values are asserted.
"""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tvm  # noqa: E402
from tvm import relax  # noqa: E402

import tvm_mpq  # noqa: E402
from tvm_mpq.native import NativeRunnerError, parse_output, run_benchmark, runner_env, runner_path  # noqa: E402
from small_models import Small  # noqa: E402

TIMEOUT = 300

try:
    runner_path()
except FileNotFoundError as e:  # pip install builds it; only a machine without a C++ compiler lacks it
    pytest.skip(str(e), allow_module_level=True)


def _vm_out(out) -> np.ndarray:
    if isinstance(out, tvm.runtime.Tensor):
        return out.numpy()
    assert len(out) == 1, f"expected one output, got {len(out)}"
    return _vm_out(out[0])


@pytest.fixture(scope="module", params=["w8a8", "mixed"])
def exported(request, tmp_path_factory):
    """A realized module exported to a .so, a fixed input in .npy and raw form, and the Python
    VM's output of the exported library on that input."""
    torch.manual_seed(0)
    model = Small().eval()
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((2, 3, 9, 9)).astype(np.float32) for _ in range(3)]
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    config = "w8a8" if request.param == "w8a8" else {"conv": "w4a8", "fc": "w16a16"}
    qm = tvm_mpq.compile(model, calibration=calib, example_inputs=(torch.from_numpy(x),), config=config,
                         progress=False)
    d = tmp_path_factory.mktemp(f"native_{request.param}")
    so, x_npy, x_bin = d / "model.so", d / "x.npy", d / "x.bin"
    qm.export_library(so)
    np.save(x_npy, x)
    x.tofile(x_bin)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(so)), tvm.cpu())
    ref = _vm_out(vm["main"](tvm.runtime.tensor(x)))
    np.testing.assert_array_equal(ref, qm.run(x))
    return {"dir": d, "so": so, "x": x, "x_npy": x_npy, "x_bin": x_bin, "ref": ref}


def _run(*args):
    return subprocess.run([runner_path(), *map(str, args)], capture_output=True, text=True, env=runner_env(),
                          timeout=TIMEOUT)


def test_runner_is_installed():
    path = runner_path()
    assert os.path.isfile(path) and os.access(path, os.X_OK), path
    proc = _run("--help")
    assert proc.returncode == 0, proc.stderr
    assert "--threads" in proc.stdout and "--input" in proc.stdout


def test_output_equals_python_vm(exported):
    res = run_benchmark(exported["so"], exported["x_npy"], repeat=5, warmup=2, timeout=TIMEOUT)
    assert len(res.outputs) == 1
    out = res.outputs[0]
    assert out.dtype == exported["ref"].dtype and out.shape == exported["ref"].shape
    np.testing.assert_array_equal(out, exported["ref"])
    # timings parse as positive numbers, one per timed run
    assert len(res.runs_ms) == 5 and all(t > 0 for t in res.runs_ms), res.stdout
    assert 0 < res.min_ms <= res.median_ms <= res.max_ms
    assert res.mean_ms > 0 and res.std_ms >= 0


def test_numpy_input_and_threads(exported):
    res = run_benchmark(exported["so"], exported["x"], threads=1, repeat=3, warmup=1, timeout=TIMEOUT)
    assert res.threads == 1, res.stdout
    np.testing.assert_array_equal(res.outputs[0], exported["ref"])


def test_raw_input_and_raw_output(exported):
    out_bin = exported["dir"] / "out.bin"
    proc = _run(exported["so"], "--input", f"{exported['x_bin']}:2x3x9x9:float32", "--output", out_bin,
                "--repeat", 4, "--threads", 1)
    assert proc.returncode == 0, proc.stderr
    ref = exported["ref"]
    got = np.fromfile(out_bin, dtype=ref.dtype).reshape(ref.shape)
    np.testing.assert_array_equal(got, ref)
    stats = parse_output(proc.stdout)
    assert len(stats["runs_ms"]) == 4 and stats["median_ms"] > 0
    assert f"input 0 (x): float32[2,3,9,9] from {exported['x_bin']}" in proc.stdout, proc.stdout


def test_random_input_runs(exported):
    res = run_benchmark(exported["so"], (2, 3, 9, 9), repeat=2, warmup=0, timeout=TIMEOUT)
    assert res.outputs[0].shape == exported["ref"].shape and np.isfinite(res.outputs[0]).all()


# ------------------------------------------------------------------------------------------------
# Bad input: non-zero exit code and a message naming the problem
# ------------------------------------------------------------------------------------------------


def _fails(proc, code, *fragments):
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "tvm-mpq-benchmark: error:" in proc.stderr, proc.stderr
    for f in fragments:
        assert f in proc.stderr, (f, proc.stderr)


def test_missing_model_file(exported):
    missing = exported["dir"] / "no_such_model.so"
    _fails(_run(missing, "--input", exported["x_npy"]), 3, "no_such_model.so", "does not exist")


def test_missing_input_file(exported):
    missing = exported["dir"] / "no_such_input.npy"
    _fails(_run(exported["so"], "--input", missing), 3, "no_such_input.npy", "does not exist")
    missing_raw = exported["dir"] / "no_such_input.bin"
    _fails(_run(exported["so"], "--input", f"{missing_raw}:2x3x9x9"), 3, "no_such_input.bin", "does not exist")


def test_wrong_input_shape(exported):
    wrong = exported["dir"] / "wrong.npy"
    np.save(wrong, np.zeros((1, 3, 9, 9), np.float32))
    proc = _run(exported["so"], "--input", wrong)
    _fails(proc, 3, "running main failed", "param=x", "(2, 3, 9, 9)")
    with pytest.raises(NativeRunnerError, match=r"running main failed.*\(2, 3, 9, 9\)") as info:
        run_benchmark(exported["so"], np.zeros((2, 3, 8, 9), np.float32), timeout=TIMEOUT)
    assert info.value.returncode == 3


def test_wrong_dtype_and_raw_size(exported):
    _fails(_run(exported["so"], "--input", "2x3x9x9:int8"), 3, "dtype float32 but get int8")
    # the raw file holds 2x3x9x9 float32: another shape is refused before running
    _fails(_run(exported["so"], "--input", f"{exported['x_bin']}:2x3x9x8:float32"), 3, "1944 bytes", "needs 1728")


def test_wrong_number_of_inputs(exported):
    _fails(_run(exported["so"]), 3, "main takes 1 input(s) (x), 0 given")
    _fails(_run(exported["so"], "--input", exported["x_npy"], "--input", exported["x_npy"]), 3, "2 given")


def test_bad_arguments(exported):
    _fails(_run(exported["so"], "--input", exported["x_npy"], "--bogus"), 2, "unknown option '--bogus'")
    _fails(_run(exported["so"], "--input", exported["x_npy"], "--repeat", "0"), 2, "--repeat must be >= 1")
    _fails(_run(exported["so"], "--input", exported["x_npy"], "--threads", "two"), 2, "not an integer")
    _fails(_run(), 2, "no model given")
    _fails(_run(exported["so"], "--input", exported["x_npy"], "--function", "nope"), 2, "no function 'nope'")


def test_not_a_vm_module(exported):
    _fails(_run(exported["x_npy"], "--input", exported["x_npy"]), 3, "cannot load model")
