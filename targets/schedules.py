"""Template CPU schedules that need no search: parallel outer loops, vectorized inner loops.

TVM 0.27's CPU pipeline legalizes and fuses but applies no schedule: every kernel is a serial
scalar loop nest. This dlight rule gives every fused PrimFunc a generic schedule: leading spatial
loops fused and parallelized over the cores; for reductions (conv, matmul) the innermost spatial
loop moved inside the reduction and vectorized, so the accumulator updates a vector of outputs.
It is the floor every target gets; target-specific templates (VNNI, packed layouts) go above it.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule


class ParallelVectorize(CPUScheduleRule):
    """Parallelize fused leading spatial loops; vectorize the innermost spatial loop."""

    def __init__(self, vector_lanes: int = 8):
        self.vector_lanes = vector_lanes

    def apply(self, func, target, _tunable):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        try:
            infos = normalize_prim_func(sch)
        except Exception:  # noqa: BLE001 - an unanalyzable function keeps the default lowering
            return None
        if infos is None:
            return None
        for info in infos:
            try:
                self._schedule_block(sch, info)
            except Exception:  # noqa: BLE001 - schedule primitives are transactional; skip the block
                continue
        return sch

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
