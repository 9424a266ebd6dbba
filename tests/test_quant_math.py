"""Hand-checked values for the quantization arithmetic every other part of tvm_mpq relies on."""

import numpy as np
import pytest

from tvm_mpq.quant_math import dequantize, fake_quantize, pack_int4, qrange, quantize, unpack_int4


def test_qrange():
    assert qrange(4, True) == (-7, 7)
    assert qrange(8, True) == (-127, 127)
    assert qrange(16, True) == (-32767, 32767)
    assert qrange(8, False) == (0, 255)
    assert qrange(4, False) == (0, 15)
    with pytest.raises(ValueError):
        qrange(1, True)


def test_quantize_rounds_half_to_even():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49, 0.51])
    q = quantize(x, 1.0, 0, -127, 127)
    assert q.dtype == np.int32
    np.testing.assert_array_equal(q, [0, 2, 2, 0, -2, -2, 0, 1])


def test_quantize_scale_zero_point_and_clip():
    x = np.array([0.0, 0.25, -0.25, 1.0, 100.0, -100.0], dtype=np.float32)
    q = quantize(x, 0.5, 10, 0, 15)
    # 0/.5=0 ->10; .25/.5=.5 ->0 ->10; -.5 ->-0 ->10; 2 ->12; 200 ->clip 15; -200 ->clip 0
    np.testing.assert_array_equal(q, [10, 10, 10, 12, 15, 0])
    np.testing.assert_array_equal(quantize(x, 0.5, 0, -7, 7), [0, 0, 0, 2, 7, -7])


def test_quantize_multiplies_by_the_float32_inverse_scale():
    # The TVM side multiplies float32 by float32(1) / float32(scale); numpy must do the same, not
    # float64 and not a division (which differs near rounding ties).
    rng = np.random.default_rng(1)
    x = rng.normal(size=1000)
    s = 0.0123
    inv = np.float32(1) / np.float32(s)
    assert inv.dtype == np.float32
    ref = np.clip(np.rint(x.astype(np.float32) * inv), -127, 127).astype(np.int32)
    np.testing.assert_array_equal(quantize(x, s, 0, -127, 127), ref)
    # and it is a quantizer: within one step of the exact quotient everywhere
    assert np.abs(quantize(x, s, 0, -10**6, 10**6) - x / s).max() <= 0.5 + 1e-3


def test_quantize_per_channel_axis():
    x = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]], dtype=np.float32)
    q0 = quantize(x, np.array([1.0, 0.5]), np.array([0, 1]), -127, 127, axis=0)
    np.testing.assert_array_equal(q0, [[1, 2, 3], [3, 5, 7]])
    q1 = quantize(x, np.array([1.0, 2.0, 0.25]), np.array([0, 0, 0]), -7, 7, axis=1)
    np.testing.assert_array_equal(q1, [[1, 1, 7], [1, 1, 7]])  # 2/2=1, 3/.25=12 -> 7
    np.testing.assert_array_equal(
        quantize(x, np.array([1.0, 2.0, 0.25]), np.zeros(3, int), -7, 7, axis=-1), q1
    )
    with pytest.raises(ValueError):
        quantize(x, np.array([1.0, 2.0]), np.zeros(2, int), -7, 7, axis=1)


def test_dequantize_inverts_within_half_scale():
    rng = np.random.default_rng(0)
    x = rng.uniform(-3, 5, size=(4, 100)).astype(np.float32)
    scale, zp = np.float32(8 / 255), 96
    q = quantize(x, scale, zp, 0, 255)
    xr = dequantize(q, scale, zp)
    assert xr.dtype == np.float32
    assert np.max(np.abs(xr - x)) <= scale / 2 * (1 + 1e-5)
    np.testing.assert_array_equal(fake_quantize(x, scale, zp, 0, 255), xr)
    np.testing.assert_array_equal(dequantize(np.array([96, 97, 95]), 0.5, 96), [0.0, 0.5, -0.5])


def test_dequantize_per_channel():
    q = np.array([[2, 4], [2, 4]])
    out = dequantize(q, np.array([0.5, 0.25]), np.array([0, 2]), axis=0)
    np.testing.assert_array_equal(out, [[1.0, 2.0], [0.0, 0.5]])


def test_pack_int4_exact_bytes():
    q = np.array([1, -1, 7, -8, 0, 3, -2], dtype=np.int8)
    p = pack_int4(q)
    assert p.dtype == np.uint8 and p.shape == (4,)
    # (lo=1, hi=-1=0xF) -> 0xF1; (7, -8=0x8) -> 0x87; (0, 3) -> 0x30; (-2=0xE, pad 0) -> 0x0E
    np.testing.assert_array_equal(p, [0xF1, 0x87, 0x30, 0x0E])
    np.testing.assert_array_equal(unpack_int4(p, 7), q)


@pytest.mark.parametrize("shape", [(1,), (2,), (7,), (16,), (3, 5), (2, 3, 8), (4, 0)])
def test_pack_unpack_round_trip(shape):
    rng = np.random.default_rng(sum(shape))
    q = rng.integers(-8, 8, size=shape)
    p = pack_int4(q)
    assert p.shape == shape[:-1] + ((shape[-1] + 1) // 2,)
    u = unpack_int4(p, shape[-1])
    assert u.dtype == np.int8 and u.shape == shape
    np.testing.assert_array_equal(u, q)


def test_pack_int4_rejects_out_of_range():
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        pack_int4(np.array([0, 8]))
    with pytest.raises(ValueError):
        pack_int4(np.array([-9, 0]))
    with pytest.raises(ValueError):
        pack_int4(np.array([0.5, 1.0]))
    with pytest.raises(ValueError):
        unpack_int4(np.zeros(3, np.uint8), 8)
