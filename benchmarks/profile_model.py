"""Where a realized module spends its time: per-kernel CPU time, one thread.

    TVM_NUM_THREADS=1 .venv/bin/python benchmarks/profile_model.py --model mobilenet_v2 --configs float,w8a8
    TVM_NUM_THREADS=1 .venv/bin/python benchmarks/profile_model.py --model minilm --configs float,w8a8 --top 12
    TVM_NUM_THREADS=1 .venv/bin/python benchmarks/profile_model.py --model mobilenet_v2 --configs w8a8 --convert-layout NHWC

Every call the Relax VM makes (kernels and builtins) is timed with ``VirtualMachine.set_instrument``
and the CPU time of the calling thread (``time.thread_time``: with one runtime thread the kernels
run on it, so other jobs on a shared machine barely move the figures); the table lists, per
function, the median over ``--runs`` module runs of its total time per run, with its call count and
argument shapes. The sum is the module's kernel time (VM bookkeeping between calls excluded). The
figures in targets/ and passes/ docstrings and in the issue notes about per-kernel time
(subnormal weights, the stem, GELU/softmax) come from this script.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import tvm  # noqa: E402
from tvm import relax  # noqa: E402

import tvm_mpq  # noqa: E402


def quantizer_and_inputs(model: str):
    if model == "minilm":
        from tvm_mpq.datasets import sts_dev
        from tvm_mpq.models.minilm import encode_batch, load_minilm

        net, tok = load_minilm()
        ids, mask = encode_batch(tok, [r[0] for r in sts_dev(limit=4)], 128)
        calib = [(ids[i : i + 1], mask[i : i + 1]) for i in range(4)]
        example = (torch.from_numpy(ids[:1]), torch.from_numpy(mask[:1]))
        return tvm_mpq.Quantizer(net.eval(), None, calib, example, progress=False), [ids[:1], mask[:1]]
    from tvm_mpq.datasets import imagenet_sample

    if model == "resnet18":
        from tvm_mpq.models.resnet18 import load_resnet18

        x, _ = imagenet_sample(limit=4)
        calib = [x[i : i + 1] for i in range(4)]
        return tvm_mpq.Quantizer(load_resnet18(seed=0).eval(), None, calib, (x[:1],), progress=False), [x[:1]]
    from tvm_mpq.models.mobilenet_v2 import load_mobilenet_v2

    x, _ = imagenet_sample(limit=4)
    calib = [x[i : i + 1] for i in range(4)]
    return tvm_mpq.Quantizer(load_mobilenet_v2().eval(), None, calib, (x[:1],), progress=False), [x[:1]]


def profile(executable, inputs, runs: int):
    """{function: (median seconds per run, calls per run, argument shapes)}."""
    vm = relax.VirtualMachine(executable, tvm.cpu())
    args = [tvm.runtime.tensor(a) for a in inputs]
    totals: dict[str, list[float]] = {}
    calls: dict[str, int] = {}
    shapes: dict[str, str] = {}
    start: dict[str, float] = {}
    current: dict[str, float] = {}

    def instrument(func, symbol, before, ret, *fargs):
        if before:
            shapes.setdefault(symbol, " ".join(
                "x".join(str(d) for d in a.shape) + ":" + str(a.dtype) for a in fargs if hasattr(a, "shape")
            ))
            start[symbol] = time.thread_time()
        else:
            current[symbol] = current.get(symbol, 0.0) + time.thread_time() - start[symbol]
            calls[symbol] = calls.get(symbol, 0) + 1
        return 0

    vm.set_instrument(instrument)
    vm["main"](*args)  # warm-up
    calls.clear()
    for _ in range(runs):
        current.clear()
        vm["main"](*args)
        for k, v in current.items():
            totals.setdefault(k, []).append(v)
    return {k: (float(np.median(v)), calls[k] // runs, shapes.get(k, "")) for k, v in totals.items()}


def converted(module, inputs) -> relax.VMExecutable:
    """``module`` recompiled with its convs in NHWC (Relax's ConvertLayout: it inserts transposes
    where an op has no layout rule, e.g. the TE kernels of exact-float and int4 convs); refuses to
    profile it unless its outputs equal the NCHW module's."""
    from tvm_mpq.quantizer import flatten_outputs
    from tvm_mpq.targets.pipeline import build

    mod = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]})(module.ir_module)
    executable = build(relax.transform.FoldConstant()(mod), module.target)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    got = flatten_outputs(vm["main"](*[tvm.runtime.tensor(a) for a in inputs]))
    want = module.run(*inputs)
    if not all(np.array_equal(g, w) for g, w in zip(got, want if isinstance(want, tuple) else (want,))):
        raise SystemExit("the NHWC module's outputs differ from the NCHW module's")
    return executable


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mobilenet_v2", choices=["mobilenet_v2", "resnet18", "minilm"])
    ap.add_argument("--configs", default="float,w8a8", help="uniform candidates, comma-separated")
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--convert-layout", choices=["NHWC"], default=None,
                    help="experiment: Relax ConvertLayout (conv2d -> NHWC / OHWI) on the realized module "
                         "before compiling; the outputs are checked against the NCHW module's")
    args = ap.parse_args()
    tvm.get_global_func("runtime.config_threadpool")(1, 1)
    q, inputs = quantizer_and_inputs(args.model)
    for cand in args.configs.split(","):
        t0 = time.perf_counter()
        module = q.realize(cand)
        executable = module.executable
        if args.convert_layout:
            executable = converted(module, inputs)
        rows = sorted(profile(executable, inputs, args.runs).items(), key=lambda kv: -kv[1][0])
        total = sum(r[1][0] for r in rows)
        layout = f" ({args.convert_layout})" if args.convert_layout else ""
        print(f"\n{args.model} {cand}{layout}: compiled in {time.perf_counter() - t0:.1f} s; "
              f"kernel CPU time {total * 1e3:.2f} ms per run (median of {args.runs}), {len(rows)} functions")
        for name, (sec, n, shp) in rows[: args.top]:
            print(f"  {sec * 1e6:9.0f} us  x{n:<3} {name[:44]:44} {shp[:100]}")


if __name__ == "__main__":
    main()
