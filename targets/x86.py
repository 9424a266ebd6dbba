"""x86 tensor intrinsics for the template schedules: exact integer dot-product steps.

One step computes 8 int32 (or int64) accumulator lanes over a *group* of reduction elements::

    C[i] += A[i, 0] * B[0] + ... + A[i, g-1] * B[g-1]        i < 8

with ``A`` the vector operand (8 lanes x the group, contiguous) and ``B`` the broadcast operand
(one group, read as one 32-bit word and broadcast). Descriptions differ only in the order of the
factors, so that a kernel matches whichever way its multiply is written (data x weight or weight
x data): tensorize matches the body structurally.

- pairs of int16 (``g = 2``), AVX2: ``vpmaddwd`` multiplies 16 pairs and adds adjacent products
  into 8 int32, then ``vpaddd`` -- the exact integer dot product AVX2 has for any int8 / int16
  operands. With AVX512-VNNI (``avx512vl``, 256-bit registers) the two fuse into ``vpdpwssd``.
- quads of bytes (``g = 4``), one operand uint8 and the other int8, AVX512-VNNI: ``vpdpbusd``
  multiplies 32 u8 x s8 pairs and adds each 4 products and the accumulator, without saturation:
  four times the multiply-adds of the pair step per instruction, exact.
- quads of bytes on AVX2, only where the kernel proves it exact: ``vpmaddubsw`` multiplies 32
  u8 x s8 pairs and adds adjacent products into 16 int16 -- *saturating*, so it is exact only when
  every pair sum fits int16 (``2 * max(u) * max|s| <= 32767``: int4 or 7-bit weights against
  uint8 activations, not 8-bit ones) --, then ``vpmaddwd`` by ones adds those into 8 int32 quads and
  ``vpaddd`` accumulates: 32 multiply-adds in three instructions, where pairs take four, and
  operands in bytes, half the pairs' memory traffic.

VNNI steps use 256-bit registers: on Zen 4 a 512-bit op is two 256-bit halves, so ymm registers
lose no throughput, and the schedules' tile model (8 lanes, 16 registers) stays the same.

``isa="emulated-vnni"`` registers the quad step with a portable implementation (the same
operands, layouts and descriptions; plain vector arithmetic instead of ``vpdpbusd``): the tests
run every VNNI schedule bit for bit on CPUs without VNNI, and check separately that the VNNI
implementation compiles to ``vpdpbusd`` (LLVM 22 declares its operands as <32 x i8>; TVM's stock
VNNI intrinsic passes <8 x i32> and fails LLVM's verifier).

Exactness: pair operands are integers of at most 16 bits (uint8 activations, int8 / int16
weights, int16 activations, all within +-32767); ``a*b + c*d`` then stays below 2**31 in magnitude,
and the int32 accumulator, which tvm_mpq only picks when the whole sum fits, never wraps (the int64
variant widens each pair sum before adding it). A quad's four u8 x s8 products stay below 2**17.
"""

from __future__ import annotations

from tvm import tirx
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

__all__ = ["DOT_LANES", "ISAS", "dot_intrin"]

DOT_LANES = 8  # accumulator lanes of one step (one 256-bit register of int32)
ISAS = ("avx2", "vnni", "emulated-vnni")


def _description(group: int, a_dtype: str, b_dtype: str, acc: str, vec_first: bool):
    """The step's semantics, with the multiply's factors in the kernel's order."""

    @T.prim_func(s_tir=True)
    def description(
        A: T.Buffer((8, group), a_dtype, offset_factor=1),
        B: T.Buffer((group,), b_dtype, offset_factor=1),
        C: T.Buffer((8,), acc, offset_factor=1),
    ) -> None:
        # ``vec_first`` is a Python bool: TVMScript keeps only the branch it selects
        with T.sblock("root"):
            if vec_first:  # the reads in the order the body reads them
                T.reads(C[0:8], A[0:8, 0:group], B[0:group])
            else:
                T.reads(C[0:8], B[0:group], A[0:8, 0:group])
            T.writes(C[0:8])
            for i, k in T.grid(8, group):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    if vec_first:
                        C[vi] = C[vi] + T.Cast(acc, A[vi, vk]) * T.Cast(acc, B[vk])
                    else:
                        C[vi] = C[vi] + T.Cast(acc, B[vk]) * T.Cast(acc, A[vi, vk])

    return description


def _broadcast_group(B, dtype: str):
    """The broadcast operand's group (2 x int16 or 4 bytes) read as one 32-bit word, broadcast to
    8 lanes and seen as a ``dtype`` vector."""
    group = 2 if str(B.dtype) == "int16" else 4
    word = T.reinterpret(B.vload([0], dtype=f"{B.dtype}x{group}"), dtype="int32")
    return T.reinterpret(T.broadcast(word, 8), dtype=dtype)


