"""Before/after tests of tvm_mpq's Relax passes, in the style of TVM's test_transform_*.py."""

import numpy as np
import tvm
import tvm_ffi
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from tvm_mpq.calibration import Encoding
from tvm_mpq.canonicalize import canonicalize
from tvm_mpq.frontend import FloatModel
from tvm_mpq.graph import analyze
from tvm_mpq.passes.realize import RealizeQuantization
from tvm_mpq.passes.simulate import SimulateQuantization
from tvm_mpq.plan import OpQuant


def assert_same(actual: tvm.IRModule, expected: tvm.IRModule):
    assert tvm_ffi.structural_equal(actual, expected, map_free_vars=True), actual.script()


@I.ir_module
class Dense:
    @R.function
    def main(x: R.Tensor((2, 5), "float32"), fc_weight: R.Tensor((3, 5), "float32")):
        R.func_attr({"num_input": 1})
        with R.dataflow():
            w_t = R.permute_dims(fc_weight, axes=[1, 0])
            y = R.matmul(x, w_t, out_dtype="float32")
            R.output(y)
        return y


def dense_model():
    rng = np.random.default_rng(0)
    return FloatModel(Dense, {"fc_weight": rng.normal(size=(3, 5)).astype("float32")}, 1)


def test_groups_are_named_after_the_source_weights():
    graph = analyze(dense_model())
    assert list(graph.ops) == ["fc"]
    assert graph.ops["fc"].kind == "dense" and graph.ops["fc"].weight_transposed
    assert list(graph.groups) == ["fc"] and graph.groups["fc"].root == "x"


def test_simulate_quantization():
    fm = dense_model()
    after = SimulateQuantization(analyze(fm))(fm.mod)

    @I.ir_module
    class Expected:
        @R.function
        def main(
            x: R.Tensor((2, 5), "float32"),
            fc_weight: R.Tensor((3, 5), "float32"),
            fc_qparams: R.Tensor((5,), "float32"),
            fc_output_scale: R.Tensor((3,), "float32"),
        ):
            R.func_attr({"num_input": 1})
            with R.dataflow():
                w_t = R.permute_dims(fc_weight, axes=[1, 0])
                s = R.strided_slice(fc_qparams, axes=[0], begin=[0], end=[1])
                zp = R.strided_slice(fc_qparams, axes=[0], begin=[1], end=[2])
                lo = R.strided_slice(fc_qparams, axes=[0], begin=[2], end=[3])
                hi = R.strided_slice(fc_qparams, axes=[0], begin=[3], end=[4])
                en = R.strided_slice(fc_qparams, axes=[0], begin=[4], end=[5])
                q = R.add(R.round(R.multiply(x, s)), zp)
                centered = R.subtract(R.minimum(R.maximum(q, lo), hi), zp)
                on = R.greater(en, R.const(0.5, "float32"))
                xq = R.where(on, centered, x)
                acc = R.matmul(xq, w_t, out_dtype="float32")
                y = R.multiply(acc, fc_output_scale)
                R.output(y)
            return y

    assert_same(after, Expected)


def test_realize_quantization_dense_w8a8():
    fm = dense_model()
    act = Encoding(bits=8, signed=False, scale=0.5, zero_point=3, qmin=0, qmax=255)
    wenc = Encoding(bits=8, signed=True, scale=np.array([0.25, 0.5, 1.0], "float32"), zero_point=np.zeros(3, "int32"),
                    qmin=-127, qmax=127, axis=0)
    wq = np.array([[1, -2, 3, 0, 4], [5, 6, -7, 8, 0], [-1, 0, 0, 2, 9]], dtype=np.int32)
    after = RealizeQuantization(analyze(fm), {"fc": OpQuant((act,), wenc, wq)})(fm.mod)

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((2, 5), "float32"), fc_weight: R.Tensor((3, 5), "float32")):
            R.func_attr({"num_input": 1})
            with R.dataflow():
                w_t = R.permute_dims(fc_weight, axes=[1, 0])
                q = R.add(R.round(R.multiply(x, R.const(2.0, "float32"))), R.const(3.0, "float32"))
                xq = R.astype(R.clip(q, 0, 255), "uint8")
                acc = R.matmul(
                    xq,
                    R.const([[1, 5, -1], [-2, 6, 0], [3, -7, 0], [0, 8, 2], [4, 0, 9]], "int8"),
                    out_dtype="int32",
                )
                # zero point x per-channel weight sums: 3 * [6, 12, 10]
                centered = R.subtract(acc, R.const([18, 36, 30], "int32"))
                y = R.multiply(R.astype(centered, "float32"), R.const([0.125, 0.25, 0.5], "float32"))
                R.output(y)
            return y

    assert_same(after, Expected)


def test_realize_quantization_leaves_float_ops_alone():
    fm = dense_model()
    after = RealizeQuantization(analyze(fm), {"fc": OpQuant((None,))})(fm.mod)
    assert_same(after, fm.mod)


