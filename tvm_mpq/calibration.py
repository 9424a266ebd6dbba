"""Calibration: from float tensors to quantization encodings.

An `Encoding` is the small, JSON-able record that joins calibration to simulation and to the
realized kernels (the PT2E `QuantizationSpec` idea): bits, integer range, scale, zero point and
axis. Its scale is stored already rounded to float32, so numpy and TVM divide by the same number.

Conventions, chosen once here so every other part of tvm_mpq can rely on them:

* Weights: symmetric, signed restricted range ([-127, 127] for int8), one scale per output
  channel, zero point 0. "mse" searches a clip ratio per channel; ratio 1.0 (= minmax) is always a
  candidate and wins ties, so mse is never worse than minmax on the weight itself.
* Activations at <= 8 bits: asymmetric unsigned ([0, 255]); the range is widened to include 0.0
  and the zero point is an integer inside [qmin, qmax], so real 0.0 (ReLU outputs, padding) is
  represented exactly. This is what u8 x s8 -> s32 VNNI kernels consume.
* Activations at > 8 bits (int16): symmetric signed restricted, zero point 0, which int16
  x int16 -> int32 kernels (vpdpwssd) need; 16 bits leave ample resolution for the wasted half.

Activation statistics are streamed (`ActivationObserver`): exact min/max over all data plus a
bounded, seeded reservoir subsample on which the mse range search runs, so memory stays fixed
however much calibration data is fed and the result is reproducible.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np

from .errors import CalibrationError
from .quant_math import fake_quantize, qrange, quantize, dequantize

__all__ = [
    "SCALE_EPS",
    "WEIGHT_CLIP_RATIOS",
    "ACT_CLIP_RATIOS",
    "Encoding",
    "weight_encoding",
    "ActivationObserver",
    "sqnr_db",
]

#: Smallest scale ever produced: a constant (or all-zero) tensor still gets a finite, nonzero scale.
SCALE_EPS = 1e-8
#: Clip ratios searched by weight mse, descending from 1.0 (= minmax) so ties keep the full range.
WEIGHT_CLIP_RATIOS = np.linspace(1.0, 0.5, 51)
#: Clip ratios searched (per side) by activation mse, descending from 1.0.
ACT_CLIP_RATIOS = np.linspace(1.0, 0.3, 71)
_METHODS = ("minmax", "mse")
# Elements per temporary in the vectorized searches (bounds memory for big weights).
_CHUNK_ELEMS = 1 << 22


def _f32_scale(value) -> np.ndarray | float:
    """Floor at SCALE_EPS and round to float32 (array in, array out; scalar in, float out)."""
    s = np.maximum(np.asarray(value, dtype=np.float64), SCALE_EPS).astype(np.float32)
    if not np.all(np.isfinite(s)):
        raise CalibrationError(f"range too large for a float32 scale: {value}")
    return float(s) if s.ndim == 0 else s


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or int(bits) != bits or not 2 <= int(bits) <= 16:
        raise CalibrationError(f"bits must be an integer in [2, 16], got {bits!r}")
    return int(bits)


def _check_method(method) -> str:
    if method not in _METHODS:
        raise CalibrationError(f"unknown calibration method {method!r}; expected one of {_METHODS}")
    return method


@dataclasses.dataclass(frozen=True, eq=False)
class Encoding:
    """Quantization parameters of one tensor: per-tensor (axis None) or per-channel (axis int)."""

    bits: int
    signed: bool
    scale: Any  # float, or read-only 1-D float32 ndarray when per-channel
    zero_point: Any  # int, or read-only 1-D int32 ndarray when per-channel
    qmin: int
    qmax: int
    axis: int | None = None
    method: str = "minmax"

    def __post_init__(self):
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        put("bits", _check_bits(self.bits))
        put("signed", bool(self.signed))
        put("qmin", int(self.qmin))
        put("qmax", int(self.qmax))
        _check_method(self.method)
        if self.qmin >= self.qmax:
            raise CalibrationError(f"empty integer range [{self.qmin}, {self.qmax}]")
        if self.axis is None:
            s = np.float32(np.asarray(self.scale, dtype=np.float64).reshape(()))
            zp = np.asarray(self.zero_point).reshape(())
            put("scale", float(s))
            put("zero_point", int(zp))
        else:
            put("axis", int(self.axis))
            s = np.array(self.scale, dtype=np.float32).reshape(-1)
            zp = np.array(self.zero_point, dtype=np.int32).reshape(-1)
            if zp.size == 1 and s.size > 1:
                zp = np.full(s.shape, zp[0], dtype=np.int32)
            if s.shape != zp.shape or s.size == 0:
                raise CalibrationError(
                    f"per-channel scale {s.shape} and zero_point {zp.shape} must be equal, non-empty"
                )
            s.setflags(write=False)
            zp.setflags(write=False)
            put("scale", s)
            put("zero_point", zp)
        if not (np.all(np.isfinite(s)) and np.all(s > 0)):
            raise CalibrationError(f"scale must be finite and > 0, got {self.scale}")
        if np.any(zp < self.qmin) or np.any(zp > self.qmax):
            raise CalibrationError(
                f"zero_point {self.zero_point} outside [{self.qmin}, {self.qmax}]"
            )

    # --- views -------------------------------------------------------------------------------
    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    @property
    def storage_dtype(self) -> str:
        """Narrowest TVM dtype holding the integers (int4 is held in int8 until packed)."""
        return ("int" if self.signed else "uint") + ("8" if self.bits <= 8 else "16")

    @property
    def clip_range(self):
        """(min, max) real values represented: `dequantize(qmin)`, `dequantize(qmax)`."""
        zp, s = np.asarray(self.zero_point, np.int32), np.asarray(self.scale, np.float32)
        lo = (np.int32(self.qmin) - zp).astype(np.float32) * s
        hi = (np.int32(self.qmax) - zp).astype(np.float32) * s
        if self.axis is None:
            return float(lo), float(hi)
        return lo, hi

    # --- arithmetic --------------------------------------------------------------------------
    def quantize(self, x) -> np.ndarray:
        return quantize(x, self.scale, self.zero_point, self.qmin, self.qmax, self.axis)

    def dequantize(self, q) -> np.ndarray:
        return dequantize(q, self.scale, self.zero_point, self.axis)

    def fake_quantize(self, x) -> np.ndarray:
        return fake_quantize(x, self.scale, self.zero_point, self.qmin, self.qmax, self.axis)

    # --- (de)serialization -------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-able dict; float32 scales survive the round trip exactly."""
        d = dataclasses.asdict(self)
        if self.axis is not None:
            d["scale"] = [float(v) for v in self.scale]
            d["zero_point"] = [int(v) for v in self.zero_point]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Encoding":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise CalibrationError(f"unknown Encoding fields {sorted(unknown)}")
        return cls(**d)

    def __eq__(self, other):
        if not isinstance(other, Encoding):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self):
        return hash(json.dumps(self.to_dict(), sort_keys=True))