def _pmaddwd(A, B, C):
    """vpmaddwd + vpaddd (int64 accumulators: the exact int32 pair sums widened first)."""
    lanes = f"{C.dtype}x8"
    pairs = T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
        A.vload([0, 0], dtype="int16x16"), _broadcast_group(B, "int16x16"), dtype="int32x8",
    )
    return C.vload([0], dtype=lanes) + T.Cast(lanes, pairs)


def _vpdpwssd(A, B, C):
    return T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpwssd.256"),
        C.vload([0], dtype="int32x8"), A.vload([0, 0], dtype="int16x16"), _broadcast_group(B, "int16x16"),
        dtype="int32x8",
    )


def _unsigned_signed(A, B):
    """A byte-quad step's two 32-byte operands, the unsigned one first (the vector operand or the
    broadcast one): the order vpdpbusd and vpmaddubsw take them in."""
    vector = A.vload([0, 0], dtype=f"{A.dtype}x32")
    bcast = _broadcast_group(B, f"{B.dtype}x32")
    return (vector, bcast) if str(A.dtype) == "uint8" else (bcast, vector)


def _vpdpbusd(A, B, C):
    u, s = _unsigned_signed(A, B)
    return T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.256"), C.vload([0], dtype="int32x8"), u, s,
        dtype="int32x8",
    )


def _pmaddubsw(A, B, C):
    """vpmaddubsw + vpmaddwd by ones + vpaddd: exact only under the int16 bound (module docstring)."""
    u, s = _unsigned_signed(A, B)
    pair_sums = T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"), u, s, dtype="int16x16"
    )
    quads = T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), pair_sums, T.broadcast(T.int16(1), 16),
        dtype="int32x8",
    )
    return C.vload([0], dtype="int32x8") + quads


def _emulated_vpdpbusd(A, B, C):
    """The quad step in portable vector arithmetic: lane i of quad element k is byte 4i + k."""
    vector = A.vload([0, 0], dtype=f"{A.dtype}x32")
    out = C.vload([0], dtype="int32x8")
    for k in range(4):
        lanes = tirx.Shuffle([vector], [tirx.IntImm("int32", 4 * i + k) for i in range(8)])
        out = out + T.Cast("int32x8", lanes) * T.broadcast(T.Cast("int32", B[k]), 8)
    return out


def _implementation(group: int, a_dtype: str, b_dtype: str, acc: str, step):
    """A step's implementation: ``C[0:8] = step(A, B, C)``, one expression (TVMScript turns named
    temporaries into local buffers, which the CPU backend allocates from the workspace pool at
    every call)."""

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((8, group), a_dtype, offset_factor=1),
        B: T.Buffer((group,), b_dtype, offset_factor=1),
        C: T.Buffer((8,), acc, offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:8, 0:group], B[0:group])
            T.writes(C[0:8])
            C[T.ramp(T.int32(0), 1, 8)] = step(A, B, C)

    return impl


def dot_intrin(
    operand_dtypes: tuple[str, str], acc: str, vec_first: bool, isa: str = "avx2", pair_sums_fit_int16: bool = False,
) -> str | None:  # fmt: skip
    """The registered intrinsic (registered on first use) for a step with vector operand / broadcast
    operand dtypes ``operand_dtypes`` -- ("int16", "int16") for pairs, ("uint8", "int8") or
    ("int8", "uint8") for quads -- an ``acc`` accumulator and the kernel's factor order; None where
    ``isa`` has no such step (quads need int32 accumulators, and VNNI or, on AVX2,
    ``pair_sums_fit_int16``: the caller's proof that no u8 x s8 pair sum leaves int16)."""
    if isa not in ISAS:
        raise ValueError(f"isa must be one of {ISAS}, not {isa!r}")
    a_dtype, b_dtype = operand_dtypes
    group = 2 if operand_dtypes == ("int16", "int16") else 4
    if group == 4 and (acc != "int32" or {a_dtype, b_dtype} != {"uint8", "int8"}):
        return None
    if group == 4 and isa == "avx2" and not pair_sums_fit_int16:
        return None
    if group == 2 and acc not in ("int32", "int64"):
        return None
    # pairs with int64 accumulators (vpdpwssd adds into int32) and the emulation's pairs: AVX2's
    impl_isa = "avx2" if group == 2 and (isa == "emulated-vnni" or acc != "int32") else isa
    order = "vec_first" if vec_first else "bcast_first"
    name = f"tvm_mpq_{impl_isa.replace('-', '_')}_dot_8x{group}_{a_dtype}_{b_dtype}_{acc}_{order}"
    try:
        TensorIntrin.get(name)
    except Exception:  # noqa: BLE001 - not registered yet in this process
        if group == 2:
            step = _vpdpwssd if impl_isa == "vnni" else _pmaddwd
        else:
            step = {"vnni": _vpdpbusd, "avx2": _pmaddubsw}.get(impl_isa, _emulated_vpdpbusd)
        impl = _implementation(group, a_dtype, b_dtype, acc, step)
        TensorIntrin.register(name, _description(group, a_dtype, b_dtype, acc, vec_first), impl)
    return name
