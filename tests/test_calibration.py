"""Encodings from weights and streamed activations: ranges, zero points, mse vs minmax, errors."""

import json
import math

import numpy as np
import pytest

from tvm_mpq.calibration import ActivationObserver, Encoding, sqnr_db, weight_encoding
from tvm_mpq.errors import CalibrationError


def _sse(enc, x):
    return float(np.sum((enc.fake_quantize(x).astype(np.float64) - x) ** 2))


def _heavy_tailed_weight():
    rng = np.random.default_rng(0)
    w = rng.standard_t(df=3, size=(16, 512)).astype(np.float32)
    w[3, 5] = 40.0  # an outlier
    return w


# --- Encoding -------------------------------------------------------------------------------


def test_encoding_dict_round_trip_per_tensor_and_per_channel():
    e = Encoding(8, False, 0.1, 12, 0, 255, None, "mse")
    assert e.scale == float(np.float32(0.1))  # stored rounded to float32
    d = json.loads(json.dumps(e.to_dict()))
    assert Encoding.from_dict(d) == e
    w = weight_encoding(_heavy_tailed_weight(), 8, axis=0, method="mse")
    d = json.loads(json.dumps(w.to_dict()))
    assert isinstance(d["scale"], list) and len(d["scale"]) == 16
    w2 = Encoding.from_dict(d)
    assert w2 == w and hash(w2) == hash(w)
    np.testing.assert_array_equal(w2.scale, w.scale)
    assert w2.scale.dtype == np.float32


def test_encoding_validates():
    with pytest.raises(CalibrationError):
        Encoding(8, False, 0.0, 0, 0, 255)
    with pytest.raises(CalibrationError):
        Encoding(8, False, float("nan"), 0, 0, 255)
    with pytest.raises(CalibrationError):
        Encoding(8, False, 0.1, 300, 0, 255)
    with pytest.raises(CalibrationError):
        Encoding(8, True, 0.1, 0, -127, 127, method="kl")


def test_encoding_clip_range():
    e = Encoding(8, False, 0.5, 10, 0, 255)
    assert e.clip_range == (-5.0, 122.5)
    lo, hi = Encoding(4, True, np.array([1.0, 0.5]), np.array([0, 0]), -7, 7, axis=0).clip_range
    np.testing.assert_array_equal(lo, [-7.0, -3.5])
    np.testing.assert_array_equal(hi, [7.0, 3.5])


# --- weight_encoding ------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1, 3, -1])
def test_weight_encoding_per_channel_shape(axis):
    w = np.random.default_rng(0).normal(size=(8, 3, 3, 5)).astype(np.float32)
    e = weight_encoding(w, 8, axis=axis, method="minmax")
    c = w.shape[axis]
    assert e.scale.shape == (c,) and e.zero_point.shape == (c,)
    assert e.scale.dtype == np.float32 and np.all(e.zero_point == 0)
    assert e.axis == axis % 4 and e.signed and (e.qmin, e.qmax) == (-127, 127)
    assert e.fake_quantize(w).shape == w.shape


@pytest.mark.parametrize("bits", [4, 8, 16])
def test_weight_minmax_covers_max_abs(bits):
    w = _heavy_tailed_weight()
    e = weight_encoding(w, bits, axis=0, method="minmax")
    q = e.quantize(w)
    np.testing.assert_array_equal(np.abs(q).max(axis=1), e.qmax)
    np.testing.assert_allclose(e.scale * e.qmax, np.abs(w).max(axis=1), rtol=1e-6)


@pytest.mark.parametrize("bits", [4, 8])
def test_weight_mse_beats_minmax_on_heavy_tails(bits):
    w = _heavy_tailed_weight()
    mm = weight_encoding(w, bits, method="minmax")
    ms = weight_encoding(w, bits, method="mse")
    assert ms.method == "mse"
    per_ch = lambda e: np.sum((e.fake_quantize(w).astype(np.float64) - w) ** 2, axis=1)  # noqa: E731
    assert np.all(per_ch(ms) <= per_ch(mm))
    assert _sse(ms, w) < _sse(mm, w)
    assert np.all(ms.scale <= mm.scale)


def test_weight_zero_channel_is_safe():
    w = np.random.default_rng(0).normal(size=(4, 10)).astype(np.float32)
    w[2] = 0.0
    for method in ("minmax", "mse"):
        e = weight_encoding(w, 8, method=method)
        assert np.all(np.isfinite(e.scale)) and np.all(e.scale > 0)
        fq = e.fake_quantize(w)
        np.testing.assert_array_equal(fq[2], 0.0)
        assert np.all(np.isfinite(fq))


def test_weight_encoding_rejects_bad_input():
    with pytest.raises(CalibrationError, match="fc1"):
        weight_encoding(np.array([[1.0, np.nan]]), 8, name="fc1")
    with pytest.raises(CalibrationError):
        weight_encoding(np.ones((2, 2)), 8, method="kl")
    with pytest.raises(CalibrationError):
        weight_encoding(np.ones((2, 2)), 8, axis=2)


# --- ActivationObserver ---------------------------------------------------------------------


def test_observer_min_max_over_batches():
    o = ActivationObserver("relu1")
    o.update(np.array([0.5, 2.0]))
    o.update(np.array([[-1.0, 0.0], [3.0, 1.0]]))
    o.update(np.array([], dtype=np.float32))  # empty batches are ignored
    assert (o.min, o.max, o.count, o.num_batches) == (-1.0, 3.0, 6, 2)
    e = o.encoding(8, method="minmax")
    assert (e.qmin, e.qmax, e.signed, e.axis) == (0, 255, False, None)
    assert e.scale == float(np.float32(4.0 / 255))
    assert e.zero_point == round(1.0 / e.scale)


