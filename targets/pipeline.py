"""The Relax compilation pipeline tvm_mpq uses for CPU targets: TVM's cpu_generic passes with the
project's template schedules inserted after fusion."""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
from tvm.s_tir import dlight

from .schedules import rules


def relax_pipeline(target_info) -> tvm.transform.Pass:
    """legalize -> FuseOps/FuseTIR -> template schedules -> lowering, for ``target_info``."""
    target = target_info.target
    lanes = max(2, target_info.vector_bits // 32)

    @tvm.transform.module_pass(opt_level=0, name="TvmMpqCPUPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            seq = tvm.transform.Sequential(
                cpu_generic.library_dispatch_passes(target)
                + cpu_generic.legalize_passes(target)
                + [relax.transform.AttachAttrLayoutFreeBuffers()]
                + [dlight.ApplyDefaultSchedule(*rules(lanes))]
                # weight copies the schedules marked as layout rewrites: done once, at compile time
                + [relax.transform.SplitLayoutRewritePreproc(), relax.transform.FoldConstant()]
                + [relax.transform.DeadCodeElimination()]
                + cpu_generic.dataflow_lower_passes(target)
                + cpu_generic.finalize_passes(target)
            )
            return seq(mod)

    return _pipeline


def build(mod: tvm.IRModule, target_info) -> relax.VMExecutable:
    """Compile a Relax module for ``target_info`` with tvm_mpq's pipeline."""
    return tvm.compile(mod, target=target_info.target, relax_pipeline=relax_pipeline(target_info))
