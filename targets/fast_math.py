"""Vectorizable GELU, softmax and layer norm for CPU targets.

TVM's default legalizations compute GELU with ``erf`` and softmax with ``exp``, which LLVM turns
into one libm call per element: the loops stay scalar. On all-MiniLM-L6-v2 (sequence 128, one
thread) GELU and softmax took 21 of 82 ms. TOPI's ``fast_erf`` / ``fast_exp`` are polynomial forms
built from vectorizable arithmetic, accurate to a few float32 ulps (checked in
tests/test_fast_math.py against numpy in float64); ``LEGALIZE_MAP`` routes ``relax.nn.gelu`` and
``relax.nn.softmax`` to them, for ``relax.transform.LegalizeOps(customize_legalize_map=...)``.
Row reductions (softmax, layer norm) are written as partial results over vector lanes first: the
schedules vectorize those, where a plain row reduction became a strided scalar loop.
"""

from __future__ import annotations

import math

from tvm import relax, te, tirx, topi

__all__ = ["LEGALIZE_MAP", "gelu", "layer_norm", "softmax"]


def gelu(x: te.Tensor) -> te.Tensor:
    """``x * (0.5 + erf(x / sqrt 2) * 0.5)`` with TOPI's fast_erf (float32)."""
    half = tirx.const(0.5, x.dtype)
    erf = topi.fast_erf(topi.multiply(x, tirx.const(math.sqrt(0.5), x.dtype)))
    return topi.multiply(x, topi.add(half, topi.multiply(erf, half)))


#: Lanes of the partial maxima / sums of a row reduction (one AVX2 float32 vector).
ROW_LANES = 8


def _lane_reduce(values, lead: list, n: int, name: str, reducer=te.sum) -> te.Tensor:
    """``reducer`` (te.sum / te.max) of ``values(*lead_idx, k)`` over k < n (a multiple of
    ``ROW_LANES``): partial results over the row's vectors first -- elementwise over contiguous
    lanes, which the schedules vectorize -- then over the lanes."""
    lanes = ROW_LANES
    j = te.reduce_axis((0, n // lanes), name="j")
    part = te.compute(lead + [lanes], lambda *i: reducer(values(*i[:-1], j * lanes + i[-1]), axis=j), name=f"{name}_part")
    lane = te.reduce_axis((0, lanes), name="l")
    return te.compute(lead, lambda *i: reducer(part[(*i, lane)], axis=lane), name=name)


def softmax(x: te.Tensor, axis: int) -> te.Tensor:
    """``exp(x - max) / sum(exp(x - max))`` along ``axis`` with TOPI's fast_exp.

    A last axis that splits into vectors is reduced over vector lanes first (``_lane_reduce``):
    a plain reduction along the row is scheduled with the reduction outside the rows and became a
    strided scalar loop -- 0.64 ms per 12x128x128 attention softmax, 3.8 of MiniLM's 28 ms (w8a8,
    one thread). The row is normalized by one reciprocal per row."""
    ndim = len(x.shape)
    axis = axis % ndim
    n = x.shape[axis]
    if axis != ndim - 1 or not isinstance(n, tirx.IntImm) or int(n) % ROW_LANES or int(n) == ROW_LANES:
        m = topi.max(x, axis=axis, keepdims=True)
        e = topi.fast_exp(topi.subtract(x, m))
        return topi.divide(e, topi.sum(e, axis=axis, keepdims=True))
    lead, n = list(x.shape[:-1]), int(n)
    row_max = _lane_reduce(lambda *i: x[i], lead, n, "row_max", te.max)
    e = topi.fast_exp(te.compute(x.shape, lambda *i: x[i] - row_max[i[:-1]], name="shifted"))
    row_sum = _lane_reduce(lambda *i: e[i], lead, n, "row_sum")
    inv = te.compute(lead, lambda *i: tirx.const(1.0, x.dtype) / row_sum[i], name="row_inverse")
    return te.compute(x.shape, lambda *i: e[i] * inv[i[:-1]], name="softmax")


def layer_norm(x: te.Tensor, gamma: te.Tensor, beta: te.Tensor, epsilon: float) -> te.Tensor:
    """Layer norm over the last axis (a multiple of ``ROW_LANES`` long), in two passes -- the
    mean, then the mean of centered squares -- each reduced over vector lanes first. TOPI's
    reduction ran as a strided scalar loop: 105 us per 128x384 layer norm, 1.4 ms of MiniLM
    (one thread)."""
    lead = list(x.shape[:-1])
    n = int(x.shape[-1])
    inv_n = tirx.const(1.0 / n, x.dtype)
    total = _lane_reduce(lambda *i: x[i], lead, n, "row_sum")
    mean = te.compute(lead, lambda *i: total[i] * inv_n, name="mean")
    centered = te.compute(x.shape, lambda *i: x[i] - mean[i[:-1]], name="centered")
    squares = _lane_reduce(lambda *i: centered[i] * centered[i], lead, n, "row_squares")
    rstd = te.compute(
        lead, lambda *i: tirx.const(1.0, x.dtype) / te.sqrt(squares[i] * inv_n + tirx.const(epsilon, x.dtype)),
        name="rstd",
    )
    return te.compute(
        x.shape, lambda *i: centered[i] * rstd[i[:-1]] * gamma[i[-1]] + beta[i[-1]], name="layer_norm"
    )


def _legalize_layer_norm(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    x = call.args[0]
    shape = x.ty.shape if hasattr(x.ty, "shape") else None
    ndim = len(shape) if shape is not None else 0
    axes = [int(a) % ndim for a in call.attrs.axes] if ndim else []
    n = shape[-1] if ndim else None
    if (
        str(x.ty.dtype) != "float32" or axes != [ndim - 1] or not isinstance(n, tirx.IntImm)
        or int(n) % ROW_LANES or not (call.attrs.center and call.attrs.scale)
    ):  # fmt: skip
        return call
    return bb.call_te(layer_norm, x, call.args[1], call.args[2], float(call.attrs.epsilon), primfunc_name_hint="layer_norm")


def _legalize_gelu(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    if str(call.args[0].ty.dtype) != "float32":
        return call  # left as is: the default legalization (next LegalizeOps) takes it
    return bb.call_te(gelu, call.args[0], primfunc_name_hint="gelu")


def _legalize_softmax(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    if str(call.args[0].ty.dtype) != "float32":
        return call
    return bb.call_te(softmax, call.args[0], int(call.attrs.axis), primfunc_name_hint="softmax")


LEGALIZE_MAP = {
    "relax.nn.gelu": _legalize_gelu,
    "relax.nn.softmax": _legalize_softmax,
    "relax.nn.layer_norm": _legalize_layer_norm,
}
