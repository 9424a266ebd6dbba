"""The template schedules (tvm_mpq.targets.schedules) on odd shapes: every code path, bit-exact.

``TiledReduction`` picks between two tilings -- vectors over output pixels / columns with a block of
output channels / rows, or (rows too short for whole vectors: 7, 14, 28 pixels) vectors over output
channels with their weights and accumulator transposed -- and copies operands into a contiguous
layout where needed (packed int4 dense weights, transposed conv weights). The shapes below are
chosen to hit each path with ragged tiles (block sizes that do not divide the axis, odd vector
lengths), at every kernel dtype, and each case checks that the template really scheduled the kernel
(no silent fallback to the generic rule). Integer results are compared with the numpy int64
references of test_integer_kernels; float epilogues (fused into the tile) must round exactly like
numpy's separate multiply and add -- no FMA contraction.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax, s_tir, tirx
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
from tvm.s_tir import dlight
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.script import tirx as T

from test_integer_kernels import (
    _act_max_abs,
    _constants,
    _run_activation_matmul_cases,
    _assert_exact,
    _build_run,
    _conv_attrs,
    _rand_act,
    _rand_weight,
    _tensor_var,
    _weight_const,
    int4_conv_and_dense_module,
    main_module,
    ref_conv2d,
    ref_matmul,
)
from tvm_mpq.passes import integer_ops as iops
from tvm_mpq.quant_math import pack_int4
from tvm_mpq.targets import host_target, pipeline
from tvm_mpq.targets.depthwise import DepthwiseConv
from tvm_mpq.targets.schedules import InlinedElementwise, TiledReduction, fence_products

LANES = 8


def _fused_primfuncs(mod: tvm.IRModule) -> list[tirx.PrimFunc]:
    """The PrimFuncs tvm_mpq's pipeline hands to the schedule rules (after legalize + fusion)."""
    target = host_target().target
    with target:
        fused = tvm.transform.Sequential(
            cpu_generic.library_dispatch_passes(target) + cpu_generic.legalize_passes(target)
        )(mod)
    return [f for _, f in fused.functions_items() if isinstance(f, tirx.PrimFunc)]


def _has_reduction(func: tirx.PrimFunc) -> bool:
    infos = normalize_prim_func(s_tir.Schedule(func)) or []
    return any("R" in b.dom_kind() for b in infos)


def _assert_templated(mod: tvm.IRModule, expect: int, pairs: bool | None = None):
    """Every reduction kernel of ``mod`` is scheduled by TiledReduction (``expect`` of them); with
    ``pairs`` True / False, each does / does not use the vpmaddwd intrinsic."""
    target = host_target().target
    funcs = [f for f in _fused_primfuncs(mod) if _has_reduction(f)]
    assert len(funcs) == expect, [str(f.ty) for f in funcs]
    for f in funcs:
        sch = TiledReduction(LANES).apply(f, target, False)
        assert sch is not None, f"fell back: {f.ty}"
        if pairs is not None:
            used = "pmadd.wd" in sch.mod["main"].script()
            assert used == pairs, f"vpmaddwd {'not ' if pairs else ''}expected: {f.ty}"


# ---------------------------------------------------------------------------------------------
# conv2d: (name, x shape, out channels, kernel, strides, padding (t, l, b, r), dilation, groups)
# ---------------------------------------------------------------------------------------------

