"""tvm_mpq's TIR intrinsics that need registering in every process that compiles its kernels: an
FP-contraction fence (``tvm_mpq.fp_fence``, lowered to ``llvm.arithmetic.fence``: integer-exact
epilogues must not have their products fused into FMAs, or the realized module would stop being
bit-identical to the simulation) and a vectorizable ``nearbyint``.

Self-contained on purpose (it imports nothing but tvm, and only inside the function): MetaSchedule
builder workers get ``register_intrinsics`` pickled by value (targets/tuning.py), so they register
the same ops without importing tvm_mpq.
"""

from __future__ import annotations

__all__ = ["FP_FENCE_OP", "register_intrinsics"]

FP_FENCE_OP = "tvm_mpq.fp_fence"


def register_intrinsics(fence_op: str = FP_FENCE_OP) -> None:
    """Register the fence op and its LLVM lowering, and mark ``tirx.nearbyint`` vectorizable
    (idempotent: a second call in the same process does nothing)."""
    import tvm
    from tvm import tirx

    try:
        tvm.ir.Op.get(fence_op)
    except Exception:  # noqa: BLE001 - not registered yet in this process
        tvm.ir._ffi_api.RegisterOp(fence_op, "Identity; blocks FP contraction across it")
        tvm.ir.register_op_attr(fence_op, "TCallEffectKind", 1)  # kPure
        tvm.ir.register_op_attr(fence_op, "TVectorizable", True)
        tvm.ir.register_op_attr(fence_op, "TScriptPrinterName", "tvm_mpq_fp_fence")

        def lower(call):
            return tirx.call_llvm_pure_intrin(call.ty, "llvm.arithmetic.fence", call.args[0])

        for kind in ("llvm", "default"):
            tirx.register_intrin_lowering(fence_op, kind, f=lower, level=99)
    if not tvm.ir.Op.get("tirx.nearbyint").get_attr("TVectorizable"):
        tvm.ir.register_op_attr("tirx.nearbyint", "TVectorizable", True)