def _sse_rows(x2d: np.ndarray, scale, zero_point, qmin: int, qmax: int) -> np.ndarray:
    """Sum of squared fake-quant error per row of x2d, row i quantized with scale[i], zp[i]."""
    d = fake_quantize(x2d, scale, zero_point, qmin, qmax, axis=0)
    d -= x2d
    d = d.astype(np.float64)
    return np.einsum("ij,ij->i", d, d)


def weight_encoding(
    w: np.ndarray, bits: int, axis: int = 0, method: str = "mse", *, name: str | None = None
) -> Encoding:
    """Symmetric per-output-channel encoding of weight `w` along `axis` (zero point 0)."""
    bits, method = _check_bits(bits), _check_method(method)
    what = f"weight {name!r}" if name else "weight"
    w = np.asarray(w)
    if w.ndim == 0 or w.size == 0:
        raise CalibrationError(f"{what}: need a non-empty array with a channel axis, got {w.shape}")
    if not -w.ndim <= axis < w.ndim:
        raise CalibrationError(f"{what}: axis {axis} out of range for shape {w.shape}")
    axis %= w.ndim
    w2d = np.moveaxis(np.asarray(w, dtype=np.float32), axis, 0).reshape(w.shape[axis], -1)
    bad = int(np.size(w2d) - np.count_nonzero(np.isfinite(w2d)))
    if bad:
        raise CalibrationError(f"{what}: {bad} NaN/Inf values")
    qmin, qmax = qrange(bits, signed=True)
    maxabs = np.abs(w2d).max(axis=1).astype(np.float64)
    scale = _f32_scale(maxabs / qmax)
    if method == "mse":
        channels, k = w2d.shape
        rows = max(1, _CHUNK_ELEMS // max(k, 1))
        for c0 in range(0, channels, rows):
            blk, m = w2d[c0 : c0 + rows], maxabs[c0 : c0 + rows]
            zp = np.zeros(len(blk), dtype=np.int32)
            best_err = _sse_rows(blk, scale[c0 : c0 + rows], zp, qmin, qmax)
            for r in WEIGHT_CLIP_RATIOS[1:]:
                s = _f32_scale(r * m / qmax)
                err = _sse_rows(blk, s, zp, qmin, qmax)
                better = err < best_err  # strict: ties keep the larger range
                scale[c0 : c0 + rows][better] = s[better]
                best_err = np.where(better, err, best_err)
    return Encoding(bits, True, scale, np.zeros(len(scale), np.int32), qmin, qmax, axis, method)


def _act_params(lo: np.ndarray, hi: np.ndarray, bits: int):
    """(scale[G], zero_point[G], qmin, qmax, signed) for candidate ranges lo <= 0 <= hi."""
    if bits <= 8:
        qmin, qmax = qrange(bits, signed=False)
        scale = np.atleast_1d(_f32_scale((hi - lo) / (qmax - qmin)))
        zp = np.clip(np.rint(-lo / scale.astype(np.float64)), qmin, qmax).astype(np.int32)
        return scale, zp, qmin, qmax, False
    qmin, qmax = qrange(bits, signed=True)
    scale = np.atleast_1d(_f32_scale(np.maximum(-lo, hi) / qmax))
    return scale, np.zeros(scale.shape, np.int32), qmin, qmax, True


class ActivationObserver:
    """Streaming statistics of one activation tensor over calibration batches.

    Tracks the exact min/max and value count, and a reservoir subsample (at most `max_samples`
    values, uniform over everything seen, drawn from a generator seeded with `seed`, so the same
    batches always give the same sample and the same encodings).
    """

    def __init__(self, name: str, *, max_samples: int = 65536, seed: int = 0):
        if max_samples < 1:
            raise CalibrationError(f"observer {name!r}: max_samples must be >= 1")
        self.name = name
        self.max_samples = int(max_samples)
        self.min = math.inf
        self.max = -math.inf
        self.count = 0
        self.num_batches = 0
        self._rng = np.random.default_rng(seed)
        self._reservoir = np.empty(0, dtype=np.float32)
        self._cache: dict[tuple[int, str], Encoding] = {}

    @property
    def samples(self) -> np.ndarray:
        """A copy of the current subsample (float32)."""
        return self._reservoir.copy()

    def update(self, x) -> None:
        """Fold one batch into the statistics; NaN/Inf raise CalibrationError, empty is ignored."""
        a = np.asarray(x)
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise CalibrationError(f"observer {self.name!r}: unsupported dtype {a.dtype}")
        if a.size == 0:
            return
        flat = a.astype(np.float32, copy=False).ravel()
        finite = np.isfinite(flat)
        if not finite.all():
            n_nan = int(np.isnan(flat).sum())
            n_inf = int(flat.size - finite.sum()) - n_nan
            raise CalibrationError(
                f"observer {self.name!r}: tensor {self.name!r} has {n_nan} NaN and {n_inf} Inf "
                f"values (of {flat.size}) in calibration batch {self.num_batches}"
            )
        self._cache.clear()
        self.min = min(self.min, float(flat.min()))
        self.max = max(self.max, float(flat.max()))
        self._sample(flat)
        self.count += flat.size
        self.num_batches += 1

    def _sample(self, flat: np.ndarray) -> None:
        """Reservoir sampling (Algorithm R), vectorized: value number g replaces slot j ~ U[0, g]."""
        k, seen = self.max_samples, self.count
        take = min(max(k - seen, 0), flat.size)
        if take:
            self._reservoir = np.concatenate([self._reservoir, flat[:take]])
        res = self._reservoir
        for c0 in range(take, flat.size, _CHUNK_ELEMS):
            vals = flat[c0 : c0 + _CHUNK_ELEMS]
            g = seen + c0 + np.arange(vals.size, dtype=np.int64)
            j = self._rng.integers(0, g + 1)
            hit = j < k
            idx, v = j[hit], vals[hit]
            # Later values win a slot, as in the sequential algorithm.
            _, first_rev = np.unique(idx[::-1], return_index=True)
            keep = idx.size - 1 - first_rev
            res[idx[keep]] = v[keep]

    def encoding(self, bits: int, method: str = "mse") -> Encoding:
        """Per-tensor encoding: asymmetric unsigned at <= 8 bits, symmetric signed above."""
        bits, method = _check_bits(bits), _check_method(method)
        if self.count == 0:
            raise CalibrationError(
                f"observer {self.name!r}: no calibration data seen; call update() first"
            )
        key = (bits, method)
        if key not in self._cache:
            self._cache[key] = self._encoding(bits, method)
        return self._cache[key]

    def _encoding(self, bits: int, method: str) -> Encoding:
        lo0, hi0 = min(self.min, 0.0), max(self.max, 0.0)
        rl, rh = 1.0, 1.0
        if method == "mse":
            rl, rh = self._search(lo0, hi0, bits)
        scale, zp, qmin, qmax, signed = _act_params(
            np.array([rl * lo0]), np.array([rh * hi0]), bits
        )
        return Encoding(bits, signed, scale[0], int(zp[0]), qmin, qmax, None, method)

    def _sse(self, lo: np.ndarray, hi: np.ndarray, bits: int) -> np.ndarray:
        """Squared fake-quant error on the subsample for each candidate range (lo[i], hi[i])."""
        scale, zp, qmin, qmax, _ = _act_params(lo, hi, bits)
        x = self._reservoir
        rows = max(1, _CHUNK_ELEMS // x.size)
        out = np.empty(len(scale))
        for i in range(0, len(scale), rows):
            n = len(scale[i : i + rows])
            out[i : i + n] = _sse_rows(
                np.broadcast_to(x, (n, x.size)), scale[i : i + n], zp[i : i + n], qmin, qmax
            )
        return out

    def _search(self, lo0: float, hi0: float, bits: int) -> tuple[float, float]:
        """Coordinate search over (min ratio, max ratio), starting at minmax, strict improvements."""
        ratios = ACT_CLIP_RATIOS
        symmetric = bits > 8
        rl, rh = 1.0, 1.0
        best = self._sse(np.array([lo0]), np.array([hi0]), bits)[0]
        if symmetric:  # one ratio on max|x|; both ends shrink together
            err = self._sse(ratios * lo0, ratios * hi0, bits)
            i = int(np.argmin(err))
            return (float(ratios[i]),) * 2 if err[i] < best else (1.0, 1.0)
        for _ in range(4):
            moved = False
            if hi0 > 0:
                err = self._sse(np.full(len(ratios), rl * lo0), ratios * hi0, bits)
                i = int(np.argmin(err))
                if err[i] < best:
                    moved, best, rh = moved or ratios[i] != rh, err[i], float(ratios[i])
            if lo0 < 0:
                err = self._sse(ratios * lo0, np.full(len(ratios), rh * hi0), bits)
                i = int(np.argmin(err))
                if err[i] < best:
                    moved, best, rl = moved or ratios[i] != rl, err[i], float(ratios[i])
            if not moved:
                break
        return rl, rh


def sqnr_db(reference, test) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(sum(ref^2) / sum((ref - test)^2)).

    float64; +inf when identical; -inf when `test` holds NaN/Inf (a broken output is the worst).
    """
    ref = np.asarray(reference, dtype=np.float64)
    tst = np.asarray(test, dtype=np.float64)
    if ref.shape != tst.shape:
        raise CalibrationError(f"sqnr_db: shapes differ, {ref.shape} vs {tst.shape}")
    if not np.all(np.isfinite(ref)):
        raise CalibrationError("sqnr_db: the reference holds NaN/Inf values")
    if not np.all(np.isfinite(tst)):
        return -math.inf
    noise = float(np.sum((ref - tst) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)
