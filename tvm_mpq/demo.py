"""The main job on a bundled default: quantize pretrained MobileNetV2 and report it against float.

    python -m tvm_mpq.demo                 # uniform w8a8 for this machine
    python -m tvm_mpq.demo --config w4a8 --eval 64

Calibration uses the shared ImageNet sample when ../shared/data is present, else the photos that
ship inside scikit-image. Prints the per-layer table, then SQNR against the float model, agreement
of the top-1 class with float, and top-1 accuracy where labels exist.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="tvm-mpq-demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="w8a8", help="a candidate for all groups (w16a16, w8a16, w8a8, "
                    "w4a8, float) or a configuration JSON path (default: w8a8)")
    ap.add_argument("--target", default=None, help='e.g. "llvm -mcpu=znver3" (default: this machine)')
    ap.add_argument("--calib", type=int, default=16, help="calibration images (default 16)")
    ap.add_argument("--eval", type=int, default=32, help="evaluation images (default 32)")
    ap.add_argument("--method", default="mse", choices=["mse", "minmax"], help="activation range method")
    ap.add_argument("--save-config", default=None, help="write the configuration JSON here")
    args = ap.parse_args(argv)

    import tvm_mpq
    from tvm_mpq.calibration import sqnr_db
    from tvm_mpq.datasets import bundled_images, imagenet_sample
    from tvm_mpq.models.mobilenet_v2 import load_mobilenet_v2

    model = load_mobilenet_v2()
    labels = None
    try:
        x, labels = imagenet_sample(limit=args.calib + args.eval)
        calib, evals, labels = x[: args.calib], x[args.calib :], labels[args.calib :]
        source = f"shared ImageNet sample: {len(calib)} calibration + {len(evals)} held-out images"
    except FileNotFoundError:
        x = bundled_images()
        calib = evals = x
        source = f"{len(x)} photos bundled with scikit-image (../shared/data absent; no labels)"
    print(f"MobileNetV2 (torchvision weights), {source}")

    t0 = time.perf_counter()
    q = tvm_mpq.Quantizer(model, args.target, [c[None] for c in calib], example_inputs=(calib[:1],),
                          method=args.method)
    module = q.realize(args.config)
    total = time.perf_counter() - t0
    print()
    print(module.summary())
    print()
    batches = [e[None] for e in evals]
    ref = np.concatenate([q.run_float(b)[0] for b in batches])
    out = np.concatenate([module.run(b) for b in batches])
    print(f"target            {module.target}")
    print(f"calibration+build {total:.1f} s (compile {module.compile_seconds:.1f} s)")
    print(f"output SQNR       {sqnr_db(ref, out):.2f} dB vs float")
    print(f"top-1 agreement   {np.mean(ref.argmax(1) == out.argmax(1)) * 100:.1f}% with float")
    if labels is not None:
        print(f"top-1 accuracy    float {np.mean(ref.argmax(1) == labels) * 100:.1f}%  "
              f"quantized {np.mean(out.argmax(1) == labels) * 100:.1f}%  (on {len(labels)} images)")
    if args.save_config:
        module.config.to_json(args.save_config)
        print(f"configuration written to {args.save_config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
