"""tvm_mpq against PyTorch and ONNX Runtime, fp32 and int8, on three models, in one run.

    .venv/bin/python benchmarks/runtimes.py                        # all models, 1 and 2 threads
    .venv/bin/python benchmarks/runtimes.py --quick                # fewer repeats and samples
    .venv/bin/python benchmarks/runtimes.py --models minilm --threads 2 --repeat 9

Models, batch 1: MobileNetV2 (torchvision's ImageNet weights, tvm_mpq.models.mobilenet_v2;
calibrated on the shared ImageNet sample, or scikit-image's photos without it), a ResNet-18-shaped
network (tvm_mpq.models.resnet18: torchvision's architecture with *seeded random weights* and
re-estimated BN statistics -- a latency stand-in, not a classifier; calibrated on random-normal
images) at 224x224, and all-MiniLM-L6-v2 (tvm_mpq.models.minilm) at sequence length 128,
calibrated on STS-B dev sentences. A few calibration samples each: this measures latency.

Rows, per model and thread count:
- PyTorch fp32 eager (``torch.inference_mode``);
- PyTorch int8: FX graph-mode static PTQ, x86 engine (``prepare_fx`` / ``convert_fx`` with
  ``get_default_qconfig_mapping("x86")``; torch 2.13 still ships these ``torch.ao`` APIs and warns
  that they will be removed, the successor being torchao's pt2e flow); where FX cannot trace or
  convert the model, dynamic quantization of ``nn.Linear`` (``quantize_dynamic``) -- the row says
  why. MiniLM gets both: FX static traces it but per-tensor static int8 breaks its output (see
  the SQNR column), and dynamic quantization is PyTorch's usual int8 recipe for BERT encoders;
- ONNX Runtime fp32 and int8 QDQ (TorchScript exporter ``torch.onnx.export(dynamo=False)``: the
  dynamo exporter needs ``onnxscript``; ``quant_pre_process``, then ``quantize_static`` with QDQ,
  uint8 activations, int8 per-channel weights, MinMax calibration), ``intra_op_num_threads`` =
  the thread count, ``inter_op_num_threads`` = 1; for MiniLM also ``quantize_dynamic`` (ORT's
  recipe for transformers), and int8 QDQ again with ``reduce_range=True`` (7-bit weights: ORT's
  remedy for the saturating int16 sums of its AVX2 u8 x s8 kernels, ``vpmaddubsw``; tvm_mpq's
  kernels are exact: ``vpmaddwd`` on int16 pairs, ``vpmaddubsw`` only for int4 weights). The "/ORT int8" ratio is always against the static QDQ row;
- tvm_mpq float / w8a8 / w7a8 / w16a16 / w4a8: uniform configurations realized with integer kernels
  for this host (``Quantizer.realize(config)``, which is what ``tvm_mpq.compile(..., config=...)``
  calls after import and calibration; the model is imported and calibrated once per model),
  timed with the Relax VM's ``time_evaluator``. w7a8 (7-bit weights) is the counterpart of ONNX
  Runtime's reduce_range row: on AVX2 both run u8 x s7 products with ``vpmaddubsw``.

Timing: threads are set per runtime (TVM's pool with ``runtime.config_threadpool``, torch with
``torch.set_num_threads``, ONNX Runtime per session). After warm-up, every runtime gets a
``number`` of back-to-back calls that lasts >= ``--min-ms``; a repeat is one such block, and the
repeats of all rows are *interleaved* (round k times every row once, in a rotated order, each
block preceded by one untimed call), so load from other work on a shared machine hits every row
alike. The table gives the median ms per call over ``--repeat`` repeats (and the fastest repeat),
the output SQNR against PyTorch fp32 on the timed input (a sanity check that the int8 rows
compute the model; MiniLM: over the non-padding tokens, the ones mean pooling reads), and each
tvm_mpq row's time ratio to ONNX Runtime int8 (static QDQ) and to PyTorch fp32: ratio = tvm_mpq
ms / other ms, so < 1 means tvm_mpq is faster. Compile times of the tvm_mpq modules are printed
(issue goal: realized MobileNetV2 in <= 60 s without tuning).

A runtime whose package is missing (onnxruntime, onnx) or that fails is skipped with the reason
printed; the run goes on. Results: benchmarks/results/runtimes.json (rewritten after each model).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path

_ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
_ap.add_argument("--models", default="mobilenet_v2,resnet18,minilm",
                 help="comma-separated: mobilenet_v2, resnet18, minilm")
_ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
_ap.add_argument("--repeat", type=int, default=None, help="timed repeats per row (default 7; --quick 5)")
_ap.add_argument("--min-ms", type=float, default=None,
                 help="minimum length of one repeat in ms (default 20; --quick 10)")
RUNTIME_FAMILIES = ("torch", "ort", "tvm_mpq")
_ap.add_argument("--runtimes", default=",".join(RUNTIME_FAMILIES),
                 help="comma-separated runtime families to run (e.g. 'ort' alone, to see it without "
                      "the other runtimes' thread pools around)")
_ap.add_argument("--candidates", default="float,w8a8,w7a8,w16a16,w4a8", help="tvm_mpq uniform configurations")
_ap.add_argument("--quick", action="store_true", help="5 repeats of >= 10 ms, fewer calibration samples")
_ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "runtimes.json"),
                 help="JSON result path")
ARGS = _ap.parse_args() if __name__ == "__main__" else _ap.parse_args([])
THREADS = [int(t) for t in ARGS.threads.split(",")]
FAMILIES = [f.strip() for f in ARGS.runtimes.split(",") if f.strip()]
REPEAT = ARGS.repeat or (5 if ARGS.quick else 7)
MIN_MS = ARGS.min_ms or (10.0 if ARGS.quick else 20.0)
N_CALIB = 4 if ARGS.quick else 8  # calibration samples (images / sentences), batch 1 each
WARMUP = 3
SEQ_LEN = 128
DYNAMIC_TOO = {"minilm"}  # models that also get dynamic-quantization int8 rows (PyTorch, ORT)
if REPEAT < 5:
    print(f"note: --repeat {REPEAT} is below the protocol's 5 repeats", file=sys.stderr)
os.environ.setdefault("TVM_NUM_THREADS", str(max(THREADS)))  # before TVM starts its pool

import numpy as np  # noqa: E402
import tvm  # noqa: E402
from tvm import relax  # noqa: E402

import tvm_mpq  # noqa: E402
from tvm_mpq.calibration import sqnr_db  # noqa: E402
from bench_util import set_threads  # noqa: E402
from tvm_mpq.targets import host_target  # noqa: E402


MODEL_TITLES = {
    "mobilenet_v2": "MobileNetV2 (torchvision ImageNet weights), batch 1, 3x224x224",
    "resnet18": "ResNet-18-shaped (torchvision architecture, seeded random weights), batch 1, 3x224x224",
    "minilm": f"all-MiniLM-L6-v2, batch 1, sequence length {SEQ_LEN}",
}
_FALLBACK_SENTENCES = [  # only when ../shared/data/sts-dev.csv is absent
    "A man is playing a guitar on the stage.", "The cat sits on the warm window sill.",
    "Stocks fell sharply after the announcement of new tariffs.", "A woman is slicing an onion.",
    "Two dogs are running through a field of tall grass.", "The committee will meet again next week.",
    "He forgot his umbrella and got soaked on the way home.", "A child is riding a red bicycle.",
    "The new bridge opened to traffic this morning.", "She reads the newspaper every morning.",
]




def _short(e: BaseException, n: int = 160) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:n]}{'...' if len(msg) > n else ''}"


# ---------------------------------------------------------------------------------------------
# Models and data
# ---------------------------------------------------------------------------------------------


class ModelCase:
    """A float torch model, its timed input, calibration samples, and where the data came from."""

    def __init__(self, key, model, timed, calib, data_note, input_names, compare=None):
        self.key, self.model, self.timed, self.calib = key, model, timed, calib
        self.data_note, self.input_names = data_note, input_names
        #: output -> the part the SQNR column compares (MiniLM: the non-padding tokens)
        self.compare = compare or (lambda out: out)

    def torch_inputs(self, arrays=None):
        import torch

        return tuple(torch.from_numpy(a) for a in (arrays if arrays is not None else self.timed))

    def calib_batch(self):
        """All calibration samples stacked into one batch per input."""
        return tuple(np.concatenate([s[i] for s in self.calib]) for i in range(len(self.timed)))


def load_case(key: str) -> ModelCase:
    if key == "mobilenet_v2":
        from tvm_mpq.models.mobilenet_v2 import load_mobilenet_v2

        try:
            from tvm_mpq.datasets import imagenet_sample

            x, _ = imagenet_sample(limit=N_CALIB + 1)
            note = f"calibration: {N_CALIB} shared ImageNet-sample images; timed on another one"
        except FileNotFoundError as e:
            from tvm_mpq.datasets import bundled_images

            x = bundled_images()[: N_CALIB + 1]
            note = (f"calibration: {len(x) - 1} scikit-image photos (shared ImageNet sample absent: "
                    f"{_short(e, 80)})")
        return ModelCase(key, load_mobilenet_v2(), (x[:1],), [(x[i : i + 1],) for i in range(1, len(x))],
                         note, ["input"])
    if key == "resnet18":
        from tvm_mpq.models.resnet18 import load_resnet18

        x = np.random.default_rng(0).standard_normal((N_CALIB + 1, 3, 224, 224)).astype("float32")
        note = (f"random weights (seed 0, BN statistics re-estimated); calibration: {N_CALIB} "
                f"random-normal images; timed on another one")
        return ModelCase(key, load_resnet18(seed=0), (x[:1],), [(x[i : i + 1],) for i in range(1, len(x))],
                         note, ["input"])
    if key == "minilm":
        from tvm_mpq.models.minilm import encode_batch, load_minilm

        model, tok = load_minilm()
        try:
            from tvm_mpq.datasets import sts_dev

            pairs = sts_dev(limit=N_CALIB)
            sentences = [s for a, b, _ in pairs for s in (a, b)][: N_CALIB + 1]
            note = f"calibration: {N_CALIB} STS-B dev sentences (padded to {SEQ_LEN}); timed on another one"
        except FileNotFoundError as e:
            sentences = _FALLBACK_SENTENCES[: N_CALIB + 1]
            note = f"calibration: {N_CALIB} built-in sentences (shared STS-B absent: {_short(e, 80)})"
        ids, mask = encode_batch(tok, sentences, seq_len=SEQ_LEN)
        tokens = mask[0] == 1  # mean pooling reads these; padding positions are not compared
        note += f" ({int(tokens.sum())} tokens + padding); SQNR over the non-padding tokens"
        return ModelCase(key, model, (ids[:1], mask[:1]),
                         [(ids[i : i + 1], mask[i : i + 1]) for i in range(1, len(ids))],
                         note, ["input_ids", "attention_mask"], compare=lambda out: out[:, tokens])
    raise SystemExit(f"unknown model {key!r}: use mobilenet_v2, resnet18, minilm")


# ---------------------------------------------------------------------------------------------
# Rows: one runtime x precision each
# ---------------------------------------------------------------------------------------------


class Row:
    """One runtime. ``bind(threads)`` -> (call, timed): ``call()`` runs once; ``timed(number)``
    returns the mean seconds per call over ``number`` back-to-back calls."""

    def __init__(self, name, family, note="", skip=None):
        self.name, self.family, self.note, self.skip = name, family, note, skip
        self.output = None  # on the timed input, for the SQNR column
        self.compile_s = None
        self.bind = None


def _python_timer(call):
    def timed(number):
        t0 = time.perf_counter()
        for _ in range(number):
            call()
        return (time.perf_counter() - t0) / number

    return timed


def torch_rows(case: ModelCase) -> list[Row]:
    try:
        import torch
    except ImportError as e:
        return [Row("PyTorch fp32 eager", "torch", skip=f"torch missing: {e}"),
                Row("PyTorch int8", "torch", skip=f"torch missing: {e}")]
    model, xt = case.model, case.torch_inputs()
    fp32 = Row("PyTorch fp32 eager", "torch")
    with torch.inference_mode():
        fp32.output = model(*xt).numpy()

    def bind_eager(m):
        def bind(threads):
            def call():
                with torch.inference_mode():
                    return m(*xt)

            return call, _python_timer(call)

        return bind

    fp32.bind = bind_eager(model)
    static = Row("PyTorch int8 FX static", "torch")
    try:
        from torch.ao.quantization import get_default_qconfig_mapping, quantize_dynamic
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    except ImportError as e:
        static.skip = f"torch.ao.quantization (FX) unavailable in torch {torch.__version__}: {e}"
        return [fp32, static]
    calib = case.torch_inputs(case.calib_batch())
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            torch.backends.quantized.engine = "x86"
            prepared = prepare_fx(copy.deepcopy(model), get_default_qconfig_mapping("x86"), xt)
            with torch.inference_mode():
                prepared(*calib)
            qmodel = convert_fx(prepared)
            with torch.inference_mode():
                static.output = qmodel(*xt).numpy()
            static.bind = bind_eager(qmodel)
            static.compile_s = time.perf_counter() - t0
            static.note = f"prepare_fx/convert_fx, get_default_qconfig_mapping('x86'), {len(case.calib)} samples"
        except Exception as e:  # noqa: BLE001 - the dynamic row below says why
            static.skip = f"FX static PTQ failed: {_short(e, 120)}"
    # torch 2.13 still has the torch.ao APIs but warns that they will go: say so.
    removal = sorted({" ".join(str(w.message).split()) for w in caught if "will be removed" in str(w.message)})
    if removal:
        static.note += f"; torch {torch.__version__} warns: {removal[0][:150]}..."
    rows = [fp32, static]
    # Dynamic quantization of Linear: the fallback where FX fails, and for MiniLM always (the usual
    # PyTorch int8 recipe for BERT-like encoders: activations quantized per call, per row range).
    if static.skip or case.key in DYNAMIC_TOO:
        dyn = Row("PyTorch int8 dynamic", "torch")
        t0 = time.perf_counter()
        try:
            dmodel = quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
            with torch.inference_mode():
                dyn.output = dmodel(*xt).numpy()
            dyn.bind = bind_eager(dmodel)
            dyn.compile_s = time.perf_counter() - t0
            dyn.note = "quantize_dynamic({nn.Linear}, qint8), x86 engine" + (
                f"; fallback: {static.skip}" if static.skip else "")
        except Exception as e:  # noqa: BLE001
            dyn.skip = f"quantize_dynamic failed: {_short(e, 120)}"
        rows.append(dyn)
    return rows


@contextmanager
def _quiet_root_logger():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


class _CalibReader:
    def __init__(self, names, samples):
        self._it = iter([dict(zip(names, s)) for s in samples])

    def get_next(self):
        return next(self._it, None)


def export_onnx(case: ModelCase, path: Path) -> None:
    """The float model as ONNX (TorchScript exporter, opset 17: the dynamo exporter needs
    ``onnxscript``)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(case.model, case.torch_inputs(), str(path), dynamo=False, opset_version=17,
                          input_names=case.input_names, output_names=["output"], do_constant_folding=True)