@I.ir_module
class ConvBN:
    @R.function
    def main(
        x: R.Tensor((1, 2, 4, 4), "float32"),
        conv_weight: R.Tensor((3, 2, 1, 1), "float32"),
        bn_weight: R.Tensor((3,), "float32"),
        bn_bias: R.Tensor((3,), "float32"),
    ):
        R.func_attr({"num_input": 1})
        with R.dataflow():
            c = R.nn.conv2d(x, conv_weight)
            bn = R.nn.batch_norm(
                c, bn_weight, bn_bias, R.const([0.5, 1.0, -1.0], "float32"), R.const([4.0, 1.0, 0.25], "float32"),
                axis=1, epsilon=0.0,
            )
            y = bn[0]
            R.output(y)
        return y


def test_canonicalize_folds_batch_norm_into_named_conv_weights():
    w = np.arange(6, dtype="float32").reshape(3, 2, 1, 1)
    fm = FloatModel(ConvBN, {"conv_weight": w, "bn_weight": np.array([1, 2, 3], "float32"),
                             "bn_bias": np.array([0, 1, 2], "float32")}, 1)
    out = canonicalize(fm)

    @I.ir_module
    class Expected:
        @R.function
        def main(
            x: R.Tensor((1, 2, 4, 4), "float32"),
            conv_weight: R.Tensor((3, 2, 1, 1), "float32"),
            conv_bias: R.Tensor((3,), "float32"),
        ):
            R.func_attr({"num_input": 1})
            with R.dataflow():
                c = R.nn.conv2d(x, conv_weight)
                b = R.reshape(conv_bias, (1, 3, 1, 1))
                y = R.add(c, b)
                R.output(y)
            return y

    assert_same(out.mod, Expected)
    scale = np.array([1, 2, 3], "float32") / np.sqrt(np.array([4.0, 1.0, 0.25], "float32"))
    np.testing.assert_allclose(out.params["conv_weight"], w * scale.reshape(3, 1, 1, 1), rtol=1e-6)
    np.testing.assert_allclose(out.params["conv_bias"], np.array([0, 1, 2]) - np.array([0.5, 1.0, -1.0]) * scale, rtol=1e-6)
    assert "bn_weight" not in out.params


def test_canonicalize_flushes_subnormal_weights_to_zero():
    """Dead channels with subnormal values make every multiply touching them slow; they go to 0."""
    w = np.array([[1e-40, 0.5, -3e-39], [2.0, -1e-45, 0.0], [1.2e-38, 1.0, 1.0]], "float32")
    fm = FloatModel(Dense, {"fc_weight": w.copy()}, 1)
    out = canonicalize(fm)
    got = out.params["fc_weight"]
    np.testing.assert_array_equal(got, np.where(np.abs(w) < np.finfo(np.float32).tiny, 0.0, w).astype("float32"))
    assert got[2, 0] == np.float32(1.2e-38)  # the smallest normal floats stay
    assert got[0, 0] == 0 and got[0, 2] == 0 and got[1, 1] == 0
    assert any("3 subnormal" in n for n in out.notes)


@I.ir_module
class SharedInput:
    """One activation (through a reshape) feeding two linears: one group, two consumers."""

    @R.function
    def main(
        x: R.Tensor((2, 3, 4), "float32"),
        q_weight: R.Tensor((4, 4), "float32"),
        k_weight: R.Tensor((4, 4), "float32"),
    ):
        R.func_attr({"num_input": 1})
        with R.dataflow():
            h = R.nn.relu(x)
            h2 = R.reshape(h, (6, 4))
            qt = R.permute_dims(q_weight, axes=[1, 0])
            kt = R.permute_dims(k_weight, axes=[1, 0])
            q = R.matmul(h2, qt, out_dtype="float32")
            k = R.matmul(h2, kt, out_dtype="float32")
            kk = R.permute_dims(k, axes=[1, 0])
            s = R.matmul(q, kk, out_dtype="float32")
            R.output(s)
        return s


def test_groups_trace_through_data_movement_and_share_consumers():
    rng = np.random.default_rng(1)
    fm = FloatModel(SharedInput, {n: rng.normal(size=(4, 4)).astype("float32") for n in ("q_weight", "k_weight")}, 1)
    graph = analyze(fm)
    assert set(graph.ops) == {"q", "k", "matmul_0"}
    assert graph.ops["matmul_0"].kind == "matmul"
    # relu output h (behind the reshape) is one group feeding both linears.
    assert "{k,q}" in "".join(graph.groups) or "{q,k}" in "".join(graph.groups)
    shared = graph.group_of("q", 0)
    assert shared.root == "h" and {op for op, _ in shared.uses} == {"q", "k"}
    # The attention-like matmul has two activation operands, each its own group.
    assert graph.group_of("matmul_0", 0).name == "matmul_0"
    assert graph.group_of("matmul_0", 1).name == "matmul_0.rhs"
    assert graph.group_of("matmul_0", 1).root == "k"
