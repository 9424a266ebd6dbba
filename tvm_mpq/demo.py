"""The main job on a bundled default: let tvm_mpq choose MobileNetV2's bit-widths, then compare.

    python -m tvm_mpq.demo                    # search, realize the chosen configuration, compare
    python -m tvm_mpq.demo --sqnr-floor 25    # a label-free budget even where labels exist
    python -m tvm_mpq.demo --config w8a8      # realize a given configuration (candidate or JSON), no search

The search (tvm_mpq.search) ranks every (quantizer group, candidate) by the output SQNR it costs
alone on a few images (phase 1), then walks the greedy curve from all-w16a16 towards all-w4a8 with
binary search to the cheapest point within the budget (phase 2). The budget: where the shared
ImageNet sample (../shared/data) is present, top-1 may drop at most ``--drop`` points below float on
held-out labelled images; without it the demo calibrates on the photos bundled with scikit-image
and the budget is a label-free output-SQNR floor (``--sqnr-floor``, default 30 dB). The chosen
configuration is realized as integer kernels; the demo prints its per-layer table and compares it
with uniform w8a8 (SQNR and top-1 against float, relative BOPs) on images the search did not see.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

import numpy as np

BATCH = 4


def _evaluate(module_run, x, ref, labels) -> dict:
    from tvm_mpq.calibration import sqnr_db

    out = module_run(x)
    row = {"sqnr": sqnr_db(ref, out), "agree": 100.0 * float(np.mean(out.argmax(1) == ref.argmax(1)))}
    if labels is not None:
        row["top1"] = 100.0 * float(np.mean(out.argmax(1) == labels))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="tvm-mpq-demo", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="realize this configuration instead of searching: a candidate "
                    "for all groups (w16a16, w8a16, w8a8, w4a8, float) or a configuration JSON path")
    ap.add_argument("--target", default=None, help='e.g. "llvm -mcpu=znver3" (default: this machine)')
    ap.add_argument("--calib", type=int, default=16, help=f"calibration images (default 16; a multiple of {BATCH})")
    ap.add_argument("--phase1", type=int, default=4,
                    help=f"phase-1 images, the first calibration images (default 4; a multiple of {BATCH})")
    ap.add_argument("--eval", type=int, default=128,
                    help="labelled held-out images the accuracy budget is scored on (default 128; top-1 on fewer "
                         "moves in steps coarser than the allowed drop)")
    ap.add_argument("--test", type=int, default=128,
                    help="further held-out images the comparison is reported on (default 128)")
    ap.add_argument("--drop", type=float, default=1.0, help="allowed top-1 drop in points (default 1.0)")
    ap.add_argument("--sqnr-floor", type=float, default=None,
                    help="label-free budget: output SQNR floor in dB on the phase-1 images (default 30 "
                         "without labels)")
    ap.add_argument("--search", default="binary", choices=["binary", "interpolation", "sequential"])
    ap.add_argument("--results-dir", default=None, help="cache phase 1 and evaluated points here (resumable)")
    ap.add_argument("--method", default="mse", choices=["mse", "minmax"], help="activation range method")
    ap.add_argument("--save-config", default=None, help="write the configuration JSON here")
    args = ap.parse_args(argv)
    for name in ("calib", "phase1", "eval", "test"):
        v = getattr(args, name)
        if v <= 0 or v % BATCH:
            ap.error(f"--{name} must be a positive multiple of {BATCH}, got {v}")
    if args.phase1 > args.calib:
        ap.error("--phase1 images are taken from the calibration images: --phase1 <= --calib")

    import tvm_mpq
    from tvm_mpq.config import FLOAT, Config
    from tvm_mpq.cost import relative_bops
    from tvm_mpq.datasets import bundled_images, imagenet_sample
    from tvm_mpq.models.mobilenet_v2 import load_mobilenet_v2
    from tvm_mpq.search import DEFAULT_SQNR_FLOOR_DB, search

    progress = sys.stderr.isatty()  # progress bars in a terminal, not in logs
    t_start = time.perf_counter()
    model = load_mobilenet_v2()
    try:
        x, y = imagenet_sample()
        # One image per (even) class, in class order: one fixed shuffle spreads every split over classes.
        perm = np.random.default_rng(0).permutation(len(x))
        c, e, t = args.calib, args.eval, args.test
        if c + e + t > len(x):
            ap.error(f"--calib + --eval + --test = {c + e + t} > the {len(x)} images of the sample")
        calib = x[perm[:c]]
        x_eval, y_eval = x[perm[c : c + e]], y[perm[c : c + e]]
        x_test, y_test = x[perm[c + e : c + e + t]], y[perm[c + e : c + e + t]]
        source = (f"shared ImageNet sample: {c} calibration images (phase 1 on {args.phase1}), {e} held-out "
                  f"images for the budget, {t} further held-out images for the comparison")
    except FileNotFoundError:
        photos = bundled_images()
        photos = photos[: len(photos) - len(photos) % BATCH]
        calib, x_eval, y_eval, x_test, y_test = photos, None, None, photos, None
        args.phase1 = min(args.phase1, len(photos))
        source = (f"{len(photos)} photos bundled with scikit-image (../shared/data absent: no labels, so a "
                  f"label-free SQNR budget on {args.phase1} of them; the comparison is on all {len(photos)}, "
                  f"which calibrated the model: not held out)")
    print(f"MobileNetV2 (torchvision weights), {source}")

    q = tvm_mpq.Quantizer(model, args.target, [calib[i : i + BATCH] for i in range(0, len(calib), BATCH)],
                          example_inputs=(calib[:BATCH],), method=args.method, progress=progress)
    print(f"{len(q.group_names)} quantizer groups; import + calibration {time.perf_counter() - t_start:.1f} s")

    result = None
    if args.config is not None:
        config = q.config(args.config)
    else:
        phase1_inputs = [(calib[i : i + BATCH],) for i in range(0, args.phase1, BATCH)]
        if args.sqnr_floor is None and y_eval is not None:
            float_eval = 100.0 * float(np.mean(q.run_float(x_eval)[0].argmax(1) == y_eval))

            def top1(module) -> float:
                """Top-1 (%) on the held-out evaluation images."""
                if all(cand.is_float for cand in module.config.values()):
                    return float_eval
                return 100.0 * float(np.mean(module.run(x_eval).argmax(1) == y_eval))

            budget = dict(eval_fn=top1, allowed_accuracy_drop=args.drop)
            what = f"top-1 on {len(y_eval)} held-out images at most {args.drop:g} points below float ({float_eval:.1f}%)"
        else:
            floor = DEFAULT_SQNR_FLOOR_DB if args.sqnr_floor is None else args.sqnr_floor
            budget = dict(sqnr_floor_db=floor)
            what = f"output SQNR >= {floor:g} dB against float on {args.phase1} phase-1 images (label-free)"
        print(f"searching ({args.search}): {what}")
        result = search(q, calibration_inputs=phase1_inputs, search=args.search, results_dir=args.results_dir,
                        progress=progress, **budget)
        print(f"search: {result.message}")
        print(f"        phase 1 {result.phase_seconds['phase1']:.0f} s, phase 2 {result.phase_seconds['phase2']:.0f} s "
              f"({result.evaluations} evaluations on a curve of {len(result.curve)} points)")
        if not result.feasible:
            print("no configuration meets the budget; loosen it (--drop / --sqnr-floor)")
            return 1
        config = result.config

    module = q.realize(config)
    print()
    print(module.summary())
    print()

    # The comparison, on images the search did not score (with labels: a further held-out split).
    ref = q.run_float(x_test)[0]
    labels = y_test
    rows = [("float", Config.uniform(q.group_names, FLOAT), lambda a: ref)]
    if args.config is None:
        w8a8 = q.realize("w8a8")
        rows += [("uniform w8a8", w8a8.config, w8a8.run), ("chosen (mixed)", module.config, module.run)]
    else:
        rows += [(f"given ({args.config})", module.config, module.run)]
    header = f"{'configuration':18} {'rel. BOPs':>9} {'SQNR dB':>8} {'top-1 agree':>11}"
    if labels is not None:
        header += f" {'top-1':>7}"
    print(f"on {len(x_test)} {'held-out ' if labels is not None else ''}images "
          f"(relative BOPs: all-w16a16 = 1; float counts 32 bits):")
    print(header)
    for name, cfg, run in rows:
        r = _evaluate(run, x_test, ref, labels)
        line = f"{name:18} {relative_bops(q, cfg):9.3f} {r['sqnr']:8.2f} {r['agree']:10.1f}%"
        if labels is not None:
            line += f" {r['top1']:6.1f}%"
        print(line)
    counts = Counter(str(cand) for cand in module.config.values())
    print("configuration: " + ", ".join(f"{n} group{'s' * (n != 1)} {cand}" for cand, n in counts.most_common()))
    print(f"target {module.target}; total {time.perf_counter() - t_start:.0f} s")
    if args.save_config:
        module.config.to_json(args.save_config)
        print(f"configuration written to {args.save_config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