def quantize_qdq(src: Path, dst: Path, case: ModelCase, reduce_range: bool = False) -> None:
    """ONNX Runtime's static int8 QDQ recipe: u8 activations, s8 per-channel weights, MinMax on
    the case's calibration samples."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    with _quiet_root_logger():  # per-channel axis warnings for every LayerNorm weight
        quantize_static(str(src), str(dst), _CalibReader(case.input_names, case.calib),
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True, reduce_range=reduce_range)


def ort_session(path: Path, threads: int, profile_prefix: str | None = None):
    """An ONNX Runtime CPU session as the tables time it: ``threads`` intra-op threads, sequential
    execution, all graph optimizations (with ``profile_prefix``: its profiler on)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_rows(case: ModelCase, workdir: Path) -> list[Row]:
    names = ("ONNX Runtime fp32", "ONNX Runtime int8 QDQ")
    try:
        import onnx  # noqa: F401
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        why = f"package missing ({e}); pip install onnxruntime onnx"
        return [Row(n, "ort", skip=why) for n in names]

    fp32_path, pre_path, int8_path, dyn_path = (workdir / f"{case.key}{s}.onnx"
                                                for s in ("", "-pre", "-int8", "-dyn"))
    rows = [Row(names[0], "ort"), Row(names[1], "ort")]
    paths = [fp32_path, int8_path]
    t0 = time.perf_counter()
    try:
        export_onnx(case, fp32_path)
    except Exception as e:  # noqa: BLE001
        why = f"torch.onnx.export failed: {_short(e)}"
        return [Row(n, "ort", skip=why) for n in names]
    rows[0].compile_s = time.perf_counter() - t0
    rows[0].note = f"onnxruntime {ort.__version__}, TorchScript exporter, opset 17"
    t0 = time.perf_counter()
    try:
        src = fp32_path
        try:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            quant_pre_process(str(fp32_path), str(pre_path))
            src, pre = pre_path, "quant_pre_process; "
        except Exception as e:  # noqa: BLE001 - optional step
            pre = f"quant_pre_process failed ({_short(e, 60)}), quantized the raw export; "
        quantize_qdq(src, int8_path, case)
        rows[1].compile_s = time.perf_counter() - t0
        rows[1].note = f"{pre}quantize_static QDQ, u8 activations, s8 per-channel weights, MinMax, " \
                       f"{len(case.calib)} samples"
    except Exception as e:  # noqa: BLE001
        rows[1].skip = f"quantize_static failed: {_short(e)}"
    # The same with 7-bit weights: ORT's documented remedy for the int16 saturation of its AVX2 /
    # AVX-512 u8 x s8 kernels (vpmaddubsw), which tvm_mpq's exact kernels do not have.
    rows.append(Row("ONNX Runtime int8 QDQ reduce_range", "ort"))
    rr_path = workdir / f"{case.key}-int8rr.onnx"
    paths.append(rr_path)
    t0 = time.perf_counter()
    try:
        quantize_qdq(src, rr_path, case, reduce_range=True)
        rows[-1].compile_s = time.perf_counter() - t0
        rows[-1].note = "as int8 QDQ, reduce_range=True (7-bit weights: no vpmaddubsw saturation)"
    except Exception as e:  # noqa: BLE001
        rows[-1].skip = f"quantize_static(reduce_range=True) failed: {_short(e)}"
    if case.key in DYNAMIC_TOO:  # ORT's own recipe for transformer encoders
        rows.append(Row("ONNX Runtime int8 dynamic", "ort"))
        paths.append(dyn_path)
        t0 = time.perf_counter()
        try:
            with _quiet_root_logger():
                quantize_dynamic(str(src), str(dyn_path), weight_type=QuantType.QInt8, per_channel=True)
            rows[-1].compile_s = time.perf_counter() - t0
            rows[-1].note = "quantize_dynamic, s8 per-channel weights, activations quantized per call"
        except Exception as e:  # noqa: BLE001
            rows[-1].skip = f"quantize_dynamic failed: {_short(e)}"
    feed = dict(zip(case.input_names, case.timed))

    def make_bind(path):
        sessions = {}

        def session(threads):
            if threads not in sessions:
                sessions[threads] = ort_session(path, threads)
            return sessions[threads]

        def bind(threads):
            s = session(threads)

            def call():
                return s.run(None, feed)

            return call, _python_timer(call)

        return bind, session

    for row, path in zip(rows, paths):
        if row.skip:
            continue
        try:
            row.bind, session = make_bind(path)
            row.output = session(THREADS[0]).run(None, feed)[0]
        except Exception as e:  # noqa: BLE001
            row.skip = f"session failed: {_short(e)}"
    return rows


