"""Integer building blocks of realized modules, emitted into a Relax BlockBuilder.

Conventions (fixed by tvm_mpq.quant_math, the numpy reference):
- activations at 8 bits are asymmetric uint8 (zero point ``zp``); at 16 bits symmetric int16;
- weights are symmetric per output channel: int8 for 4, 7 and 8 bits (int4 stored packed two per
  byte, unpacked by a stage of the kernel -- which the x86 templates turn into a compile-time layout
  rewrite; 7 bits read through a clamp stage that tells the templates their range), int16 for 16;
- every kernel returns the *centered* accumulator ``sum((xq - zp) * wq)`` in int32, or int64 when
  the worst case of the layer's actual integer weights could overflow int32.

uint8 x int8 with the zero point corrected afterwards (instead of subtracting it first) is the form
an int8 dot-product instruction (x86 ``vpdpbusd``) consumes; padding uses ``zp`` so every window is
full and the correction is one constant per output channel.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, topi

from tvm_mpq.quant_math import inverse_scale

INT32_MAX = 2**31 - 1


def accumulator_dtype(max_abs_input: int, weight_abs_sum_max: int) -> str:
    """int32 if ``max|x| * max_c sum|w_c|`` fits, else int64 (never a silent wrap)."""
    return "int32" if int(max_abs_input) * int(weight_abs_sum_max) <= INT32_MAX else "int64"


#: Integers up to 2**24 are exact in float32, and so is every partial sum below it.
FLOAT32_EXACT = 2**24


def exact_in_float32(max_abs_input: int, weight_abs_sum_max: int) -> bool:
    """Whether a float32 accumulation of these integer products is exact: every partial sum is an
    integer of magnitude below 2**24, whatever the summation order (and FMA contraction)."""
    return int(max_abs_input) * int(weight_abs_sum_max) < FLOAT32_EXACT


def float_conv_pays(weight_shape, groups: int) -> bool:
    """8-bit convs that run faster as exact float32 arithmetic on AVX2:

    - regular convs with an odd input channel count (an RGB stem), whose reduction offers no even
      axis for the int16-pair (``vpmaddwd``) kernels, so that the integer kernel widens every
      operand to int32 and multiplies with ``vpmulld`` at half the float FMA rate (MobileNetV2's
      stem: 0.69 -> 0.46 ms, one thread);
    - depthwise convs: nine taps per output and no shared axis, so no pairs either; as float32
      they get the per-channel-plane template (targets/depthwise.py) with one FMA per 8
      multiply-adds (MobileNetV2's 17 depthwise layers: 2.93 -> 2.1 ms, one thread,
      benchmarks/profile_model.py).
    """
    depthwise = groups > 1 and int(weight_shape[1]) == 1
    return depthwise or (groups == 1 and int(weight_shape[1]) % 2 == 1)


def emit_quantize(bb, x, scale: float, zero_point: int, qmin: int, qmax: int, dtype: str):
    """``clip(round(x * inverse_scale) + zp, qmin, qmax)`` cast to ``dtype`` (quant_math.quantize)."""
    q = relax.op.round(relax.op.multiply(x, relax.const(inverse_scale(scale), "float32")))
    if zero_point:
        q = relax.op.add(q, relax.const(np.float32(zero_point), "float32"))
    q = relax.op.clip(q, int(qmin), int(qmax))
    return bb.emit(relax.op.astype(q, dtype))


def clamp_bounds_through_quantize(lo: float, hi: float, scale: float, zero_point: int, qmin: int, qmax: int):
    """The integer bounds ``(a, b)`` with ``quantize(clip(x, lo, hi)) == clip(g(x), a, b)`` for every
    x, where ``g(x) = rint(x * inverse_scale) + zp`` is what ``emit_quantize`` computes before its
    clip: ``g`` is non-decreasing, so ``g(clip(x, lo, hi)) = clip(g(x), g(lo), g(hi))`` exactly, and
    the two clips merge. A ReLU / ReLU6 before a requantize then costs nothing. None when the
    ranges do not overlap (nothing to gain; the caller keeps both clips)."""
    inv = inverse_scale(scale)
    with np.errstate(over="ignore", invalid="ignore"):
        g = [np.rint(np.float32(v) * inv) + np.float32(zero_point) for v in (lo, hi)]
    a, b = max(float(qmin), float(g[0])), min(float(qmax), float(g[1]))
    if not (np.isfinite(a) and np.isfinite(b)) or a > b:
        return None
    return int(a), int(b)


def emit_centered(bb, xq, zero_point: int):
    """``int16(xq) - zp``: the exact signed value of an activation (for activation x activation)."""
    x16 = relax.op.astype(xq, "int16")
    if zero_point:
        x16 = relax.op.subtract(x16, relax.const(np.int16(zero_point), "int16"))
    return bb.emit(x16)


def _unpack_int4(packed, index_fn, dtype="int8"):
    """Element of a weight stored as two int4 per byte (low nibble first) along its last axis."""

    def value(*idx):
        row, k = index_fn(*idx)
        byte = packed[row, k // 2].astype("int32")
        nib = (byte >> ((k % 2) * 4)) & 15
        # sign extension written so TVM's analyzer bounds it (within [-16, 15]; it bounds no
        # xor): the x86 templates prove from that bound that vpmaddubsw cannot saturate
        return (nib - (nib >> 3) * 16).astype(dtype)

    return value


def _narrow_weight(weight, weight_bits: int, shape, index_fn):
    """The int8 weight of a < 8-bit layer as the kernel reads it (``shape``; element ``idx`` is
    ``weight[index_fn(*idx)]``): through a clamp to its range -- a no-op on its values, but one
    TVM's analyzer bounds, from which the x86 templates prove that ``vpmaddubsw`` cannot
    saturate; the compiler folds it into the weight's layout rewrite, as it does the int4 unpack."""
    lo, hi = (tvm.tirx.const(v, "int8") for v in (-(2 ** (weight_bits - 1)), 2 ** (weight_bits - 1) - 1))
    return te.compute(
        shape, lambda *idx: te.max(te.min(weight[index_fn(*idx)], hi), lo), name=f"int{weight_bits}_weight"
    )


