"""Template CPU schedules that need no search.

TVM 0.27's CPU pipeline legalizes and fuses but applies no schedule: every kernel is a serial
scalar loop nest, and every op of a fused PrimFunc (conv, zero-point subtract, cast, rescale, bias,
clip, requantize) is its own loop nest writing a full-size intermediate buffer. Four dlight rules,
tried in this order (``rules()``): ``DepthwiseConv`` (float32 depthwise convs, one channel plane at
a time: targets/depthwise.py), then the three below.

``TiledReduction`` -- conv2d (regular, pointwise, depthwise, grouped, strided), dense / matmul and
batched matmul, float or integer, with their fused epilogues:

- producers that only move data (an identity pad, a reshape, the int4 weight unpack) are inlined
  into the reduction; a pad with borders stays a stage (split into a fill and an interior copy);
  on the pair path the int4 unpack is a stage that becomes a layout rewrite instead (unpacked
  once, at compile time);
  the epilogue chain is inlined into one block;
- the output is computed in register tiles of ``bf`` x ``vi``: ``vi`` consecutive elements of the
  *vector axis* (one or two AVX2 registers) times ``bf`` rows of the *block axis* (an output axis
  the vector operand does not depend on), accumulated over the whole reduction in registers. The
  vector axis is the innermost output axis (pixels, columns); where rows are too short for whole
  vectors (7, 14, 28 pixels) it is the output channels instead, with the weights and the
  accumulator transposed -- except on the pair path for pointwise convs whose whole plane holds
  whole vectors (28 x 28), which iterate over the plane's pixels (``_merge_pixel_rows``).
  Depthwise convs, which have no block axis, block output rows. A small cost model (``_tile``)
  picks the tile;
- operands read along the vector axis in another dimension, or with a stride (stride-2 convs),
  are copied into a contiguous layout first; copies of weights are marked as layout rewrites, and
  the pipeline (``SplitLayoutRewritePreproc`` + ``FoldConstant``) does them at compile time;
- integer kernels with int32 accumulators and operands of at most 16 bits take the *pair path*
  when their reduction has an even shared axis (input channels, K): both operands in int16 with
  pairs of that axis innermost, and the inner step tensorized to ``vpmaddwd`` (targets/x86.py),
  which does 16 exact multiply-adds per instruction -- twice LLVM's own widening multiply, and
  without the shuffles narrow broadcasts cost. uint8 x int8 kernels take byte *quads* of the axis
  instead where the step for them is exact: ``vpdpbusd`` on VNNI targets; on AVX2
  ``vpmaddubsw``, whose int16 pair sums saturate, only where the operands' value ranges (TVM's
  analyzer on their producers: the int4 unpack, the 7-bit weights' clamp) prove that no pair sum
  can (``_value_range``).
  A pixel axis that is read at a stride gives its vectors to the output channels;
- the epilogue runs on the tile right after its reduction (``reverse_compute_at``), so the
  accumulator never leaves the registers / L1 and no intermediate is written;
- weights read along the vector axis are blocked by the tile's vector length at compile time
  (``[o / vi, ..., o % vi]``), so a tile streams contiguous weights, and the tile loop of the larger
  operand runs outermost, so its slice stays in cache while the smaller one is re-read;
- outer loops are fused and parallelized. Float reductions keep their order, so float results are
  summed in the same order as before; the pair path puts a conv's input-channel pairs innermost
  (integer sums: exact in any order).

``InlinedElementwise`` -- functions without a reduction: the chain is inlined into its last block,
which is then parallelized and vectorized (one pass over memory instead of one per op).
``ParallelVectorize`` -- the floor for anything else (softmax, layer norm): each block's leading
spatial loops fused and parallelized, the innermost spatial loop vectorized inside its reduction.

Bit-exactness of fused epilogues. TVM's LLVM backend contracts ``a * b + c`` into an FMA
(``AllowFPOpFusion = Fast``) whenever both ops end up in one expression. Unfused, the rescale
``float(acc) * scale`` and the ``+ bias`` that follows were separate loop nests and rounded twice;
the realized module, its simulation and the numpy reference all assume that. When blocks are
inlined, the products that feed a float add/subtract are wrapped in ``tvm_mpq.fp_fence`` (lowered to
LLVM's ``llvm.arithmetic.fence``), which keeps the two roundings: realized MobileNetV2 modules come
out bit-identical to those of the generic rule. Importing this module registers that op and marks
``tirx.nearbyint`` vectorizable (it is elementwise; TVM only lacks the attribute, so loops containing
``round`` were scalarized). ``TVM_MPQ_SCHEDULE_DEBUG=1`` makes the rules raise instead of falling back
and print the tile each kernel gets.
"""

from __future__ import annotations

import os

import numpy as np
import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.analysis.common_analysis import IterInfo, SBlockInfo
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.sym import Analyzer
from tvm.tirx.analysis import undefined_vars

from .fence import FP_FENCE_OP, register_intrinsics
from .x86 import DOT_LANES, dot_intrin

__all__ = ["FP_FENCE_OP", "InlinedElementwise", "ParallelVectorize", "TiledReduction", "rules"]

# Set to raise instead of falling back to the next rule (for developing the templates).
_DEBUG = bool(os.environ.get("TVM_MPQ_SCHEDULE_DEBUG"))


register_intrinsics()  # the FP contraction fence and a vectorizable nearbyint (fence.py)

_BINARY = (
    tirx.Add, tirx.Sub, tirx.Mul, tirx.Div, tirx.Mod, tirx.FloorDiv, tirx.FloorMod, tirx.Max,
    tirx.Min, tirx.EQ, tirx.NE, tirx.LT, tirx.LE, tirx.GT, tirx.GE, tirx.And, tirx.Or,
)  # fmt: skip


def _is_float(expr) -> bool:
    return str(expr.ty).startswith(("float", "bfloat"))


def _fence(expr):
    return tvm.ir.expr.Call(tvm.ir.Op.get(FP_FENCE_OP), [expr], ret_ty=expr.ty)


def map_expr(expr, fn):
    """Rebuild ``expr`` bottom-up, applying ``fn`` to every rebuilt node (the node types of fused
    elementwise / reduction bodies: arithmetic, comparisons, casts, selects, calls; anything else
    -- loads, constants, variables -- is a leaf given to ``fn`` as is)."""
    if isinstance(expr, _BINARY):
        new = type(expr)(map_expr(expr.a, fn), map_expr(expr.b, fn))
    elif isinstance(expr, tirx.Cast):
        new = tirx.Cast(str(expr.ty), map_expr(expr.value, fn))
    elif isinstance(expr, tirx.Select):
        new = tirx.Select(
            map_expr(expr.condition, fn), map_expr(expr.true_value, fn), map_expr(expr.false_value, fn)
        )
    elif isinstance(expr, tirx.Not):
        new = tirx.Not(map_expr(expr.a, fn))
    elif isinstance(expr, tvm.ir.expr.Call) and not isinstance(expr.op, tvm.ir.GlobalVar):
        new = tvm.ir.expr.Call(expr.op, [map_expr(a, fn) for a in expr.args], attrs=expr.attrs, ret_ty=expr.ty)
    else:
        new = expr
    return fn(new)


def fence_products(expr):
    """``expr`` with every float product that feeds a float add/subtract wrapped in a fence."""

    def fn(e):
        if isinstance(e, (tirx.Add, tirx.Sub)) and _is_float(e):
            a = _fence(e.a) if isinstance(e.a, tirx.Mul) else e.a
            b = _fence(e.b) if isinstance(e.b, tirx.Mul) else e.b
            return type(e)(a, b)
        return e

    return map_expr(expr, fn)


def replace_stored_value(sch: s_tir.Schedule, block_rv, value) -> None:
    """Replace the value a single-store block stores (its init, if any, is kept)."""
    block = sch.get(block_rv)
    store = block.body
    if not isinstance(store, tirx.BufferStore):
        raise ValueError("not a single-store block")
    new = s_tir.SBlock(
        block.iter_vars, block.reads, block.writes, block.name_hint,
        tirx.BufferStore(store.buffer, value, store.indices), block.init, block.alloc_buffers,
        block.match_buffers, block.annotations,
    )  # fmt: skip
    sch.state.replace(sch.get_sref(block_rv), new, {block: new})


def _rewrite_block(sch: s_tir.Schedule, block_rv, fn) -> None:
    """Replace a block's stored value by ``map_expr(value, fn)``."""
    store = sch.get(block_rv).body
    if not isinstance(store, tirx.BufferStore):
        raise ValueError("not a single-store block")
    replace_stored_value(sch, block_rv, map_expr(store.value, fn))


def _prepare_epilogue(sch: s_tir.Schedule, block_rv) -> None:
    """Rewrite a single-store epilogue block so that no float product in it is contracted into an
    FMA, and its requantizing round-clip-cast converts in one instruction
    (``_requantize_with_lrint``)."""
    store = sch.get(block_rv).body
    if not isinstance(store, tirx.BufferStore):
        return
    if _contains(store.value, _fenceable):
        _rewrite_block(sch, block_rv, lambda e: fence_products(e) if _fenceable(e) else e)
    if _contains(store.value, _is_nearbyint):
        _rewrite_block(sch, block_rv, _requantize_with_lrint)