def tvm_rows(case: ModelCase, compile_log: dict) -> list[Row]:
    candidates = ARGS.candidates.split(",")
    t0 = time.perf_counter()
    try:
        q = tvm_mpq.Quantizer(case.model, None, [case.calib_batch()], example_inputs=case.timed, progress=False)
    except Exception as e:  # noqa: BLE001
        return [Row(f"tvm_mpq {c}", "tvm_mpq", skip=f"import/calibration failed: {_short(e)}") for c in candidates]
    compile_log["import_and_calibration_s"] = time.perf_counter() - t0
    print(f"  tvm_mpq import + calibration: {compile_log['import_and_calibration_s']:.1f} s "
          f"({len(q.group_names)} groups)", flush=True)
    dev = tvm.cpu()
    rows = []
    for cand in candidates:
        row = Row(f"tvm_mpq {cand}", "tvm_mpq")
        rows.append(row)
        print(f"  tvm_mpq {cand:7} compiling ...", end="", flush=True)
        try:
            module = q.realize(cand)
        except Exception as e:  # noqa: BLE001
            row.skip = f"realize failed: {_short(e)}"
            print(f" {row.skip}", flush=True)
            continue
        row.compile_s = module.compile_seconds
        compile_log[cand] = module.compile_seconds
        print(f" {module.compile_seconds:6.1f} s", flush=True)
        try:
            row.output = module.run(*case.timed)
        except Exception as e:  # noqa: BLE001
            row.skip = f"run failed: {_short(e)}"
            continue
        if isinstance(row.output, tuple):
            row.output = row.output[0]
        vm = relax.VirtualMachine(module.executable, dev)
        args = [tvm.runtime.tensor(a) for a in case.timed]

        def bind(threads, vm=vm, args=args):
            def call():
                return vm["main"](*args)

            def timed(number):
                return vm.time_evaluator("main", dev, number=number, repeat=1)(*args).results[0]

            return call, timed

        row.bind = bind
    return rows


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------


