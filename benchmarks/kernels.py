"""Kernel throughput of tvm_mpq's template schedules, and MobileNetV2 end to end.

    .venv/bin/python benchmarks/kernels.py                 # kernels + MobileNetV2, 1 and 2 threads
    .venv/bin/python benchmarks/kernels.py --baseline      # ... also the generic rule (before/after)
    .venv/bin/python benchmarks/kernels.py --no-e2e --threads 1 --only mnv2

Kernels: representative MobileNetV2 / ResNet-18 / BERT layers, each compiled alone through
tvm_mpq's pipeline (targets/pipeline.py) with the epilogue a realized module fuses into it --
fp32: conv/matmul + bias + ReLU6; int8: uint8 x int8 -> int32, zero-point correction, rescale, bias,
ReLU6, requantize to uint8; int4: the same with packed int4 weights; int16: int16 x int8 -> int32,
same epilogue -- and timed with the VM's time_evaluator (median of 7 repeats of >= 20 ms after a
warm-up). GOP/s counts 2 ops per multiply-add; "% peak" is against one core's nominal AVX2 peak
times the thread count: fp32 117 GFLOP/s (2 FMA pipes x 8 lanes x 2 ops x 3.65 GHz), int8/int16
234 GOP/s (``vpmaddwd``: 2 per cycle x 16 multiply-adds; AVX2 has no exact int8 x int8 dot
product -- ``vpmaddubsw`` saturates, exact only for narrow weights: int4 kernels use it).
The practical fp32 peak is measured too (torch's sgemm on 1024^3, same threads), and so is each
arithmetic path's register-only peak (benchmarks/peak.py): "% measured peak" is against it.

End to end: MobileNetV2 (real weights) batch 1 -- PyTorch fp32 eager vs tvm_mpq float / w8a8 /
w16a16 / w4a8 realized modules, median ms (time_evaluator, 7 repeats) and the ratio to PyTorch.
Thread counts: TVM's pool is set with ``runtime.config_threadpool`` (TVM_NUM_THREADS is set to the
largest count before TVM starts), torch with ``torch.set_num_threads``. ``--baseline`` also compiles
everything with the generic rule alone (``ParallelVectorize``: what tvm_mpq used before the
templates) and prints before/after in the same run. The machine is shared: medians, same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import contextmanager

_ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
_ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
_ap.add_argument("--baseline", action="store_true", help="also time the generic rule (before)")
_ap.add_argument("--no-e2e", action="store_true", help="kernels only")
_ap.add_argument("--no-kernels", action="store_true", help="end to end only")
_ap.add_argument("--only", default="", help="substring filter on kernel names")
_ap.add_argument("--dtypes", default="fp32,int8,int16")
_ap.add_argument(
    "--conv-zero-point", type=int, default=0,
    help="zero point of uint8 conv inputs: 0 (default) as the models' post-ReLU convs, padded inside the "
    "conv kernel; nonzero pads in a kernel of its own (int8 conv figures quoted before 2026-11-30 used 37)",
)
ARGS = _ap.parse_args() if __name__ == "__main__" else _ap.parse_args([])
THREADS = [int(t) for t in ARGS.threads.split(",")]
os.environ.setdefault("TVM_NUM_THREADS", str(max(THREADS)))

import numpy as np  # noqa: E402
import tvm  # noqa: E402
from tvm import relax  # noqa: E402

from tvm_mpq.passes import integer_ops as iops  # noqa: E402
from tvm_mpq.quant_math import pack_int4, qrange  # noqa: E402
from tvm_mpq.targets import host_target, pipeline, schedules  # noqa: E402
from bench_util import set_threads  # noqa: E402

PEAK_GOPS = {"fp32": 117.0, "int8": 234.0, "int4": 234.0, "int16": 234.0}  # per core, nominal (see docstring)




@contextmanager
def generic_rule_only():
    """Compile with the generic rule alone (the schedules before the templates)."""
    saved = pipeline.rules
    pipeline.rules = lambda lanes: [schedules.ParallelVectorize(lanes)]
    try:
        yield
    finally:
        pipeline.rules = saved


def time_vm(exe, inputs, min_ms: float = 20.0, repeat: int = 7) -> float:
    """Median ms of ``main`` (VM time_evaluator, each repeat >= ``min_ms``)."""
    vm = relax.VirtualMachine(exe, tvm.cpu())
    args = [tvm.runtime.tensor(a) for a in inputs]
    vm["main"](*args)  # warm-up
    t0 = time.perf_counter()
    vm["main"](*args)
    once = max(time.perf_counter() - t0, 1e-6)
    number = max(1, int(min_ms / 1e3 / once))
    res = vm.time_evaluator("main", tvm.cpu(), number=number, repeat=repeat)(*args)
    return float(np.median(res.results)) * 1e3


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------

# (name, kind, spec): conv spec (C, H, W, O, k, stride, groups); dense spec (M, K, N);
# batched matmul spec (B, M, K, N)
KERNELS = [
    ("mnv2.pw 16->96 @112", "conv", (16, 112, 112, 96, 1, 1, 1)),
    ("mnv2.pw 144->24 @56", "conv", (144, 56, 56, 24, 1, 1, 1)),
    ("mnv2.pw 192->32 @28", "conv", (192, 28, 28, 32, 1, 1, 1)),
    ("mnv2.pw 96->576 @14", "conv", (96, 14, 14, 576, 1, 1, 1)),
    ("mnv2.pw 576->96 @14", "conv", (576, 14, 14, 96, 1, 1, 1)),
    ("mnv2.pw 160->960 @7", "conv", (160, 7, 7, 960, 1, 1, 1)),
    ("mnv2.pw 960->320 @7", "conv", (960, 7, 7, 320, 1, 1, 1)),
    ("mnv2.pw 320->1280 @7", "conv", (320, 7, 7, 1280, 1, 1, 1)),
    ("mnv2.dw 144 @56", "conv", (144, 56, 56, 144, 3, 1, 144)),
    ("mnv2.dw 96 @112 s2", "conv", (96, 112, 112, 96, 3, 2, 96)),
    ("mnv2.dw 576 @14", "conv", (576, 14, 14, 576, 3, 1, 576)),
    ("mnv2.conv0 3->32 @224 s2", "conv", (3, 224, 224, 32, 3, 2, 1)),
    ("r18.3x3 64->64 @56", "conv", (64, 56, 56, 64, 3, 1, 1)),
    ("r18.3x3 128->128 @28", "conv", (128, 28, 28, 128, 3, 1, 1)),
    ("r18.3x3 256->256 @14", "conv", (256, 14, 14, 256, 3, 1, 1)),
    ("r18.3x3 512->512 @7", "conv", (512, 7, 7, 512, 3, 1, 1)),
    ("r18.3x3 64->128 @56 s2", "conv", (64, 56, 56, 128, 3, 2, 1)),
    ("bert.qkv 128x768x768", "dense", (128, 768, 768)),
    ("bert.ffn1 128x768x3072", "dense", (128, 768, 3072)),
    ("bert.ffn2 128x3072x768", "dense", (128, 3072, 768)),
    ("bert.attn 12x128x64x128", "bmm", (12, 128, 64, 128)),
    ("minilm.ffn1 128x384x1536", "dense", (128, 384, 1536)),
]


def kernel_macs(kind, spec) -> int:
    if kind == "conv":
        c, h, w, o, k, s, g = spec
        oh, ow = (h + 2 * (k // 2) - k) // s + 1, (w + 2 * (k // 2) - k) // s + 1
        return o * oh * ow * (c // g) * k * k
    if kind == "dense":
        m, k, n = spec
        return m * k * n
    b, m, k, n = spec
    return b * m * k * n


def build_kernel(kind, spec, dtype, rng):
    """A Relax module with one kernel and its realized-style epilogue, and its inputs."""
    bb = relax.BlockBuilder()
    act = {"fp32": "float32", "int8": "uint8", "int4": "uint8", "int16": "int16"}[dtype]
    # conv inputs as in the models' convs that pad (--conv-zero-point); matmul inputs with a zero
    # point (its correction term in the epilogue)
    zp = (ARGS.conv_zero_point if kind == "conv" else 37) if act == "uint8" else 0
    bits = 4 if dtype == "int4" else 8  # "int4": packed int4 weights, uint8 activations
    wlo, whi = qrange(bits, True)

    def weight_const(wq):
        """As realize.py stores it: int8, or int4 packed two per byte per output row."""
        if bits == 4:
            return relax.const(pack_int4(wq.reshape(wq.shape[0], -1)), "uint8")
        return relax.const(wq.astype("int8"))

    def rand_act(shape):
        if dtype == "fp32":
            return rng.normal(size=shape).astype("float32")
        lo, hi = (0, 255) if act == "uint8" else (-3000, 3000)
        return rng.integers(lo, hi + 1, size=shape).astype(act)

    def epilogue(acc, n_out, shape):
        if dtype != "fp32":
            acc = bb.emit(relax.op.multiply(relax.op.astype(acc, "float32"),
                                            relax.const(np.full(shape, 1e-3, "float32"))))
        y = bb.emit(relax.op.add(acc, relax.const(rng.normal(size=shape).astype("float32"))))
        y = bb.emit(relax.op.clip(y, 0.0, 6.0))
        if dtype != "fp32":
            y = iops.emit_quantize(bb, y, 6.0 / 255, 0, 0, 255, "uint8")
        return y

    if kind == "conv":
        c, h, w, o, k, s, g = spec
        x = relax.Var("x", relax.TensorType((1, c, h, w), act))
        xin = rand_act((1, c, h, w))
        with bb.function("main", [x]):
            with bb.dataflow():
                wshape = (o, c // g, k, k)
                pad = [k // 2] * 4
                if dtype == "fp32":
                    wc = relax.const(rng.normal(size=wshape).astype("float32"))
                    acc = bb.emit(relax.op.nn.conv2d(x, wc, strides=[s, s], padding=pad, groups=g))
                else:
                    wq = rng.integers(wlo, whi + 1, size=wshape)
                    attrs = type("A", (), {"padding": pad, "strides": [s, s], "dilation": [1, 1], "groups": g})
                    # as realize.py emits it: exact float32 sums where that runs faster (an RGB
                    # stem, depthwise convs: integer_ops.float_conv_pays), else integer
                    as_float = act == "uint8" and iops.float_conv_pays(wshape, g)
                    fw, sums = (wq.astype("float32"), "float32") if as_float else (None, "int32")
                    acc = iops.emit_conv2d(bb, x, weight_const(wq), attrs, zp, bits, wshape, sums, float_weight=fw)
                    acc = iops.emit_zero_point_correction(bb, acc, zp, wq.reshape(o, -1).sum(1), (1, o, 1, 1), sums)
                out = bb.emit_output(epilogue(acc, o, (1, o, 1, 1)))
            bb.emit_func_output(out)
        return bb.get(), [xin]
    if kind == "dense":
        m, k, n = spec
        x = relax.Var("x", relax.TensorType((1, m, k), act))
        xin = rand_act((1, m, k))
        with bb.function("main", [x]):
            with bb.dataflow():
                if dtype == "fp32":
                    acc = bb.emit(relax.op.matmul(x, relax.const(rng.normal(size=(k, n)).astype("float32"))))
                else:
                    wq = rng.integers(wlo, whi + 1, size=(k, n))
                    wc = weight_const(wq.T) if bits == 4 else relax.const(wq.astype("int8"))
                    acc = iops.emit_dense(bb, x, wc, bits, k, n, "int32")
                    acc = iops.emit_zero_point_correction(bb, acc, zp, wq.sum(0), (n,), "int32")
                out = bb.emit_output(epilogue(acc, n, (n,)))
            bb.emit_func_output(out)
        return bb.get(), [xin]
    b, m, k, n = spec  # activation x activation (attention scores)
    a = relax.Var("a", relax.TensorType((b, m, k), act))
    bt = relax.Var("b", relax.TensorType((b, k, n), act))
    ins = [rand_act((b, m, k)), rand_act((b, k, n))]
    with bb.function("main", [a, bt]):
        with bb.dataflow():
            if dtype == "fp32":
                acc = bb.emit(relax.op.matmul(a, bt))
            else:
                ca, cb = iops.emit_centered(bb, a, zp), iops.emit_centered(bb, bt, zp)
                acc = bb.emit(relax.op.matmul(ca, cb, out_dtype="int32"))
            out = bb.emit_output(epilogue(acc, n, (1,)))
        bb.emit_func_output(out)
    return bb.get(), ins


def torch_sgemm_gflops(threads: int, n: int = 1024) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    ts = []
    for _ in range(7):
        t0 = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t0)
    return 2 * n**3 / float(np.median(ts)) / 1e9


def _measured_peaks() -> dict:
    """Per-core peaks measured on this machine by benchmarks/peak.py (empty without a C compiler)."""
    from peak import measured_peaks

    p = measured_peaks()
    if p is None:
        return {}
    # the path tvm_mpq's kernels take here: VNNI steps where the CPU has them (peak.py runs their
    # loops only then), else int16 pairs (vpmaddwd) -- int4 weights: byte quads (vpmaddubsw, exact
    # for them), where the shared axis divides by 4
    return {"fp32": p["fp32"], "int8": p.get("u8s8_vnni", p["int16_pairs"]),
            "int4": p.get("u8s8_vnni", p["u8s8_saturating"]), "int16": p.get("int16_vnni", p["int16_pairs"])}


MEASURED: dict = {}


def run_kernels(target_info):
    rng = np.random.default_rng(0)
    dtypes = ARGS.dtypes.split(",")
    rows = []
    for name, kind, spec in KERNELS:
        if ARGS.only and ARGS.only not in name:
            continue
        for dtype in dtypes:
            if dtype == "int4" and kind == "bmm":
                continue  # activation x activation: no weights to hold in 4 bits
            mod, inputs = build_kernel(kind, spec, dtype, rng)
            exe = pipeline.build(mod, target_info)
            base = None
            if ARGS.baseline:
                with generic_rule_only():
                    base = pipeline.build(mod, target_info)
            for t in THREADS:
                set_threads(t)
                ms = time_vm(exe, inputs)
                bms = time_vm(base, inputs) if base is not None else None
                rows.append((name, dtype, t, kernel_macs(kind, spec), ms, bms))
                gops = 2 * kernel_macs(kind, spec) / ms / 1e6
                line = (f"{name:26} {dtype:5} T{t}  {ms:8.3f} ms {gops:7.1f} GOP/s "
                        f"{100 * gops / (PEAK_GOPS[dtype] * t):5.1f}% nominal peak")
                if MEASURED:
                    line += f" {100 * gops / (MEASURED[dtype] * t):5.1f}% measured peak"
                if bms is not None:
                    line += f"   generic rule {bms:8.3f} ms  speedup x{bms / ms:5.1f}"
                print(line, flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# MobileNetV2 end to end
# ---------------------------------------------------------------------------------------------


def run_end_to_end(target_info):
    import torch

    import tvm_mpq
    from tvm_mpq.models.mobilenet_v2 import load_mobilenet_v2

    try:
        from tvm_mpq.datasets import imagenet_sample

        x, _ = imagenet_sample(limit=8)
    except Exception:  # noqa: BLE001 - no shared data: the bundled photos
        from tvm_mpq.datasets import bundled_images

        x = bundled_images()[:8]
    model = load_mobilenet_v2().eval()
    x1 = x[:1]
    q = tvm_mpq.Quantizer(model, None, [x[i : i + 1] for i in range(len(x))], (x1,), progress=False)
    modules = {}
    for cand in ("float", "w8a8", "w16a16", "w4a8"):
        t0 = time.perf_counter()
        modules[cand] = q.realize(cand)
        compile_s = time.perf_counter() - t0
        line = f"compiled {cand:7} in {compile_s:5.1f} s"
        if ARGS.baseline:
            with generic_rule_only():
                t0 = time.perf_counter()
                modules[cand + " (generic)"] = q.realize(cand)
                line += f"; with the generic rule in {time.perf_counter() - t0:5.1f} s"
        print(line, flush=True)
    xt = torch.from_numpy(x1)
    for t in THREADS:
        set_threads(t)
        with torch.inference_mode():
            for _ in range(3):
                model(xt)
            ts = []
            for _ in range(15):
                t0 = time.perf_counter()
                model(xt)
                ts.append(time.perf_counter() - t0)
        torch_ms = float(np.median(ts)) * 1e3
        print(f"\nMobileNetV2 batch 1, {t} thread(s): PyTorch fp32 eager {torch_ms:.2f} ms")
        print(f"  {'tvm_mpq':20} {'ms':>8} {'vs torch fp32':>14}")
        for name, m in modules.items():
            ms = time_vm(m.executable, [x1])
            print(f"  {name:20} {ms:8.2f} {ms / torch_ms:13.2f}x", flush=True)


def main():
    target_info = host_target()
    print(f"target {target_info.target}; threads {THREADS}; TVM pool via runtime.config_threadpool")
    if not ARGS.no_kernels:
        for t in THREADS:
            print(f"practical fp32 peak (torch sgemm 1024^3, {t} thread(s)): {torch_sgemm_gflops(t):.1f} GFLOP/s")
        print(f"nominal peak per core: fp32 {PEAK_GOPS['fp32']:.0f} GFLOP/s, int8/int16 {PEAK_GOPS['int8']:.0f} GOP/s")
        MEASURED.update(_measured_peaks())
        if MEASURED:
            print(f"measured peak per core (benchmarks/peak.py): fp32 {MEASURED['fp32']:.1f} GFLOP/s, "
                  f"int8/int16 (vpmaddwd pairs) {MEASURED['int8']:.1f} GOP/s\n")
        else:
            print("no C compiler: percentages against the nominal peak only\n")
        run_kernels(target_info)
    if not ARGS.no_e2e:
        run_end_to_end(target_info)


if __name__ == "__main__":
    sys.exit(main())
