"""``tvm-mpq``: quantize a model to mixed precision and compile it for a target, from the shell.

The whole job of ``tvm_mpq.compile`` without Python: import an ONNX file or a saved torch
ExportedProgram, calibrate on a folder of images (or arrays in a .npy/.npz file), search the
mixed-precision configuration within a budget (or realize a given one), compile it for the target,
and write the library, the configuration and the report. Every error a user can fix exits with
status 2 and one line saying what to change; no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from .pareto import ORDERS

PROG = "tvm-mpq"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
MODEL_EXTENSIONS = (".onnx", ".pt2")
LIBRARY_FILE = "model.so"

DESCRIPTION = """\
Quantize a float model to mixed precision (per layer group: w16a16, w8a16, w8a8, w4a8 or float) and
compile it with real integer kernels for a TVM target.

Steps: import MODEL -> calibrate on unlabeled data -> phase 1: measure how much each layer group
hurts the output when quantized alone -> phase 2: pick the cheapest configuration on the Pareto
curve that keeps the output SQNR (vs the float model, on the calibration data) above a floor or
the cost within a budget -> compile it for --target -> write the files below. Give --config to
skip the search and realize a configuration you already have.

The cost is relative bit operations (BOPs, the paper's) unless --cost measured / predicted prices
every configuration by the latency of its real kernels on this machine, in milliseconds (every op
x candidate timed once, cached in --latency-cache; or predicted by a saved --latency-model)."""

EPILOG = """\
example:
  tvm-mpq mobilenet_v2.onnx --target "llvm -mcpu=znver3" \\
      --calib-images ./calib_images --out ./mnv2_mpq --sqnr-floor 30

  The same with a torch model: in Python, torch.export.save(torch.export.export(model, (x,)),
  "model.pt2"), then run tvm-mpq model.pt2 ... . Realize uniform w8a8 without a search:
  tvm-mpq model.onnx --calib-npz calib.npz --config w8a8 --out ./out

  Within 80 ms on this machine, the flips that save the most time per noise added first:
  tvm-mpq model.onnx --calib-images ./calib --out ./out --sqnr-floor 25 \\
      --cost measured --latency-budget-ms 80 --order noise_per_cost

files written to OUT:
  model.so          the compiled module: tvm.runtime.load_module("OUT/model.so"), then
                    tvm.relax.VirtualMachine(lib, tvm.cpu())["main"](input)
  config.json       the configuration (group -> candidate): edit it and pass it back with --config
  report.json       sensitivity table, Pareto curve, chosen point, budget, timings, per-layer table
  sensitivity.png   phase-1 SQNR per group and candidate (when a search ran)
  pareto.png        score vs relative BOPs (and vs ms with a latency cost) of the evaluated curve
                    points, target, chosen point (search only)
  latency-cache.json  the per-op latency measurements (--cost measured/predicted; --latency-cache)
  cache/            the resumable search cache (--results-dir): rerun after a crash or Ctrl-C to
                    continue; --clean-start to discard it
  The plain-text report is printed at the end. When the budget cannot be met, only the report and
  the plots are written (an earlier model.so / config.json in OUT is removed) and the exit status
  is 2.

exit status: 0 success; 2 a problem with the inputs or options (one line on stderr says what to
change); 130 interrupted."""


class CliError(Exception):
    """A problem the user can fix: printed as one line, exit status 2."""


# ------------------------------------------------------------------------------------- arguments


def _floats(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.replace(" ", "").split(",") if v != "")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    return vals


def _hw(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        vals = [int(p) for p in parts if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW (pixels), got {text!r}") from None
    if len(vals) not in (1, 2) or min(vals) <= 0:
        raise argparse.ArgumentTypeError(f"expected N or HxW (positive pixels), got {text!r}")
    return (vals[0], vals[-1])


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (v > 0 and np.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _finite_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog):
        super().__init__(prog, max_help_position=30, width=100)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=_Formatter)
    ap.add_argument("model", metavar="MODEL",
                    help="the float model: an .onnx file, or a torch ExportedProgram saved with "
                         "torch.export.save (.pt2)")
    ap.add_argument("--out", "-o", metavar="DIR", required=True,
                    help="output directory (created if missing; files of an earlier run are replaced)")
    ap.add_argument("--target", metavar="TARGET", default=None,
                    help='TVM target to compile for, e.g. "llvm -mcpu=znver3" or a JSON dict '
                         '(default: this machine, with the features it really has)')

    data = ap.add_argument_group(
        "calibration data (one of the two is required; unlabeled, a few dozen samples are enough)")
    src = data.add_mutually_exclusive_group(required=True)
    src.add_argument("--calib-images", metavar="DIR",
                     help="a folder of images (png, jpg, ...; sorted by name): each is converted to RGB, "
                          "resized so its short side is --size, centre-cropped to the model's input "
                          "size and normalized, then batched by the model's batch size (NCHW float32)")
    src.add_argument("--calib-npz", metavar="FILE",
                     help="arrays in the model's input order: a .npy (one-input models) or .npz (arrays "
                          "named after the inputs, else in file order); the first axis counts samples")
    data.add_argument("--size", metavar="PIXELS", type=_positive_int, default=None,
                      help="images: short side after resizing (default: crop x 256/224, i.e. 256 for 224)")
    data.add_argument("--crop", metavar="N|HxW", type=_hw, default=None,
                      help="images: centre crop; must equal the model input's height x width "
                           "(default: taken from the model)")
    data.add_argument("--mean", metavar="M[,M,M]", type=_floats, default=None,
                      help="images: per-channel mean subtracted from pixels scaled to [0, 1] "
                           "(default: ImageNet 0.485,0.456,0.406)")
    data.add_argument("--std", metavar="S[,S,S]", type=_floats, default=None,
                      help="images: per-channel std the result is divided by (default: ImageNet "
                           "0.229,0.224,0.225)")
    data.add_argument("--scale", metavar="OFFSET,DIVISOR", type=_floats, default=None,
                      help="images: instead of --mean/--std, x = (pixel - OFFSET) / DIVISOR on 0-255 "
                           "pixels, e.g. 127,128 (EfficientNet-Lite), 0,255 ([0, 1]), 127.5,127.5 ([-1, 1])")
    data.add_argument("--batch", metavar="N", type=_positive_int, default=None,
                      help="npz: samples per calibration batch, a multiple of the model's batch size "
                           "(default: the model's batch size)")
    data.add_argument("--max-calib", metavar="N", type=_positive_int, default=None,
                      help="use at most N calibration samples (images or array rows; default: all)")
    data.add_argument("--method", choices=("mse", "minmax"), default="mse",
                      help="activation range method: mse (clip where the quantization error is least; "
                           "default) or minmax (the observed range)")

    srch = ap.add_argument_group(
        "search (the default: a search for the cheapest configuration with output SQNR >= 30 dB)")
    srch.add_argument("--sqnr-floor", metavar="DB", type=_finite_float, default=None,
                      help="keep the output SQNR against the float model (on the calibration data) at "
                           "or above DB decibels; higher = more accurate, more expensive (default 30 when "
                           "no budget is given)")
    srch.add_argument("--bops-budget", metavar="FRACTION", type=_positive_float, default=None,
                      help="cost budget in relative bit operations: 1.0 = every group at the highest "
                           "candidate (w16a16 by default), 0.25 = all w8a8 among the defaults; alone, the "
                           "first curve point within it is taken; with --sqnr-floor both must hold")
    srch.add_argument("--search", choices=("binary", "interpolation", "sequential"), default=None,
                      help="how phase 2 walks the Pareto curve: binary (default) and interpolation need "
                           "O(log n) evaluations; sequential evaluates point after point")
    srch.add_argument("--reverse", action="store_true", default=None,
                      help="start from every group at the lowest candidate and raise the most sensitive "
                           "groups first")
    srch.add_argument("--candidates", metavar="LIST", default=None,
                      help="comma-separated candidates each group may take (default "
                           "w16a16,w8a16,w8a8,w4a8; add float to allow leaving a group unquantized, "
                           "w7a8 for 7-bit weights, which AVX2 CPUs run at int4 speed)")
    srch.add_argument("--results-dir", metavar="DIR", default=None,
                      help="resumable cache of phase-1 scores and evaluated points (default OUT/cache)")
    srch.add_argument("--clean-start", action="store_true", default=None,
                      help="discard the cache in --results-dir and recompute everything")
    srch.add_argument("--order", choices=ORDERS, default=None,
                      help="flip order of the Pareto curve: sensitivity (default, the paper's: least "
                           "sensitive group first, whatever it saves) or noise_per_cost (output noise added "
                           "per unit of cost saved -- per ms with a latency cost; flips that save nothing, "
                           "e.g. integer kernels slower than the ones they replace, are left off the curve)")

    lat = ap.add_argument_group("latency cost (default: relative BOPs, blind to the hardware)")
    lat.add_argument("--cost", choices=("bops", "measured", "predicted"), default=None,
                     help="what the search trades accuracy against: bops (default), measured (every op x "
                          "candidate compiled and timed on this machine: minutes, cached), predicted (an "
                          "XGBoost latency model: --latency-model, or one trained on a measured sample)")
    lat.add_argument("--latency-budget-ms", metavar="MS", type=_positive_float, default=None,
                     help="cost budget in milliseconds (implies --cost measured unless --cost predicted); "
                          "alone, the first curve point within it is taken; with --sqnr-floor both must hold")
    lat.add_argument("--latency-cache", metavar="FILE.json", default=None,
                     help="JSON file of per-op latency measurements, reused and extended (default "
                          "OUT/latency-cache.json); a killed run resumes from it")
    lat.add_argument("--latency-model", metavar="MODEL.json", default=None,
                     help="a saved latency model (tvm_mpq.latency_model.LatencyModel.save) for this target: "
                          "predicts every op, measures nothing (implies --cost predicted)")
    ap.add_argument("--config", metavar="CONFIG.json|CANDIDATE", default=None,
                    help="skip the search: realize this configuration (a config.json written by an earlier "
                         "run, edited or not) or one candidate for every group, e.g. w8a8")
    ap.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    return ap


_SEARCH_FLAGS = {"sqnr_floor": "--sqnr-floor", "bops_budget": "--bops-budget", "search": "--search",
                 "reverse": "--reverse", "candidates": "--candidates", "results_dir": "--results-dir",
                 "clean_start": "--clean-start", "order": "--order", "cost": "--cost",
                 "latency_budget_ms": "--latency-budget-ms", "latency_cache": "--latency-cache",
                 "latency_model": "--latency-model"}


# ------------------------------------------------------------------------------------- the model


def load_model(path: str):
    """Import MODEL into tvm_mpq's float form (a FloatModel: reused, so it is imported once)."""
    from .frontend import import_model

    p = Path(path)
    ext = p.suffix.lower()
    if ext not in MODEL_EXTENSIONS:
        raise CliError(
            f"{path}: unsupported model file extension {p.suffix or '(none)'!r}: give an .onnx file or a "
            f"torch ExportedProgram saved with torch.export.save (.pt2)"
        )
    if not p.is_file():
        raise CliError(f"model file {path} does not exist" if not p.exists() else f"model {path} is not a file")
    if ext == ".onnx":
        return import_model(str(p))
    try:
        import torch
    except ImportError:
        raise CliError("loading a .pt2 model needs torch: pip install torch") from None
    try:
        ep = torch.export.load(str(p))
    except Exception as e:  # torch raises many types for a bad file
        raise CliError(f"{path} is not a torch ExportedProgram saved with torch.export.save: "
                       f"{type(e).__name__}: {e}") from None
    return import_model(ep)


def _shape(s) -> str:
    return "(" + ", ".join(str(d) for d in s) + ")"


# ------------------------------------------------------------------------------------- calibration data


def _image_files(folder: str) -> list[Path]:
    d = Path(folder)
    if not d.exists():
        raise CliError(f"--calib-images: folder {folder} does not exist")
    if not d.is_dir():
        raise CliError(f"--calib-images: {folder} is not a folder (for an array file use --calib-npz)")
    files = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise CliError(f"--calib-images: folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def _resize_crop(img, short: int, crop_hw: tuple[int, int]):
    """torchvision's eval transform: Resize(short) (bilinear) then CenterCrop(crop)."""
    from PIL import Image

    w, h = img.size
    if w <= h:
        nw, nh = short, max(1, int(short * h / w))
    else:
        nw, nh = max(1, int(short * w / h)), short
    img = img.resize((nw, nh), Image.BILINEAR)
    ch, cw = crop_hw
    top, left = int(round((nh - ch) / 2.0)), int(round((nw - cw) / 2.0))
    return img.crop((left, top, left + cw, top + ch))


def load_images(args, signature) -> list[tuple[np.ndarray]]:
    """Calibration batches from --calib-images, shaped like the model's (only) input."""
    from tqdm.auto import tqdm

    if len(signature) != 1:
        names = ", ".join(f"{n} {_shape(s)}" for n, s, _ in signature)
        raise CliError(f"--calib-images feeds one image input but the model takes {len(signature)} inputs "
                       f"({names}): give the arrays with --calib-npz")
    name, shape, dtype = signature[0]
    if len(shape) != 4 or shape[1] not in (1, 3) or not np.issubdtype(np.dtype(dtype), np.floating):
        hint = " (it looks NHWC; --calib-images makes NCHW)" if len(shape) == 4 and shape[-1] in (1, 3) else ""
        raise CliError(f"--calib-images makes float NCHW images with 1 or 3 channels but the model input "
                       f"{name!r} is {_shape(shape)} {dtype}{hint}: give the arrays with --calib-npz")
    n, c, h, w = shape
    crop = args.crop or (h, w)
    if crop != (h, w):
        raise CliError(f"--crop {crop[0]}x{crop[1]} makes {crop[0]}x{crop[1]} images but the model input "
                       f"{name!r} expects {_shape(shape)} (NCHW): set --crop {h}x{w}" + (
                           f" (or --crop {h})" if h == w else "") + " or leave --crop out")
    short = args.size or int(round(min(h, w) * 256 / 224))
    if short < min(h, w):
        raise CliError(f"--size {short} is smaller than the crop {h}x{w}: set --size to at least {max(h, w)}")
    if args.scale is not None:
        if args.mean is not None or args.std is not None:
            raise CliError("give either --scale or --mean/--std, not both")
        if len(args.scale) != 2 or args.scale[1] == 0:
            raise CliError(f"--scale takes OFFSET,DIVISOR (a nonzero divisor), e.g. 127,128; got "
                           f"{','.join(map(str, args.scale))}")
        offset, divisor = args.scale
        mean, std = np.full(c, offset / 255.0), np.full(c, divisor / 255.0)
    else:
        from .datasets import IMAGENET_MEAN, IMAGENET_STD

        mean = np.asarray(args.mean or IMAGENET_MEAN, np.float64)
        std = np.asarray(args.std or IMAGENET_STD, np.float64)
        for flag, v in (("--mean", mean), ("--std", std)):
            if len(v) not in (1, c):
                raise CliError(f"{flag} has {len(v)} values but the model input {name!r} has {c} channel(s): "
                               f"give 1 or {c} values")
        if np.any(std == 0):
            raise CliError("--std must not contain 0")
        mean, std = np.broadcast_to(mean, (c,)), np.broadcast_to(std, (c,))

    files = _image_files(args.calib_images)
    if args.max_calib is not None:
        files = files[: args.max_calib]
    if len(files) < n:
        raise CliError(f"--calib-images: {len(files)} image(s) in {args.calib_images} but the model's batch "
                       f"size is {n} (input {name!r} {_shape(shape)}): add images")
    files = files[: len(files) - len(files) % n]

    from PIL import Image, UnidentifiedImageError

    xs = np.empty((len(files), c, h, w), np.float32)
    mode = "RGB" if c == 3 else "L"
    for i, f in enumerate(tqdm(files, desc="loading images", disable=args.quiet, unit="img")):
        try:
            with Image.open(f) as img:
                img = _resize_crop(img.convert(mode), short, (h, w))
                a = np.asarray(img, dtype=np.float32).reshape(h, w, c) / 255.0
        except (UnidentifiedImageError, OSError) as e:
            raise CliError(f"--calib-images: cannot read image {f}: {e}") from None
        xs[i] = ((a - mean) / std).transpose(2, 0, 1)
    xs = xs.astype(dtype, copy=False)
    return [(xs[i : i + n],) for i in range(0, len(xs), n)]


def load_arrays(args, signature) -> list[tuple[np.ndarray, ...]]:
    """Calibration batches from --calib-npz (.npy or .npz), split by --batch."""
    path = Path(args.calib_npz)
    ext = path.suffix.lower()
    if ext not in (".npy", ".npz"):
        raise CliError(f"--calib-npz: unsupported extension {path.suffix or '(none)'!r} of {path}: give a .npy "
                       f"(one array) or .npz file (for a folder of images use --calib-images)")
    if not path.is_file():
        raise CliError(f"--calib-npz: file {path} does not exist")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:
        raise CliError(f"--calib-npz: cannot read {path}: {type(e).__name__}: {e}") from None
    if ext == ".npy":
        arrays = [("array", data)]
    else:
        with data:
            keys = list(data.files)
            names = [nm for nm, _, _ in signature]
            order = names if set(names) <= set(keys) else keys
            arrays = [(k, data[k]) for k in order]
    if len(arrays) != len(signature):
        names = ", ".join(f"{nm} {_shape(s)}" for nm, s, _ in signature)
        raise CliError(f"--calib-npz: {path} holds {len(arrays)} array(s) but the model takes "
                       f"{len(signature)} input(s) ({names}): store one array per input, in input order "
                       f"or named after the inputs")
    for (key, a), (name, shape, _) in zip(arrays, signature):
        if a.ndim != len(shape) or a.shape[1:] != tuple(shape[1:]):
            raise CliError(
                f"--calib-npz: array {key!r} has shape {_shape(a.shape)} but the model input {name!r} expects "
                f"{_shape(shape)}: store it as (samples, {', '.join(map(str, shape[1:]))})"
            )
    counts = {a.shape[0] for _, a in arrays}
    if len(counts) != 1:
        raise CliError(f"--calib-npz: the arrays hold different numbers of samples "
                       f"({', '.join(f'{k}: {a.shape[0]}' for k, a in arrays)})")
    total = counts.pop()
    if args.max_calib is not None:
        total = min(total, args.max_calib)
    model_batch = signature[0][1][0]
    batch = args.batch or model_batch
    if batch % model_batch:
        raise CliError(f"--batch {batch} is not a multiple of the model's batch size {model_batch} "
                       f"(input {signature[0][0]!r} {_shape(signature[0][1])}): set --batch to a multiple "
                       f"of {model_batch}")
    if total < batch:
        raise CliError(f"--calib-npz: {total} sample(s) but a calibration batch takes {batch} "
                       f"(--batch / the model's batch size): add samples")
    usable = total - total % batch
    return [tuple(a[i : i + batch] for _, a in arrays) for i in range(0, usable, batch)]


# ------------------------------------------------------------------------------------- main


def _error(msg: str) -> int:
    print(f"{PROG}: error: {' '.join(str(msg).split())}", file=sys.stderr)
    return 2


#: The library's keyword names as this command's options, for messages that name them.
_KWARG_FLAGS = (("clean_start=True", "--clean-start"), ("results_dir", "--results-dir"),
                ("sqnr_floor_db", "--sqnr-floor"), ("cost_budget", "--bops-budget"),
                ("latency_budget_ms", "--latency-budget-ms"),
                ("cost='measured' or 'predicted'", "--cost measured or predicted"))


def _as_flags(msg: str) -> str:
    for kw, flag in _KWARG_FLAGS:
        msg = msg.replace(kw, flag)
    return msg


def main(argv=None) -> int:
    """Run the command line; returns the exit status (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) and usage errors (2); argparse already printed them
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    from .errors import TvmMpqError

    try:
        return _run(args)
    except CliError as e:
        return _error(str(e))
    except TvmMpqError as e:
        return _error(_as_flags(str(e)))
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; finished search results are kept in the cache: rerun the same "
              f"command to resume", file=sys.stderr)
        return 130


def _run(args) -> int:
    import tvm_mpq
    from .config import Candidate
    from .report import Report, uniform_reference
    from .search import search as run_search
    from .targets import parse_target

    out = Path(args.out)
    given = [flag for key, flag in _SEARCH_FLAGS.items() if getattr(args, key) is not None]
    if args.config is not None and given:
        raise CliError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} only to the search; "
                       f"--config skips the search: drop one or the other")
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} exists and is not a folder")
    candidates = None
    if args.candidates is not None:
        candidates = [Candidate.parse(c) for c in args.candidates.split(",") if c.strip()]
        if not candidates:
            raise CliError("--candidates is empty: give e.g. w16a16,w8a16,w8a8,w4a8")
    if args.config is not None and args.config.lower().endswith(".json") and not Path(args.config).is_file():
        raise CliError(f"--config: configuration file {args.config} does not exist")
    cost = _latency_options(args)

    progress = not args.quiet
    target = parse_target(args.target)  # a bad target fails here, before the slow steps
    t0 = time.perf_counter()
    model = load_model(args.model)
    signature = model.input_signature()
    t1 = time.perf_counter()
    batches = load_images(args, signature) if args.calib_images else load_arrays(args, signature)
    t2 = time.perf_counter()
    timings = {"import_s": t1 - t0, "load_data_s": t2 - t1}
    samples = sum(b[0].shape[0] for b in batches)
    if progress:
        print(f"{PROG}: {args.model}: input(s) "
              f"{', '.join(f'{n} {_shape(s)} {d}' for n, s, d in signature)}; {samples} calibration sample(s) "
              f"in {len(batches)} batch(es); target {target}", file=sys.stderr)

    quantizer = tvm_mpq.Quantizer(model, target, batches, method=args.method, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    lib_path = out / LIBRARY_FILE
    if args.config is not None:
        module = quantizer.realize(args.config)
        module.search = None
        report = Report.from_module(module, timings=timings)
    else:
        results_dir = Path(args.results_dir) if args.results_dir is not None else out / "cache"
        result = run_search(
            quantizer, candidates=candidates, calibration_inputs=batches, sqnr_floor_db=args.sqnr_floor,
            cost_budget=args.bops_budget, search=args.search or "binary", reverse=bool(args.reverse),
            results_dir=results_dir, clean_start=bool(args.clean_start), progress=progress,
            order=args.order or "sensitivity", cost=cost, latency_budget_ms=args.latency_budget_ms,
            latency_cache=None if cost in (None, "bops") else str(args.latency_cache or out / "latency-cache.json"),
            latency_model=args.latency_model,
        )
        uniform = uniform_reference(quantizer, result, batches, candidates)
        if not result.feasible:
            stale = [p for p in (lib_path, out / "config.json") if p.exists()]
            for p in stale:
                p.unlink()
            report = Report.from_search(result, quantizer, uniform=uniform, timings=timings)
            written = _save(report, out)
            print(report.text())
            print(f"\nwrote {', '.join(str(p) for p in written)}" +
                  (f"; removed the earlier {', '.join(p.name for p in stale)}" if stale else ""))
            return _error(f"{result.message} (report in {out})")
        module = quantizer.realize(result.config)
        module.search = result
        report = Report.from_module(module, uniform=uniform, timings=timings)
    module.report = report
    module.export_library(lib_path)
    written = [lib_path] + _save(report, out)
    print(report.text())
    print(f"\nwrote {', '.join(str(p) for p in written)}")
    return 0


def _latency_options(args) -> str | None:
    """Check the latency-cost flags together (before any slow step); return the cost to search with."""
    cost = args.cost
    if args.latency_model is not None:
        if cost in ("bops", "measured"):
            raise CliError(f"--latency-model is a predicted latency; --cost {cost} does not use it: "
                           f"drop --latency-model or use --cost predicted")
        if not Path(args.latency_model).is_file():
            raise CliError(f"--latency-model: file {args.latency_model} does not exist (save one with "
                           f"tvm_mpq.latency_model.LatencyModel.save)")
        cost = "predicted"
    if args.latency_budget_ms is not None:
        if cost == "bops":
            raise CliError("--latency-budget-ms needs a latency cost: --cost measured or predicted "
                           "(or --bops-budget for a BOPs budget)")
        if args.bops_budget is not None:
            raise CliError("give --bops-budget or --latency-budget-ms, not both")
        cost = cost or "measured"
    elif args.bops_budget is not None and cost in ("measured", "predicted"):
        raise CliError(f"--bops-budget is a budget in relative BOPs but --cost {cost} prices configurations "
                       f"in ms: give --latency-budget-ms, or drop --cost")
    if args.latency_cache is not None:
        if cost in (None, "bops"):
            raise CliError("--latency-cache keeps latency measurements: it needs --cost measured or predicted "
                           "(or --latency-budget-ms)")
        p = Path(args.latency_cache)
        if p.exists() and not p.is_file():
            raise CliError(f"--latency-cache {p} exists and is not a file")
    return cost


def _save(report, out: Path) -> list[Path]:
    try:
        return list(report.save(out).values())
    except ImportError as e:  # no matplotlib: the JSON files are written, the plots are not
        print(f"{PROG}: note: {e}", file=sys.stderr)
        return [p for p in (out / "report.json", out / "config.json") if p.exists()]


if __name__ == "__main__":  # python -m tvm_mpq.cli
    sys.exit(main())