def measure(rows: list[Row], threads: int) -> dict[str, dict]:
    """Interleaved repeats of every runnable row at ``threads``; per row: median, min, samples."""
    set_threads(threads)
    bound = []
    for row in rows:
        if row.skip:
            continue
        try:
            call, timed = row.bind(threads)
            for _ in range(WARMUP):
                call()
            once = max(timed(1), 1e-6)
            bound.append((row, call, timed, max(1, math.ceil(MIN_MS / 1e3 / once))))
        except Exception as e:  # noqa: BLE001
            row.skip = f"failed at {threads} thread(s): {_short(e)}"
    samples = {row.name: [] for row, *_ in bound}
    for k in range(REPEAT):
        order = bound[k % len(bound):] + bound[: k % len(bound)] if bound else []
        for row, call, timed, number in order:
            if row.skip:
                continue
            try:
                call()  # untimed: absorbs the previous runtime's spinning threads
                samples[row.name].append(timed(number) * 1e3)
            except Exception as e:  # noqa: BLE001
                row.skip = f"failed at {threads} thread(s): {_short(e)}"
    out = {}
    for row, _, _, number in bound:
        s = samples[row.name]
        if s and not row.skip:
            out[row.name] = {"median_ms": float(np.median(s)), "min_ms": float(np.min(s)),
                             "samples_ms": [round(v, 4) for v in s], "calls_per_repeat": number}
    return out


