"""The byte-quad dot-product paths (targets/x86.py, TiledReduction's quads). VNNI: uint8 x int8
kernels with int32 accumulators in byte quads, one ``vpdpbusd`` per step; int16 pairs with
``vpdpwssd``. AVX2: quads with ``vpmaddubsw`` only where no int16 pair sum can saturate (int4 and
7-bit weights), run here on the real instruction; 8-bit weights keep the int16 pairs.

This machine may have no VNNI, so the schedules run bit for bit against the numpy int64
references with the quad step *emulated* (``dot_isa="emulated-vnni"``: the same layouts, tiles and
descriptions, a portable step), and compiling for ``-mcpu=znver4`` checks that the real steps are
what the kernels contain and that LLVM accepts them (TVM's stock VNNI intrinsic fails its
verifier). What is not run here is the one instruction: vpdpbusd's own arithmetic.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from test_integer_kernels import (
    _assert_exact,
    _build_run,
    _rand_act,
    _rand_weight,
    int4_conv_and_dense_module,
    main_module,
    ref_conv2d,
)
from test_schedules import _conv_attrs, _conv_module, _fused_primfuncs, _has_reduction, run_dense_cases
from tvm_mpq.quant_math import qrange
from tvm_mpq.targets import host_target, parse_target, pipeline
from tvm_mpq.targets.schedules import TiledReduction, rules

ZNVER4 = "llvm -mtriple=x86_64-linux-gnu -mcpu=znver4"
_template_rules = pipeline.template_rules  # the pipeline's choice (the fixture replaces it)

# Input channels divisible by 4 (quads), in both tilings, ragged tiles, a 3x3 pad, an odd count of
# quads, weights larger than the activations; even channels that 4 does not divide (14, 22: int16
# pairs); kernels neither path takes.
CONV_CASES = [
    ("quads_pixels_1x1", (1, 12, 3, 16), 13, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ("quads_pixels_3x3_pad", (1, 8, 5, 24), 5, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ("quads_channels_1x1_w7", (1, 36, 7, 7), 40, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ("quads_channels_3x3_w9", (1, 12, 4, 9), 24, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ("quads_channels_deep_w14", (1, 40, 3, 14), 48, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ("quads_channels_odd_quads", (1, 20, 2, 7), 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ("quads_merged_plane_1x1", (1, 20, 4, 6), 16, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),  # 24-pixel plane
    ("pairs_pixels_1x1", (1, 14, 3, 16), 13, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ("pairs_channels_rect", (1, 22, 3, 5), 16, (1, 3), (1, 1), (0, 1, 0, 1), (1, 1), 1),
    # neither pairs nor quads (TiledReduction's regular path): strided pixels, grouped
    ("regular_pixels_strided", (1, 4, 9, 32), 11, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),
    ("regular_channels_grouped", (1, 16, 5, 7), 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2),
]
# K divisible by 4: columns (16, 24 with ragged rows), rows (N = 5, 13), one row; K = 30: pairs.
DENSE_CASES = [((13, 40), 16), ((2, 7, 28), 24), ((16, 36), 5), ((1, 24, 20), 13), ((1, 44), 40), ((3, 30), 16)]


@pytest.fixture
def avx2_steps(monkeypatch):
    """The pipeline's template rules with AVX2's steps, whatever this CPU has beyond AVX2."""
    monkeypatch.setattr(pipeline, "template_rules", lambda ti: rules(8, dot_isa="avx2"))


@pytest.fixture
def emulated_vnni(monkeypatch):
    """The pipeline's template rules with the VNNI steps, vpdpbusd emulated."""
    monkeypatch.setattr(pipeline, "template_rules", lambda ti: rules(8, dot_isa="emulated-vnni"))


