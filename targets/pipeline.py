"""The Relax compilation pipeline tvm_mpq uses for CPU targets: TVM's cpu_generic passes with the
project's template schedules inserted after fusion (and, optionally, MetaSchedule-tuned kernels
from a tuning database before them: ``targets/tuning.py``)."""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
from tvm.s_tir import dlight

from .fast_math import LEGALIZE_MAP
from .schedules import rules


def front_passes(target) -> list:
    """Library dispatch, legalization, FuseOps / FuseTIR, layout-free weight attributes: the
    PrimFuncs after these are what the template rules (and MetaSchedule, when tuning) schedule."""
    return (
        cpu_generic.library_dispatch_passes(target)
        # vectorizable GELU / softmax first (fast_math.py); the stock LegalizeOps does the rest
        + [relax.transform.LegalizeOps(customize_legalize_map=LEGALIZE_MAP)]
        + cpu_generic.legalize_passes(target)
        + [relax.transform.AttachAttrLayoutFreeBuffers()]
    )


def template_rules(target_info) -> list:
    """The dlight rules of the template schedules for ``target_info`` (integer kernels take the
    VNNI dot-product steps where the target has them: targets/x86.py)."""
    return rules(max(2, target_info.vector_bits // 32), dot_isa="vnni" if target_info.has_vnni else "avx2")


def relax_pipeline(target_info, tuning_dir=None, use_tuned: str = "faster") -> tvm.transform.Pass:
    """legalize -> FuseOps/FuseTIR -> [tuned kernels] -> template schedules -> lowering.

    ``tuning_dir``: a tuning database (``targets.tuning``); kernels it has a faster schedule for
    (``use_tuned="always"``: any schedule) take that one, the template rules schedule the rest.
    None: template schedules only."""
    target = target_info.target
    tuned = []
    if tuning_dir is not None:
        from .tuning import ApplyTuningDatabase

        tuned = [ApplyTuningDatabase(tuning_dir, target_info, use_tuned)]

    @tvm.transform.module_pass(opt_level=0, name="TvmMpqCPUPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            seq = tvm.transform.Sequential(
                front_passes(target)
                + tuned
                + [dlight.ApplyDefaultSchedule(*template_rules(target_info))]
                # weight copies the schedules marked as layout rewrites: done once, at compile time
                + [relax.transform.SplitLayoutRewritePreproc(), relax.transform.FoldConstant()]
                + [relax.transform.DeadCodeElimination()]
                + cpu_generic.dataflow_lower_passes(target)
                + cpu_generic.finalize_passes(target)
            )
            return seq(mod)

    return _pipeline


def build(mod: tvm.IRModule, target_info, tuning_dir=None, use_tuned: str = "faster") -> relax.VMExecutable:
    """Compile a Relax module for ``target_info`` with tvm_mpq's pipeline (``tuning_dir``: apply a
    tuning database first, see ``relax_pipeline``)."""
    pipeline = relax_pipeline(target_info, tuning_dir=tuning_dir, use_tuned=use_tuned)
    return tvm.compile(mod, target=target_info.target, relax_pipeline=pipeline)