CONV_CASES = [
    # vectors over pixels (rows of 16 / 24), a ragged block of 13 / 5 output channels
    ("pixels_1x1", (1, 13, 3, 16), 13, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ("pixels_3x3_pad", (1, 5, 5, 24), 5, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ("pixels_strided", (1, 3, 9, 33), 11, (3, 3), (2, 2), (1, 1, 1, 0), (1, 1), 1),
    # rows of 7 / 14 / 9 pixels: vectors over 16 / 24 / 40 output channels, ragged pixel tiles
    ("channels_1x1_w7", (1, 37, 7, 7), 40, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ("channels_1x1_w14", (1, 19, 2, 14), 24, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ("channels_3x3_w9", (1, 6, 4, 9), 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ("channels_grouped", (1, 8, 5, 7), 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2),
    # depthwise: odd-length pixel vectors (7, 13, 5, 10) and whole ones (16), strided (also with an
    # odd padded width), a 5x3 kernel with asymmetric padding
    ("depthwise_w7", (1, 11, 9, 7), 11, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 11),
    ("depthwise_w16", (1, 5, 3, 16), 5, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 5),
    ("depthwise_strided", (1, 7, 9, 26), 7, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 7),
    ("depthwise_strided_odd_pitch", (1, 5, 8, 11), 5, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 5),
    ("depthwise_asym_pad_5x3", (1, 9, 6, 10), 9, (5, 3), (1, 1), (2, 0, 1, 1), (1, 1), 9),
]


def _conv_case_inputs(rng, bits, act_dtype):
    cases = []
    for name, xshape, o, (kh, kw), strides, padding, dilation, groups in CONV_CASES:
        x = _rand_act(rng, xshape, act_dtype)
        w = _rand_weight(rng, (o, xshape[1] // groups, kh, kw), bits)
        cases.append((name, x, w, strides, padding, dilation, groups))
    return cases


def _conv_module(cases, bits, act_dtype, zp):
    params, prepared = [], []
    for j, (_, x, w, strides, padding, dilation, groups) in enumerate(cases):
        w2d = w.reshape(w.shape[0], -1)
        acc = iops.accumulator_dtype(_act_max_abs(act_dtype, zp), int(np.abs(w2d).sum(1).max()))
        params.append(_tensor_var(f"xq{j}", x.shape, act_dtype))
        prepared.append((w, w2d, acc, _conv_attrs(strides, padding, dilation, groups, "relax")))

    def body(bb):
        outs = []
        for xv, (w, w2d, acc, attrs) in zip(params, prepared):
            y = iops.emit_conv2d(bb, xv, _weight_const(w, bits), attrs, zp, bits, w.shape, acc)
            outs.append(iops.emit_zero_point_correction(bb, y, zp, w2d.sum(1), (1, w.shape[0], 1, 1), acc))
        return outs

    return params, prepared, body


# Even input channels: the vpmaddwd path (int32 accumulators, pairs of input channels), in both
# tilings, with ragged tiles, a 3x3 pad stage (int16 activations pad in the kernel), grouped.
PAIR_CONV_CASES = [
    ("pairs_pixels_1x1", (1, 14, 3, 16), 13, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ("pairs_pixels_3x3_pad", (1, 6, 5, 24), 5, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ("pairs_channels_1x1_w7", (1, 38, 7, 7), 40, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ("pairs_channels_3x3_w9", (1, 10, 4, 9), 24, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ("pairs_channels_rect", (1, 22, 3, 5), 16, (1, 3), (1, 1), (0, 1, 0, 1), (1, 1), 1),
    # weights larger than the activations (their tile loop outermost, blocked weight layout),
    # 14 pixels (a 7-row tile), an even and an odd count of input-channel pairs
    ("pairs_channels_deep_w14", (1, 36, 3, 14), 48, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ("pairs_channels_deep_odd_pairs", (1, 34, 2, 7), 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    # one 8-pixel vector per row: tiles of 2 rows x 6 channels share the weight broadcasts
    ("pairs_pixels_row_block_3x3", (1, 8, 6, 8), 12, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    # 16 output pixels per row, read at stride 2: vectors over the 16 channels instead
    ("pairs_strided_pixels_to_channels", (1, 4, 9, 32), 16, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),
    # 1x1 on rows of 14 / 10 pixels: channel tiles of 2 x 32 whose row operand keeps whole rows
    # ([h, pair, w, 2]), of 5 x 8 with it blocked by the tile's rows
    ("pairs_channels_1x1_w14", (1, 30, 3, 14), 64, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ("pairs_channels_1x1_w10", (1, 22, 2, 10), 24, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    # rows of 6 pixels, a plane of 24: a 1x1 conv iterates over the plane's pixels (merged rows)
    ("pairs_merged_plane_1x1", (1, 18, 4, 6), 16, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
]


@pytest.mark.parametrize(
    "bits,act",
    [(8, ("uint8", 37)), (8, ("uint8", 0)), (8, ("int16", 0)), (16, ("uint8", 201)), (4, ("uint8", 37)), (16, ("int16", 0))],
)
def test_conv2d_vpmaddwd_path_bit_exact(bits, act):
    """... int4 weights (unpacked into the pair layout at compile time) and w16a16 (int64
    accumulators: the pair sums are widened before they are added) included."""
    act_dtype, zp = act
    rng = np.random.default_rng(bits * 31 + zp)
    cases = []
    for name, xshape, o, (kh, kw), strides, padding, dilation, groups in PAIR_CONV_CASES:
        x = _rand_act(rng, xshape, act_dtype)
        w = _rand_weight(rng, (o, xshape[1] // groups, kh, kw), bits)
        cases.append((name, x, w, strides, padding, dilation, groups))
    params, prepared, body = _conv_module(cases, bits, act_dtype, zp)
    assert {p[2] for p in prepared} == {"int64" if (bits, act_dtype) == (16, "int16") else "int32"}
    got, mod = _build_run(params, body, [c[1] for c in cases])
    for g, (name, x, w, strides, padding, dilation, groups), (_, _, acc, _) in zip(got, cases, prepared):
        ref = ref_conv2d(x, w, zp, strides, padding, dilation, groups)
        _assert_exact(g, ref, acc, f"conv2d {name} w{bits} {act_dtype}")
    _assert_templated(mod, len(cases), pairs=True)


@pytest.mark.parametrize(
    "bits,act", [(8, ("uint8", 37)), (4, ("uint8", 201)), (8, ("int16", 0)), (16, ("int16", 0)), (16, ("uint8", 5))]
)
def test_conv2d_templates_bit_exact(bits, act):
    act_dtype, zp = act
    rng = np.random.default_rng(bits * 100 + zp)
    cases = _conv_case_inputs(rng, bits, act_dtype)
    params, prepared, body = _conv_module(cases, bits, act_dtype, zp)
    got, mod = _build_run(params, body, [c[1] for c in cases])
    for g, (name, x, w, strides, padding, dilation, groups), (_, _, acc, _) in zip(got, cases, prepared):
        ref = ref_conv2d(x, w, zp, strides, padding, dilation, groups)
        _assert_exact(g, ref, acc, f"conv2d {name} w{bits} {act_dtype}")
    _assert_templated(mod, len(cases))
    if bits == 16 and act_dtype == "int16":
        assert {p[2] for p in prepared} == {"int64"}  # int64 accumulators, in every tiling


def _merged_pixel_axes(func: tirx.PrimFunc) -> list[int]:
    """Extents of the spatial axes of the blocks of the scheduled ``func``."""
    sch = TiledReduction(LANES).apply(func, host_target().target, False)
    assert sch is not None, f"fell back: {func.ty}"
    extents = []

    def visit(node):
        if isinstance(node, s_tir.SBlock):
            extents.extend(int(iv.dom.extent) for iv in node.iter_vars if int(iv.iter_type) == tirx.IterVar.DataPar)
        for child in [getattr(node, a, None) for a in ("body", "block", "then_case", "else_case")]:
            if child is not None:
                visit(child)
        for child in getattr(node, "seq", None) or []:
            visit(child)

    visit(sch.mod["main"].body)
    return extents


@pytest.mark.parametrize("bits", [8, 4])
def test_pointwise_conv_on_short_rows_merges_the_plane(bits):
    """A 1x1 conv whose rows (6 pixels) hold no whole vector but whose plane (24) does iterates
    over the plane's pixels -- the epilogue then stores whole vectors instead of single bytes --
    with an epilogue that also reads a plane-shaped operand (a residual); a plane of 7 x 7 is
    left to the channel tiles. Exact against numpy."""
    rng = np.random.default_rng(7 + bits)
    cases = [((1, 18, 4, 6), 16, True), ((1, 18, 7, 7), 16, False)]
    params, inputs, refs, kernels = [], [], [], []
    for j, (xshape, o, merges) in enumerate(cases):
        x = _rand_act(rng, xshape, "uint8")
        w = _rand_weight(rng, (o, xshape[1], 1, 1), bits)
        res = rng.integers(-(2**20), 2**20, (1, o, *xshape[2:]), dtype=np.int32)
        params += [_tensor_var(f"xq{j}", x.shape, "uint8"), _tensor_var(f"res{j}", res.shape, "int32")]
        inputs += [x, res]
        refs.append(ref_conv2d(x, w, 37, (1, 1), (0, 0, 0, 0), (1, 1), 1) + res)
        kernels.append((w, merges))
    attrs = _conv_attrs((1, 1), (0, 0, 0, 0), (1, 1), 1, "relax")

    def body(bb):
        outs = []
        for j, (w, _) in enumerate(kernels):
            y = iops.emit_conv2d(bb, params[2 * j], _weight_const(w, bits), attrs, 37, bits, w.shape, "int32")
            y = iops.emit_zero_point_correction(bb, y, 37, w.reshape(w.shape[0], -1).sum(1), (1, w.shape[0], 1, 1), "int32")
            outs.append(bb.emit(relax.op.add(y, params[2 * j + 1])))
        return outs

    got, mod = _build_run(params, body, inputs)
    for g, ref, (xshape, o, _) in zip(got, refs, cases):
        _assert_exact(g, ref, "int32", f"1x1 conv {xshape} -> {o} + residual, w{bits}")
    funcs = {
        tuple(int(d) for d in f.ty.params[0].shape): f for f in _fused_primfuncs(mod) if _has_reduction(f)
    }  # fmt: skip
    assert set(funcs) == {xshape for xshape, _, _ in cases}
    for xshape, _, merges in cases:
        axes = _merged_pixel_axes(funcs[xshape])
        assert (xshape[2] * xshape[3] in axes) == merges, (xshape, axes)


def test_pad_inside_the_conv_is_staged_in_its_destination_order():
    """A zero-point-0 conv pads inside its kernel; the pad becomes the activation's pair stage,
    whose block lacks the batch dimension of its buffer: it is still iterated in the order of
    the pair layout it writes -- channel pairs innermost, not channel by channel with every store
    128 bytes from the last."""
    rng = np.random.default_rng(11)
    x = _rand_act(rng, (1, 64, 9, 10), "uint8")
    w = _rand_weight(rng, (16, 64, 3, 3), 8)
    params, _, body = _conv_module([("pad", x, w, (1, 1), (1, 1, 1, 1), (1, 1), 1)], 8, "uint8", 0)
    (f,) = [f for f in _fused_primfuncs(main_module(params, body)) if _has_reduction(f)]
    sch = TiledReduction(LANES).apply(f, host_target().target, False)
    assert sch is not None
    pad = next(b for b in sch.get_child_blocks(sch.get_sblock("root")) if "pad" in sch.get(b).name_hint)
    extents = [int(sch.get(l).extent) for l in sch.get_loops(pad)]
    written = [int(d) for d in sch.get(pad).writes[0].source.shape]
    assert written[-2:] == [32, 2], written  # [..., h, w, channel pair, 2]
    assert extents[-2:] == [32, 2], extents  # and iterated so: pairs innermost


def test_pair_tiles_block_vector_rows_where_vectors_are_short():
    """Pixel vectors limited to one register (8-pixel rows, or 56 = 7 x 8) take tiles of several
    output rows, sharing each broadcast weight pair; vectors over channels (no such axis) and
    the regular path do not."""
    rule = TiledReduction(LANES)
    assert rule._tile(8, 12, 8, False, pairs=True, row_ext=6) == (8, 6, 2)  # PAIR_CONV_CASES' row block
    assert rule._tile(56, 64, 8, False, pairs=True, row_ext=56) == (8, 4, 2)  # ResNet-18's 64 @56
    assert rule._tile(112, 96, 8, False, pairs=True, row_ext=112)[2] == 1  # 16-pixel vectors: one row
    assert rule._tile(56, 64, 8, False, pairs=True)[2] == 1
    assert rule._tile(56, 64, 8, False)[2] == 1


def test_int4_weights_unpacked_once_at_compile_time():
    """On the pair path the int4 unpack is a layout rewrite: the compiler folds it into an int16
    constant in the kernel's pair layout, and no packed uint8 weight is left to unpack per call."""
    rng = np.random.default_rng(41)
    w = _rand_weight(rng, (16, 6, 3, 3), 4)
    wd = _rand_weight(rng, (38, 24), 4)
    attrs = _conv_attrs((1, 1), (1, 1, 1, 1), (1, 1), 1, "relax")
    mod = int4_conv_and_dense_module(w, wd, (1, 6, 9, 16), (1, 5, 38), attrs)
    target = host_target()
    with target.target:
        mod = tvm.transform.Sequential(
            pipeline.front_passes(target.target)
            + [dlight.ApplyDefaultSchedule(*pipeline.template_rules(target))]
            + [relax.transform.SplitLayoutRewritePreproc(), relax.transform.FoldConstant()]
        )(mod)
    consts = [c for c in _constants(mod) if c.size > 1]
    assert not [c.shape for c in consts if c.dtype == np.uint8]
    pairs = sorted(c.size for c in consts if c.dtype == np.int16)
    assert pairs == sorted([w.size, wd.size]), pairs
    # the folded constants hold the weight values themselves
    assert sorted(np.unique(np.concatenate([c.ravel() for c in consts if c.dtype == np.int16]))) == sorted(
        np.unique(np.concatenate([w.ravel(), wd.ravel()]))
    )


# Depthwise convs for DepthwiseConv (targets/depthwise.py): rows of 7 / 14 / 28 pixels (one odd
# vector) and whole vectors with a row block that divides 9 rows, stride 2, no padding, a 5x3
# kernel with asymmetric padding, a channel multiplier of 2. Stride 2 with an odd padded width is
# declined (it goes to TiledReduction): DEPTHWISE_DECLINED.
DEPTHWISE_CASES = [
    ("dw_w7", (1, 11, 9, 7), 11, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 11),
    ("dw_w14_rows5", (1, 3, 5, 14), 3, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 3),
    ("dw_w28", (1, 2, 3, 28), 2, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2),
    ("dw_w16_rows9", (1, 5, 9, 16), 5, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 5),
    ("dw_strided", (1, 7, 9, 26), 7, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 7),
    ("dw_nopad", (1, 4, 10, 18), 4, (3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 4),
    ("dw_asym_pad_5x3", (1, 9, 6, 10), 9, (5, 3), (1, 1), (2, 0, 1, 1), (1, 1), 9),
    ("dw_mult2_strided", (1, 6, 7, 16), 12, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 6),
]
DEPTHWISE_DECLINED = [("dw_strided_odd_pitch", (1, 5, 8, 11), 5, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 5)]


def _assert_depthwise_templated(mod: tvm.IRModule, expect: int):
    """DepthwiseConv schedules every reduction kernel of ``mod`` but those of DEPTHWISE_DECLINED
    (told apart by their input shape), which TiledReduction schedules."""
    target = host_target().target
    declined = {tuple(case[1]) for case in DEPTHWISE_DECLINED}
    funcs = [f for f in _fused_primfuncs(mod) if _has_reduction(f)]
    assert len(funcs) == expect, [str(f.ty) for f in funcs]
    for f in funcs:
        sch = DepthwiseConv(LANES).apply(f, target, False)
        if tuple(int(d) for d in f.ty.params[0].shape) not in declined:
            assert sch is not None, f"fell back: {f.ty}"
        else:
            assert sch is None and TiledReduction(LANES).apply(f, target, False) is not None, f.ty


@pytest.mark.parametrize("bits,zp", [(8, 37), (4, 201)])
def test_depthwise_plane_template_exact_float_bit_exact(bits, zp):
    """8-bit depthwise convs as realize.py emits them (exact float32 sums, zero-point padded)."""
    rng = np.random.default_rng(5 * bits + zp)
    params, cases = [], []
    for j, (name, xshape, o, (kh, kw), strides, padding, dilation, groups) in enumerate(DEPTHWISE_CASES + DEPTHWISE_DECLINED):
        x = _rand_act(rng, xshape, "uint8")
        w = _rand_weight(rng, (o, xshape[1] // groups, kh, kw), bits)
        params.append(_tensor_var(f"xq{j}", xshape, "uint8"))
        cases.append((name, x, w, strides, padding, dilation, groups))

    def body(bb):
        outs = []
        for xv, (_, x, w, strides, padding, dilation, groups) in zip(params, cases):
            attrs = _conv_attrs(strides, padding, dilation, groups, "relax")
            y = iops.emit_conv2d(bb, xv, _weight_const(w, bits), attrs, zp, bits, w.shape, "int32",
                                 float_weight=w.astype("float32"))  # fmt: skip
            outs.append(iops.emit_zero_point_correction(bb, y, zp, w.reshape(len(w), -1).sum(1), (1, len(w), 1, 1), "int32"))
        return outs

    got, mod = _build_run(params, body, [c[1] for c in cases])
    for g, (name, x, w, strides, padding, dilation, groups) in zip(got, cases):
        _assert_exact(g, ref_conv2d(x, w, zp, strides, padding, dilation, groups), "int32", f"{name} w{bits}")
    _assert_depthwise_templated(mod, len(cases))


def test_depthwise_plane_template_float():
    """Float depthwise convs (a float model's) against a float64 numpy reference."""
    rng = np.random.default_rng(3)
    params, cases = [], []
    for j, (name, xshape, o, (kh, kw), strides, padding, dilation, groups) in enumerate(DEPTHWISE_CASES + DEPTHWISE_DECLINED):
        x = rng.normal(size=xshape).astype("float32")
        w = rng.normal(size=(o, xshape[1] // groups, kh, kw)).astype("float32")
        params.append(_tensor_var(f"x{j}", xshape, "float32"))
        cases.append((name, x, w, strides, padding, dilation, groups))

    def body(bb):
        return [
            bb.emit(relax.op.nn.conv2d(xv, relax.const(w), strides=s, padding=p, dilation=d, groups=g))
            for xv, (_, _, w, s, p, d, g) in zip(params, cases)
        ]

    got, mod = _build_run(params, body, [c[1] for c in cases])
    for g, (name, x, w, strides, padding, dilation, groups) in zip(got, cases):
        ref = ref_conv2d(x, w, 0, strides, padding, dilation, groups, dtype=np.float64)
        np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-5, err_msg=name)
    _assert_depthwise_templated(mod, len(cases))


def _ref_max_pool(x, size, strides, padding):
    top, left, bottom, right = padding
    xp = np.pad(x, [(0, 0), (0, 0), (top, bottom), (left, right)], constant_values=-np.inf)
    oh = (xp.shape[2] - size[0]) // strides[0] + 1
    ow = (xp.shape[3] - size[1]) // strides[1] + 1
    out = np.full(x.shape[:2] + (oh, ow), -np.inf, x.dtype)
    for ky in range(size[0]):
        for kx in range(size[1]):
            win = xp[:, :, ky : ky + strides[0] * oh : strides[0], kx : kx + strides[1] * ow : strides[1]]
            out = np.maximum(out, win)
    return out


def test_max_pool_plane_template_exact():
    """Float max pools take the plane template (max instead of the FMA, no weights): ResNet's
    3x3 stride-2 pool, stride 1, an unpadded 2x2, rows of 7 pixels -- exact against numpy."""
    specs = [((1, 5, 12, 16), (3, 3), (2, 2), (1, 1, 1, 1)), ((1, 3, 7, 24), (3, 3), (1, 1), (1, 1, 1, 1)),
             ((1, 4, 10, 16), (2, 2), (2, 2), (0, 0, 0, 0)), ((1, 6, 9, 7), (3, 3), (1, 1), (1, 1, 1, 1))]  # fmt: skip
    rng = np.random.default_rng(17)
    xs = [rng.normal(size=shape).astype("float32") for shape, *_ in specs]
    params = [_tensor_var(f"x{j}", x.shape, "float32") for j, x in enumerate(xs)]

    def body(bb):
        return [
            bb.emit(relax.op.nn.max_pool2d(xv, size, strides, padding))
            for xv, (_, size, strides, padding) in zip(params, specs)
        ]

    got, mod = _build_run(params, body, xs)
    for g, x, (_, size, strides, padding) in zip(got, xs, specs):
        np.testing.assert_array_equal(g, _ref_max_pool(x, size, strides, padding), err_msg=str(x.shape))
    _assert_depthwise_templated(mod, len(specs))


# ---------------------------------------------------------------------------------------------
# dense / matmul
# ---------------------------------------------------------------------------------------------

# (x shape [..., K], N): vectors over 16 / 24 columns with ragged rows; N = 5 / 13 with rows a
# multiple of 8 (vectors over rows instead); one row (GEMV).
DENSE_CASES = [((13, 37), 16), ((2, 7, 29), 24), ((16, 37), 5), ((1, 24, 19), 13), ((1, 45), 40)]


def run_dense_cases(rng, cases, bits: int, act_dtype: str, zp: int):
    """One integer dense layer per (x shape [..., K], N) of ``cases`` (``bits``-bit weights, int4
    packed as realize.py stores them), built by the pipeline and run; each checked bit for bit
    against numpy int64. Returns (the module, the accumulator dtypes)."""
    params, prepared, inputs = [], [], []
    for j, (xshape, n) in enumerate(cases):
        x = _rand_act(rng, xshape, act_dtype)
        w = _rand_weight(rng, (xshape[-1], n), bits)
        acc = iops.accumulator_dtype(_act_max_abs(act_dtype, zp), int(np.abs(w).sum(0).max()))
        if bits == 4:
            const = relax.const(pack_int4(w.T), "uint8")
        else:
            const = relax.const(w.astype("int8" if bits <= 8 else "int16"))
        params.append(_tensor_var(f"x{j}", xshape, act_dtype))
        prepared.append((const, xshape[-1], n, w, acc))
        inputs.append(x)

    def body(bb):
        outs = []
        for xv, (const, k, n, w, acc) in zip(params, prepared):
            y = iops.emit_dense(bb, xv, const, bits, k, n, acc)
            outs.append(iops.emit_zero_point_correction(bb, y, zp, w.T.sum(1), (n,), acc))
        return outs

    got, mod = _build_run(params, body, inputs)
    for g, x, (_, _, _, w, acc) in zip(got, inputs, prepared):
        _assert_exact(g, ref_matmul(x, w, zp), acc, f"dense {x.shape} x {w.shape} w{bits} {act_dtype}")
    return mod, [p[4] for p in prepared]


@pytest.mark.parametrize("bits,act", [(8, ("uint8", 37)), (4, ("uint8", 201)), (16, ("int16", 0))])
def test_dense_templates_bit_exact(bits, act):
    act_dtype, zp = act
    mod, _ = run_dense_cases(np.random.default_rng(7 * bits + zp), DENSE_CASES, bits, act_dtype, zp)
    _assert_templated(mod, len(DENSE_CASES))


# Even K: the vpmaddwd path -- columns (16, 24 with ragged rows), rows (N = 5, 13) and one row.
PAIR_DENSE_CASES = [((13, 38), 16), ((2, 7, 30), 24), ((16, 38), 5), ((1, 24, 20), 13), ((1, 46), 40)]


@pytest.mark.parametrize("bits,act", [(8, ("uint8", 37)), (8, ("int16", 0)), (16, ("uint8", 201))])
def test_dense_vpmaddwd_path_bit_exact(bits, act):
    act_dtype, zp = act
    mod, accs = run_dense_cases(np.random.default_rng(3 * bits + zp), PAIR_DENSE_CASES, bits, act_dtype, zp)
    assert set(accs) == {"int32"}
    _assert_templated(mod, len(PAIR_DENSE_CASES), pairs=True)


def test_batched_activation_matmul_vpmaddwd_path_bit_exact():
    """Centered a8 x a8 / a16 x a8 attention-style matmuls with even K (int32 accumulators): the
    centering cast itself writes the int16 pair layout."""
    specs = [((2, 3, 5, 38), (2, 3, 38, 16), ("uint8", 37), ("uint8", 201)),
             ((2, 16, 30), (2, 30, 13), ("uint8", 0), ("uint8", 128)),
             ((3, 9, 22), (3, 22, 24), ("int16", 0), ("uint8", 37))]  # fmt: skip
    accs, mod = _run_activation_matmul_cases(np.random.default_rng(12), specs)
    assert set(accs) == {"int32"}
    _assert_templated(mod, len(specs), pairs=True)


def test_batched_activation_matmul_templates_bit_exact():
    """a8 x a8 and a16 x a16 batched matmuls (attention), rows of 16 and of 5 / 13 columns."""
    specs = [((2, 3, 5, 37), (2, 3, 37, 16), ("uint8", 37), ("uint8", 201)),
             ((2, 16, 29), (2, 29, 13), ("uint8", 0), ("uint8", 128)),
             ((3, 8, 19), (3, 19, 5), ("int16", 0), ("int16", 0))]  # fmt: skip
    _, mod = _run_activation_matmul_cases(np.random.default_rng(11), specs)
    _assert_templated(mod, len(specs))


# ---------------------------------------------------------------------------------------------
# Fused float epilogues round like separate ops (no FMA contraction)
# ---------------------------------------------------------------------------------------------


def test_fused_rescale_and_bias_round_twice():
    """``float32(acc) * scale + bias`` fused into the conv / dense tile equals numpy's separately
    rounded multiply and add (LLVM would contract the pair into one FMA without the fence)."""
    rng = np.random.default_rng(21)
    x = _rand_act(rng, (1, 29, 7, 16), "uint8")
    w = _rand_weight(rng, (24, 29, 1, 1), 8)
    xd = _rand_act(rng, (9, 61), "uint8")
    wd = _rand_weight(rng, (61, 16), 8)
    scale = rng.uniform(1e-4, 1e-2, size=24).astype(np.float32)
    bias = rng.normal(size=24).astype(np.float32)
    attrs = _conv_attrs((1, 1), (0, 0, 0, 0), (1, 1), 1, "relax")
    params = [_tensor_var("x", x.shape, "uint8"), _tensor_var("xd", xd.shape, "uint8")]

    def body(bb):
        acc = iops.emit_conv2d(bb, params[0], _weight_const(w, 8), attrs, 0, 8, w.shape, "int32")
        y = iops.emit_dequantize(bb, acc, scale, (1, 24, 1, 1))
        y = bb.emit(relax.op.add(y, relax.const(bias.reshape(1, 24, 1, 1))))
        accd = iops.emit_dense(bb, params[1], relax.const(wd.astype("int8")), 8, 61, 16, "int32")
        yd = iops.emit_dequantize(bb, accd, scale[:16], (16,))
        yd = bb.emit(relax.op.add(yd, relax.const(bias[:16])))
        return [y, yd]

    (y, yd), mod = _build_run(params, body, [x, xd])
    ref = ref_conv2d(x, w, 0, (1, 1), (0, 0, 0, 0), (1, 1), 1).astype(np.float32)
    ref = ref * scale.reshape(1, 24, 1, 1) + bias.reshape(1, 24, 1, 1)
    refd = ref_matmul(xd, wd).astype(np.float32) * scale[:16] + bias[:16]
    np.testing.assert_array_equal(y, ref)
    np.testing.assert_array_equal(yd, refd)
    _assert_templated(mod, 2)


def test_fence_products_wraps_only_products_feeding_float_adds():
    a, b, c = (tirx.Var(n, "float32") for n in "abc")
    i, j = tirx.Var("i", "int32"), tirx.Var("j", "int32")
    fenced = fence_products(a * b + c)
    assert isinstance(fenced, tirx.Add) and not isinstance(fenced.a, tirx.Mul)
    assert "fp_fence" in str(fenced)
    assert "fp_fence" in str(fence_products(c - a * b))
    assert "fp_fence" not in str(fence_products(a * b * c))  # no add: nothing to contract
    assert "fp_fence" not in str(fence_products(i * j + i))  # integers are exact anyway


@pytest.mark.parametrize("zp,dtype,lo,hi", [(0, "uint8", 0, 255), (201, "uint8", 0, 255), (37, "uint8", 12, 200),
                                            (0, "int16", -32767, 32767), (-5, "int8", -128, 127)])
def test_requantize_with_lrint_is_exact(zp, dtype, lo, hi):
    """The templates' requantize rewrite (round, clip and cast as one lrint and integer clamps)
    gives the default lowering's bits on inputs at every edge: ties, the clip bounds, values
    beyond int32 both ways, infinities and NaN."""

    @T.prim_func(s_tir=True)
    def requantize(x: T.Buffer((64,), "float32"), y: T.Buffer((64,), dtype)):
        for i in range(64):
            with T.sblock("q"):
                v = T.axis.remap("S", [i])
                y[v] = T.Cast(dtype, T.max(T.min(T.nearbyint(x[v]) + T.float32(zp), T.float32(hi)), T.float32(lo)))

    edges = [0.5, 1.5, 2.5, -0.5, -1.5, lo - zp - 0.5, lo - zp + 0.5, hi - zp - 0.5, hi - zp + 0.5, 3e9, -3e9,
             1e30, -1e30, np.inf, -np.inf, np.nan, 2**31, -(2**31)]  # fmt: skip
    rng = np.random.default_rng(zp + hi)
    x = np.concatenate([edges, rng.uniform(lo - zp - 300, hi - zp + 300, 64 - len(edges))]).astype(np.float32)
    target = host_target().target
    sch = InlinedElementwise(LANES).apply(requantize, target, False)
    assert sch is not None and "llvm.lrint" in sch.mod["main"].script()
    outs = []
    for f in (sch.mod["main"], requantize):  # rewritten and vectorized; the default lowering
        lib = tvm.compile(tvm.IRModule({"main": f}), target=target)
        y = tvm.runtime.tensor(np.zeros(64, dtype))
        lib["main"](tvm.runtime.tensor(x), y)
        outs.append(y.numpy())
    np.testing.assert_array_equal(outs[0], outs[1])
    finite = np.isfinite(x)
    np.testing.assert_array_equal(outs[0][finite], np.clip(np.rint(x[finite]) + zp, lo, hi).astype(dtype))


def test_elementwise_chain_is_inlined_and_exact():
    """A requantize chain (multiply, round, add, clip, cast) becomes one loop nest, same bits."""
    rng = np.random.default_rng(3)
    xf = (rng.normal(size=(3, 5, 37)) * 4).astype(np.float32)
    params = [_tensor_var("x", xf.shape, "float32")]
    body = lambda bb: [iops.emit_quantize(bb, params[0], 0.0371, 201, 0, 255, "uint8")]  # noqa: E731
    (got,), mod = _build_run(params, body, [xf])
    from tvm_mpq.quant_math import quantize

    np.testing.assert_array_equal(got, quantize(xf, 0.0371, 201, 0, 255))
    target = host_target().target
    funcs = _fused_primfuncs(mod)
    assert funcs and all(InlinedElementwise(LANES).apply(f, target, False) is not None for f in funcs)
