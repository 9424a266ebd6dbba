"""x86 tensor intrinsics for the template schedules (AVX2; no AVX-512 or VNNI needed).

``vpmaddwd`` multiplies 16 pairs of int16 and adds adjacent products into 8 int32: the exact
integer dot product AVX2 has (``vpmaddubsw``, u8 x s8, saturates its int16 sums, so it is not
exact for uint8 activations and int8 weights). The intrinsics below compute one 8-lane accumulator
step over a pair of reduction elements::

    C[i] += A[i, 0] * B[0] + A[i, 1] * B[1]        i < 8, A and B int16, C int32 or int64

with ``A`` the vector operand (8 lanes x the pair, contiguous) and ``B`` the broadcast operand (one
pair, read as one int32 and broadcast). Two descriptions (one generator) differ only in the order
of the factors, so that a kernel matches whichever way its multiply is written (data x weight or
weight x data): tensorize matches the body structurally.

Exactness: the operands are integers of at most 16 bits (uint8 activations, int8 / int16
weights, int16 activations, all within +-32767); ``a*b + c*d`` then stays below 2**31 in magnitude,
and the int32 accumulator, which tvm_mpq only picks when the whole sum fits, never wraps (the int64
variant widens each pair sum before adding it).
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

__all__ = ["PMADDWD_BCAST_FIRST", "PMADDWD_LANES", "PMADDWD_VEC_FIRST", "intrin_name"]

PMADDWD_LANES = 8
PMADDWD_VEC_FIRST = "tvm_mpq_avx2_pmaddwd_8x2_vec_first"
PMADDWD_BCAST_FIRST = "tvm_mpq_avx2_pmaddwd_8x2_bcast_first"


def _make(acc: str):
    """Descriptions (vector operand first / broadcast operand first) and implementation of the
    8-lane pair step with an ``acc`` ("int32" or "int64") accumulator. The int64 variant widens
    the exact int32 pair sums before adding (w16a16 layers whose sums can exceed int32)."""
    lanes = f"{acc}x8"

    def desc(vec_first: bool):
        # ``vec_first`` is a Python bool: TVMScript keeps only the branch it selects
        @T.prim_func(s_tir=True)
        def description(
            A: T.Buffer((8, 2), "int16", offset_factor=1),
            B: T.Buffer((2,), "int16", offset_factor=1),
            C: T.Buffer((8,), acc, offset_factor=1),
        ) -> None:
            with T.sblock("root"):
                if vec_first:  # the reads in the order the body reads them
                    T.reads(C[0:8], A[0:8, 0:2], B[0:2])
                else:
                    T.reads(C[0:8], B[0:2], A[0:8, 0:2])
                T.writes(C[0:8])
                for i, k in T.grid(8, 2):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        if vec_first:
                            C[vi] = C[vi] + T.Cast(acc, A[vi, vk]) * T.Cast(acc, B[vk])
                        else:
                            C[vi] = C[vi] + T.Cast(acc, B[vk]) * T.Cast(acc, A[vi, vk])

        return description

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((8, 2), "int16", offset_factor=1),
        B: T.Buffer((2,), "int16", offset_factor=1),
        C: T.Buffer((8,), acc, offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:8, 0:2], B[0:2])
            T.writes(C[0:8])
            # one expression: TVMScript turns named temporaries into local buffers, which the CPU
            # backend allocates from the workspace pool at every call
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype=lanes) + T.Cast(
                lanes,
                T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                    A.vload([0, 0], dtype="int16x16"),
                    T.reinterpret(
                        T.broadcast(T.reinterpret(B.vload([0], dtype="int16x2"), dtype="int32"), 8),
                        dtype="int16x16",
                    ),
                    dtype="int32x8",
                ),
            )

    return desc(True), desc(False), impl


def intrin_name(acc: str, vec_first: bool) -> str:
    """The registered intrinsic for an ``acc`` accumulator and the factor order of the kernel."""
    base = PMADDWD_VEC_FIRST if vec_first else PMADDWD_BCAST_FIRST
    return base if acc == "int32" else f"{base}_{acc}"


def _register() -> None:
    for acc in ("int32", "int64"):
        desc_vec, desc_bcast, impl = _make(acc)
        for vec_first, desc in ((True, desc_vec), (False, desc_bcast)):
            name = intrin_name(acc, vec_first)
            try:
                TensorIntrin.get(name)
            except Exception:  # noqa: BLE001 - not registered yet in this process
                TensorIntrin.register(name, desc, impl)


_register()
