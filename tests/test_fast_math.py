"""The vectorizable GELU / softmax legalizations (targets/fast_math.py) against float64 numpy."""

import numpy as np
import pytest
import tvm
from tvm import relax, te

from tvm_mpq.targets import fast_math, host_target, pipeline

scipy_special = pytest.importorskip("scipy.special")


def _inputs(width: int = 33):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(2, 3, 17, width)) * 4).astype("float32")  # odd sizes: vector remainders
    x[0, 0, 0, :6] = [-1e4, 80.0, -80.0, 0.0, 30.0, -0.0]  # the additive attention mask, extremes
    return x


def _build(fn, width: int = 33):
    x = te.placeholder((2, 3, 17, width), "float32")
    return tvm.compile(te.create_prim_func([x, fn(x)]), target=host_target().target)


def _run(f, x):
    out = tvm.runtime.tensor(np.zeros_like(x))
    f(tvm.runtime.tensor(x), out)
    return out.numpy()


@pytest.mark.parametrize("width", [33, 40])  # a plain row reduction; partial maxima / sums over 8 lanes
def test_softmax_matches_float64_reference(width):
    x = _inputs(width)
    got = _run(_build(lambda t: fast_math.softmax(t, -1), width), x)
    xd = x.astype(np.float64)
    e = np.exp(xd - xd.max(-1, keepdims=True))
    ref = e / e.sum(-1, keepdims=True)
    assert np.abs(got - ref).max() < 2e-6
    big = ref > 1e-20
    assert (np.abs(got - ref)[big] / ref[big]).max() < 1e-5
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)


def test_gelu_matches_float64_reference():
    x = _inputs()
    got = _run(_build(fast_math.gelu), x)
    xd = x.astype(np.float64)
    ref = xd * (0.5 + scipy_special.erf(xd / np.sqrt(2.0)) * 0.5)
    assert np.abs(got - ref).max() < 1e-5 * max(1.0, np.abs(xd).max() / 100)
    assert np.abs(got - ref)[np.abs(xd) < 8].max() < 2e-6


def test_pipeline_legalizes_gelu_and_softmax_with_fast_math():
    """Through tvm_mpq's pipeline (the path every module takes), outputs agree with numpy."""
    x = _inputs()
    bb = relax.BlockBuilder()
    v = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with bb.function("main", [v]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.softmax(relax.op.nn.gelu(v), axis=-1))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    exe = pipeline.build(bb.get(), host_target())
    got = relax.VirtualMachine(exe, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    xd = x.astype(np.float64)
    g = xd * (0.5 + scipy_special.erf(xd / np.sqrt(2.0)) * 0.5)
    e = np.exp(g - g.max(-1, keepdims=True))
    np.testing.assert_allclose(got, e / e.sum(-1, keepdims=True), atol=2e-6)
    # and the fast forms were used: no libm erf / exp calls left in the compiled code
    llvm = [m for m in exe.mod.imports if m.kind == "llvm"]
    assert llvm, "no LLVM module in the executable"
    src = llvm[0].inspect_source("asm")
    assert "vfmadd" in src or "vmulps" in src  # it is the kernels' code
    assert "erff" not in src and "expf" not in src


@pytest.mark.parametrize("width", [40, 33])  # lane-split path; TOPI's layer norm (odd width)
def test_layer_norm_matches_float64_reference(width):
    """Through the pipeline: relax.nn.layer_norm over the last axis against numpy in float64,
    rows with a large mean included (where a single-pass variance would cancel)."""
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(2, 5, width)) * 3).astype("float32")
    x[0, 0] += 1000.0
    gamma = rng.normal(size=(width,)).astype("float32")
    beta = rng.normal(size=(width,)).astype("float32")
    bb = relax.BlockBuilder()
    v = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with bb.function("main", [v]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.layer_norm(v, relax.const(gamma), relax.const(beta), axes=[-1], epsilon=1e-12))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    mod = bb.get()
    lowered = pipeline.relax_pipeline(host_target())(mod)
    names = [gv.name_hint for gv, f in lowered.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert any("layer_norm" in n for n in names)
    exe = pipeline.build(mod, host_target())
    vm = relax.VirtualMachine(exe, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    xd = x.astype(np.float64)
    mu = xd.mean(-1, keepdims=True)
    ref = (xd - mu) / np.sqrt(((xd - mu) ** 2).mean(-1, keepdims=True) + 1e-12) * gamma + beta
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5 * max(1.0, np.abs(ref).max()))
