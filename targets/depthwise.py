"""Template schedule for float32 depthwise convs (NCHW), one channel plane at a time; max pools
(the same window reduction with ``max`` and no weights) take it too.

A depthwise conv has no axis shared by many outputs: each output reads 9 inputs and 9 weights of
its own channel, so what limits it is not arithmetic but moving and converting its input -- and
its fused epilogue, which costs more per output than the 9 multiply-adds. ``TiledReduction``
blocks output rows over a pad stage of the whole tensor; here, per channel (the parallel loop):

- the input plane is staged in float32 right before it is used (the pad, or the zero-point pad
  and the uint8 -> float32 cast of an 8-bit conv realized as exact float sums: 58 x 58 x 4 bytes
  for a 56 x 56 plane stays in L1). The pad is split into a fill (a memset) and a copy of the
  interior that LLVM vectorizes; a stride-2 conv gets the plane de-interleaved by columns,
  ``[h, w % 2, w // 2]``, so that every tap reads contiguous vectors;
- the outputs are computed in tiles of ``bf`` rows x ``vi`` columns (``vi``: 8, or a whole row of
  7 / 14 / 28 pixels), the nine taps unrolled, one broadcast weight per tap and FMAs with memory
  operands; the epilogue runs on the tile while it is in registers.

Integer depthwise convs with 8-bit operands are realized as exact float32 sums for this rule
(``passes/integer_ops.float_conv_pays``): AVX2 has no integer multiply-add as cheap as an FMA on
single-channel rows. Figures: benchmarks/kernels.py (``--only mnv2.dw``) and
benchmarks/profile_model.py (one thread).
"""

from __future__ import annotations

import tvm
from tvm import tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule

from . import schedules as S

__all__ = ["DepthwiseConv"]