def _sqnr(case: ModelCase, ref, row: Row):
    if row.output is None or ref is None:
        return None
    try:
        out = np.asarray(row.output).reshape(ref.shape)
        return float(sqnr_db(case.compare(ref), case.compare(out)))
    except Exception:  # noqa: BLE001
        return None


def fmt_table(case: ModelCase, title: str, rows: list[Row], timing: dict, threads: int) -> str:
    ref = next((r.output for r in rows if r.name == "PyTorch fp32 eager"), None)
    base_fp32 = timing.get("PyTorch fp32 eager", {}).get("median_ms")
    base_ort = timing.get("ONNX Runtime int8 QDQ", {}).get("median_ms")
    head = (f"{title} -- {threads} thread(s); median of {REPEAT} interleaved repeats of >= {MIN_MS:g} ms "
            f"after {WARMUP} warm-up calls")
    lines = [head, f"  {'runtime':34} {'median ms':>10} {'min ms':>9} {'SQNR dB':>8} "
                   f"{'/ORT int8':>10} {'/torch fp32':>12}"]
    for r in rows:
        if "median_ms" not in timing.get(r.name, {}):
            lines.append(f"  {r.name:34} skipped: {r.skip or 'not measured'}")
            continue
        t = timing[r.name]
        s = _sqnr(case, ref, r)
        sq = "ref" if r.name == "PyTorch fp32 eager" else ("inf" if s == math.inf else
                                                            ("-" if s is None else f"{s:.1f}"))
        ro = rf = ""
        if r.family == "tvm_mpq":
            ro = f"{t['median_ms'] / base_ort:9.2f}x" if base_ort else "     n/a"
            rf = f"{t['median_ms'] / base_fp32:11.2f}x" if base_fp32 else "     n/a"
        lines.append(f"  {r.name:34} {t['median_ms']:10.2f} {t['min_ms']:9.2f} {sq:>8} {ro:>10} {rf:>12}")
    lines.append("  ratios: tvm_mpq median / other median (< 1: tvm_mpq faster); SQNR: output vs PyTorch fp32")
    return "\n".join(lines)