def emit_conv2d(
    bb, xq, weight, attrs, zero_point: int, weight_bits: int, weight_shape, acc_dtype: str,
    float_weight: np.ndarray | None = None,
):  # fmt: skip
    """Integer conv2d (NCHW/OIHW) returning the accumulator (centered by the caller's zero-point
    correction).

    ``weight`` is an int8/int16 OIHW constant, or for 4 bits a uint8 ``[O, ceil(I*KH*KW/2)]``
    packed constant of the OIHW weight flattened per output channel (7 bits: int8, read through
    ``_narrow_weight``). With ``float_weight`` (the integer weight values as float32, given only
    where ``exact_in_float32`` holds) the sum is computed in float32 -- exactly -- and cast back
    to ``acc_dtype`` (``"float32"``: kept as is; ``emit_zero_point_correction`` with ``"float32"``
    then stays exact too, its terms being below the same bound).
    """
    pad = [int(p) for p in attrs.padding]
    strides = [int(s) for s in attrs.strides]
    dilation = [int(d) for d in attrs.dilation]
    groups = int(attrs.groups)
    if float_weight is not None:
        # One kernel: the zero-point pad, the cast to float32 and the conv (a separate Relax cast
        # would be fused into the producer's epilogue, which would then write float32 activations).
        top, left, bottom, right = pad
        fw = relax.const(np.asarray(float_weight, np.float32))

        def conv_float_te(x, w):
            n, c, h, wd = x.shape
            hp, wp = h + top + bottom, wd + left + right

            def padded(nn, cc, hh, ww):
                inside = tvm.tirx.all(hh >= top, hh < h + top, ww >= left, ww < wd + left)
                value = x[nn, cc, tvm.te.max(hh - top, 0), tvm.te.max(ww - left, 0)]
                return tvm.tirx.if_then_else(inside, value.astype("float32"), tvm.tirx.const(float(zero_point), "float32"))

            xf = te.compute((n, c, hp, wp), padded, name="pad_cast")
            # the TOPI computes Relax legalizes float convs to: the same TIR as a float model's
            if groups == 1:
                return topi.nn.conv2d_nchw(xf, w, strides, 0, dilation, "float32")
            return topi.nn.group_conv2d_nchw(xf, w, strides, 0, dilation, groups, "float32")

        accf = bb.emit_te(conv_float_te, xq, fw, primfunc_name_hint="conv2d_exact_float")
        if acc_dtype == "float32":
            return accf  # the exact sums themselves: a rescale needs no float -> int -> float trip
        return bb.emit(relax.op.astype(accf, acc_dtype))
    if zero_point and any(pad):
        # Pad with the zero point: the padded region then means real 0.0, like the float model.
        top, left, bottom, right = pad
        xq = bb.emit(
            relax.op.nn.pad(xq, [0, 0, 0, 0, top, bottom, left, right], pad_value=float(zero_point))
        )
        pad = [0, 0, 0, 0]
    if weight_bits == 4:
        o, i, kh, kw = weight_shape

        def conv_te(x, packed):
            w = te.compute(
                (o, i, kh, kw),
                _unpack_int4(packed, lambda oo, ii, hh, ww: (oo, (ii * kh + hh) * kw + ww)),
                name="unpack_int4",
            )
            return topi.nn.conv(x, w, strides, pad, dilation, groups, "NCHW", "OIHW", acc_dtype)

        acc = bb.emit_te(conv_te, xq, weight, primfunc_name_hint="conv2d_int4")
    elif weight_bits < 8:

        def conv_narrow_te(x, wc):
            w = _narrow_weight(wc, weight_bits, wc.shape, lambda *idx: idx)
            return topi.nn.conv(x, w, strides, pad, dilation, groups, "NCHW", "OIHW", acc_dtype)

        acc = bb.emit_te(conv_narrow_te, xq, weight, primfunc_name_hint=f"conv2d_int{weight_bits}")
    else:
        acc = bb.emit(
            relax.op.nn.conv2d(
                xq, weight, strides=strides, padding=pad, dilation=dilation, groups=groups,
                data_layout="NCHW", kernel_layout="OIHW", out_dtype=acc_dtype,
            )
        )
    return acc


