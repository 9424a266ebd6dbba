"""Optional MetaSchedule tuning (``tune=`` / ``targets/tuning.py``) on a tiny realized model.

MetaSchedule costs seconds per trial, so one kernel (the w8a8 dense of a conv + dense model) is
tuned, with 2 trials and a tiny evolutionary search; everything else is checked without tuning:

* the tuned kernel computes bit for bit what the template kernel computes (integer kernels, and
  FMA fences keep the float rescale + bias rounding twice), whether or not it is the one used;
* the database directory gets records, and a second run -- in this process or another -- finds
  them and runs no trial (the tuner is not called; the record count stays the same);
* ``tune=`` values, a ``tuning_dir`` without a database, and tuning for a CPU this machine is not
  fail with tvm_mpq's errors, before any work.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tvm  # noqa: E402
from tvm import relax  # noqa: E402
from tvm.script import tirx as T  # noqa: E402

import tvm_mpq  # noqa: E402
from tvm_mpq import ConfigError, TargetError  # noqa: E402
from tvm_mpq.quantizer import flatten_outputs  # noqa: E402
from tvm_mpq.targets import host_target, parse_target, tuning  # noqa: E402
from tvm_mpq.targets.pipeline import build  # noqa: E402
from tvm_mpq.targets.schedules import FP_FENCE_OP  # noqa: E402
from small_models import Small  # noqa: E402

#: A tiny evolutionary search: seconds instead of ~25 s per kernel (tuning quality is not tested).
SEARCH = {"population_size": 32, "init_min_unmeasured": 8, "genetic_num_iters": 1}
TUNE = {"trials": 2, "op_names": ["matmul"], "search": SEARCH}


def _records(work_dir) -> int:
    path = os.path.join(work_dir, "database_tuning_record.json")
    with open(path) as f:
        return sum(1 for line in f if line.strip())


@pytest.fixture(scope="module")
def base():
    """A calibrated quantizer, an input, and the untuned w8a8 module."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((2, 3, 9, 9)).astype(np.float32) for _ in range(3)]
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    q = tvm_mpq.Quantizer(Small().eval(), None, calib, (torch.from_numpy(x),), progress=False)
    return q, x, q.realize("w8a8")


@pytest.fixture(scope="module")
def case(base, tmp_path_factory):
    """... and the module tuned (the dense kernel, 2 trials) into a fresh database."""
    q, x, untuned = base
    work_dir = tmp_path_factory.mktemp("tuning")
    tuned = q.realize("w8a8", tune=TUNE, tuning_dir=work_dir)
    return q, x, work_dir, untuned, tuned


def test_tuning_records_and_bit_exact_kernels(case):
    q, x, work_dir, untuned, tuned = case
    assert untuned.tuning is None
    s = tuned.tuning
    assert s.tuning_dir == str(work_dir) and s.trials_per_kernel == 2
    (name,) = s.tuned
    assert "matmul" in name and s.kernels == 1 and s.new_trials == 2 and not s.reused
    assert s.new_records >= 1 and _records(work_dir) == s.new_records
    row = s.kernels_table[name]
    assert row["tuned_us"] > 0 and row["template_us"] > 0 and row["uses"] in ("tuned", "template")
    assert (work_dir / tuning.LEDGER).is_file() and "matmul" in s.text()

    # The compiled module (tuned kernel where it measured faster) computes what the untuned one does.
    np.testing.assert_array_equal(tuned.run(x), untuned.run(x))

    # Force the tuned kernel in, whatever the timings said: still bit-identical.
    fused = tuning.prepare(tuned.ir_module, q.target)
    applied = tuning.ApplyTuningDatabase(str(work_dir), q.target, "always")(fused)
    scheduled = [gv.name_hint for gv, f in applied.functions_items()
                 if isinstance(f, tvm.tirx.PrimFunc) and f.attrs.get("tirx.is_scheduled", False)]
    assert scheduled == [name]
    exe = build(tuned.ir_module, q.target, tuning_dir=str(work_dir), use_tuned="always")
    out = flatten_outputs(relax.VirtualMachine(exe, tvm.cpu())["main"](tvm.runtime.tensor(x)))[0]
    np.testing.assert_array_equal(out, untuned.run(x))


def test_rerun_reuses_the_database(case, monkeypatch):
    q, x, work_dir, untuned, _ = case
    before = _records(work_dir)

    def no_tuning(*_a, **_k):
        raise AssertionError("the tuner ran although the database has the trials")

    monkeypatch.setattr("tvm.s_tir.meta_schedule.tune.tune_tasks", no_tuning)
    monkeypatch.setattr(tuning, "_time_templates", no_tuning)
    again = q.realize("w8a8", tune=TUNE, tuning_dir=work_dir)
    s = again.tuning
    assert s.new_trials == 0 and s.new_records == 0 and not s.tuned and len(s.reused) == 1
    assert _records(work_dir) == before
    np.testing.assert_array_equal(again.run(x), untuned.run(x))
    # A tuning_dir alone applies the database and tunes nothing.
    applied = q.realize("w8a8", tuning_dir=work_dir)
    assert applied.tuning is None and _records(work_dir) == before