def _steps(mod: tvm.IRModule, target_info, dot_isa: str | None = None) -> list[str]:
    """Per reduction kernel of ``mod``, sorted: the dot-product step TiledReduction tensorizes it
    to on ``target_info`` -- "vpdpbusd", "vpdpwssd", "vpmaddwd", "vpmaddubsw", "emulated vpdpbusd"
    or "none" --
    with the pipeline's rule for that target (``dot_isa``: TiledReduction's with that ISA). Read
    off the schedule's trace (the intrinsic's name) and, for the real steps, the kernel itself."""
    rule = _template_rules(target_info)[1] if dot_isa is None else TiledReduction(8, dot_isa=dot_isa)
    assert isinstance(rule, TiledReduction)
    out = []
    for f in [f for f in _fused_primfuncs(mod) if _has_reduction(f)]:
        sch = rule.apply(f, target_info.target, False)
        assert sch is not None, f"fell back: {f.ty}"
        intrins = {str(i.attrs[0]) for i in sch.trace.insts if i.kind.name == "Tensorize"}
        assert len(intrins) <= 1, intrins
        name = next(iter(intrins), "")
        script = sch.mod["main"].script()
        if "_emulated_vnni_dot_8x4_" in name:
            out.append("emulated vpdpbusd")
        elif "_vnni_dot_8x4_" in name:
            out.append("vpdpbusd" if "vpdpbusd" in script else f"? {name}")
        elif "_avx2_dot_8x4_" in name:
            out.append("vpmaddubsw" if "pmadd.ub.sw" in script else f"? {name}")
        elif "_vnni_dot_8x2_" in name:
            out.append("vpdpwssd" if "vpdpwssd" in script else f"? {name}")
        elif "_dot_8x2_" in name:
            out.append("vpmaddwd" if "pmadd.wd" in script else f"? {name}")
        else:
            out.append("none" if not name else f"? {name}")
    return sorted(out)