@pytest.mark.parametrize("method", ["minmax", "mse"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_observer_zero_exact_for_one_signed_data(method, sign):
    rng = np.random.default_rng(2)
    o = ActivationObserver("act")
    for _ in range(3):
        o.update(sign * rng.uniform(0.3, 6.0, size=(4, 50)))
    e = o.encoding(8, method=method)
    assert e.zero_point == (0 if sign > 0 else 255)
    lo, hi = e.clip_range
    assert lo <= 0.0 <= hi
    assert e.fake_quantize(np.zeros(3))[0] == 0.0
    assert np.all(e.fake_quantize(np.zeros(3)) == 0.0)


def test_observer_zero_exact_for_mixed_data():
    o = ActivationObserver("act")
    o.update(np.random.default_rng(3).normal(0.7, 1.3, size=1000))
    for bits in (4, 8):
        e = o.encoding(bits)
        assert e.qmin <= e.zero_point <= e.qmax
        assert e.fake_quantize(np.float32(0.0)) == 0.0


def test_observer_16_bit_symmetric():
    o = ActivationObserver("act")
    o.update(np.random.default_rng(4).normal(2.0, 1.0, size=2000))
    for method in ("minmax", "mse"):
        e = o.encoding(16, method=method)
        assert (e.qmin, e.qmax, e.zero_point, e.signed) == (-32767, 32767, 0, True)
    mm = o.encoding(16, method="minmax")
    assert mm.scale == float(np.float32(max(abs(o.min), abs(o.max)) / 32767))


@pytest.mark.parametrize("bits", [8, 16])
def test_observer_mse_never_worse_than_minmax_on_sample(bits):
    rng = np.random.default_rng(5)
    o = ActivationObserver("act", max_samples=4096)
    for _ in range(5):
        x = rng.standard_t(df=3, size=3000)
        o.update(np.maximum(x, -0.5))
    s = o.samples
    assert s.shape == (4096,)
    mm, ms = o.encoding(bits, "minmax"), o.encoding(bits, "mse")
    assert _sse(ms, s) <= _sse(mm, s)
    if bits == 8:  # heavy tails at 8 bits: clipping strictly helps
        assert _sse(ms, s) < _sse(mm, s)


def test_observer_subsample_is_deterministic_and_bounded():
    rng = np.random.default_rng(6)
    batches = [rng.gamma(2.0, size=(8, 700)) for _ in range(4)]
    a, b = ActivationObserver("x", max_samples=1000), ActivationObserver("x", max_samples=1000)
    for x in batches:
        a.update(x)
        b.update(x)
    assert a.samples.shape == (1000,)
    np.testing.assert_array_equal(a.samples, b.samples)
    assert a.encoding(8) == b.encoding(8)
    assert a.encoding(16) == b.encoding(16)
    # The reservoir draws from every batch, not only the first.
    later = np.concatenate([x.ravel() for x in batches[1:]]).astype(np.float32)
    assert np.isin(a.samples, later).sum() > 500


def test_observer_cache_invalidated_by_update():
    o = ActivationObserver("x")
    o.update(np.array([0.0, 1.0]))
    e1 = o.encoding(8, "minmax")
    o.update(np.array([4.0]))
    assert o.encoding(8, "minmax").scale > e1.scale


@pytest.mark.parametrize("bad, what", [(np.nan, "1 NaN and 0 Inf"), (np.inf, "0 NaN and 1 Inf")])
def test_observer_rejects_non_finite(bad, what):
    o = ActivationObserver("block3.conv2")
    o.update(np.ones(4))
    x = np.ones(5)
    x[2] = bad
    with pytest.raises(CalibrationError, match="block3.conv2") as info:
        o.update(x)
    assert what in str(info.value)
    assert o.count == 4  # the bad batch left no trace


def test_observer_empty_raises():
    o = ActivationObserver("head")
    with pytest.raises(CalibrationError, match="head"):
        o.encoding(8)
    o.update(np.zeros((0, 3)))
    with pytest.raises(CalibrationError):
        o.encoding(8)


def test_observer_constant_zero_data_is_safe():
    o = ActivationObserver("zeros")
    o.update(np.zeros(10))
    for bits in (8, 16):
        for method in ("minmax", "mse"):
            e = o.encoding(bits, method)
            assert math.isfinite(e.scale) and e.scale > 0
            np.testing.assert_array_equal(e.fake_quantize(np.zeros(3)), 0.0)


# --- sqnr_db --------------------------------------------------------------------------------


def test_sqnr_db_known_values():
    rng = np.random.default_rng(7)
    ref = rng.choice([-1.0, 1.0], size=10000)
    noise = 0.1 * rng.choice([-1.0, 1.0], size=10000)  # amplitude 10x smaller -> 20 dB
    assert sqnr_db(ref, ref + noise) == pytest.approx(20.0, abs=1e-9)
    assert sqnr_db(ref, ref + 0.01 * np.sign(noise)) == pytest.approx(40.0, abs=1e-9)
    assert sqnr_db(ref, ref) == math.inf
    assert sqnr_db(ref, np.where(np.arange(10000) == 3, np.nan, ref)) == -math.inf
    with pytest.raises(CalibrationError):
        sqnr_db(ref, ref[:10])