def test_another_process_reuses_the_database(case, tmp_path):
    q, _, work_dir, _, tuned = case
    before = _records(work_dir)
    mod_path = tmp_path / "realized.json"
    mod_path.write_text(tvm.ir.save_json(tuned.ir_module))
    script = textwrap.dedent(
        f"""
        import tvm
        import tvm.s_tir.meta_schedule.tune as ms_tune
        from tvm_mpq.targets import parse_target, tuning

        def no_tuning(*a, **k):
            raise AssertionError("tuned again")

        ms_tune.tune_tasks = no_tuning
        mod = tvm.ir.load_json(open({str(mod_path)!r}).read())
        s = tuning.tune_module(mod, parse_target({q.target.to_dict()!r}), tuning_dir={str(work_dir)!r},
                               progress=False, **{TUNE!r})
        assert s.new_trials == 0 and s.new_records == 0 and len(s.reused) == 1, s.text()
        print("REUSED", s.reused[0])
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "REUSED" in proc.stdout and "matmul" in proc.stdout
    assert _records(work_dir) == before


def test_more_trials_tune_only_the_difference(case, monkeypatch):
    q, _, work_dir, _, tuned = case
    calls = []

    def fake_tune_tasks(**kwargs):
        calls.append((kwargs["max_trials_global"], kwargs["max_trials_per_task"]))

    monkeypatch.setattr("tvm.s_tir.meta_schedule.tune.tune_tasks", fake_tune_tasks)
    monkeypatch.setattr(tuning, "_measurer", lambda _n: tuning._Measure(None, None))
    monkeypatch.setattr(tuning, "_time_templates", lambda _m, funcs, _t: [None] * len(funcs))
    ledger = tuning._load_ledger(work_dir)
    s = tuning.tune_module(tuned.ir_module, q.target, tuning_dir=work_dir, progress=False, **{**TUNE, "trials": 5})
    assert calls == [(3, 3)] and s.new_trials == 3
    # leave the shared database as it was for the other tests
    (work_dir / tuning.LEDGER).write_text(__import__("json").dumps(ledger))


def test_tuning_another_cpu_is_refused(base, tmp_path):
    untuned = base[2]
    other = "llvm -mtriple=aarch64-linux-gnu -mattr=+neon" if host_target().arch == "x86_64" else "llvm -mtriple=x86_64-linux-gnu"
    with pytest.raises(TargetError, match="cannot run here"):
        tuning.tune_module(untuned.ir_module, parse_target(other), 2, tuning_dir=tmp_path)
    with pytest.raises(TargetError, match="tuning measures"):
        tvm_mpq.compile(None, target=other, tune=True)  # refused before the model is even imported
    assert not any(tmp_path.iterdir())


def test_tune_options_and_errors(base, tmp_path):
    q = base[0]
    assert tuning.tune_options(False) is None and tuning.tune_options(0) is None
    assert tuning.tune_options(True) == {"trials": tuning.DEFAULT_TRIALS}
    assert tuning.tune_options(8) == {"trials": 8}
    assert tuning.tune_options({"kernels": "all"}) == {"trials": tuning.DEFAULT_TRIALS, "kernels": "all"}
    for bad in ("fast", -1, 2.5, {"trails": 3}, {"trials": "8"}):
        with pytest.raises(ConfigError):
            tuning.tune_options(bad)
    with pytest.raises(ConfigError, match="tune"):
        tvm_mpq.compile(None, tune="fast")
    with pytest.raises(ConfigError, match="no tuning database"):
        q.realize("w8a8", tuning_dir=tmp_path)


def test_default_tuning_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    host = host_target()
    d = tuning.default_tuning_dir(host)
    assert d.parent == tmp_path / "tvm_mpq" / "tuning" and d.name.startswith(f"llvm-{host.arch}-")
    assert d == tuning.default_tuning_dir(parse_target(host.to_dict()))
    assert d != tuning.default_tuning_dir(parse_target("llvm -mtriple=aarch64-linux-gnu -mattr=+neon"))


@T.prim_func(s_tir=True)
def _requantize(A: T.Buffer((4, 8), "int8"), W: T.Buffer((8, 8), "int8"), S: T.Buffer((8,), "float32"),
                B: T.Buffer((8,), "float32"), O: T.Buffer((4, 8), "float32")):
    acc = T.sblock_alloc_buffer((4, 8), "int32")
    mul = T.sblock_alloc_buffer((4, 8), "float32")
    for i, j, k in T.grid(4, 8, 8):
        with T.sblock("acc"):
            vi, vj, vk = T.axis.remap("SSR", [i, j, k])
            with T.init():
                acc[vi, vj] = 0
            acc[vi, vj] = acc[vi, vj] + T.Cast("int32", A[vi, vk]) * T.Cast("int32", W[vj, vk])
    for i, j in T.grid(4, 8):
        with T.sblock("mul"):
            vi, vj = T.axis.remap("SS", [i, j])
            mul[vi, vj] = T.Cast("float32", acc[vi, vj]) * S[vj]
    for i, j in T.grid(4, 8):
        with T.sblock("add"):
            vi, vj = T.axis.remap("SS", [i, j])
            O[vi, vj] = mul[vi, vj] + B[vj] * T.float32(0.5) + B[vj]


def test_fence_func_fences_stored_products_not_reductions():
    fenced = tuning.fence_func(_requantize)
    text = fenced.script()
    assert text.count("tvm_mpq_fp_fence") == 2, text  # the stored product, and B * 0.5 feeding an add
    sch = tvm.s_tir.Schedule(fenced)
    value = {b: sch.get(sch.get_sblock(b)).body.value for b in ("acc", "mul", "add")}
    assert isinstance(value["acc"], tvm.tirx.Add) and isinstance(value["acc"].b, tvm.tirx.Mul)  # untouched
    assert value["mul"].op.name == FP_FENCE_OP
    assert isinstance(value["add"], tvm.tirx.Add) and isinstance(value["add"].b, tvm.ir.TensorLoad)
    assert tuning.fence_func(fenced).script() == text  # idempotent