def emit_dense(bb, xq, weight, weight_bits: int, k: int, n: int, acc_dtype: str):
    """Integer ``x[..., K] @ W[K, N]`` returning the accumulator.

    ``weight`` is an int8/int16 ``[K, N]`` constant, or for 4 bits a uint8 ``[N, ceil(K/2)]``
    packed constant (the torch ``[out, in]`` layout packed along ``in``); 7 bits: int8 ``[K, N]``
    read through ``_narrow_weight``.
    """
    if weight_bits >= 8:
        return bb.emit(relax.op.matmul(xq, weight, out_dtype=acc_dtype))

    def dense_te(x, wc):
        # The unpack (clamp) is a stage of its own (as for convs): the templates turn it into the
        # operand's layout stage, done once; inlined in the reduction the int4 unpack ran per
        # multiply-add (MiniLM w4a8: 165 ms against 24 ms for w8a8, one thread).
        if weight_bits == 4:
            w = te.compute((n, k), _unpack_int4(wc, lambda nn, kk: (nn, kk)), name="unpack_int4")
        else:
            w = _narrow_weight(wc, weight_bits, (n, k), lambda nn, kk: (kk, nn))
        red = te.reduce_axis((0, k), name="k")
        lead = x.shape[:-1]
        return te.compute(
            (*lead, n),
            lambda *idx: te.sum(x[(*idx[:-1], red)].astype(acc_dtype) * w[idx[-1], red].astype(acc_dtype), axis=red),
            name=f"dense_int{weight_bits}",
        )

    return bb.emit_te(dense_te, xq, weight, primfunc_name_hint=f"dense_int{weight_bits}")


def emit_zero_point_correction(bb, acc, zero_point: int, weight_sums: np.ndarray, shape, acc_dtype: str):
    """``acc - zp * sum_k w[c, k]``: from ``sum(xq * w)`` to ``sum((xq - zp) * w)``."""
    if not zero_point:
        return acc
    corr = (np.int64(zero_point) * weight_sums.astype(np.int64)).reshape(shape).astype(acc_dtype)
    return bb.emit(relax.op.subtract(acc, relax.const(corr, acc_dtype)))


def emit_dequantize(bb, acc, scale: np.ndarray, shape):
    """``float32(acc) * scale`` with a per-output-channel scale (activation scale x weight scale)."""
    s = np.asarray(scale, dtype=np.float32).reshape(shape)
    return bb.emit(relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(s, "float32")))