class DepthwiseConv(CPUScheduleRule):
    """Float depthwise conv (3 spatial axes c, y, x; 2 reduction axes ky, kx; stride 1 or 2)
    with its fused epilogue, or a float max pool of the same shape; see the module docstring.
    ``accumulators``: vector registers the tile may hold (more rows hide the FMA latency; too
    many and LLVM spills the broadcasts)."""

    def __init__(self, vector_lanes: int = 8, accumulators: int = 8):
        self.vector_lanes = vector_lanes
        self.accumulators = accumulators

    def apply(self, func, target, _tunable):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        parsed = S._single_reduction(func)
        if parsed is None:
            return None
        sch, infos, ridx = parsed
        try:
            ok = self._schedule(sch, infos, ridx)
        except Exception:  # noqa: BLE001 - an unexpected structure: TiledReduction takes it
            if S._DEBUG:
                raise
            return None
        return S._log(self, func, S._checked(sch)) if ok else None

    def _match(self, sch, rinfo):
        """(input load, stride) of a float depthwise conv block, else None."""
        axes = S.TiledReduction._axes(sch, rinfo)
        if axes is None:
            return None
        ns, ext, svars, _, _ = axes
        if ns != 3 or len(ext) != 5:
            return None
        c, y, x = svars
        ry, rx = (it.var for it in rinfo.iters[3:])
        store = sch.get(rinfo.block_rv).body
        if not (isinstance(store, tirx.BufferStore) and str(store.buffer.dtype) == "float32"):
            return None
        value = store.value
        if isinstance(value, tirx.Max) and isinstance(value.b, tvm.ir.TensorLoad):
            inp = value.b  # a max pool: acc = max(acc, x[...]), no weight
        else:
            if not (isinstance(value, tirx.Add) and isinstance(value.b, tirx.Mul)):
                return None
            loads = [value.b.a, value.b.b]
            if not all(isinstance(ld, tvm.ir.TensorLoad) for ld in loads):
                return None
            inp = [ld for ld in loads if y in S._vars(ld.indices[-2])]
            wgt = [ld for ld in loads if not (S._vars(ld) & {y, x})]
            if len(inp) != 1 or len(wgt) != 1 or not any(c in S._vars(i) for i in wgt[0].indices):
                return None
            inp = inp[0]
        # [..., c, y * s + ky, x * s + kx]: the same stride on both axes, the kernel taps at unit stride
        s = S._stride(inp.indices[-1], x)
        if s not in (1, 2) or S._stride(inp.indices[-2], y) != s:
            return None
        if S._stride(inp.indices[-1], rx) != 1 or S._stride(inp.indices[-2], ry) != 1:
            return None
        if not any(c in S._vars(i) for i in inp.indices[:-2]):
            return None
        return inp, s

    def _schedule(self, sch, infos, ridx) -> bool:
        rinfo = infos[ridx]
        rblock = rinfo.block_rv
        # Plain copies (an identity pad) inlined; the producer left must write the input (a pad).
        producers = []
        for b in reversed(infos[:ridx]):
            if S._is_plain_copy(sch, b.block_rv):
                sch.compute_inline(b.block_rv)
            else:
                producers.append(b.block_rv)
        match = self._match(sch, rinfo)
        if match is None:
            return False
        inp, stride = match
        in_buf = inp.source
        if any(not sch.get(p).writes[0].source.same_as(in_buf) for p in producers) or len(producers) > 1:
            return False  # another producer (e.g. a weight transform): not this template
        if producers:
            stage = producers[0]
        else:
            # read straight from a parameter: a copy per channel (de-interleaved for stride 2)
            i = next(i for i, r in enumerate(sch.get(rblock).reads) if r.source.same_as(in_buf))
            stage = sch.cache_read(rblock, i, "global")
            in_buf = sch.get(stage).writes[0].source
        ndim = len(in_buf.shape)
        width = S._int(in_buf.shape[-1])
        if stride == 2:
            if width is None or width % 2:
                # an odd padded width cannot be split in two phases without padding the stage,
                # which then is no longer a complete block to compute per channel: the next
                # rule (TiledReduction) takes it
                return False
            sch.transform_layout(stage, ("write", 0), S._destride(ndim, 2))

        epilogue = S._inline_chain(sch, [b.block_rv for b in infos[ridx + 1 :]])
        if len(epilogue) > 1:
            return False
        consumer = epilogue[0] if epilogue else sch.cache_write(rblock, 0, "global")

        c, y, x, ky, kx = sch.get_loops(rblock)
        oh, ow = S._int(sch.get(y).extent), S._int(sch.get(x).extent)
        lanes = self.vector_lanes
        if ow % lanes == 0:
            vi = lanes
        elif ow <= 4 * lanes:
            vi = ow  # one odd-length vector: a whole row of 7, 14 or 28 pixels
        else:
            return False
        regs = -(-vi // lanes)
        bf = max(d for d in S._divisors(oh) if d * regs <= max(regs, self.accumulators))
        y_o, y_i = sch.split(y, [None, bf])
        x_o, x_i = sch.split(x, [None, vi])
        sch.reorder(c, y_o, x_o, ky, kx, y_i, x_i)
        S._prepare_epilogue(sch, consumer)
        sch.reverse_compute_at(consumer, x_o, preserve_unit_loops=False)
        sch.compute_at(stage, c, preserve_unit_loops=False)
        sch.parallel(c)
        sch.vectorize(x_i)
        for loop in (y_i, ky, kx):
            sch.unroll(loop)
        init = sch.decompose_reduction(rblock, ky)
        for blk in (init, consumer):
            *_, rows, cols = sch.get_loops(blk)
            sch.vectorize(cols)
            sch.unroll(rows)
        self._schedule_stage(sch, stage, stride)
        return True

    @staticmethod
    def _schedule_stage(sch, stage, stride: int) -> None:
        """A pad becomes a fill of the plane (in storage order: a memset) and a copy of the
        interior; the loops are left to LLVM, which vectorizes the copy (the uint8 -> float32
        conversion; for stride 2 the de-interleaving, with shuffles) better than TVM's explicit
        vectorization of a strided store."""
        loops = sch.get_loops(stage)
        if len(loops) < 3:
            return
        try:
            fill = sch.decompose_padding(stage, loops[1])
        except Exception:  # noqa: BLE001 - not a pad (a plain copy)
            return
        if stride == 2:
            # the fill's column loop split into (w // 2, w % 2) and swapped: it then writes the
            # de-interleaved plane in storage order, a memset (element by element it ran as a
            # scalar loop over the whole plane)
            *_, cols = sch.get_loops(fill)
            half, phase = sch.split(cols, [None, 2])
            sch.reorder(phase, half)
