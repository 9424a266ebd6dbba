"""Accuracy of uniform candidates on real models: MobileNetV2 top-1 and SQNR vs float.

    .venv/bin/python benchmarks/uniform_candidates.py --calib 32 --eval 256

Calibrates on the first ``--calib`` images of ../shared/data/imagenet-sample-256 and evaluates
the realized (integer) modules on the next ``--eval``: top-1 against the labels, top-1 agreement
with float, output SQNR against float, realized-vs-simulated SQNR and compile time.
Uses every core TVM's runtime is given (TVM_NUM_THREADS); the thread count is printed.
"""

import argparse
import os
import time

import numpy as np

import tvm_mpq
from tvm_mpq.calibration import sqnr_db
from tvm_mpq.datasets import imagenet_sample
from tvm_mpq.models.mobilenet_v2 import load_mobilenet_v2


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--eval", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--method", default="mse", choices=["mse", "minmax"])
    ap.add_argument("--candidates", default="w16a16,w8a16,w8a8,w4a8")
    args = ap.parse_args()
    b = args.batch
    x, labels = imagenet_sample(limit=args.calib + args.eval)
    calib = [x[i : i + b] for i in range(0, args.calib, b)]
    ev, ev_labels = x[args.calib :], labels[args.calib :]
    print(f"MobileNetV2, calibration {args.calib} images, evaluation {len(ev)} images, method {args.method}, "
          f"TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS', 'unset (all cores)')}")
    t0 = time.perf_counter()
    q = tvm_mpq.Quantizer(load_mobilenet_v2(), None, calib, example_inputs=(x[:b],), method=args.method)
    print(f"import + calibration {time.perf_counter() - t0:.1f} s")
    ref = q.run_float(ev)[0]
    print(f"{'config':8} {'top-1':>7} {'agree':>7} {'SQNR dB':>8} {'real~sim':>9} {'compile s':>9}")
    print(f"{'float':8} {np.mean(ref.argmax(1) == ev_labels) * 100:6.1f}% {100:6.1f}% {'-':>8} {'-':>9} {'-':>9}")
    for cand in args.candidates.split(","):
        sim = q.simulate(cand, ev)[0]
        module = q.realize(cand)
        out = module.run(ev)
        print(f"{cand:8} {np.mean(out.argmax(1) == ev_labels) * 100:6.1f}% "
              f"{np.mean(out.argmax(1) == ref.argmax(1)) * 100:6.1f}% {sqnr_db(ref, out):8.2f} "
              f"{sqnr_db(sim, out):9.1f} {module.compile_seconds:9.1f}")


if __name__ == "__main__":
    main()
