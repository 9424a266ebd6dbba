"""16-bit activation ranges: output SQNR of simulated MobileNetV2 w16a16 per range choice.

    .venv/bin/python benchmarks/range_headroom.py --calib 32 --eval 128

Calibrates on the first ``--calib`` images of the shared ImageNet sample and scores w16a16 on the
next ``--eval``: mse clipping, minmax, and minmax widened by 1.5x / 2x / 4x (the library uses
``tvm_mpq.quantizer.HEADROOM_16BIT``). Explains that choice; simulation only, no compile per row.
"""

import argparse
import dataclasses

import numpy as np

import tvm_mpq
from tvm_mpq.calibration import sqnr_db
from tvm_mpq.datasets import imagenet_sample
from tvm_mpq.models.mobilenet_v2 import load_mobilenet_v2


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--eval", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    b = args.batch
    x, _ = imagenet_sample(limit=args.calib + args.eval)
    q = tvm_mpq.Quantizer(load_mobilenet_v2(), None, [x[i : i + b] for i in range(0, args.calib, b)],
                          example_inputs=(x[:b],), progress=False)
    ev = x[args.calib :]
    ref = q.run_float(ev)[0]
    print(f"MobileNetV2 w16a16, calibration {args.calib} images, held-out {len(ev)} images")
    rows = [("mse", "mse", 1.0)] + [("minmax", "minmax", h) for h in (1.0, 1.5, 2.0, 4.0)]
    for label, method, headroom in rows:
        q._act_enc = {}
        for g in q.group_names:
            e = q.observers[g].encoding(16, method=method)
            q._act_enc[(g, 16)] = dataclasses.replace(e, scale=float(np.float32(e.scale * headroom)))
        print(f"{label:7} x{headroom:<4} output SQNR {sqnr_db(ref, q.simulate('w16a16', ev)[0]):6.2f} dB")


if __name__ == "__main__":
    main()
