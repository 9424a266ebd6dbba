"""The realized integer kernels (tvm_mpq.passes.integer_ops) are bit-exact.

Every kernel is compiled for this host and compared, integer for integer, with an independent
numpy int64 reference (explicit loops over kernel positions; no torch, no TVM). Shapes are chosen
so that no dimension is a multiple of a vector width (channels 3, 5, 7, 13; spatial 7x9, 11x5;
K = 13, 37; N = 5, 19), and inputs cover the full integer ranges, extremes included.

Several cases share one compiled Relax function (one input and one output per case) to keep the
file fast: each ``tvm.compile`` costs a fraction of a second.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import pytest
import tvm
from tvm import relax

from tvm_mpq.passes import integer_ops as iops
from tvm_mpq.quant_math import pack_int4, qrange, quantize, unpack_int4
from tvm_mpq.targets import host_target
from tvm_mpq.targets.pipeline import build

INT32_MAX = 2**31 - 1

# Activation kinds as realize.py stores them: uint8 asymmetric (nonzero zero point), int16 symmetric.
ACTS = {
    "u8zp37": ("uint8", 37),
    "u8zp201": ("uint8", 201),
    "i16": ("int16", 0),
}


@functools.lru_cache(maxsize=None)
def _target():
    return host_target().target


def _act_range(dtype: str) -> tuple[int, int]:
    return (0, 255) if dtype == "uint8" else qrange(16, True)


def _act_max_abs(dtype: str, zp: int) -> int:
    """Largest magnitude of the stored or the centered activation (what realize.py passes)."""
    lo, hi = _act_range(dtype)
    return max(abs(lo), abs(hi), abs(hi - zp), abs(zp - lo))


def _rand_act(rng, shape, dtype: str) -> np.ndarray:
    lo, hi = _act_range(dtype)
    x = rng.integers(lo, hi + 1, size=shape)
    flat = x.reshape(-1)
    flat[0], flat[-1] = lo, hi  # the extremes are always present
    return x.astype(dtype)


def _rand_weight(rng, shape, bits: int) -> np.ndarray:
    lo, hi = qrange(bits, True)
    w = rng.integers(lo, hi + 1, size=shape)
    flat = w.reshape(-1)
    flat[0], flat[-1] = lo, hi
    return w.astype(np.int64)


def _tensor_var(name, shape, dtype):
    return relax.Var(name, relax.TensorType(tuple(shape), dtype))


def main_module(params, emit_outputs) -> tvm.IRModule:
    """``main(*params)`` whose body is ``emit_outputs(bb)`` (a list of tensors), returned as a tuple."""
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            outs = [bb.emit_output(o) for o in emit_outputs(bb)]
        bb.emit_func_output(relax.Tuple(outs))
    return bb.get()


def _build_run(params, emit_outputs, inputs):
    """Build ``main_module(params, emit_outputs)`` and run it on ``inputs``."""
    mod = main_module(params, emit_outputs)
    # The pipeline realized modules are compiled with (fusion + template schedules).
    ex = build(mod, host_target())
    vm = relax.VirtualMachine(ex, tvm.cpu())
    res = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in inputs])
    return [res[i].numpy() for i in range(len(res))], mod


def _assert_exact(got: np.ndarray, ref: np.ndarray, acc_dtype: str, what: str):
    assert got.dtype == np.dtype(acc_dtype), f"{what}: dtype {got.dtype}, expected {acc_dtype}"
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, expected {ref.shape}"
    diff = np.flatnonzero(got != ref)  # float32 sums: compared as values, not truncated
    if diff.size:
        i = diff[0]
        raise AssertionError(
            f"{what}: {diff.size}/{ref.size} elements differ; first at flat index {i}: "
            f"got {got.reshape(-1)[i]}, expected {ref.reshape(-1)[i]}"
        )


# ---------------------------------------------------------------------------------------------
# numpy int64 references
# ---------------------------------------------------------------------------------------------


def ref_conv2d(x, w, zp, strides, padding, dilation, groups, dtype=np.int64) -> np.ndarray:
    """Direct NCHW/OIHW convolution of ``x - zp`` (zero padded) in int64 (``dtype``: float64 for
    float convs).

    ``padding`` is (top, left, bottom, right), as Relax orders it.
    """
    xc = x.astype(dtype) - dtype(zp)
    top, left, bottom, right = padding
    xp = np.pad(xc, ((0, 0), (0, 0), (top, bottom), (left, right)))
    n, c, h, wd = xp.shape
    o, i, kh, kw = w.shape
    sh, sw = strides
    dh, dw = dilation
    assert c == i * groups and o % groups == 0
    oh = (h - dh * (kh - 1) - 1) // sh + 1
    ow = (wd - dw * (kw - 1) - 1) // sw + 1
    og = o // groups
    w64 = w.astype(dtype)
    out = np.zeros((n, o, oh, ow), dtype=dtype)
    for g in range(groups):
        xs = xp[:, g * i:(g + 1) * i]
        for a in range(kh):
            for b in range(kw):
                patch = xs[:, :, a * dh:a * dh + sh * (oh - 1) + 1:sh, b * dw:b * dw + sw * (ow - 1) + 1:sw]
                assert patch.shape == (n, i, oh, ow)
                wk = w64[g * og:(g + 1) * og, :, a, b]  # [og, i]
                out[:, g * og:(g + 1) * og] += np.einsum("nihw,oi->nohw", patch, wk)
    return out


def ref_matmul(a, b, zp_a=0, zp_b=0) -> np.ndarray:
    return np.matmul(a.astype(np.int64) - np.int64(zp_a), b.astype(np.int64) - np.int64(zp_b))


def test_reference_conv_self_check():
    """The reference itself, against a naive scalar loop on a tiny grouped/strided/dilated case."""
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, size=(1, 4, 6, 5))
    w = rng.integers(-7, 8, size=(6, 2, 2, 3))
    zp, (sh, sw), (t, l, b, r), (dh, dw), groups = 11, (2, 1), (1, 0, 2, 1), (2, 1), 2
    ref = ref_conv2d(x, w, zp, (sh, sw), (t, l, b, r), (dh, dw), groups)
    xp = np.zeros((1, 4, 6 + t + b, 5 + l + r), dtype=np.int64)
    xp[:, :, t:t + 6, l:l + 5] = x - zp
    for oc in range(6):
        g = oc // 3
        for y in range(ref.shape[2]):
            for z in range(ref.shape[3]):
                s = 0
                for ic in range(2):
                    for a in range(2):
                        for bb in range(3):
                            s += int(xp[0, g * 2 + ic, y * sh + a * dh, z * sw + bb * dw]) * int(w[oc, ic, a, bb])
                assert ref[0, oc, y, z] == s


# ---------------------------------------------------------------------------------------------
# conv2d
# ---------------------------------------------------------------------------------------------

# (name, x shape NCHW, out channels, kernel (kh, kw), strides, padding (t, l, b, r), dilation, groups)
CONV_CASES = [
    ("regular", (1, 3, 7, 9), 5, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ("regular_batch2_rect", (2, 5, 11, 5), 7, (3, 5), (1, 1), (0, 2, 0, 2), (1, 1), 1),
    ("depthwise", (1, 7, 11, 5), 7, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 7),
    ("depthwise_mult2_strided", (1, 13, 7, 9), 26, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 13),
    ("grouped3_asym_pad", (1, 9, 7, 9), 15, (3, 3), (1, 1), (1, 0, 2, 1), (1, 1), 3),
    ("grouped2_nopad", (1, 10, 11, 5), 6, (3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 2),
    ("strided2", (1, 5, 11, 5), 13, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),
    ("strided2_asym_pad", (1, 3, 7, 9), 7, (5, 3), (2, 2), (1, 0, 2, 1), (1, 1), 1),
    ("strided21_mixed", (1, 5, 11, 5), 3, (3, 3), (2, 1), (2, 1, 0, 1), (1, 1), 1),
    ("pointwise_1x1", (1, 13, 7, 9), 5, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ("pointwise_1x1_strided", (1, 13, 7, 9), 19, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1),
    ("dilated2", (1, 5, 11, 9), 3, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 1),
    ("dilated2_grouped_strided", (1, 6, 11, 9), 9, (3, 3), (2, 1), (1, 2, 0, 1), (2, 2), 3),
]


def _conv_attrs(strides, padding, dilation, groups, kind: str):
    """The attrs emit_conv2d reads: a real Conv2DAttrs (as realize.py passes) or a namespace."""
    if kind == "namespace":
        return SimpleNamespace(padding=list(padding), strides=list(strides), dilation=list(dilation), groups=groups)
    dummy_x = _tensor_var("dx", (1, groups, 16, 16), "float32")
    dummy_w = _tensor_var("dw", (groups, 1, 1, 1), "float32")
    return relax.op.nn.conv2d(
        dummy_x, dummy_w, strides=strides, padding=padding, dilation=dilation, groups=groups
    ).attrs


def _weight_const(w_oihw: np.ndarray, bits: int):
    """The weight constant as realize.py stores it (int4 packed per output channel)."""
    o = w_oihw.shape[0]
    if bits == 4:
        return relax.const(pack_int4(w_oihw.reshape(o, -1)), "uint8")
    dtype = "int8" if bits <= 8 else "int16"
    return relax.const(w_oihw.astype(dtype), dtype)


def _run_conv_cases(cases, bits, act_dtype, zp, attrs_kind="relax", as_float=False, float_sums=False):
    """cases: list of (name, x, w, strides, padding, dilation, groups). Returns [(name, got, ref, acc)].
    ``as_float``: the exact-float32 form of the conv (emit_conv2d's ``float_weight``); with
    ``float_sums`` its sums stay float32 (as realize.py asks for them)."""
    params, prepared = [], []
    for j, (name, x, w, strides, padding, dilation, groups) in enumerate(cases):
        o = w.shape[0]
        w2d = w.reshape(o, -1)
        acc = iops.accumulator_dtype(_act_max_abs(act_dtype, zp), int(np.abs(w2d).sum(1).max()))
        if float_sums:
            acc = "float32"
        params.append(_tensor_var(f"xq{j}", x.shape, act_dtype))
        attrs = _conv_attrs(strides, padding, dilation, groups, attrs_kind)
        prepared.append((name, w, w2d, acc, attrs))

    def body(bb):
        outs = []
        for xv, (_, w, w2d, acc, attrs) in zip(params, prepared):
            fw = w.astype("float32") if as_float else None
            y = iops.emit_conv2d(bb, xv, _weight_const(w, bits), attrs, zp, bits, w.shape, acc, float_weight=fw)
            y = iops.emit_zero_point_correction(bb, y, zp, w2d.sum(1), (1, w.shape[0], 1, 1), acc)
            outs.append(y)
        return outs

    got, _ = _build_run(params, body, [c[1] for c in cases])
    results = []
    for g, c, p in zip(got, cases, prepared):
        name, x, w, strides, padding, dilation, groups = c
        results.append((name, g, ref_conv2d(x, w, zp, strides, padding, dilation, groups), p[3]))
    return results


@pytest.mark.parametrize("act", ["u8zp37", "u8zp201", "i16"])
@pytest.mark.parametrize("bits", [4, 8, 16])
def test_conv2d_bit_exact(bits, act):
    act_dtype, zp = ACTS[act]
    rng = np.random.default_rng(1000 * bits + zp + (7 if act_dtype == "int16" else 0))
    cases = []
    for name, xshape, o, (kh, kw), strides, padding, dilation, groups in CONV_CASES:
        x = _rand_act(rng, xshape, act_dtype)
        w = _rand_weight(rng, (o, xshape[1] // groups, kh, kw), bits)
        cases.append((name, x, w, strides, padding, dilation, groups))
    for name, got, ref, acc in _run_conv_cases(cases, bits, act_dtype, zp):
        _assert_exact(got, ref, acc, f"conv2d {name} w{bits} {act}")


@pytest.mark.parametrize("act", ["u8zp37", "u8zp201"])
@pytest.mark.parametrize("bits", [4, 8])
def test_conv2d_exact_float_path_bit_exact(bits, act):
    """The float32 form realize.py picks for odd-channel stems: every case (padding with the zero
    point, strides, groups, dilation) equals the numpy int64 reference, since all partial sums are
    integers below 2**24."""
    act_dtype, zp = ACTS[act]
    rng = np.random.default_rng(77 * bits + zp)
    cases = []
    for name, xshape, o, (kh, kw), strides, padding, dilation, groups in CONV_CASES:
        x = _rand_act(rng, xshape, act_dtype)
        w = _rand_weight(rng, (o, xshape[1] // groups, kh, kw), bits)
        assert iops.exact_in_float32(255, int(np.abs(w.reshape(o, -1)).sum(1).max()))
        cases.append((name, x, w, strides, padding, dilation, groups))
    for float_sums in (False, True):
        for name, got, ref, acc in _run_conv_cases(cases, bits, act_dtype, zp, as_float=True, float_sums=float_sums):
            _assert_exact(got, ref, acc, f"conv2d (exact float, float sums {float_sums}) {name} w{bits} {act}")


def test_exact_in_float32_bound():
    assert iops.exact_in_float32(255, 65793)  # 255 * 65793 = 2**24 - 1
    assert not iops.exact_in_float32(255, 65794)
    assert iops.float_conv_pays((32, 3, 3, 3), groups=1)  # an RGB stem
    assert iops.float_conv_pays((32, 1, 3, 3), groups=32)  # depthwise: the plane template
    assert iops.float_conv_pays((64, 1, 3, 3), groups=32)  # depthwise, channel multiplier 2
    assert not iops.float_conv_pays((32, 2, 3, 3), groups=16)  # grouped, even: pairs
    assert not iops.float_conv_pays((32, 16, 1, 1), groups=1)  # even: the vpmaddwd pair kernels


def test_conv2d_accepts_plain_attrs_namespace():
    """emit_conv2d only reads .padding/.strides/.dilation/.groups: a namespace works the same."""
    rng = np.random.default_rng(3)
    cases = []
    for bits in (4, 8):
        x = _rand_act(rng, (1, 6, 11, 9), "uint8")
        w = _rand_weight(rng, (9, 2, 3, 3), bits)
        cases.append((f"ns_w{bits}", x, w, (2, 1), (1, 2, 0, 1), (2, 2), 3))
    for bits, case in zip((4, 8), cases):
        (name, got, ref, acc), = _run_conv_cases([case], bits, "uint8", 201, attrs_kind="namespace")
        _assert_exact(got, ref, acc, f"conv2d {name}")


# ---------------------------------------------------------------------------------------------
# dense (x[..., K] @ W[K, N])
# ---------------------------------------------------------------------------------------------

# (x shape [..., K], N)
DENSE_CASES = [((5, 13), 5), ((1, 37), 19), ((2, 3, 37), 19), ((1, 7, 13), 5), ((3, 5, 13), 19)]


def _run_dense_cases(cases, bits, act_dtype, zp):
    """cases: list of (x, w_kn). Returns [(got, ref, acc)]."""
    params, prepared = [], []
    for j, (x, w_kn) in enumerate(cases):
        k, n = w_kn.shape
        w_nk = w_kn.T
        acc = iops.accumulator_dtype(_act_max_abs(act_dtype, zp), int(np.abs(w_nk).sum(1).max()))
        if bits == 4:
            const = relax.const(pack_int4(w_nk), "uint8")
        else:
            dtype = "int8" if bits <= 8 else "int16"
            const = relax.const(np.ascontiguousarray(w_kn).astype(dtype), dtype)
        params.append(_tensor_var(f"xq{j}", x.shape, act_dtype))
        prepared.append((const, k, n, w_nk, acc))

    def body(bb):
        outs = []
        for xv, (const, k, n, w_nk, acc) in zip(params, prepared):
            y = iops.emit_dense(bb, xv, const, bits, k, n, acc)
            outs.append(iops.emit_zero_point_correction(bb, y, zp, w_nk.sum(1), (n,), acc))
        return outs

    got, _ = _build_run(params, body, [c[0] for c in cases])
    return [(g, ref_matmul(x, w_kn, zp), p[4]) for g, (x, w_kn), p in zip(got, cases, prepared)]


@pytest.mark.parametrize("act", ["u8zp37", "u8zp201", "i16"])
@pytest.mark.parametrize("bits", [4, 8, 16])
def test_dense_bit_exact(bits, act):
    act_dtype, zp = ACTS[act]
    rng = np.random.default_rng(2000 * bits + zp + (7 if act_dtype == "int16" else 0))
    cases = []
    for xshape, n in DENSE_CASES:
        cases.append((_rand_act(rng, xshape, act_dtype), _rand_weight(rng, (xshape[-1], n), bits)))
    for (got, ref, acc), (x, _) in zip(_run_dense_cases(cases, bits, act_dtype, zp), cases):
        _assert_exact(got, ref, acc, f"dense x{x.shape} w{bits} {act}")


# ---------------------------------------------------------------------------------------------
# Accumulator choice: int64 whenever int32 could overflow, and still exact then
# ---------------------------------------------------------------------------------------------


def test_accumulator_dtype_picks_int64_exactly_when_int32_could_overflow():
    cases = [  # (max |input|, max_c sum |w_c|, expected), expectations worked out by hand
        (255, 127 * 117, "int32"),  # w8a8, 3x3x13: 3.8e6
        (32767, 127 * 37, "int32"),  # w8a16, K = 37: 1.5e8
        (32767, 32767 * 37, "int64"),  # w16a16, K = 37: 4.0e10
        (32767, 7 * 9362, "int32"),  # w4a16, K = 9362: 2147352578 fits
        (32767, 7 * 9363, "int64"),  # ... K = 9363: 2147581947 does not
        (255, 32767 * 257, "int32"),  # w16a8, K = 257: 2147385345 fits
        (255, 32767 * 258, "int64"),  # ... K = 258: 2155740930 does not
        (1, INT32_MAX, "int32"),  # exactly the limit fits
        (1, INT32_MAX + 1, "int64"),
        (2**31, 1, "int64"),
        (46341, 46341, "int64"),  # 46341**2 = 2147488281
        (46340, 46340, "int32"),  # 46340**2 = 2147395600
    ]
    for a, s, expected in cases:
        assert iops.accumulator_dtype(a, s) == expected, (a, s)
    # numpy integer inputs (what realize.py passes: np.abs(w2d).sum(1).max()) must not wrap.
    assert iops.accumulator_dtype(np.int32(32767), np.int32(32767 * 37)) == "int64"
    assert iops.accumulator_dtype(np.int64(32767), np.int64(32767 * 37)) == "int64"
    assert iops.accumulator_dtype(32767, 32767 * 37) == "int64"  # int16 x int16, big K


def test_int64_accumulator_conv2d_exact_beyond_int32():
    rng = np.random.default_rng(77)
    cases = []
    # w16a16: 13*3*3 = 117 products of 32767*32767 per output.
    c, kh, kw = 13, 3, 3
    w = rng.choice([-32767, 32767], size=(5, c, kh, kw)).astype(np.int64)
    sign = np.sign(w[0, :, 1, 1])  # channel 0's centre tap decides each input channel's sign
    x = (sign[None, :, None, None] * 32767 * np.ones((1, c, 7, 9), dtype=np.int64)).astype("int16")
    w[0] = np.sign(x[0, :, :3, :3]).astype(np.int64) * 32767  # channel 0 fully aligned with x
    cases.append(("w16a16_aligned", x, w, (1, 1), (1, 1, 1, 1), (1, 1), 1))
    results = _run_conv_cases(cases, 16, "int16", 0)
    name, got, ref, acc = results[0]
    assert acc == "int64"
    assert np.abs(ref).max() > INT32_MAX  # the exact answer does not fit int32
    _assert_exact(got, ref, acc, f"conv2d {name}")

    # w16a8 with zero point 201: 37*3*3 = 333 > 257 taps, int64 through the zp correction too.
    c = 37
    x = np.full((1, c, 5, 5), 255, dtype=np.int64)
    w = np.full((3, c, 3, 3), 32767, dtype=np.int64)
    w[1] = -32767
    w[2] = rng.integers(-32767, 32768, size=(c, 3, 3))
    x[0, :, 2, 2] = 0
    results = _run_conv_cases([("w16a8_big_k", x.astype("uint8"), w, (1, 1), (1, 1, 1, 1), (1, 1), 1)], 16, "uint8", 201)
    name, got, ref, acc = results[0]
    assert acc == "int64"
    _assert_exact(got, ref, acc, f"conv2d {name}")

    # w4a16 with K = 1051*3*3 = 9459 > 9362: int64 through the packed-int4 kernel.
    c = 1051
    w = rng.choice([-7, 7], size=(2, c, 3, 3)).astype(np.int64)
    x = (np.sign(w[0])[None, :, :, :] * 32767).astype("int16")  # 3x3 input, one valid window
    results = _run_conv_cases([("w4a16_big_k", x, w, (1, 1), (0, 0, 0, 0), (1, 1), 1)], 4, "int16", 0)
    name, got, ref, acc = results[0]
    assert acc == "int64"
    assert np.abs(ref).max() > INT32_MAX
    _assert_exact(got, ref, acc, f"conv2d {name}")


@pytest.mark.parametrize("bits,k", [(16, 37), (4, 9999)])
def test_int64_accumulator_dense_exact_beyond_int32(bits, k):
    rng = np.random.default_rng(bits + k)
    lo, hi = qrange(bits, True)
    w = rng.choice([lo, hi], size=(k, 5)).astype(np.int64)
    x = rng.integers(-32767, 32768, size=(2, 3, k))
    x[0, 0] = np.sign(w[:, 0]) * 32767  # row aligned with column 0: |sum| = k * 32767 * max|w|
    x[1, 2] = -np.sign(w[:, 4]) * 32767
    (got, ref, acc), = _run_dense_cases([(x.astype("int16"), w)], bits, "int16", 0)
    assert acc == "int64"
    assert ref[0, 0, 0] > INT32_MAX and ref[1, 2, 4] < -INT32_MAX - 1
    _assert_exact(got, ref, acc, f"dense w{bits} K={k}")


# ---------------------------------------------------------------------------------------------
# activation x activation matmul (realize.py: emit_centered of both operands, then matmul)
# ---------------------------------------------------------------------------------------------

# (a shape, b shape, (dtype_a, zp_a), (dtype_b, zp_b))
MATMUL_CASES = [
    ((2, 5, 13), (2, 13, 7), ("uint8", 37), ("uint8", 201)),  # a8 x a8
    ((3, 7, 37), (3, 37, 5), ("uint8", 201), ("uint8", 37)),
    ((1, 11, 13), (1, 13, 19), ("uint8", 0), ("uint8", 128)),
    ((2, 5, 13), (2, 13, 7), ("int16", 0), ("int16", 0)),  # a16 x a16 (int64 accumulator)
    ((3, 7, 37), (3, 37, 5), ("int16", 0), ("int16", 0)),
    ((2, 5, 37), (2, 37, 19), ("uint8", 37), ("int16", 0)),  # mixed a8 x a16
    ((2, 2, 5, 13), (2, 2, 13, 7), ("uint8", 201), ("uint8", 37)),  # 4-D batch
    ((2, 5, 13), (13, 7), ("uint8", 37), ("uint8", 201)),  # broadcast 2-D rhs
]


def _run_activation_matmul_cases(rng, specs):
    """Centered activation x activation matmuls, one module for all ``specs`` ((a shape, b shape,
    (a dtype, a zero point), (b dtype, b zero point))), each checked bit for bit against numpy.
    Returns (accumulator dtypes, module)."""
    params, prepared, inputs = [], [], []
    for j, (ash, bsh, (da, za), (db, zb)) in enumerate(specs):
        a, b = _rand_act(rng, ash, da), _rand_act(rng, bsh, db)
        acc = iops.accumulator_dtype(_act_max_abs(da, za), ash[-1] * _act_max_abs(db, zb))
        params += [_tensor_var(f"a{j}", ash, da), _tensor_var(f"b{j}", bsh, db)]
        prepared.append((za, zb, acc))
        inputs += [a, b]

    def body(bb):
        outs = []
        for j, (za, zb, acc) in enumerate(prepared):
            ca = iops.emit_centered(bb, params[2 * j], za)
            cb = iops.emit_centered(bb, params[2 * j + 1], zb)
            outs.append(bb.emit(relax.op.matmul(ca, cb, out_dtype=acc)))
        return outs

    got, mod = _build_run(params, body, inputs)
    for j, (g, (za, zb, acc)) in enumerate(zip(got, prepared)):
        ref = ref_matmul(inputs[2 * j], inputs[2 * j + 1], za, zb)
        _assert_exact(g, ref, acc, f"matmul case {j} {specs[j]}")
    return [p[2] for p in prepared], mod


def test_activation_matmul_bit_exact():
    accs, _ = _run_activation_matmul_cases(np.random.default_rng(31), MATMUL_CASES)
    assert set(accs) == {"int32", "int64"}


def test_activation_matmul_int64_beyond_int32():
    """a16 x a16 with aligned extremes: the true result leaves int32 and must come back exact."""
    rng = np.random.default_rng(32)
    k = 37
    b = rng.choice([-32767, 32767], size=(2, k, 5))
    a = rng.integers(-32767, 32768, size=(2, 3, k))
    a[0, 1] = np.sign(b[0, :, 2]) * 32767
    a[1, 0] = -np.sign(b[1, :, 4]) * 32767
    acc = iops.accumulator_dtype(32767, k * 32767)
    assert acc == "int64"
    params = [_tensor_var("a", a.shape, "int16"), _tensor_var("b", b.shape, "int16")]

    def body(bb):
        ca, cb = iops.emit_centered(bb, params[0], 0), iops.emit_centered(bb, params[1], 0)
        return [bb.emit(relax.op.matmul(ca, cb, out_dtype=acc))]

    (got,), _ = _build_run(params, body, [a.astype("int16"), b.astype("int16")])
    ref = ref_matmul(a, b)
    assert ref[0, 1, 2] > INT32_MAX and ref[1, 0, 4] < -INT32_MAX - 1
    _assert_exact(got, ref, acc, "matmul a16 x a16 K=37")


def test_emit_centered_values():
    """int16(xq) - zp, exactly, over the whole uint8 range and the int16 range."""
    xu = np.arange(256, dtype=np.uint8).reshape(16, 16)
    xs = np.concatenate([np.arange(-32767, -32700), np.arange(-50, 50), np.arange(32700, 32768)]).astype(np.int16)
    params = [_tensor_var("u", xu.shape, "uint8"), _tensor_var("s", xs.shape, "int16")]

    def body(bb):
        return [
            iops.emit_centered(bb, params[0], 201),
            iops.emit_centered(bb, params[0], 37),
            iops.emit_centered(bb, params[0], 0),
            iops.emit_centered(bb, params[1], 0),
        ]

    got, _ = _build_run(params, body, [xu, xs])
    for g, ref in zip(got, [xu.astype(np.int64) - 201, xu.astype(np.int64) - 37, xu.astype(np.int64), xs.astype(np.int64)]):
        _assert_exact(g, ref, "int16", "emit_centered")


# ---------------------------------------------------------------------------------------------
# quantize
# ---------------------------------------------------------------------------------------------

# (scale, zero point, dtype)
QUANT_CASES = [
    (0.25, 37, "uint8"),  # power-of-two scale: x / scale is exact, ties are exact .5
    (0.0371, 201, "uint8"),  # arbitrary scale: results must match float32 division bit for bit
    (2.0**-8, 0, "int16"),
    (0.001234, 0, "int16"),
    (0.0625, 0, "int8"),
]


def _quant_inputs(rng, scale, zp, qmin, qmax):
    s = np.float32(scale)
    span = np.arange(qmin - zp - 40, qmax - zp + 41, dtype=np.float64)
    if span.size > 4000:
        span = np.concatenate([span[:600], span[span.size // 2 - 300:span.size // 2 + 300], span[-600:]])
    ties = ((span + 0.5) * s).astype(np.float32)  # .5 ties (exact for power-of-two scales)
    exact = (span * s).astype(np.float32)
    rand = rng.uniform((qmin - zp) * scale * 1.5 - 1, (qmax - zp) * scale * 1.5 + 1, size=3000).astype(np.float32)
    beyond = np.array([1e30, -1e30, 3.0e38, -3.0e38, np.inf, -np.inf, 0.0, -0.0], dtype=np.float32)
    return np.concatenate([ties, -ties, exact, rand, beyond]).astype(np.float32)


def test_emit_quantize_matches_quant_math():
    rng = np.random.default_rng(41)
    params, prepared, inputs = [], [], []
    for j, (scale, zp, dtype) in enumerate(QUANT_CASES):
        signed = dtype != "uint8"
        qmin, qmax = qrange({"uint8": 8, "int8": 8, "int16": 16}[dtype], signed)
        x = _quant_inputs(rng, scale, zp, qmin, qmax)
        params.append(_tensor_var(f"x{j}", x.shape, "float32"))
        prepared.append((scale, zp, qmin, qmax, dtype))
        inputs.append(x)

    def body(bb):
        return [iops.emit_quantize(bb, p, s, z, lo, hi, d) for p, (s, z, lo, hi, d) in zip(params, prepared)]

    got, _ = _build_run(params, body, inputs)
    for g, x, (scale, zp, qmin, qmax, dtype) in zip(got, inputs, prepared):
        with np.errstate(over="ignore"):  # 3e38 / scale overflows to inf (then clips), on purpose
            ref = quantize(x, scale, zp, qmin, qmax)
        assert ref.min() == qmin and ref.max() == qmax  # the clip range is exercised at both ends
        _assert_exact(g, ref.astype(np.int64), dtype, f"quantize scale={scale} zp={zp} {dtype}")
    # The ties really were ties, and they went to even (sanity of the inputs, not of the kernel).
    s = np.float32(0.25)
    half = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5], dtype=np.float32) * s
    np.testing.assert_array_equal(quantize(half, s, 0, -127, 127), [0, 2, 2, 0, -2, -2])


@pytest.mark.parametrize("lo,hi", [(0.0, 6.0), (0.0, float("inf")), (-1.5, 0.7), (100.0, 200.0)])
@pytest.mark.parametrize("scale,zp,qmin,qmax", [(6.0 / 255, 0, 0, 255), (0.0371, 201, 0, 255), (0.25, 37, 0, 255),
                                                (2.0**-8, 0, -32767, 32767), (0.001234, 0, -32767, 32767)])
def test_clip_merges_into_quantize_exactly(lo, hi, scale, zp, qmin, qmax):
    """quantize(clip(x, lo, hi)) == clip(g(x), a, b) for every x (g monotone), checked on dense
    inputs around both bounds, rounding ties and far outside the range."""
    rng = np.random.default_rng(5)
    bounds = iops.clamp_bounds_through_quantize(lo, hi, scale, zp, qmin, qmax)
    x = np.concatenate([
        rng.uniform(-300, 300, 20000), rng.normal(0, 1, 20000),
        np.arange(-2000, 2000) * np.float32(scale) / 2,  # every half step: the ties
        [lo, hi if np.isfinite(hi) else 1e30, np.nextafter(np.float32(lo), np.float32(-1)), 1e30, -1e30, 0.0, -0.0],
    ]).astype(np.float32)
    ref = quantize(np.clip(x, np.float32(lo), np.float32(hi)), scale, zp, qmin, qmax)
    if bounds is None:  # disjoint ranges: the caller keeps both clips
        return
    a, b = bounds
    with np.errstate(over="ignore"):
        g = np.rint(x * (np.float32(1) / np.float32(scale))) + np.float32(zp)  # what emit_quantize computes
    np.testing.assert_array_equal(np.clip(g, a, b).astype(np.int32), ref)


def test_emit_quantize_ties_round_half_to_even_in_tvm():
    """Hand-checked ties through the compiled kernel (not only agreement with numpy)."""
    x = np.array([0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5, -3.5, 126.5, 127.5, -127.5, 1000.0], dtype=np.float32)
    params = [_tensor_var("x", x.shape, "float32")]
    (got_s, got_u), _ = _build_run(
        params,
        lambda bb: [
            iops.emit_quantize(bb, params[0], 1.0, 0, -127, 127, "int16"),
            iops.emit_quantize(bb, params[0], 1.0, 37, 0, 255, "uint8"),
        ],
        [x],
    )
    np.testing.assert_array_equal(got_s, [0, 2, 2, 4, 0, -2, -2, -4, 126, 127, -127, 127])
    np.testing.assert_array_equal(got_u, [37, 39, 39, 41, 37, 35, 35, 33, 163, 165, 0, 255])


# ---------------------------------------------------------------------------------------------
# int4 packing: the realized module stores half the bytes
# ---------------------------------------------------------------------------------------------


def _constants(mod: tvm.IRModule) -> list:
    """The tensor constants of the Relax functions of ``mod``, as numpy arrays."""
    found = []

    def visit(e):
        if isinstance(e, tvm.ir.expr.GenericConst) and isinstance(e.value, tvm.runtime.Tensor):
            found.append(e.value.numpy())

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return found


def test_pack_int4_halves_the_stored_weight_bytes():
    rng = np.random.default_rng(51)
    # conv: I*KH*KW = 4*3*3 = 36 (even) and 5*3*3 = 45 (odd, one pad nibble per row); dense K = 38, 37.
    convs = [(np.asarray(_rand_weight(rng, (6, 4, 3, 3), 4)), (1, 4, 7, 9)),
             (np.asarray(_rand_weight(rng, (7, 5, 3, 3), 4)), (1, 5, 11, 5))]
    denses = [_rand_weight(rng, (38, 5), 4), _rand_weight(rng, (37, 19), 4)]

    def realize(bits):
        params = [_tensor_var(f"c{j}", xs, "uint8") for j, (_, xs) in enumerate(convs)]
        params += [_tensor_var(f"d{j}", (3, w.shape[0]), "uint8") for j, w in enumerate(denses)]
        attrs = _conv_attrs((1, 1), (1, 1, 1, 1), (1, 1), 1, "relax")

        def body(bb):
            outs = []
            for p, (w, _) in zip(params, convs):
                acc = iops.emit_conv2d(bb, p, _weight_const(w, bits), attrs, 37, bits, w.shape, "int32")
                outs.append(iops.emit_zero_point_correction(bb, acc, 37, w.reshape(w.shape[0], -1).sum(1), (1, w.shape[0], 1, 1), "int32"))
            for p, w in zip(params[len(convs):], denses):
                k, n = w.shape
                const = relax.const(pack_int4(w.T), "uint8") if bits == 4 else relax.const(w.astype("int8"), "int8")
                acc = iops.emit_dense(bb, p, const, bits, k, n, "int32")
                outs.append(iops.emit_zero_point_correction(bb, acc, 37, w.T.sum(1), (n,), "int32"))
            return outs

        inputs = [_rand_act(rng, xs, "uint8") for _, xs in convs] + [_rand_act(rng, (3, w.shape[0]), "uint8") for w in denses]
        got, mod = _build_run(params, body, inputs)
        refs = [ref_conv2d(x, w, 37, (1, 1), (1, 1, 1, 1), (1, 1), 1) for x, (w, _) in zip(inputs, convs)]
        refs += [ref_matmul(x, w, 37) for x, w in zip(inputs[len(convs):], denses)]
        for g, r in zip(got, refs):
            _assert_exact(g, r, "int32", f"w{bits} packing module")
        return mod

    weights = [w.reshape(w.shape[0], -1) for w, _ in convs] + [w.T for w in denses]  # [O, n] rows
    for bits in (4, 8):
        mod = realize(bits)
        # the weight constants (not the zero-point corrections, which are int32 [..., O, ...])
        consts = [c for c in _constants(mod) if c.dtype in (np.uint8, np.int8)]
        assert len(consts) == len(weights), [(c.dtype, c.shape) for c in consts]
        for arr, w2d in zip(consts, weights):
            o, n = w2d.shape
            if bits == 4:
                assert arr.dtype == np.uint8
                assert arr.shape == (o, (n + 1) // 2)
                assert arr.nbytes == o * ((n + 1) // 2)
                if n % 2 == 0:
                    assert 2 * arr.nbytes == o * n  # exactly half of the int8 weight
                np.testing.assert_array_equal(unpack_int4(arr, n), w2d)
            else:
                assert arr.dtype == np.int8 and arr.nbytes == o * n
        total = sum(c.nbytes for c in consts)
        if bits == 4:
            total4 = total
        else:
            assert total4 == sum(w.shape[0] * ((w.shape[1] + 1) // 2) for w in weights)
            assert 2 * total4 <= total + sum(w.shape[0] for w in weights)
            assert 2 * total4 >= total


def int4_conv_and_dense_module(w, wd, x_shape, y_shape, attrs) -> tvm.IRModule:
    """``main(x, y)``: an int4 conv of ``x`` (OIHW weight ``w``, zero point 37) and an int4 dense
    of ``y`` (``[K, N]`` weight ``wd``), their weights packed as realize.py stores them."""
    params = [_tensor_var("x", x_shape, "uint8"), _tensor_var("y", y_shape, "uint8")]
    k, n = wd.shape

    def body(bb):
        return [
            iops.emit_conv2d(bb, params[0], _weight_const(w, 4), attrs, 37, 4, w.shape, "int32"),
            iops.emit_dense(bb, params[1], relax.const(pack_int4(wd.T), "uint8"), 4, k, n, "int32"),
        ]

    return main_module(params, body)


def test_pack_int4_constant_survives_compilation_pipeline():
    """The default Relax pipeline (legalize, fold constants, fuse) must not unpack the int4 weight
    into an int8 constant: the packed uint8 constant is what the compiled module holds."""
    rng = np.random.default_rng(52)
    w = _rand_weight(rng, (7, 5, 3, 3), 4)
    wd = _rand_weight(rng, (37, 19), 4)
    attrs = _conv_attrs((2, 2), (1, 0, 2, 1), (1, 1), 1, "relax")
    mod = int4_conv_and_dense_module(w, wd, (1, 5, 11, 5), (2, 3, 37), attrs)
    mod = relax.pipeline.get_default_pipeline(_target())(mod)
    consts = _constants(mod)
    shapes = sorted((str(c.dtype), c.shape) for c in consts if c.dtype in (np.uint8, np.int8))
    assert shapes == sorted([("uint8", (7, 23)), ("uint8", (19, 19))]), shapes
