"""The measured per-core arithmetic peak of this CPU, the denominator of the kernel tables.

    .venv/bin/python benchmarks/peak.py

Why measured: the nominal figures (issue 5: fp32 117 GFLOP/s, int8 467 GOP/s with VNNI) assume a
clock and instructions this machine may not have -- LLVM sees an AVX2 Zen 3 here, no AVX-512 /
VNNI, and its sustained clock is below the nominal one. benchmarks/native/peak_x86.c runs
register-only loops of ``vfmadd231ps`` (fp32), ``vpmaddwd`` + ``vpaddd`` (int16 pairs: tvm_mpq's
exact integer path for int8 and int16) and ``vpmaddubsw`` + ``vpmaddwd`` + ``vpaddd`` (the
saturating u8 x s8 path ONNX Runtime's AVX2 kernels use; tvm_mpq's for int4 weights, where it is
exact), one thread, best of 5, compiled here with
the system C compiler (``cc``; absent: ``measured_peaks`` returns None and callers fall back to
the nominal figures, saying so). Where the CPU has AVX512-VNNI it is built with VNNI and adds
``vpdpbusd`` (u8 x s8) and ``vpdpwssd`` (int16) loops: the steps of tvm_mpq's VNNI kernels
(targets/x86.py). Not run on the development machine, which has no VNNI.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "native" / "peak_x86.c"


@lru_cache(maxsize=1)
def measured_peaks() -> dict | None:
    """{"fp32", "int16_pairs", "u8s8_saturating"} in G(FL)OP/s per core (plus "u8s8_vnni" and
    "int16_vnni" where the CPU has AVX512-VNNI), or None without a C compiler or AVX2."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return None
    from tvm_mpq.targets import host_target

    host = host_target()
    flags = ["-mavx2", "-mfma"]
    if host.has_vnni and "avx512vl" in host.features:  # the VNNI loops use the 256-bit EVEX forms
        flags += ["-mavx512vnni", "-mavx512vl"]
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "peak_x86"
        build = subprocess.run([cc, "-O2", *flags, str(SOURCE), "-o", str(exe)], capture_output=True, text=True)
        if build.returncode != 0:
            return None
        run = subprocess.run([str(exe), "5"], capture_output=True, text=True, timeout=300)
        if run.returncode != 0:
            return None
        return json.loads(run.stdout)


def main():
    peaks = measured_peaks()
    if peaks is None:
        raise SystemExit("no C compiler or no AVX2 here: nothing measured")
    print("measured per-core peak, 1 thread (register-only loops, best of 5):")
    print(f"  fp32 FMA                        {peaks['fp32']:7.1f} GFLOP/s")
    print(f"  int16 pairs (vpmaddwd+vpaddd)   {peaks['int16_pairs']:7.1f} GOP/s   tvm_mpq's int8/int16 path")
    print(f"  u8 x s8 (vpmaddubsw, saturates) {peaks['u8s8_saturating']:7.1f} GOP/s   ONNX Runtime's AVX2 int8 path, tvm_mpq's int4")
    if "u8s8_vnni" in peaks:
        print(f"  u8 x s8 (vpdpbusd, VNNI)        {peaks['u8s8_vnni']:7.1f} GOP/s   tvm_mpq's int8 path on VNNI")
        print(f"  int16 pairs (vpdpwssd, VNNI)    {peaks['int16_vnni']:7.1f} GOP/s   tvm_mpq's int16 path on VNNI")
    else:
        print("  (no AVX512-VNNI on this CPU: the vpdpbusd / vpdpwssd loops were not run)")


if __name__ == "__main__":
    main()