def _conv_cases(rng, bits):
    cases = []
    for name, xshape, o, (kh, kw), strides, padding, dilation, groups in CONV_CASES:
        x = _rand_act(rng, xshape, "uint8")
        w = _rand_weight(rng, (o, xshape[1] // groups, kh, kw), bits)
        cases.append((name, x, w, strides, padding, dilation, groups))
    return cases


@pytest.mark.parametrize("bits,zp", [(8, 37), (4, 201)])
def test_conv2d_quads_bit_exact(emulated_vnni, bits, zp):
    """uint8 activations x int8 / unpacked int4 weights in byte quads, against numpy int64."""
    cases = _conv_cases(np.random.default_rng(bits + zp), bits)
    params, prepared, body = _conv_module(cases, bits, "uint8", zp)
    assert {p[2] for p in prepared} == {"int32"}
    got, mod = _build_run(params, body, [c[1] for c in cases])
    for g, (name, x, w, strides, padding, dilation, groups), (_, _, acc, _) in zip(got, cases, prepared):
        _assert_exact(g, ref_conv2d(x, w, zp, strides, padding, dilation, groups), acc, f"conv2d {name} w{bits}")
    kind = [n.split("_")[0] for n, *_ in CONV_CASES]
    step = {"quads": "vpdpbusd", "pairs": "vpdpwssd", "regular": "none"}
    assert _steps(mod, parse_target(ZNVER4)) == sorted(step[k] for k in kind)
    # what ran here: the same kernels, vpdpbusd emulated, pairs with vpmaddwd
    step = {"quads": "emulated vpdpbusd", "pairs": "vpmaddwd", "regular": "none"}
    assert _steps(mod, host_target(), "emulated-vnni") == sorted(step[k] for k in kind)


@pytest.mark.parametrize("act_dtype,zp,bits", [("uint8", 37, 8), ("int16", 0, 8), ("uint8", 201, 16)])
def test_dense_vnni_steps_bit_exact(emulated_vnni, act_dtype, zp, bits):
    """Dense layers: u8 x s8 in quads (K = 30: pairs); int16 operands in pairs (vpdpwssd)."""
    mod, accs = run_dense_cases(np.random.default_rng(3 * bits + zp), DENSE_CASES, bits, act_dtype, zp)
    assert set(accs) == {"int32"}
    quads = act_dtype == "uint8" and bits == 8
    expect = ["vpdpbusd" if quads and xs[-1] % 4 == 0 else "vpdpwssd" for xs, _ in DENSE_CASES]
    assert _steps(mod, parse_target(ZNVER4)) == sorted(expect)
    ran = [{"vpdpbusd": "emulated vpdpbusd", "vpdpwssd": "vpmaddwd"}[e] for e in expect]
    assert _steps(mod, host_target(), "emulated-vnni") == sorted(ran)


@pytest.mark.parametrize("bits,zp", [(4, 201), (7, 37), (8, 37)])
def test_avx2_byte_quads_only_where_exact(avx2_steps, bits, zp):
    """AVX2: uint8 x int4 / int7 kernels whose shared axis divides by 4 run in byte quads with
    vpmaddubsw (exact: 2 * 255 * 64 < 2**15), bit for bit against numpy int64 on this CPU; int8
    weights keep the int16 pairs (2 * 255 * 127 saturates). A case of all-255 activations against
    weights at the extremes of their range is one a saturating step gets wrong."""
    rng = np.random.default_rng(bits * 7 + zp)
    cases = _conv_cases(rng, bits)
    lo, hi = qrange(bits, True)
    w = np.full((8, 12, 1, 1), hi, np.int64)
    w[:, 1::2] = lo  # pairs of same-sign extremes and of opposite signs
    w[::2, 0::4] = lo
    cases.append(("quads_extremes_1x1", np.full((1, 12, 2, 8), 255, np.uint8), w, (1, 1), (0, 0, 0, 0), (1, 1), 1))
    params, prepared, body = _conv_module(cases, bits, "uint8", zp)
    got, mod = _build_run(params, body, [c[1] for c in cases])
    for g, (name, x, w, strides, padding, dilation, groups), (_, _, acc, _) in zip(got, cases, prepared):
        _assert_exact(g, ref_conv2d(x, w, zp, strides, padding, dilation, groups), acc, f"conv2d {name} w{bits}")
    quad = "vpmaddubsw" if bits < 8 else "vpmaddwd"
    step = {"quads": quad, "pairs": "vpmaddwd", "regular": "none"}
    assert _steps(mod, host_target(), "avx2") == sorted(step[c[0].split("_")[0]] for c in cases)

    dense, _ = run_dense_cases(rng, DENSE_CASES, bits, "uint8", zp)
    expect = [quad if xs[-1] % 4 == 0 else "vpmaddwd" for xs, _ in DENSE_CASES]
    assert _steps(dense, host_target(), "avx2") == sorted(expect)


def test_int64_accumulators_keep_vpmaddwd_on_vnni():
    """w16a16 sums can exceed int32: no VNNI step (they accumulate in int32), vpmaddwd + widen."""
    rng = np.random.default_rng(5)
    x = _rand_act(rng, (1, 12, 3, 16), "int16")
    w = _rand_weight(rng, (8, 12, 3, 3), 16)
    params, prepared, body = _conv_module([("w16a16", x, w, (1, 1), (1, 1, 1, 1), (1, 1), 1)], 16, "int16", 0)
    assert prepared[0][2] == "int64"
    mod = main_module(params, body)
    assert _steps(mod, parse_target(ZNVER4)) == ["vpmaddwd"]


def _asm(executable) -> str:
    return "\n".join(m.inspect_source("asm") for m in executable.mod.imports)


def test_znver4_module_compiles_to_vnni_instructions():
    """The whole pipeline for -mcpu=znver4 (cross-compiled: LLVM verifies the intrinsics): 8-bit
    convs and dense layers (int4 weights too) contain vpdpbusd and no vpmaddwd; int16 pairs
    vpdpwssd. A target without VNNI keeps vpmaddwd."""
    rng = np.random.default_rng(9)
    w = _rand_weight(rng, (16, 8, 3, 3), 4)
    wd = _rand_weight(rng, (40, 24), 4)
    attrs = _conv_attrs((1, 1), (1, 1, 1, 1), (1, 1), 1, "relax")
    int4 = int4_conv_and_dense_module(w, wd, (1, 8, 9, 16), (1, 5, 40), attrs)
    x16 = _rand_act(rng, (1, 12, 3, 16), "int16")
    w8 = _rand_weight(rng, (8, 12, 1, 1), 8)
    params, _, body = _conv_module([("a16", x16, w8, (1, 1), (0, 0, 0, 0), (1, 1), 1)], 8, "int16", 0)
    a16 = main_module(params, body)

    znver4 = parse_target(ZNVER4)
    assert znver4.has_vnni
    asm = _asm(pipeline.build(int4, znver4))
    assert "vpdpbusd" in asm and "vpmaddwd" not in asm
    asm = _asm(pipeline.build(a16, znver4))
    assert "vpdpwssd" in asm and "vpmaddwd" not in asm
    avx2 = parse_target("llvm -mtriple=x86_64-linux-gnu -mcpu=znver3")
    assert not avx2.has_vnni
    asm = _asm(pipeline.build(int4, avx2))
    assert "vpmaddwd" in asm and "vpdp" not in asm