def machine_info() -> dict:
    info = {"python": platform.python_version(), "cpus": os.cpu_count(), "tvm": tvm.__version__}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        pass
    for pkg in ("torch", "onnxruntime", "onnx"):
        try:
            info[pkg] = __import__(pkg).__version__
        except ImportError:
            info[pkg] = None
    try:
        info["target"] = str(host_target().target)
    except Exception as e:  # noqa: BLE001
        info["target"] = f"unknown ({_short(e)})"
    return info


def main():
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    keys = [k.strip() for k in ARGS.models.split(",") if k.strip()]
    bad = [f for f in FAMILIES if f not in RUNTIME_FAMILIES]
    if bad or not FAMILIES:
        raise SystemExit(f"--runtimes: unknown {bad or 'empty list'}; use {', '.join(RUNTIME_FAMILIES)}")
    for k in keys:
        if k not in MODEL_TITLES:
            raise SystemExit(f"unknown model {k!r}: use {', '.join(MODEL_TITLES)}")
    info = machine_info()
    print(f"host: {info.get('cpu')} ({info['cpus']} CPUs visible), target {info['target']}")
    print(f"versions: tvm {info['tvm']}, torch {info['torch']}, onnxruntime {info['onnxruntime']}, "
          f"onnx {info['onnx']}")
    print(f"threads {THREADS}; repeats {REPEAT} of >= {MIN_MS:g} ms; load average {os.getloadavg()[0]:.1f}\n",
          flush=True)
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": info,
              "settings": {"threads": THREADS, "repeat": REPEAT, "min_ms": MIN_MS, "warmup": WARMUP,
                           "quick": ARGS.quick, "calibration_samples": N_CALIB, "seq_len": SEQ_LEN,
                           "candidates": ARGS.candidates.split(","),
                           "ratio": "tvm_mpq median ms / other median ms, same run, same thread count"},
              "models": {}}
    out_path = Path(ARGS.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tables = []
    with tempfile.TemporaryDirectory(prefix="tvm_mpq_runtimes_") as tmp:
        for key in keys:
            title = MODEL_TITLES[key]
            print(f"== {title}", flush=True)
            entry = result["models"].setdefault(key, {"title": title})
            try:
                case = load_case(key)
            except Exception as e:  # noqa: BLE001 - e.g. ModelUnavailable: skip the model, say why
                entry["skipped"] = _short(e, 300)
                print(f"  skipped: {entry['skipped']}\n", flush=True)
                continue
            entry["data"] = case.data_note
            print(f"  {case.data_note}", flush=True)
            compile_log: dict = {}
            rows = []
            makers = {"torch": lambda: torch_rows(case), "ort": lambda: ort_rows(case, Path(tmp)),
                      "tvm_mpq": lambda: tvm_rows(case, compile_log)}
            for make in (makers[f] for f in FAMILIES):
                try:
                    rows += make()
                except Exception as e:  # noqa: BLE001 - never lose the whole run
                    print(f"  unexpected failure preparing rows: {_short(e)}", flush=True)
                    traceback.print_exc()
            entry["tvm_mpq_compile_s"] = compile_log
            entry["rows"] = {r.name: {"family": r.family, "note": r.note, "prepare_s": r.compile_s}
                             for r in rows}
            entry["threads"] = {}
            ref = next((r.output for r in rows if r.name == "PyTorch fp32 eager"), None)
            for threads in THREADS:
                load = os.getloadavg()[0]
                timing = measure(rows, threads)
                for r in rows:
                    if r.name in timing:
                        timing[r.name]["sqnr_vs_torch_fp32_db"] = _sqnr(case, ref, r)
                    elif r.skip:
                        timing[r.name] = {"skipped": r.skip}
                for base_name, tag in (("ONNX Runtime int8 QDQ", "ratio_vs_ort_int8"),
                                       ("PyTorch fp32 eager", "ratio_vs_torch_fp32")):
                    base = timing.get(base_name, {}).get("median_ms")
                    for r in rows:
                        if r.family == "tvm_mpq" and base and "median_ms" in timing.get(r.name, {}):
                            timing[r.name][tag] = timing[r.name]["median_ms"] / base
                entry["threads"][str(threads)] = {"load_average_before": load, "rows": timing}
                table = fmt_table(case, title, rows, timing, threads)
                if max(load, os.getloadavg()[0]) > (os.cpu_count() or 1):
                    table += (f"\n  WARNING: load average {load:.1f} > {os.cpu_count()} CPUs: other work shares "
                              f"the cores, timings are noisy (multi-threaded ones most)")
                tables.append(table)
                print(table + f"\n  (load average before: {load:.1f})\n", flush=True)
            for r in rows:
                if r.skip:
                    entry["rows"][r.name]["skipped"] = r.skip
                if r.note and not r.skip:
                    print(f"  {r.name}: {r.note}")
            if compile_log:
                parts = [f"{c} {s:.1f} s" for c, s in compile_log.items() if c != "import_and_calibration_s"]
                print(f"  tvm_mpq compile (realize + build, no tuning): {', '.join(parts)}; import + "
                      f"calibration {compile_log.get('import_and_calibration_s', float('nan')):.1f} s once")
            print(flush=True)
            out_path.write_text(json.dumps(result, indent=1, default=float) + "\n")
    if len(keys) > 1:
        print("\n\n".join(tables))
    out_path.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(f"\nwrote {out_path}")


if __name__ == "__main__":
    sys.exit(main())