_NEARBYINT = tvm.ir.Op.get("tirx.nearbyint")


def _is_nearbyint(e) -> bool:
    return isinstance(e, tvm.ir.expr.Call) and e.op.same_as(_NEARBYINT)


def _integral_const(e, dtype: str) -> int | None:
    """The value of a float constant that is an integer within ``dtype``'s range, else None."""
    if not isinstance(e, tirx.FloatImm) or e.value != int(e.value):
        return None
    info = np.iinfo(dtype)
    return int(e.value) if info.min <= e.value <= info.max else None


def _requantize_with_lrint(e):
    """``int(clamp(nearbyint(x) [+ zp], lo, hi))`` -> ``int(min(max(lrint(min(x, hi - zp)),
    lo - zp) + zp, hi))`` in integers (``zp``: an integral constant, the zero point): the same
    value for every x, NaN included -- ``lrint`` rounds like ``nearbyint`` (the current mode, to
    nearest even), ``min(x, hi - zp)`` keeps it within int32 from above and the integer ``max``
    catches what falls below (x86: 0x80000000) -- but LLVM then converts with one ``vcvtps2dq``
    where the float clamp cost a round, a compare, a mask and a truncating convert per vector
    (MobileNetV2's 16->96 @112 int8 conv, one thread: 0.63 -> 0.56 ms, ``benchmarks/kernels.py
    --no-e2e --threads 1 --dtypes int8 --conv-zero-point 37 --only "16->96"``)."""
    if not isinstance(e, tirx.Cast) or not str(e.ty).startswith(("int", "uint")) or _dtype_bits(e.ty) > 16:
        return e  # quantized activations: 8 / 16 bits (the clamp then stays far inside int32)
    clamp = e.value
    if isinstance(clamp, tirx.Max) and isinstance(clamp.a, tirx.Min):
        lo, hi, rounded = clamp.b, clamp.a.b, clamp.a.a
    elif isinstance(clamp, tirx.Min) and isinstance(clamp.a, tirx.Max):
        lo, hi, rounded = clamp.a.b, clamp.b, clamp.a.a
    else:
        return e
    zp = _integral_const(rounded.b, "int16") if isinstance(rounded, tirx.Add) else None
    if zp is None:
        zp = 0
    else:
        rounded = rounded.a
    if not _is_nearbyint(rounded):
        return e
    x = rounded.args[0]
    lo_i, hi_i = _integral_const(lo, str(e.ty)), _integral_const(hi, str(e.ty))
    if str(x.ty) != "float32" or lo_i is None or hi_i is None or lo_i > hi_i:
        return e
    as_int = tirx.call_llvm_pure_intrin("int32", "llvm.lrint", tirx.Min(x, tirx.FloatImm("float32", hi_i - zp)))
    int32 = lambda v: tirx.IntImm("int32", v)  # noqa: E731
    shifted = tirx.Max(as_int, int32(lo_i - zp))
    clamped = tirx.Min(shifted + int32(zp) if zp else shifted, int32(hi_i))
    return tirx.Cast(str(e.ty), clamped)


# ---------------------------------------------------------------------------------------------
# Small analyses
# ---------------------------------------------------------------------------------------------


def _int(expr) -> int | None:
    if isinstance(expr, int):
        return expr
    if isinstance(expr, tirx.IntImm):
        return int(expr.value)
    return None


def _vars(expr) -> set:
    return set(undefined_vars(expr))


def _contains(expr, pred) -> bool:
    """Whether some sub-expression of ``expr`` satisfies ``pred`` (the node types fence knows)."""
    if pred(expr):
        return True
    if isinstance(expr, _BINARY):
        return _contains(expr.a, pred) or _contains(expr.b, pred)
    if isinstance(expr, tirx.Cast):
        return _contains(expr.value, pred)
    if isinstance(expr, tirx.Select):
        return any(_contains(e, pred) for e in (expr.condition, expr.true_value, expr.false_value))
    if isinstance(expr, tirx.Not):
        return _contains(expr.a, pred)
    if isinstance(expr, tvm.ir.expr.Call):
        return any(_contains(a, pred) for a in expr.args)
    return False


def _fenceable(e) -> bool:
    """A float add/subtract with a product operand: LLVM would contract it into an FMA."""
    return (
        isinstance(e, (tirx.Add, tirx.Sub)) and _is_float(e)
        and (isinstance(e.a, tirx.Mul) or isinstance(e.b, tirx.Mul))
    )  # fmt: skip


