"""Quantization arithmetic in numpy: the single source of truth.

Calibration, the simulated (fake-quant) network and the realized integer kernels must agree bit
for bit, or the sensitivities measured in phase 1 describe a network that is never compiled. So
every formula is written once, here, in the exact float32 order the Relax/TVM side uses:

    q = clip(rint(float32(x) * inverse_scale(scale)) + zero_point, qmin, qmax)   -> int32
    x' = float32(q - zero_point) * float32(scale)

with ``inverse_scale(s) = float32(1) / float32(s)`` rounded once. Quantizing multiplies instead of
dividing because a division is the most expensive instruction of every requantizing kernel epilogue
(``vdivps`` issues once per 3.5-5 cycles on Zen; the multiply twice per cycle); the result differs
from ``rint(x / s)`` only where ``x / s`` is within an ulp of a rounding tie, and every side
(calibration, simulation, realization, this reference) computes the same product.

`rint` rounds half to even, like TVM's `R.round`. Signed ranges are *restricted* symmetric
(int8 is [-127, 127]) so that a symmetric weight range never needs the lone -128, and
int8 x int8 products cannot hit the one asymmetric corner. Int4 has no TVM dtype that works end
to end, so int4 weights are stored packed two per byte (`pack_int4`) and unpacked in the kernel.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "inverse_scale",
    "qrange",
    "quantize",
    "dequantize",
    "fake_quantize",
    "pack_int4",
    "unpack_int4",
]


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """Integer range of a `bits`-wide quantizer: restricted symmetric if signed, else [0, 2**b-1]."""
    bits = int(bits)
    if not 2 <= bits <= 32:
        raise ValueError(f"bits must be in [2, 32], got {bits}")
    if signed:
        m = 2 ** (bits - 1) - 1
        return -m, m
    return 0, 2**bits - 1


def _broadcast_param(p, ndim: int, axis: int | None, size: int | None, dtype) -> np.ndarray:
    """Shape a per-tensor or per-channel parameter so it broadcasts against x along `axis`."""
    arr = np.asarray(p, dtype=dtype)
    if axis is None:
        if arr.ndim != 0:
            raise ValueError(f"per-tensor parameter must be a scalar, got shape {arr.shape}")
        return arr
    if arr.ndim != 1 or arr.shape[0] != size:
        raise ValueError(
            f"per-channel parameter along axis {axis} must have shape ({size},), got {arr.shape}"
        )
    shape = [1] * ndim
    shape[axis] = size
    return arr.reshape(shape)


def _norm_axis(axis: int | None, ndim: int) -> int | None:
    if axis is None:
        return None
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} out of range for a {ndim}-d tensor")
    return axis % ndim


def inverse_scale(scale) -> np.ndarray:
    """``float32(1) / float32(scale)``: the multiplier quantization uses (see the module docstring)."""
    return np.float32(1) / np.asarray(scale, dtype=np.float32)


def quantize(x, scale, zero_point, qmin: int, qmax: int, axis: int | None = None) -> np.ndarray:
    """`clip(rint(x * inverse_scale(scale)) + zero_point, qmin, qmax)` in float32, as int32.

    With `axis`, `scale` and `zero_point` are 1-D arrays with one entry per slice of x along it.
    """
    x32 = np.asarray(x, dtype=np.float32)
    ax = _norm_axis(axis, x32.ndim)
    size = None if ax is None else x32.shape[ax]
    inv = _broadcast_param(inverse_scale(scale), x32.ndim, ax, size, np.float32)
    zp = _broadcast_param(zero_point, x32.ndim, ax, size, np.int32).astype(np.float32)
    q = np.asarray(np.rint(x32 * inv))  # asarray: 0-d inputs give scalars, which can't be out=
    q += zp
    np.clip(q, np.float32(qmin), np.float32(qmax), out=q)
    return q.astype(np.int32)


def dequantize(q, scale, zero_point, axis: int | None = None) -> np.ndarray:
    """`float32(q - zero_point) * float32(scale)`."""
    q32 = np.asarray(q, dtype=np.int32)
    ax = _norm_axis(axis, q32.ndim)
    size = None if ax is None else q32.shape[ax]
    s = _broadcast_param(scale, q32.ndim, ax, size, np.float32)
    zp = _broadcast_param(zero_point, q32.ndim, ax, size, np.int32)
    out = (q32 - zp).astype(np.float32)
    out *= s
    return out


def fake_quantize(x, scale, zero_point, qmin: int, qmax: int, axis: int | None = None) -> np.ndarray:
    """`dequantize(quantize(x))`: what the simulated network sees in place of x (float32)."""
    return dequantize(quantize(x, scale, zero_point, qmin, qmax, axis), scale, zero_point, axis)


def pack_int4(q) -> np.ndarray:
    """Pack int4 values ([-8, 7]) two per byte along the last axis.

    Byte j holds element 2j in its low nibble and element 2j+1 in its high nibble, each in 4-bit
    two's complement; an odd length is padded with a 0 nibble. Shape [..., ceil(n/2)], uint8.
    """
    q = np.asarray(q)
    if q.ndim == 0:
        raise ValueError("pack_int4 needs at least a 1-d array")
    if not np.issubdtype(q.dtype, np.integer):
        raise ValueError(f"pack_int4 needs an integer array, got dtype {q.dtype}")
    if q.size and (q.min() < -8 or q.max() > 7):
        raise ValueError(
            f"pack_int4 values must lie in [-8, 7], got range [{q.min()}, {q.max()}]"
        )
    nib = (q.astype(np.int16) & 0xF).astype(np.uint8)
    n = q.shape[-1]
    if n % 2:
        pad = np.zeros(q.shape[:-1] + (1,), dtype=np.uint8)
        nib = np.concatenate([nib, pad], axis=-1)
    return (nib[..., 0::2] | (nib[..., 1::2] << 4)).astype(np.uint8)


def unpack_int4(packed, n: int) -> np.ndarray:
    """Inverse of `pack_int4`: sign-extend each nibble and return int8 of shape [..., n]."""
    p = np.asarray(packed)
    if p.ndim == 0:
        raise ValueError("unpack_int4 needs at least a 1-d array")
    if p.dtype != np.uint8:
        raise ValueError(f"unpack_int4 needs a uint8 array, got dtype {p.dtype}")
    n = int(n)
    if n < 0 or (n + 1) // 2 != p.shape[-1]:
        raise ValueError(f"{n} int4 values do not pack into {p.shape[-1]} bytes")
    lo = (p & 0xF).astype(np.int8)
    hi = (p >> 4).astype(np.int8)
    out = np.empty(p.shape[:-1] + (2 * p.shape[-1],), dtype=np.int8)
    out[..., 0::2] = lo
    out[..., 1::2] = hi
    out = (out ^ 8) - 8
    return out[..., :n].astype(np.int8)