def _is_data_movement(sch: s_tir.Schedule, block_rv) -> bool:
    """A producer worth inlining into a reduction: no branch (pads with a condition stay a stage of
    their own) and no float multiply/divide (those would need fences inside the reduction)."""
    store = sch.get(block_rv).body
    if not isinstance(store, tirx.BufferStore):
        return False

    def bad(e):
        if isinstance(e, tvm.ir.expr.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name.endswith("if_then_else"):
            return True
        return isinstance(e, (tirx.Mul, tirx.Div, tirx.Select)) and _is_float(e)

    return not _contains(store.value, bad)


def _is_plain_copy(sch: s_tir.Schedule, block_rv) -> bool:
    """The block stores a plain load (an identity pad, a reshape)."""
    store = sch.get(block_rv).body
    return isinstance(store, tirx.BufferStore) and isinstance(store.value, tvm.ir.TensorLoad)


def _inline_chain(sch: s_tir.Schedule, blocks: list) -> list:
    """Inline what can be inlined among ``blocks`` (in order); return the blocks left.

    Producers go into their consumers first (``compute_inline``); only what is left is tried the
    other way (a consumer into its single producer). Reverse-inlining first can leave a block that
    reads two producers referring to a buffer that no longer exists (seen with GELU's
    ``x * (0.5 + erf(x) * 0.5)``). Blocks calling an op TVM cannot vectorize (``erf``) are kept
    apart: merged with others they would make the whole loop scalar."""
    left = list(blocks)
    for b in list(left[:-1]):
        if _scalar_only(sch, b) or any(_scalar_only(sch, c) for c in sch.get_consumers(b)):
            continue
        try:
            sch.compute_inline(b)
        except Exception:  # noqa: BLE001 - not inlinable (e.g. read by the reduction's init)
            continue
        left.remove(b)
    for b in list(left[1:]):
        if _scalar_only(sch, b) or any(_scalar_only(sch, p) for p in sch.get_producers(b)):
            continue
        try:
            sch.reverse_compute_inline(b)
        except Exception:  # noqa: BLE001
            continue
        left.remove(b)
    return left


_VECTORIZER_BUILTINS = ("if_then_else", "reinterpret")


def _scalar_only(sch: s_tir.Schedule, block_rv) -> bool:
    """The block calls an op that TVM's vectorizer cannot vectorize."""
    store = sch.get(block_rv).body

    def opaque_call(e):
        if not isinstance(e, tvm.ir.expr.Call) or not isinstance(e.op, tvm.ir.Op):
            return False
        if e.op.name.endswith(_VECTORIZER_BUILTINS):
            return False
        return not e.op.get_attr("TVectorizable")

    return not isinstance(store, tirx.BufferStore) or _contains(store.value, opaque_call)


def _checked(sch: s_tir.Schedule):
    """``sch`` if every buffer its blocks access is still defined, else None (the next rule then
    takes over). TVM's own verifier does not accept schedulable TIR; this catches the one failure
    seen (an inlined buffer still read)."""
    func = sch.mod["main"]
    defined = list(func.params)
    used = []
    stack = [sch.get_sblock("root")] if _has_root(sch) else []
    while stack:
        rv = stack.pop()
        blk = sch.get(rv)
        defined += list(blk.alloc_buffers)
        used += [r.source for r in list(blk.reads) + list(blk.writes)]
        stack += list(sch.get_child_blocks(rv))
    ok = all(any(u.same_as(d) for d in defined) for u in used)
    if not ok and _DEBUG:
        raise RuntimeError("tvm_mpq schedule left a block reading an undefined buffer")
    return sch if ok else None


def _normalized(func, rule: CPUScheduleRule | None = None, target=None):
    """``(schedule, blocks)``: a fresh schedule of a PrimFunc and its normalized blocks; None
    where dlight's analysis cannot normalize it (the function keeps the default lowering) or,
    given a ``rule``, where ``func`` is no PrimFunc or the rule does not apply to ``target``."""
    if rule is not None and (not isinstance(func, tirx.PrimFunc) or not rule.is_target_available(target)):
        return None
    sch = s_tir.Schedule(func)
    try:
        infos = normalize_prim_func(sch)
    except Exception:  # noqa: BLE001 - an unanalyzable function
        return None
    return None if infos is None else (sch, infos)


def _single_reduction(func):
    """``(schedule, blocks, index)``: a fresh schedule of ``func``, its normalized blocks and the
    index of its one reduction block; None where the function cannot be normalized or has not
    exactly one reduction (the templates schedule one reduction with its producers and epilogue)."""
    normalized = _normalized(func)
    if normalized is None:
        return None
    sch, infos = normalized
    reds = [i for i, b in enumerate(infos) if "R" in b.dom_kind()]
    if len(reds) != 1:
        return None
    return sch, infos, reds[0]


def _has_root(sch) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:  # noqa: BLE001
        return False


def _dtype_bits(dtype) -> int:
    return int("".join(c for c in str(dtype) if c.isdigit()) or 32)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# ---------------------------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------------------------


class TiledReduction(CPUScheduleRule):
    """Register-tiled conv / matmul with the epilogue fused at the tile (see the module docstring).

    ``vector_lanes``: 32-bit lanes of one vector register (8 for AVX2, 16 for AVX-512);
    ``registers``: vector registers of the target (16 for AVX2); ``dot_isa``: the integer
    dot-product steps of the pair path (targets/x86.py: "avx2", "vnni" -- byte quads with
    ``vpdpbusd`` --, or "emulated-vnni", the VNNI schedules with a portable quad step).
    """

    def __init__(
        self, vector_lanes: int = 8, registers: int = 16, max_block: int = 8, pairs: bool = True,
        depthwise_rows: int = 8, dot_isa: str = "avx2",
    ):  # fmt: skip
        self.dot_isa = dot_isa
        self.vector_lanes = vector_lanes
        self.depthwise_rows = depthwise_rows
        self.pairs = pairs
        self.registers = registers
        self.max_block = max_block

    def apply(self, func, target, _tunable):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        attempts = [self._schedule]
        if self.pairs and _has_avx2(target):
            attempts.insert(0, self._schedule_pairs)
        for attempt in attempts:
            parsed = _single_reduction(func)
            if parsed is None:
                return None
            sch, infos, ridx = parsed
            try:
                ok = attempt(sch, infos, ridx)
            except Exception as err:  # noqa: BLE001 - an unexpected structure: the next attempt
                if _DEBUG:
                    if attempt == self._schedule:
                        raise
                    print(f"[tvm_mpq.schedules]   pairs: {type(err).__name__}: {str(err)[-1500:]}")
                ok = False
            if ok:
                checked = _checked(sch)
                if checked is not None:
                    return _log(self, func, checked)
        return None

    # -- the tile shape
    def _tile(
        self, v_ext: int, b_ext: int | None, lanes: int, narrow: bool, pairs: bool = False, window: bool = False,
        fused_dot: bool = False, row_ext: int | None = None,
    ) -> tuple[int, int, int]:
        """(vector length, block rows, vector rows) from a small cost model of one reduction step.

        Per row and accumulator register: a multiply and an add (an FMA for float); per row: a
        broadcast of the row operand (a load for 32-bit values; load, shuffle and extend for
        narrow integers -- the shuffle ports are what limits int8 kernels on AVX2); per register
        of the vector operand: a load (plus an extend for narrow integers). Vectors of one to
        four whole registers (odd lengths make LLVM spill); accumulators, the vector operand and a
        broadcast within the 16 registers; ragged tiles count their wasted rows. ``narrow``: the
        operands are integers narrower than the accumulator; ``fused_dot``: the pair / quad step
        is one instruction (VNNI), not a multiply and an add. The formula: ``tile_score``.

        ``row_ext`` (pair tiles over pixels): the extent of a second axis only the vector operand
        depends on (output rows of a conv); a tile may then hold 2-4 such vectors, which share
        each broadcast -- on 56-pixel rows, where vectors cannot be longer than 8 without ragged
        tiles, 2 rows x 4 channels x 8 pixels beat 8 x 8 (3x3 int8 64->64 @56, one thread: 1.82 ->
        1.66 ms, ``TVM_MPQ_TILE=8,8`` for the old tile in ``benchmarks/kernels.py --no-e2e
        --threads 1 --dtypes int8 --conv-zero-point 37 --only "r18.3x3 64->64"``).

        ``TVM_MPQ_TILE=bf,vi[,rows]`` overrides the choice for every kernel (to reproduce the tile
        comparisons quoted below, e.g. ``TVM_MPQ_TILE=4,16 .venv/bin/python benchmarks/kernels.py
        --no-e2e --threads 1 --dtypes fp32 --only "512->512"``); a pair tile that does not divide
        its block axis falls back to the regular path."""
        forced = os.environ.get("TVM_MPQ_TILE")
        if forced:
            bf, vi, rows = ([int(t) for t in forced.split(",")] + [1])[:3]
            return vi, bf, rows
        if v_ext % lanes:
            vis = [v_ext]  # one odd-length vector (depthwise rows of 7, 14, 28 pixels)
        else:
            vis = [v for v in (4 * lanes, 2 * lanes, lanes) if v_ext % v == 0]
        if pairs:
            vis = [v for v in vis if v % DOT_LANES == 0] or vis
        options = []
        for vi in vis:
            regs = -(-vi // lanes)
            if b_ext is None:
                options.append((1.0, vi, 1, 1))
                continue
            row_options = [1]
            if pairs and row_ext:
                row_options += [r for r in (2, 3, 4) if row_ext % r == 0]
            bmax = max(1, min(self.max_block, (self.registers - 1 - regs) // regs, b_ext))
            if window and not pairs:
                # at most 10 accumulators under a kernel window: LLVM interleaves its unrolled
                # taps and spills beyond that (3x3 conv 128->128 @28 fp32: 6x16 38, 4x16 89 GOP/s)
                bmax = max(1, min(bmax, 10 // regs))
            # A block axis that fits whole in the registers left without a spare one for the
            # broadcast (7 pixels x 2 registers: LLVM reloads the broadcast instead) beats a
            # ragged block: 160->960 @7x7 fp32 0.40 -> 0.29 ms, 960->320 0.83 -> 0.60 ms.
            whole = b_ext if b_ext <= self.max_block and b_ext * regs <= self.registers - regs else 0
            if pairs or window:
                # ... but not for vpmaddwd tiles (the broadcast needs a register of its own) nor
                # under a kernel window (LLVM interleaves the unrolled taps): they spill. With
                # weights blocked per tile, one thread: int8 3x3 conv 512->512 @7 7x16 117 ->
                # 7x8 144 GOP/s, 256->256 @14 7x16 118 -> 2x32 141; fp32 512->512 @7 7x16 53 ->
                # 7x8 81
                whole = 0
            for bf in sorted(set(range(1, bmax + 1)) | ({whole} if whole else set())):
                if pairs and b_ext % bf:
                    continue  # tensorize does not take the predicate of a ragged tile
                if window and not pairs and b_ext % bf:
                    continue  # ragged tiles under a window: 3x3 s2 64->128 @56 fp32 5x16 45, 4x16 85 GOP/s
                for rows in row_options:
                    if rows > 1 and (bf + 1) * regs * rows + 1 > self.registers:
                        continue  # accumulators, the vectors and a broadcast in the registers
                    score = self.tile_score(vi, bf, rows, b_ext, lanes, narrow, pairs, window, fused_dot)
                    options.append((score, vi, bf, rows))
        # Among tiles the model rates within 10% of the best, take the one with the most
        # accumulators, then the most rows: it re-reads the vector operand (the weights) fewest
        # times and hides the FMA latency better -- the model counts neither (dense 128x384x384,
        # one thread: fp32 2x32 61 -> 6x16 93 GFLOP/s; int8 2x32 105 -> 4x16 131 GOP/s); then
        # the fewest vector rows.
        top = max(options)[0]
        best = max(
            (o for o in options if o[0] >= 0.9 * top),
            key=lambda o: (o[2] * -(-o[1] // lanes) * o[3], o[2], -o[3], o[0]),
        )
        return best[1], best[2], best[3]

    @staticmethod
    def tile_score(
        vi: int, bf: int, rows: int, b_ext: int | None, lanes: int, narrow: bool, pairs: bool = False,
        window: bool = False, fused_dot: bool = False,
    ) -> float:
        """Useful multiply-adds per unit of issue cost of one reduction step of a ``bf`` x ``vi``
        (x ``rows``) tile: ``_tile``'s cost model (see there), also a feature of the latency model."""
        mac, bcast, vload = (2, 4, 2) if narrow else (1, 1, 0.5)
        if pairs:  # vpmaddwd on int16 pairs: broadcasts and vector loads are plain loads
            mac, bcast, vload = (1 if fused_dot else 2, 1, 1)
        elif window and not narrow:
            # under a kernel window the weights outgrow L1 (3x3 x C_in per output channel) and
            # each vector load comes from L2: more rows per load pay (3x3 conv 512->512 @7 fp32,
            # one thread: 1x32 32, 7x8 81 GOP/s)
            vload = 1.5
        regs = -(-vi // lanes)
        useful = bf * vi * rows * (b_ext / (-(-b_ext // bf) * bf) if b_ext else 1.0)
        return useful / (mac * bf * regs * rows + bcast * bf + vload * regs * rows)

    @staticmethod
    def _axes(sch, rinfo):
        """(ns, ext, svars, out_idx, out_dim) of a reduction block with its ``ns`` spatial axes
        first, constant extents and one output indexed by the spatial axes in order; None for
        any other block. ``out_dim``: the output dimension of each spatial axis
        (normalize_prim_func drops unit axes, whose output index is then a constant)."""
        kinds = rinfo.dom_kind()
        ns = len(kinds) - len(kinds.lstrip("S"))
        if ns == 0 or "S" in kinds[ns:]:
            return None
        ext = [_int(it.dom) for it in rinfo.iters]
        if any(e is None for e in ext) or len(sch.get_loops(rinfo.block_rv)) != len(kinds):
            return None
        svars = [it.var for it in rinfo.iters[:ns]]
        block = sch.get(rinfo.block_rv)
        if len(block.writes) != 1:
            return None
        out_idx = [r.min for r in block.writes[0].region]
        out_dim = [d for d, e in enumerate(out_idx) if _int(e) is None]
        if len(out_dim) != ns or any(not out_idx[d].same_as(v) for d, v in zip(out_dim, svars)):
            return None
        return ns, ext, svars, out_idx, out_dim

    def _schedule(self, sch, infos, ridx) -> bool:
        rinfo = infos[ridx]
        rblock = rinfo.block_rv
        axes = self._axes(sch, rinfo)
        if axes is None:
            return False
        ns, ext, svars, out_idx, out_dim = axes
        block = sch.get(rblock)
        acc_bits = _dtype_bits(block.writes[0].source.dtype)
        lanes = max(1, self.vector_lanes * 32 // acc_bits)

        # Producers that only move data go into the reduction; the epilogue into one block.
        producers = []
        for b in reversed(infos[:ridx]):
            if _is_data_movement(sch, b.block_rv):
                try:
                    sch.compute_inline(b.block_rv)
                    continue
                except Exception:  # noqa: BLE001
                    pass
            producers.append(b.block_rv)  # e.g. a pad with a condition: a stage of its own
        epilogue = _inline_chain(sch, [b.block_rv for b in infos[ridx + 1 :]])
        block = sch.get(rblock)

        # Which output axes index which operands.
        reads = []
        for r in block.reads:
            if r.source.same_as(block.writes[0].source):
                continue
            reads.append([_vars(rg.min) for rg in r.region])
        used = [set().union(*dims) if dims else set() for dims in reads]
        v = ns - 1
        # The block axis: an output axis that some operand does not depend on while another does
        # (output channels of a conv, rows of a matmul); the vector axis: the innermost one.
        vec_ops = [u for u in used if svars[v] in u]
        vec_vars = set().union(*vec_ops) if vec_ops else set()
        cands = [
            i for i in range(ns - 1)
            if ext[i] > 1 and svars[i] not in vec_vars and any(svars[i] in u for u in used)
        ]  # fmt: skip
        b = max(cands, key=lambda i: ext[i]) if cands else None
        if ext[v] % lanes and b is not None and ext[b] % lanes == 0:
            # Rows too short for whole vectors (7, 14, 28 pixels): vectorize over the block axis
            # instead (8 output channels at a time), its operand and the accumulator transposed so
            # that it is contiguous there.
            v, b = b, v
        if ext[v] < 4:
            return False

        consumer = epilogue[0] if len(epilogue) == 1 else None
        if not epilogue:
            consumer = sch.cache_write(rblock, 0, "global")
        if v != ns - 1:
            if consumer is None:
                return False
            perm = [d for d in range(len(out_idx)) if d != out_dim[v]] + [out_dim[v]]
            sch.transform_layout(rblock, ("write", 0), _permute(perm))
        in_bits = [_dtype_bits(r.source.dtype) for r in sch.get(rblock).reads]
        narrow = "int" in str(block.writes[0].source.dtype) and max(in_bits) < acc_bits
        vi, bf, _ = self._tile(ext[v], ext[b] if b is not None else None, lanes, narrow, window=len(ext) - ns > 1)
        depthwise = False
        if b is None and v == ns - 1 and ns >= 2 and ext[ns - 2] > 1 and vi % lanes == 0:
            # No axis the vector operand ignores (depthwise conv): block output rows anyway --
            # neighbouring rows share input rows and every weight broadcast, and LLVM merges
            # the repeated loads of the unrolled rows.
            b, depthwise = ns - 2, True
            bf = max(d for d in _divisors(ext[b]) if d <= self.depthwise_rows)
        # Bytes of the operands only the vector axis / only the block axis index (weights /
        # activations), before any copy: the larger one's tile loop goes outermost.
        vec_bytes = blk_bytes = 0
        if b is not None and not depthwise:
            for r in block.reads:
                if r.source.same_as(block.writes[0].source):
                    continue
                rv = set().union(*(_vars(rg.min) for rg in r.region))
                size = _num_elements(r.source) * _dtype_bits(r.source.dtype) // 8
                if svars[v] in rv and svars[b] not in rv:
                    vec_bytes = max(vec_bytes, size)
                elif svars[b] in rv and svars[v] not in rv:
                    blk_bytes = max(blk_bytes, size)
        stages = self._contiguous_operands(sch, rblock, svars[v], vi)
        if _DEBUG and stages:
            print(f"[tvm_mpq.schedules]   {len(stages)} operand(s) copied contiguous")

        loops = sch.get_loops(rblock)
        spatial, reduction = list(loops[:ns]), list(loops[ns:])
        if _DEBUG:
            mode = "channels" if v != ns - 1 else ("pixels" if b is not None else "row")
            print(f"[tvm_mpq.schedules]   {mode}: axes {ext[:ns]} reduce {ext[ns:]} tile {bf}x{vi} lanes {lanes}")
        v_o, v_i = sch.split(spatial[v], [None, vi])
        if b is not None:
            b_o, b_i = sch.split(spatial[b], [None, bf])
            rest = [l for i, l in enumerate(spatial) if i not in (v, b)]
            if vec_bytes > blk_bytes and vec_bytes > 0:
                # the vector operand (weights read along output channels) is the larger: its
                # tile loop outermost, so its slice stays in cache across the pixel tiles
                outer = [v_o] + rest + [b_o] if v != ns - 1 else rest + [v_o, b_o]
            else:
                outer = rest + ([v_o, b_o] if v == ns - 1 else [b_o, v_o])
            inner = [b_i, v_i]
        else:
            outer = [l for i, l in enumerate(spatial) if i != v] + [v_o]
            inner = [v_i]
        sch.reorder(*outer, *reduction, *inner)

        if consumer is not None:
            try:
                _prepare_epilogue(sch, consumer)
                sch.reverse_compute_at(consumer, outer[-1], preserve_unit_loops=False)
            except Exception:  # noqa: BLE001 - not computable at the tile: schedule it apart
                if v != ns - 1:
                    raise
                consumer = None
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
        sch.vectorize(inner[-1])
        for l in inner[:-1]:
            sch.unroll(l)
        for l, e in zip(reduction, ext[ns:]):
            if e <= 3 and len(reduction) > 1:
                sch.unroll(l)  # kernel rows / columns of a conv
        init = sch.decompose_reduction(rblock, reduction[0])
        self._vectorize_tile(sch, init)
        if consumer is not None:
            if v != ns - 1:
                # the epilogue of a transposed tile: vectorize over channels too (contiguous
                # accumulator and per-channel parameters; the stores scatter)
                _channels_innermost(sch, consumer, sch.get(rblock).writes[0].source)
            self._vectorize_tile(sch, consumer)
        for blk in producers:
            _schedule_stage(sch, blk, self.vector_lanes)
        for blk in stages + [e for e in epilogue if e is not consumer]:
            _schedule_elementwise(sch, blk, self.vector_lanes)
        return True

    # -- the vpmaddwd path (int32 accumulators over int16 pairs; targets/x86.py)
    def _schedule_pairs(self, sch, infos, ridx) -> bool:
        """Integer kernels with an int32 / int64 accumulator and operands of at most 16 bits: the
        reduction axis both operands share (input channels, K) is split into pairs, both operands
        are laid out with the pair innermost as int16 (weights at compile time, activations by a
        copy per call), and the inner step is one ``vpmaddwd`` per 8 outputs and 2 reduction
        elements -- twice the multiply-adds of the widening multiply LLVM forms by itself, with
        no shuffles for the broadcasts. With VNNI (``dot_isa``), a uint8 x int8 kernel with int32
        accumulators is split into quads instead, kept in bytes, one ``vpdpbusd`` per 8 outputs
        and 4 reduction elements (pairs where no shared axis divides by 4). Returns False where
        the kernel does not fit (the regular path then schedules it)."""
        rinfo = infos[ridx]
        rblock = rinfo.block_rv
        axes = self._axes(sch, rinfo)
        if axes is None:
            return False
        ns, ext, svars, out_idx, out_dim = axes
        iters = rinfo.iters
        block = sch.get(rblock)
        acc = str(block.writes[0].source.dtype)
        if acc not in ("int32", "int64"):
            return False
        out_buf = block.writes[0].source

        # Producers: pure data movement is inlined; a producer that computes the operand (a pad
        # with borders, a centering cast, the int4 weight unpack) becomes its layout stage -- the
        # int16 pair layout is then written once per call (the unpack: once, at compile time,
        # _pair_stage) instead of recomputed per multiply-add.
        producers = []
        for b in reversed(infos[:ridx]):
            feeds = any(sch.get(c).same_as(block) for c in sch.get_consumers(b.block_rv))
            stage = feeds and not _is_plain_copy(sch, b.block_rv)
            if not stage and _is_data_movement(sch, b.block_rv):
                try:
                    sch.compute_inline(b.block_rv)
                    continue
                except Exception:  # noqa: BLE001
                    pass
            producers.append(b.block_rv)
        epilogue = _inline_chain(sch, [b.block_rv for b in infos[ridx + 1 :]])
        consumer = epilogue[0] if len(epilogue) == 1 else None
        if not epilogue:
            consumer = sch.cache_write(rblock, 0, "global")
        if consumer is None:
            return False
        if _merge_pixel_rows(sch, rblock, consumer, producers, DOT_LANES):
            rinfo = _block_info(sch, rblock)
            axes = self._axes(sch, rinfo)
            if axes is None:
                return False
            ns, ext, svars, out_idx, out_dim = axes
            iters = rinfo.iters
        block = sch.get(rblock)

        # The body must be  C = C + int32(L1) * int32(L2)  over two integer operands of <= 16 bits.
        store = block.body
        if not (isinstance(store, tirx.BufferStore) and isinstance(store.value, tirx.Add)):
            return False
        prod = store.value.b
        if not (isinstance(prod, tirx.Mul) and all(_cast_of_load(x) is not None for x in (prod.a, prod.b))):
            return False
        loads = [_cast_of_load(prod.a), _cast_of_load(prod.b)]
        if any(_dtype_bits(ld.source.dtype) > 16 or "float" in str(ld.source.dtype) for ld in loads):
            return False
        if any(ld.source.same_as(out_buf) for ld in loads) or loads[0].source.same_as(loads[1].source):
            return False
        # byte quads where the ISA has an exact step for these operands (vpdpbusd; on AVX2
        # vpmaddubsw where no pair sum can saturate), else int16 pairs
        dtypes = {str(ld.source.dtype) for ld in loads}
        groups = [2]
        fits_int16 = False
        if acc == "int32" and dtypes == {"uint8", "int8"}:
            ranges = [_value_range(sch, ld.source, producers) for ld in loads]
            u = max(hi for (lo, hi), ld in zip(ranges, loads) if str(ld.source.dtype) == "uint8")
            s_abs = max(max(-lo, hi) for (lo, hi), ld in zip(ranges, loads) if str(ld.source.dtype) == "int8")
            fits_int16 = 2 * u * s_abs <= INT16_MAX
            if self.dot_isa != "avx2" or fits_int16:
                groups = [4, 2]

        # Axes: vector axis (innermost output axis, or output channels when rows are short).
        idx_vars = [[_vars(i) for i in ld.indices] for ld in loads]
        used = [set().union(*dims) for dims in idx_vars]
        v = ns - 1
        vec = [k for k in (0, 1) if svars[v] in used[k]]
        cands = [
            i for i in range(ns - 1)
            if ext[i] > 1 and all(svars[i] not in used[k] for k in vec) and any(svars[i] in u for u in used)
        ]  # fmt: skip
        b = max(cands, key=lambda i: ext[i]) if cands else None
        lanes = DOT_LANES  # the dot steps work on 256-bit registers on every target (x86.py)

        def strided(i):  # an operand reads output axis i at a stride (pixels of a stride-2 conv)
            return any(
                not _unit_stride(ld.indices[d], svars[i])
                for ld, dims in zip(loads, idx_vars) for d, vs in enumerate(dims) if svars[i] in vs
            )  # fmt: skip

        if (ext[v] % lanes or strided(v)) and b is not None and ext[b] % lanes == 0:
            v, b = b, v
        if ext[v] % DOT_LANES:
            return False
        vec = [k for k in (0, 1) if svars[v] in used[k]]
        if len(vec) != 1:
            return False
        kv, kb = vec[0], 1 - vec[0]
        # The pair (quad) axis: a reduction axis indexing each operand in exactly one dimension,
        # plainly, whose extent the group divides.
        red_iters = iters[ns:]
        pair = None
        for group in groups:
            for ri, it in enumerate(red_iters):
                if _int(it.dom) % group:
                    continue
                dims = [[d for d, vs in enumerate(idx_vars[k]) if it.var in vs] for k in (0, 1)]
                if all(len(ds) == 1 and loads[k].indices[ds[0]].same_as(it.var) for k, ds in zip((0, 1), dims)):
                    pair = (ri, dims[0][0], dims[1][0])
                    break
            if pair is not None:
                break
        if pair is None:
            return False
        quads = group == 4
        operand_bytes = [_num_elements(ld.source) * (1 if quads else 2) for ld in loads]
        ri, dr0, dr1 = pair
        dr = (dr0, dr1)
        vdims = [d for d, vs in enumerate(idx_vars[kv]) if svars[v] in vs]
        if len(vdims) != 1 or not _unit_stride(loads[kv].indices[vdims[0]], svars[v]):
            return False
        dv = vdims[0]

        if v != ns - 1:
            perm = [d for d in range(len(out_idx)) if d != out_dim[v]] + [out_dim[v]]
            sch.transform_layout(rblock, ("write", 0), _permute(perm))

        acc_lanes = lanes * 32 // _dtype_bits(acc)
        fused_dot = self.dot_isa != "avx2" and (quads or acc == "int32")  # the emulation: VNNI's tiles
        # A row axis: another output axis only the vector operand reads (a conv's output rows
        # when the vectors run over pixels); the tile may hold vectors of several such rows.
        row_axes = [
            i for i in range(ns)
            if i not in (v, b) and ext[i] > 1 and svars[i] in used[kv] and svars[i] not in used[kb]
        ] if b is not None else []  # fmt: skip
        row = row_axes[0] if len(row_axes) == 1 else None
        vi, bf, rows = self._tile(
            ext[v], ext[b] if b is not None else None, acc_lanes, False, pairs=True, fused_dot=fused_dot,
            row_ext=ext[row] if row is not None else None,
        )
        if vi % DOT_LANES or (rows > 1 and (row is None or ext[row] % rows)):
            return False
        # Operand layouts: [..., r // 2, (v,) r % 2] in int16 (quads: [..., r // 4, (v,) r % 4] in
        # their own bytes); a weight read along the vector axis is blocked by the tile's vector
        # length too, [v // vi, ..., r // 2, v % vi, r % 2], so a tile streams its weights
        # contiguously (strided by all output channels, a cold 4.7 MB 512->512 3x3 int8 weight
        # came from DRAM at the latency of each line).
        # The row operand (broadcast), where it reads the block axis plainly (no kernel window),
        # has its pairs outside that axis: one step of a tile then reads its bf broadcasts from
        # one place, not from bf pixels' own streams. Tiles of >= 4 rows block it by the tile,
        # [..., b // bf, r // 2, b % bf, r % 2] (7-pixel tiles of 7x7 pointwise convs, one thread,
        # int8, ``--conv-zero-point 37``: 960->320 0.239 -> 0.216 ms, 320->1280 0.318 -> 0.306);
        # shorter ones keep whole rows, [..., r // 2, b, r % 2] -- an interleave of channel
        # planes, the cheapest copy of an NCHW activation (2-pixel tiles of 14x14 ones: 576->96
        # int8 0.198 -> 0.184, int4 0.155 -> 0.135; blocked by 2 they were slower) --
        # ``benchmarks/kernels.py --no-e2e --threads 1 --dtypes int8,int4 --only mnv2.pw``. Under
        # a kernel window 3x3 convs keep pixel-major pairs (whole rows were slower there, tried).
        bdims = [d for d, vs in enumerate(idx_vars[kb]) if svars[b] in vs] if b is not None else []
        row_layout = None
        if len(bdims) == 1 and loads[kb].indices[bdims[0]].same_as(svars[b]):
            row_layout = (bdims[0], bf if bf >= 4 and ext[b] % bf == 0 else None)
        stage_bufs, stages = [], []
        for k, vdim in ((kv, dv), (kb, None)):
            stage = self._pair_stage(
                sch, rblock, loads[k].source, dr[k], vdim, producers, vi, group, row_layout if k == kb else None
            )
            stages.append(stage)
            stage_bufs.append(sch.get(stage).writes[0].source)
        if not quads:
            _rewrite_block(sch, rblock, lambda e: _drop_widening_cast(e, stage_bufs))
        prod = sch.get(rblock).body.value.b
        first = _cast_of_load(prod.a).source
        operand_dtypes = (str(stage_bufs[0].dtype), str(stage_bufs[1].dtype))
        intrin = dot_intrin(operand_dtypes, acc, first.same_as(stage_bufs[0]), self.dot_isa, fits_int16)
        if intrin is None:
            return False

        loops = sch.get_loops(rblock)
        spatial, reduction = list(loops[:ns]), list(loops[ns:])
        r2, t = sch.split(reduction[ri], [None, group])
        reduction = reduction[:ri] + [r2] + reduction[ri + 1 :]
        if _DEBUG:
            mode = "channels" if v != ns - 1 else ("pixels" if b is not None else "row")
            print(f"[tvm_mpq.schedules]   {'quads' if quads else 'pairs'} {mode}: axes {ext[:ns]} reduce {ext[ns:]} "
                  f"tile {bf}x{vi}" + (f" x {rows} rows" if rows > 1 else ""))
        v_o, v_i = sch.split(spatial[v], [None, vi])
        v_io, v8 = sch.split(v_i, [None, DOT_LANES])
        row_i = []
        if rows > 1:
            spatial = list(spatial)
            spatial[row], r_i = sch.split(spatial[row], [None, rows])
            row_i = [r_i]
        if b is not None:
            b_o, b_i = sch.split(spatial[b], [None, bf])
            rest = [i for i in range(ns) if i not in (v, b)]
            # The tile loop of the larger operand outside, the smaller one's innermost: the
            # larger operand's slice then stays in cache while the smaller is re-read. Deep
            # convs have weights (int16 pairs: 4.7 MB at 512->512 3x3) far larger than their
            # activations, and streamed them from L3 once per pixel tile.
            big = kv if operand_bytes[kv] > operand_bytes[kb] else kb
            big_o, small_o = (v_o, b_o) if big == kv else (b_o, v_o)
            if all(svars[i] in used[big] for i in rest):
                outer = [spatial[i] for i in rest] + [big_o, small_o]
            else:
                outer = [big_o] + [spatial[i] for i in rest] + [small_o]
            inner = [b_i, *row_i, v_io]
        else:
            outer = [l for i, l in enumerate(spatial) if i != v] + [v_o]
            inner = [v_io]
        if len(reduction) > 1:
            # Convs: the input-channel pairs innermost, two per step, the kernel window around
            # them (not unrolled): the activation pairs and weight rows are then contiguous in
            # the step, and LLVM no longer interleaves nine unrolled window taps into spills
            # (3x3 conv int8, one thread: 64->64 @56 105 -> 125, 64->128 @56 s2 97 -> 114,
            # 256->256 @14 63 -> 84 GOP/s).
            pair_loop = reduction.pop(ri)
            pair_ext = ext[ns + ri] // group
            if pair_ext % 2 == 0:
                pair_loop, pair_step = sch.split(pair_loop, [None, 2])
                inner = [pair_step] + inner
            reduction.append(pair_loop)
        sch.reorder(*outer, *reduction, *inner, v8, t)
        _prepare_epilogue(sch, consumer)
        sch.reverse_compute_at(consumer, outer[-1], preserve_unit_loops=False)
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
        for l in inner:
            sch.unroll(l)
        init = sch.decompose_reduction(rblock, reduction[0])
        self._vectorize_tile(sch, init)
        if v != ns - 1:
            _channels_innermost(sch, consumer, sch.get(rblock).writes[0].source)
        self._vectorize_tile(sch, consumer)
        sch.tensorize(v8, intrin)
        for stage in stages:
            _schedule_copy(sch, stage)
        for blk in [p for p in producers if not any(sch.get(p).same_as(sch.get(st)) for st in stages)]:
            _schedule_elementwise(sch, blk, self.vector_lanes)
        for blk in epilogue:
            if blk is not consumer:
                _schedule_elementwise(sch, blk, self.vector_lanes)
        return True

    @staticmethod
    def _pair_stage(sch, rblock, buf, dr: int, dv, producers, block: int, group: int = 2, row_layout=None):
        """The block that writes operand ``buf`` as int16 in the layout [..., r//2, (v,) r%2]
        (a weight with a vector axis: [v//block, ..., r//2, v%block, r%2]; ``row_layout`` (d, n):
        [..., d//n, r//2, d%n, r%2], with n None [..., r//2, d, r%2]; ``group`` 4: byte quads,
        r//4 and r%4, in the operand's own dtype): its producer in this function if it
        has one (a pad, a centering cast), else a copy (of a weight: done at compile time by the
        layout-rewrite passes)."""
        ndim = len(buf.shape)
        stage = None
        for p in producers:
            if sch.get(p).writes[0].source.same_as(buf):
                stage = p
        # A producer computed from weights alone (the int4 unpack) is a layout rewrite too: the
        # compiler unpacks once, into the pair layout (unpacked at every call, its transposing
        # reads cost more than the kernel: ResNet-18's 512->512 3x3 int4 conv 4.8 ms against
        # 2.0 for int8, benchmarks/profile_model.py --model resnet18 --configs w4a8,w8a8)
        weight_stage = stage is not None and all(_layout_free(sch, r.source) for r in sch.get(stage).reads)
        blocked = dv is not None and (_layout_free(sch, buf) or weight_stage) and _int(buf.shape[dv]) % block == 0

        def index_map(*d):
            if row_layout is not None:
                bd, n = row_layout
                rest = [d[i] for i in range(ndim) if i not in (dr, bd)]
                if n is None:
                    return (*rest, d[dr] // group, d[bd], d[dr] % group)
                return (*rest, d[bd] // n, d[dr] // group, d[bd] % n, d[dr] % group)
            rest = [d[i] for i in range(ndim) if i not in (dr, dv)]
            if blocked:
                return (d[dv] // block, *rest, d[dr] // group, d[dv] % block, d[dr] % group)
            return (*rest, d[dr] // group, *([d[dv]] if dv is not None else []), d[dr] % group)

        if weight_stage:
            sch.annotate(stage, "meta_schedule.layout_rewrite_preproc", True)
        if stage is None:
            reads = [r.source for r in sch.get(rblock).reads]
            i = next(i for i, r in enumerate(reads) if r.same_as(buf))
            stage = sch.cache_read(rblock, i, "global")
            if _layout_free(sch, buf):
                sch.annotate(stage, "meta_schedule.layout_rewrite_preproc", True)
        sch.transform_layout(stage, ("write", 0), index_map)
        if group == 2 and str(sch.get(stage).writes[0].source.dtype) != "int16":
            sch.unsafe_set_dtype(stage, 0, "int16")
        try:
            _transform_block_layout(sch, stage, index_map)  # iterate in the destination's order
        except Exception:  # noqa: BLE001 - a block without the buffer's unit dimensions (a pad)
            # then at least in the destination's loop order: a conv's pad iterated channel by
            # channel stored its pairs one by one, 128 bytes apart (kernels.py, whose conv inputs
            # pad inside the conv like the models' post-ReLU ones, one thread: 64->128 @56 s2
            # int8 0.99 -> 0.84 ms, 256->256 @14 1.80 -> 1.60)
            _loops_in_write_order(sch, stage, group)
        return stage

    @staticmethod
    def _contiguous_operands(sch, rblock, vvar, block: int) -> list:
        """Make every operand read along the vector axis contiguous there, by a copy in another
        layout: operands whose vector dimension is not their last (conv weights when vectorizing
        over output channels, packed int4 dense weights) get it moved last; operands read with a
        stride s along their last dimension (stride-2 convs) get it split into (w % s, w // s).
        Copies of weights are marked as layout rewrites (done at compile time). Returns the copy
        blocks."""
        stages = []
        i = 0
        while i < len(sch.get(rblock).reads):
            r = sch.get(rblock).reads[i]
            i += 1
            if r.source.same_as(sch.get(rblock).writes[0].source):
                continue
            dims = [d for d, rg in enumerate(r.region) if vvar in _vars(rg.min)]
            ndim = len(r.region)
            if len(dims) != 1:
                continue
            d = dims[0]
            index_map = None
            layout_free = _layout_free(sch, r.source)
            plain = r.region[d].min.same_as(vvar)
            if layout_free and plain and ndim > 1 and block > 1 and _int(r.source.shape[d]) % block == 0:
                # a weight read along the vector axis: blocked by the tile's vector length, so
                # one tile's slice is contiguous (dense 128x1536x384 fp32 weights are 2.4 MB)
                index_map = _blocked(ndim, d, block)
            elif d != ndim - 1 and plain:
                perm = [k for k in range(ndim) if k != d] + [d]
                index_map = _permute(perm)
            elif d == ndim - 1:
                stride = _stride(r.region[d].min, vvar)
                extent = _int(r.source.shape[d])
                if stride is not None and stride > 1 and extent is not None and extent % stride == 0:
                    index_map = _destride(ndim, stride)
            if index_map is None:
                continue
            destride = d == ndim - 1
            cache = sch.cache_read(rblock, i - 1, "global")
            sch.transform_layout(cache, ("write", 0), index_map)
            if layout_free:
                # A weight: SplitLayoutRewritePreproc + FoldConstant do this copy at compile time.
                sch.annotate(cache, "meta_schedule.layout_rewrite_preproc", True)
            else:
                try:
                    _transform_block_layout(sch, cache, index_map)  # iterate in the copy's order
                    if destride:
                        _schedule_destride(sch, cache)
                        continue
                except Exception:  # noqa: BLE001
                    pass
            stages.append(cache)
        return stages

    @staticmethod
    def _vectorize_tile(sch, block_rv):
        loops = sch.get_loops(block_rv)[1:]  # under the parallel loop
        if not loops:
            return
        sch.vectorize(loops[-1])
        for l in loops[:-1]:
            sch.unroll(l)


INT16_MAX = 2**15 - 1


def _value_range(sch: s_tir.Schedule, buf, producers) -> tuple[int, int]:
    """Bounds of the integers a kernel reads from ``buf``: of the value its producer in this
    function stores, by TVM's analyzer (an int4 unpack: [-16, 15]; a 7-bit weight's clamp:
    [-64, 63]), else of ``buf``'s dtype."""
    for p in producers:
        blk = sch.get(p)
        if blk.writes[0].source.same_as(buf) and isinstance(blk.body, tirx.BufferStore):
            bound = Analyzer().const_int_bound(blk.body.value)
            return int(bound.min_value), int(bound.max_value)
    info = np.iinfo(str(buf.dtype))
    return int(info.min), int(info.max)


def _block_info(sch: s_tir.Schedule, block_rv):
    """dlight's SBlockInfo of a block as it is now (after a transform_block_layout)."""
    blk = sch.get(block_rv)
    loops = sch.get_loops(block_rv)
    kinds = {tirx.IterVar.DataPar: "S", tirx.IterVar.CommReduce: "R"}
    iters = [
        IterInfo(kinds.get(int(iv.iter_type), "O"), iv.var, iv.dom.extent, loops[i] if i < len(loops) else None)
        for i, iv in enumerate(blk.iter_vars)
    ]  # fmt: skip
    return SBlockInfo(blk.name_hint, iters, block_rv, reduction_block="R" in "".join(i.kind for i in iters))


def _merge_pixel_rows(sch: s_tir.Schedule, rblock, consumer, producers: list, lanes: int) -> bool:
    """Iterate a pointwise conv over the pixels of a plane instead of rows x columns where rows
    are too short for whole vectors but the plane is not (28 x 28): the tiles then vectorize
    over pixels and the epilogue stores whole vectors -- vectorized over output channels, in
    NCHW, it stores every output byte by itself (MobileNetV2's 192->32 @28 int8, one thread:
    0.106 -> 0.083 ms, ``benchmarks/kernels.py --no-e2e --threads 1 --dtypes int8
    --conv-zero-point 37 --only 192->32``). Applies where every operand the output rows and columns index reads them
    plainly, in two adjacent full dimensions (1x1 stride-1 convs without padding): the reduction
    and the epilogue then iterate over the merged axis, the accumulator is laid out over it, and
    each such operand is read through a copy laid out over it (the pair path copies activations
    anyway); the epilogue's other plane-shaped operands (a residual) keep their layout, read at
    [p // W, p % W], which the lowering folds back to p. Planes that hold no whole number of
    vectors (14 x 14) are not merged: padded to whole vectors (``pad_einsum``, tried) they were
    no faster than the channel tiles in kernels.py. Returns whether it merged."""
    blk = sch.get(rblock)
    ivs = list(blk.iter_vars)
    kinds = [int(iv.iter_type) for iv in ivs]
    ns = next((i for i, k in enumerate(kinds) if k != tirx.IterVar.DataPar), len(ivs))
    if ns < 2 or any(k == tirx.IterVar.DataPar for k in kinds[ns:]):
        return False
    eh, ew = _int(ivs[ns - 2].dom.extent), _int(ivs[ns - 1].dom.extent)
    if eh is None or ew is None or eh < 2 or ew % lanes == 0 or (eh * ew) % lanes:
        return False
    hv, wv = ivs[ns - 2].var, ivs[ns - 1].var

    def row_dim(region, buf, h, w):
        """The dimension d of an access that reads rows h, columns w plainly at (d, d + 1);
        -1 where it reads neither; None where it reads them any other way."""
        idx = [r.min for r in region]
        dims = [d for d, e in enumerate(idx) if any(x in _vars(e) for x in (h, w))]
        if not dims:
            return -1
        d = dims[0]
        ok = (
            dims == [d, d + 1] and idx[d].same_as(h) and idx[d + 1].same_as(w)
            and _int(buf.shape[d]) == eh and _int(buf.shape[d + 1]) == ew
        )  # fmt: skip
        return d if ok else None

    acc = blk.writes[0].source
    if row_dim(blk.writes[0].region, acc, hv, wv) in (None, -1):
        return False
    operands = []
    for r in blk.reads:
        d = row_dim(r.region, r.source, hv, wv)
        if d is None:
            return False
        if d >= 0 and not r.source.same_as(acc):
            operands.append((r.source, d))
    # the consumer: writes its output and reads the accumulator by two adjacent iterators
    cblk = sch.get(consumer)
    cvars = [iv.var for iv in cblk.iter_vars]
    cread = next((r for r in cblk.reads if r.source.same_as(acc)), None)
    if cread is None:
        return False
    ad = row_dim(blk.writes[0].region, acc, hv, wv)
    ch, cw = cread.region[ad].min, cread.region[ad + 1].min
    pos = [next((j for j, x in enumerate(cvars) if x.same_as(e)), None) for e in (ch, cw)]
    if None in pos or pos[1] != pos[0] + 1:
        return False
    for r in cblk.reads + cblk.writes:
        if row_dim(r.region, r.source, cvars[pos[0]], cvars[pos[1]]) is None:
            return False

    def merged(k):  # iterators / dimensions (k, k + 1) -> one
        return lambda *a: (*a[:k], a[k] * ew + a[k + 1], *a[k + 2 :])

    _transform_block_layout(sch, rblock, merged(ns - 2))
    _transform_block_layout(sch, consumer, merged(pos[0]))
    sch.transform_layout(rblock, ("write", 0), merged(ad))
    for buf, d in operands:
        stage = next((p for p in producers if sch.get(p).writes[0].source.same_as(buf)), None)
        if stage is None:
            i = next(j for j, r in enumerate(sch.get(rblock).reads) if r.source.same_as(buf))
            stage = sch.cache_read(rblock, i, "global")
            producers.append(stage)
        sch.transform_layout(stage, ("write", 0), merged(d))
        try:
            _transform_block_layout(sch, stage, merged(d))  # iterate in the stage's order
        except Exception:  # noqa: BLE001
            pass
    return True


def _has_avx2(target) -> bool:
    try:
        from tvm.target import codegen

        return bool(codegen.target_has_features("avx2", target))
    except Exception:  # noqa: BLE001
        return False


def _cast_of_load(expr):
    """The load inside ``int32(load)``, or None."""
    if isinstance(expr, tirx.Cast) and isinstance(expr.value, tvm.ir.TensorLoad):
        return expr.value
    return None


def _drop_widening_cast(expr, bufs):
    """``Cast(t, Cast(narrow, load))`` -> ``Cast(t, load)`` for loads of the int16 stages, which
    ``unsafe_set_dtype`` re-narrowed to the operand's old type (uint8 / int8): the stage holds
    exactly those values."""
    if (
        isinstance(expr, tirx.Cast) and isinstance(expr.value, tirx.Cast)
        and isinstance(expr.value.value, tvm.ir.TensorLoad)
        and any(expr.value.value.source.same_as(b) for b in bufs)
    ):  # fmt: skip
        return tirx.Cast(str(expr.ty), expr.value.value)
    return expr


def _unit_stride(expr, var) -> bool:
    return _stride(expr, var) == 1


def _transform_block_layout(sch, block_rv, index_map) -> None:
    """``transform_block_layout`` with a variadic Python index map (TVM needs its arity)."""
    ndim = len(sch.get(block_rv).iter_vars)
    sch.transform_block_layout(block_rv, tirx.IndexMap.from_func(index_map, ndim=ndim))


def _loops_in_write_order(sch, block_rv, group: int) -> None:
    """Reorder a stage's loops (trivially bound, one per iterator) so that it iterates in the
    order of the dimensions it writes, the iterator of the innermost dimension split by ``group``
    last -- [..., r // g, (v,) r % g]: each iterator goes where it first indexes the destination."""
    blk = sch.get(block_rv)
    loops = sch.get_loops(block_rv)
    if len(loops) != len(blk.iter_vars):
        return
    idx = [r.min for r in blk.writes[0].region]
    first = []
    for iv in blk.iter_vars:
        dims = [d for d, e in enumerate(idx) if iv.var in _vars(e)]
        if not dims:
            return
        first.append(dims[0])
    inner = [i for i, iv in enumerate(blk.iter_vars) if iv.var in _vars(idx[-1])]
    if len(inner) != 1 or (_int(sch.get(loops[inner[0]]).extent) or 1) % group:
        return
    order = sorted((i for i in range(len(loops)) if i != inner[0]), key=lambda i: first[i]) + inner
    sch.reorder(*[loops[i] for i in order])
    sch.split(loops[inner[0]], [None, group])


def _schedule_destride(sch, block_rv) -> None:
    """A stride-splitting copy ([..., w % s, w // s]): outer loops parallel, then w // s with the
    s phases unrolled inside -- LLVM vectorizes that loop with wide loads and deinterleaving
    shuffles (its interleaved-access vectorizer)."""
    loops = sch.get_loops(block_rv)
    if len(loops) < 2:
        return
    phase, w = loops[-2], loops[-1]
    sch.reorder(w, phase)
    if len(loops) > 2:
        sch.parallel(sch.fuse(*loops[:-2]))
    sch.unroll(phase)


def _schedule_copy(sch, block_rv) -> None:
    """A layout stage ([..., x, pair]): outer loops parallel, the pair unrolled, the loop over x
    left to LLVM, which vectorizes the interleaving with wide loads and shuffles."""
    loops = sch.get_loops(block_rv)
    if len(loops) > 2:
        sch.parallel(sch.fuse(*loops[:-2]))
    if loops:
        sch.unroll(loops[-1])


def _num_elements(buffer) -> int:
    n = 1
    for d in buffer.shape:
        n *= _int(d) or 1
    return n


def _layout_free(sch, buffer) -> bool:
    """``buffer`` is a parameter the Relax caller marked layout-free (a weight or a constant:
    relax.transform.AttachAttrLayoutFreeBuffers)."""
    func = sch.mod["main"]
    free = func.attrs["layout_free_buffers"] if func.attrs and "layout_free_buffers" in func.attrs else []
    return any(func.params[int(i)].same_as(buffer) for i in free)


def _stride(expr, var) -> int | None:
    from tvm.sym.pattern import detect_linear_equation

    coef = detect_linear_equation(expr, [var])
    return _int(coef[0]) if len(coef) == 2 else None


def _destride(ndim: int, stride: int):
    """An index map splitting the last axis w into (w % stride, w // stride)."""

    def index_map(*axes):
        return (*axes[:-1], axes[-1] % stride, axes[-1] // stride)

    assert ndim >= 1
    return index_map


def _blocked(ndim: int, d: int, block: int):
    """Axis ``d`` split into (d // block) outermost and (d % block) innermost."""

    def index_map(*axes):
        rest = [axes[k] for k in range(ndim) if k != d]
        return (axes[d] // block, *rest, axes[d] % block)

    return index_map


def _permute(perm: list[int]):
    """An index map (as a Python function) moving axes into the order ``perm``."""

    def index_map(*axes):
        return tuple(axes[p] for p in perm)

    return index_map


def _channels_innermost(sch, consumer, acc_buf) -> None:
    """Make the consumer's loop over the accumulator's last (transposed: channel) axis innermost."""
    blk = sch.get(consumer)
    reg = next(r for r in blk.reads if r.source.same_as(acc_buf))
    last = _vars(reg.region[-1].min)
    bindings = _block_bindings(sch, consumer)
    drivers = set()
    for iv, bound in zip(blk.iter_vars, bindings):
        if any(iv.var.same_as(x) for x in last):
            drivers |= _vars(bound)
    loops = sch.get_loops(consumer)[1:]
    cv = [l for l in loops if any(sch.get(l).loop_var.same_as(x) for x in drivers)]
    if len(cv) == 1:
        sch.reorder(*[l for l in loops if not cv[0].same_as(l)], cv[0])


def _block_bindings(sch, block_rv) -> list:
    """The binding expressions of a block's iteration variables (from its realize)."""
    parent = sch.get(sch.get_loops(block_rv)[-1])
    body = parent.body
    while not isinstance(body, s_tir.SBlockRealize):
        body = body.body if hasattr(body, "body") else body.seq[0]
    return list(body.iter_values)


def _schedule_elementwise(sch, block_rv, lanes: int) -> None:
    """Fuse and parallelize the leading loops of a spatial block, vectorize the innermost one."""
    loops = sch.get_loops(block_rv)
    if not loops:
        return
    info_ext = [_int(sch.get(l).extent) for l in loops]
    if len(loops) > 1:
        outer = sch.fuse(*loops[:-1])
        sch.parallel(outer)
    inner = loops[-1]
    e = info_ext[-1]
    if e is not None and e >= 4:
        if e % lanes == 0:
            _, inner = sch.split(inner, factors=[None, lanes])
            sch.vectorize(inner)
        elif e <= 4 * lanes:
            sch.vectorize(inner)  # a short odd row: one vector
        # else: a long ragged row stays a plain loop; LLVM vectorizes it with a remainder (a
        # predicated split would make TVM scalarize the whole loop)
    elif len(loops) == 1:
        sch.parallel(inner)


def _schedule_stage(sch, block_rv, lanes: int) -> None:
    """A producer stage of a kernel: a pad (``if_then_else`` borders) is split into a constant
    fill and a copy of the interior, both plain loops that vectorize; anything else elementwise."""
    loops = sch.get_loops(block_rv)
    if loops:
        try:
            fill = sch.decompose_padding(block_rv, loops[0])
            _schedule_elementwise(sch, fill, lanes)
        except Exception:  # noqa: BLE001 - not a pad
            pass
    _schedule_elementwise(sch, block_rv, lanes)


class InlinedElementwise(CPUScheduleRule):
    """Functions without a reduction: inline the chain, then parallelize and vectorize."""

    def __init__(self, vector_lanes: int = 8):
        self.vector_lanes = vector_lanes

    def apply(self, func, target, _tunable):
        normalized = _normalized(func, self, target)
        if normalized is None:
            return None
        sch, infos = normalized
        if not infos or any(any(k != "S" for k in b.dom_kind()) for b in infos):
            return None  # a reduction, or an opaque block
        try:
            left = _inline_chain(sch, [b.block_rv for b in infos])
            for b in left:
                _prepare_epilogue(sch, b)
                _schedule_elementwise(sch, b, self.vector_lanes)
        except Exception:  # noqa: BLE001
            return None
        return _log(self, func, _checked(sch))


class ParallelVectorize(CPUScheduleRule):
    """Parallelize fused leading spatial loops; vectorize the innermost spatial loop."""

    def __init__(self, vector_lanes: int = 8):
        self.vector_lanes = vector_lanes

    def apply(self, func, target, _tunable):
        normalized = _normalized(func, self, target)
        if normalized is None:
            return None
        sch, infos = normalized
        for info in infos:
            try:
                self._schedule_block(sch, info)
            except Exception:  # noqa: BLE001 - schedule primitives are transactional; skip the block
                continue
        return _log(self, func, sch)

    def _vectorize(self, sch, loop):
        extent = sch.get(loop).extent
        if isinstance(extent, tirx.IntImm) and extent.value >= 4:
            _, inner = sch.split(loop, factors=[None, self.vector_lanes])
            sch.vectorize(inner)

    def _schedule_block(self, sch, info):
        kinds = info.dom_kind()
        loops = sch.get_loops(info.block_rv)
        if not kinds or len(loops) != len(kinds) or kinds[0] != "S":
            return
        n_spatial = len(kinds) - len(kinds.lstrip("S"))
        spatial, reduction = loops[:n_spatial], loops[n_spatial:]
        if "S" in kinds[n_spatial:]:
            return
        if n_spatial == 1:
            sch.parallel(spatial[0])
            return
        outer = sch.fuse(*spatial[:-1]) if n_spatial > 2 else spatial[0]
        inner = spatial[-1]
        if reduction:
            sch.reorder(outer, *reduction, inner)
            sch.parallel(outer)
            sch.decompose_reduction(info.block_rv, reduction[0])
        else:
            sch.parallel(outer)
        self._vectorize(sch, inner)


def _log(rule, func, sch):
    if _DEBUG and sch is not None:
        print(f"[tvm_mpq.schedules] {type(rule).__name__}: {str(func.ty)[11:200]}")
    return sch


def rules(vector_lanes: int = 8, dot_isa: str = "avx2") -> list[CPUScheduleRule]:
    """The rules in the order tvm_mpq's pipeline tries them (``dot_isa``: see TiledReduction)."""
    from .depthwise import DepthwiseConv  # it builds on this module's helpers

    return [
        DepthwiseConv(vector_lanes), TiledReduction(vector_lanes, dot_isa=dot_isa), InlinedElementwise(vector_lanes),
        ParallelVectorize(vector_lanes),
    ]  # fmt: skip
