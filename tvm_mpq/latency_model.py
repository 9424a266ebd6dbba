"""Predicted per-op latency: an XGBoost regressor trained on measurements of the same target.

Measuring every (op, candidate) of a large model costs a compile and a timing each; the predicted
cost model measures a sample (or reuses any measurements in the latency cache) and predicts the
rest. ``LatencyModel.fit(entries, target)`` trains on latency-cache entries (their op ``spec`` is
what ``tvm_mpq.latency.one_op_module`` records); features (``features``):

* op kind (conv2d / depthwise conv2d / dense / activation x activation matmul);
* shapes: batch, input / output channels, spatial size, kernel, stride, groups, the GEMM view
  (M, N, K), element counts of input, weight and output;
* work and traffic: MACs, bytes of activations read (at the candidate's activation width), bytes of
  weights (at the weight width; int4 half a byte), bytes written, MACs per byte;
* the candidate: weight bits, activation bits (of each operand), float or not, zero point present,
  accumulator bits, int4 unpacking;
* layout (NCHW/OIHW, the only one realized today; dense weight transposed or not);
* the target: vector width in bits, VNNI, AVX-512, NEON / dot-product, core count;
* (v2) what the kernel does per element and how the shape fits its register tiles: logs of the
  element counts and of M, N, K; elements quantized on the way in; float kernel, int16-pair
  (``vpmaddwd``) path, odd reduction (pair padding), 8-bit conv computed in float32; accumulator
  lanes per vector; the tile's vector axis (output columns / pixels, or channels where rows are
  too short) and block axis, whether the vector axis is ragged (7, 14, 28 pixels), the lanes and
  rows wasted on partial tiles, the tile the template schedules would pick and its efficiency,
  and MACs padded to whole tiles.

Latency = a *roofline baseline* x a learned correction. The baseline is a sum of work counts at
non-negative rates fitted to the measurements for relative error: a per-call overhead (plus one
for each extra kernel of a quantized op), tile-padded MACs at the rate of their kernel class (op:
conv / depthwise / dense / matmul x arithmetic: float, int16 pairs, other int8 / int16, int64
accumulators, int4 weights), MACs on ragged vectors, elements quantized, output elements (the
dequantizing epilogue), int4 weights unpacked, bytes read. Boosted trees (XGBoost, fixed seed)
then regress log(measured / baseline) from the features and the baseline itself, so they model
what the roofline misses rather than four decades of scale. ``fit`` reports the model's own
error on layer *shapes* it never saw (every candidate of a held-out shape is held out
together): median absolute relative error and Spearman rank correlation. Saved per target as
one JSON file -- XGBoost's own ``save_model`` JSON with the feature names, the baseline's rates,
the target and the held-out report as booster attributes -- and loaded without re-measuring.
Nothing is pickled.

``PredictedLatency`` is the cost model (unit "ms"): measured latency where the cache has it,
the prediction elsewhere, plus the constant C of ``tvm_mpq.latency`` (measured once when a device
is given, else 0).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from tvm_mpq.passes.integer_ops import float_conv_pays
from tvm_mpq.targets import parse_target

from .config import DEFAULT_CANDIDATES, FLOAT, Candidate, Config
from .latency import (
    METHOD,
    LatencyCache,
    LatencyError,
    LocalDevice,
    PerOpLatency,
    end_to_end_task,
    op_candidate_key,
    op_tasks,
    pipeline_digest,
    run_tasks,
)

__all__ = ["LatencyModel", "PredictedLatency", "features", "FEATURES", "current_entries", "held_out_split", "spearman"]

MODEL_FORMAT = "tvm_mpq.latency-model/2"

FEATURES = (
    "kind_conv2d", "kind_depthwise", "kind_dense", "kind_matmul",
    "batch", "c_in", "c_out", "h_in", "w_in", "h_out", "w_out", "kh", "kw", "stride", "groups",
    "gemm_m", "gemm_n", "gemm_k",
    "in_elems", "in1_elems", "weight_elems", "out_elems",
    "log_macs", "macs", "in_bytes", "weight_bytes", "out_bytes", "log_bytes", "macs_per_byte",
    "w_bits", "a_bits", "a1_bits", "is_float", "zero_point", "acc_bits", "int4_unpack",
    "layout_nchw", "weight_transposed",
    "vector_bits", "vnni", "avx512", "neon", "dotprod", "cores",
    # v2: logs, what the kernel does per element, and how the shape fits its register tiles
    "log_in_elems", "log_out_elems", "log_weight_elems", "log_gemm_m", "log_gemm_n", "log_gemm_k",
    "quant_elems", "log_quant_elems", "float_kernel", "pair_path", "k_odd", "pair_waste", "int_as_float",
    "acc_lanes", "vec_ext", "blk_ext", "vec_swapped", "vec_ragged", "vec_waste", "blk_waste", "vec_div16", "vec_div32",
    "tile_vi", "tile_bf", "tile_eff", "eff_macs", "log_eff_macs",
)  # fmt: skip


def _prod(xs) -> float:
    return float(np.prod([int(x) for x in xs])) if xs else 0.0


def _bits(key: str) -> tuple[float, float, float]:
    """(weight bits, activation bits of operand 0, of operand 1) of a candidate key; float = 32."""
    if key == "float":
        return 32.0, 32.0, 32.0
    if key.startswith("w"):
        c = Candidate.parse(key)
        return float(c.weight_bits), float(c.activation_bits), 0.0
    parts = [32.0 if p == "f" else float(p[1:]) for p in key.split("x")]
    return 0.0, parts[0], parts[1]


def _target_features(target) -> dict[str, float]:
    if target is None:
        return {"vector_bits": 0.0, "vnni": 0.0, "avx512": 0.0, "neon": 0.0, "dotprod": 0.0, "cores": 0.0}
    t = parse_target(target)
    return {
        "vector_bits": float(t.vector_bits), "vnni": float(t.has_vnni), "avx512": float(t.has_avx512),
        "neon": float("neon" in t.features), "dotprod": float("dotprod" in t.features),
        "cores": float(t.num_cores or os.cpu_count() or 1),
    }


def _cdiv(a: float, b: float) -> float:
    return float(-(-int(a) // int(b))) if b else 0.0


def _tile_cost(vi: int, bf: int, b: int | None, lanes: int, narrow: bool, pairs: bool) -> float:
    """Useful MACs per unit of issue cost of a ``bf`` x ``vi`` register tile, by the template
    schedules' own cost model (``TiledReduction.tile_score``)."""
    from tvm_mpq.targets.schedules import TiledReduction

    return float(TiledReduction.tile_score(int(vi), int(bf), 1, None if not b else int(b), int(lanes), narrow, pairs))


def _tile(v: int, b: int | None, lanes: int, narrow: bool, pairs: bool) -> tuple[int, int]:
    """(vector length, block rows) of the register tile the template schedules pick, asked of
    ``TiledReduction._tile`` itself, so the features follow the schedules."""
    from tvm_mpq.targets.schedules import TiledReduction

    vi, bf, _ = TiledReduction()._tile(int(v), None if not b else int(b), int(lanes), bool(narrow), bool(pairs))
    return int(vi), int(bf)


def features(spec: Mapping, target=None) -> dict[str, float]:
    """The feature vector (``FEATURES`` order) of one op measurement's spec on ``target``."""
    kind = spec["kind"]
    ins = [list(s) for s in spec["inputs"]]
    x = ins[0]
    out = list(spec["output"])
    w = list(spec["weight"] or [])
    attrs = spec.get("attrs") or {}
    key = spec["candidate"]
    wb, ab, ab1 = _bits(key)
    is_float = key == "float"
    f = dict.fromkeys(FEATURES, 0.0)
    f["kind_conv2d"] = float(kind == "conv2d")
    f["kind_dense"] = float(kind == "dense")
    f["kind_matmul"] = float(kind == "matmul")
    groups = 1
    if kind == "conv2d":
        groups = int(attrs.get("groups", 1))
        f["kind_depthwise"] = float(groups > 1 and groups == x[1])
        f.update(batch=x[0], c_in=x[1], h_in=x[2], w_in=x[3], c_out=out[1], h_out=out[2], w_out=out[3],
                 kh=w[2], kw=w[3], stride=(attrs.get("strides") or [1])[0], groups=groups,
                 gemm_m=x[0] * out[2] * out[3], gemm_n=out[1], gemm_k=_prod(w[1:]))
    elif kind == "dense":
        k = x[-1]
        n = out[-1]
        f.update(batch=_prod(x[:-1]), c_in=k, c_out=n, gemm_m=_prod(x[:-1]), gemm_n=n, gemm_k=k)
    else:  # matmul: [..., M, K] x [..., K, N]
        y = ins[1]
        f.update(batch=_prod(x[:-2]), gemm_m=x[-2], gemm_k=x[-1], gemm_n=y[-1], c_in=x[-1], c_out=y[-1])
    f["in_elems"] = _prod(x)
    f["in1_elems"] = _prod(ins[1]) if len(ins) > 1 else 0.0
    f["weight_elems"] = _prod(w)
    f["out_elems"] = _prod(out)
    macs = float(spec.get("macs", 0))
    f["macs"] = macs
    f["log_macs"] = math.log10(macs + 1.0)
    # Bytes: every op reads float32 and quantizes it in the measured module; the kernel then reads
    # the integers. Count the kernel's operands at their stored width.
    a_bytes = 4.0 if is_float else (1.0 if ab <= 8 else 2.0)
    a1_bytes = 4.0 if ab1 >= 32 else (1.0 if ab1 <= 8 else 2.0)
    w_bytes = 4.0 if is_float else {4.0: 0.5, 8.0: 1.0, 16.0: 2.0}.get(wb, 1.0)
    f["in_bytes"] = f["in_elems"] * a_bytes + f["in1_elems"] * a1_bytes
    f["weight_bytes"] = f["weight_elems"] * w_bytes
    f["out_bytes"] = f["out_elems"] * 4.0
    total = f["in_bytes"] + f["weight_bytes"] + f["out_bytes"]
    f["log_bytes"] = math.log10(total + 1.0)
    f["macs_per_byte"] = macs / total if total else 0.0
    f["w_bits"], f["a_bits"], f["a1_bits"] = wb, ab, ab1
    f["is_float"] = float(is_float)
    f["zero_point"] = float(any(z for z in spec.get("zero_points", []) if z))
    acc = (spec.get("realized") or {}).get("accumulator", "float32")
    f["acc_bits"] = 64.0 if "64" in acc else 32.0
    f["int4_unpack"] = float("int4" in (spec.get("realized") or {}).get("weight", ""))
    f["layout_nchw"] = float((attrs.get("layout") or "NCHW/OIHW") == "NCHW/OIHW")
    f["weight_transposed"] = float(bool(spec.get("weight_transposed")))
    f.update(_target_features(target))

    # -- v2 features
    for k in ("in_elems", "out_elems", "weight_elems", "gemm_m", "gemm_n", "gemm_k"):
        f[f"log_{k}"] = math.log10(f[k] + 1.0)
    # Elements quantized on the way in (every integer operand), the requantizing epilogue's work
    # is per output element (out_elems).
    f["quant_elems"] = (0.0 if ab >= 32 else f["in_elems"]) + (0.0 if ab1 >= 32 or not ab1 else f["in1_elems"])
    f["log_quant_elems"] = math.log10(f["quant_elems"] + 1.0)
    float_kernel = is_float or "float" in acc  # a float op, or a matmul with one float operand
    f["float_kernel"] = float(float_kernel)
    # The int16-pair (vpmaddwd) path: int32 accumulator, operands of <= 16 bits and an even
    # shared reduction axis (input channels of a regular conv, K of a GEMM). An odd one takes
    # another kernel: exact float32 for 8-bit regular convs (RGB stems), else int32 widening;
    # pair_waste is what padding it to pairs would cost.
    k_shared = 1.0 if f["kind_depthwise"] else (w[1] if kind == "conv2d" else f["gemm_k"])
    f["k_odd"] = float(int(k_shared) % 2 == 1 and k_shared > 1)
    f["pair_waste"] = _cdiv(k_shared, 2) * 2 / k_shared if k_shared > 1 else 1.0
    integer = not float_kernel
    # 8-bit convs realize.py emits as exact float32 sums (RGB stems, depthwise convs)
    f["int_as_float"] = float(integer and kind == "conv2d" and max(ab, wb) <= 8 and float_conv_pays(w, groups))
    f["pair_path"] = float(integer and f["acc_bits"] == 32 and not f["kind_depthwise"] and k_shared % 2 == 0
                           and f["int_as_float"] == 0.0)
    vector_lanes = max(1, int(f["vector_bits"] or 256) // 32)
    lanes = vector_lanes * 32 // int(f["acc_bits"]) if integer and not f["int_as_float"] else vector_lanes
    f["acc_lanes"] = float(lanes)
    # The register tile: vector axis = innermost output axis (output columns / pixels), block axis
    # = output channels (conv) or rows (GEMM); swapped where rows are too short for whole vectors.
    if kind == "conv2d":
        v, b = int(out[3]), (None if f["kind_depthwise"] else int(out[1]))
    else:
        v, b = int(out[-1]), int(out[-2]) if len(out) >= 2 else None
    if b is not None and v % lanes and b % lanes == 0:
        v, b = b, v
        f["vec_swapped"] = 1.0
    f["vec_ext"], f["blk_ext"] = float(v), float(b or 0)
    f["vec_ragged"] = float(v % lanes != 0)
    f["vec_waste"] = _cdiv(v, lanes) * lanes / v if v else 1.0
    f["vec_div16"], f["vec_div32"] = float(v % (2 * lanes) == 0), float(v % (4 * lanes) == 0)
    narrow = integer and not f["pair_path"] and not f["int_as_float"]
    vi, bf = _tile(max(v, 1), b, lanes, narrow, bool(f["pair_path"]))
    if b is None and kind == "conv2d":  # depthwise: output rows blocked
        h = int(out[2])
        if float_kernel or f["int_as_float"]:
            # the plane template (targets/depthwise.py): 8 pixels or a whole short row, rows up
            # to 8 accumulators
            vi = lanes if v % lanes == 0 else v
            regs = int(_cdiv(vi, lanes))
            bf = max(d for d in range(1, h + 1) if h % d == 0 and d * regs <= max(regs, 8))
        elif vi % lanes == 0:
            bf = max(d for d in range(1, min(8, h) + 1) if h % d == 0)
    eff = _tile_cost(vi, bf, b, lanes, narrow, bool(f["pair_path"]))
    f["tile_vi"], f["tile_bf"], f["tile_eff"] = float(vi), float(bf), eff
    f["blk_waste"] = _cdiv(b, bf) * bf / b if b else 1.0
    f["eff_macs"] = macs * f["vec_waste"] * f["blk_waste"]
    f["log_eff_macs"] = math.log10(f["eff_macs"] + 1.0)
    return {k: float(v) for k, v in f.items()}


def _matrix(specs: Sequence[Mapping], target) -> np.ndarray:
    rows = []
    for s in specs:
        f = features(s, target)
        rows.append([f[k] for k in FEATURES])
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(FEATURES))


_FI = {f: i for i, f in enumerate(FEATURES)}

#: The kernel classes whose MAC rate the roofline baseline learns apart: op class x arithmetic.
_OP_CLASSES = ("conv", "depthwise", "dense", "matmul")
#: float (or integers computed in float32), the int16-pair path, other int32-accumulator kernels
#: with 8-bit / 16-bit activations, int64 accumulators, int4 weights unpacked in the kernel.
_ARITH_CLASSES = ("float", "pair", "int8", "int16", "int64", "int4")


def _classes(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = lambda k: X[:, _FI[k]]  # noqa: E731
    op = np.where(c("kind_depthwise") > 0, 1, np.where(c("kind_dense") > 0, 2, np.where(c("kind_matmul") > 0, 3, 0)))
    arith = np.select(
        [(c("float_kernel") > 0) | (c("int_as_float") > 0), c("int4_unpack") > 0, c("acc_bits") > 32,
         c("pair_path") > 0, c("a_bits") <= 8],
        [0, 5, 4, 1, 2], default=3)
    return op, arith


def _baseline_columns(X: np.ndarray) -> np.ndarray:
    """Columns of the roofline baseline, each a count of one kind of work, in linear time: one
    call (and one more kernel for a quantized op, one more for int4 weights); MACs (tile-padded) of each kernel class, plus MACs of any class (the shared rate where a
    class was never measured), plus MACs on a ragged vector axis; elements quantized on the way in, float elements read; output
    elements (the dequantizing / requantizing epilogue, or the float write); weight elements
    unpacked (int4); operand and weight bytes the kernel reads at their stored widths; input elements re-laid-out by a strided conv."""
    X = np.asarray(X, dtype=np.float64)
    c = lambda k: X[:, _FI[k]]  # noqa: E731
    op, arith = _classes(X)
    emacs = c("eff_macs")
    # per call: the module, plus the extra kernels of a quantized op (input quantize) and of int4
    # weights (the unpack)
    cols = [np.ones(len(X)), 1.0 - c("is_float"), c("int4_unpack"), emacs]
    for i in range(len(_OP_CLASSES)):
        for j in range(len(_ARITH_CLASSES)):
            cols.append(emacs * ((op == i) & (arith == j)))
    for j in range(len(_ARITH_CLASSES)):  # a vector axis of no whole vectors (7, 14, 28 pixels)
        cols.append(emacs * c("vec_ragged") * (arith == j))
    cols += [c("quant_elems"), c("in_elems") * c("float_kernel"), c("out_elems") * (1 - c("is_float")),
             c("out_elems") * c("is_float"), c("weight_elems") * c("int4_unpack"), c("in_bytes"), c("weight_bytes"),
             c("in_elems") * (c("stride") > 1)]
    return np.stack(cols, axis=1)


def _nnls(A: np.ndarray, b: np.ndarray, ridge: float = 1e-8) -> np.ndarray:
    """min ||A x - b||^2 over x >= 0 (Lawson-Hanson active set, on normalized columns with a
    tiny ridge; all-zero columns get 0)."""
    scale = np.sqrt((A * A).sum(axis=0))
    live = np.flatnonzero(scale > 0)
    An = A[:, live] / scale[live]
    G = An.T @ An + ridge * np.eye(len(live))
    h = An.T @ b
    x = np.zeros(len(live))
    passive = np.zeros(len(live), dtype=bool)

    def solve(mask):
        z = np.zeros(len(live))
        idx = np.flatnonzero(mask)
        z[idx] = np.linalg.solve(G[np.ix_(idx, idx)], h[idx])
        return z

    for _ in range(10 * len(live) + 10):
        grad = h - G @ x
        free = ~passive & (grad > 1e-12)
        if not free.any():
            break
        passive[np.argmax(np.where(free, grad, -np.inf))] = True
        while True:
            z = solve(passive)
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            alpha = np.min(x[neg] / (x[neg] - z[neg]))
            x = x + alpha * (z - x)
            passive &= x > 1e-15
            x[~passive] = 0.0
    out = np.zeros(A.shape[1])
    out[live] = x / scale[live]
    return out


def _fit_baseline(X: np.ndarray, y_ms: np.ndarray) -> np.ndarray:
    """Non-negative work rates (ms per unit) of the baseline, fitted for *relative* error: every
    row divided by its measured time, then refined by a few reweighted passes towards least
    squares of log error (weights = measured / predicted)."""
    A = _baseline_columns(X)
    coef = _nnls(A / y_ms[:, None], np.ones(len(y_ms)))
    for _ in range(3):
        pred = np.maximum(A @ coef, 1e-9)
        wgt = 1.0 / np.sqrt(y_ms * pred)
        coef = _nnls(A * wgt[:, None], y_ms * wgt)
    return coef


def _baseline_ms(X: np.ndarray, coef: np.ndarray) -> np.ndarray:
    return np.maximum(_baseline_columns(X) @ coef, 1e-6)


def _tree_matrix(X: np.ndarray, log_base: np.ndarray) -> np.ndarray:
    return np.concatenate([X, (log_base / math.log(10.0))[:, None]], axis=1).astype(np.float32)


def shape_key(spec: Mapping) -> str:
    """A layer's shape, without the candidate: held-out splits keep all candidates of a shape together."""
    return json.dumps([spec["kind"], spec["inputs"], spec["weight"], spec["output"], spec.get("attrs")], sort_keys=True)


def held_out_split(specs: Sequence[Mapping], fraction: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices (train, test): ``fraction`` of the distinct layer shapes, all their candidates, held out."""
    shapes = sorted({shape_key(s) for s in specs})
    rng = np.random.default_rng(seed)
    n_test = max(1, int(round(fraction * len(shapes)))) if len(shapes) > 1 else 0
    test_shapes = set(rng.choice(shapes, size=n_test, replace=False).tolist()) if n_test else set()
    train = [i for i, s in enumerate(specs) if shape_key(s) not in test_shapes]
    test = [i for i, s in enumerate(specs) if shape_key(s) in test_shapes]
    return train, test


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""

    def ranks(v):
        v = np.asarray(v, dtype=np.float64)
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=np.float64)
        for val in np.unique(v):  # average ties
            idx = np.where(v == val)[0]
            if len(idx) > 1:
                r[idx] = r[idx].mean()
        return r

    if len(a) < 2:
        return float("nan")
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def error_report(measured: Sequence[float], predicted: Sequence[float]) -> dict:
    m, p = np.asarray(measured, np.float64), np.asarray(predicted, np.float64)
    rel = np.abs(p - m) / m
    return {
        "count": int(len(m)),
        "median_abs_rel_error": float(np.median(rel)) if len(m) else float("nan"),
        "mean_abs_rel_error": float(np.mean(rel)) if len(m) else float("nan"),
        "p90_abs_rel_error": float(np.quantile(rel, 0.9)) if len(m) else float("nan"),
        "spearman": spearman(m, p),
    }


def _op_entries(entries: Mapping[str, Mapping] | Iterable[Mapping]) -> list[Mapping]:
    values = entries.values() if isinstance(entries, Mapping) else entries
    return [e for e in values if e.get("spec", {}).get("kind") in ("conv2d", "dense", "matmul") and e.get("ms", 0) > 0]


#: Feature names the trees see: ``FEATURES`` and the log10 of the roofline baseline's prediction.
TREE_FEATURES = (*FEATURES, "log_baseline_ms")


def current_entries(entries: Mapping[str, Mapping]) -> dict[str, Mapping]:
    """The entries measured with this tvm_mpq's timing method and compilation pipeline (a cache
    keeps older ones, whose kernels or protocol differ: training on them would mix them in)."""
    digest = pipeline_digest()
    return {k: e for k, e in entries.items()
            if (e.get("spec") or {}).get("method") == METHOD and e["spec"].get("pipeline") == digest}


class LatencyModel:
    """Predicted ms = roofline baseline x exp(boosted trees); one model per target.

    The baseline (``_baseline_columns``) is a sum of work counts at non-negative learned rates:
    a per-call overhead, tile-padded MACs per kernel class (op x arithmetic), elements quantized,
    output elements, weights unpacked / read. The trees, on ``TREE_FEATURES``, regress the log of
    the measured / baseline ratio (XGBoost ``base_margin``), so they learn corrections (tile
    shapes, cache fits) rather than the four decades of scale.
    """

    #: Tuned by grouped cross-validation on layer shapes (benchmarks/latency_predicted.py --tune,
    #: splits apart from the reported ones) over 764 MobileNetV2 + MiniLM + random-zoo op
    #: measurements (v2 timing protocol, one thread): deeper trees than v1's depth 3 help once the
    #: data is clean. Held-out shapes, 5 splits: median error 7.9%, Spearman 0.991 (the v1 model
    #: on the same data: 14.3%, 0.982; the roofline baseline alone: 11.6%, 0.986).
    DEFAULT_PARAMS = {
        "objective": "reg:squarederror", "eta": 0.05, "max_depth": 6, "min_child_weight": 4.0,
        "subsample": 0.8, "colsample_bytree": 0.5, "lambda": 1.0, "alpha": 0.0, "seed": 0, "nthread": 1,
    }  # fmt: skip
    DEFAULT_ROUNDS = 400

    def __init__(self, booster, target, report: dict | None = None, trained_on: int = 0,
                 baseline: Sequence[float] | None = None, meta: dict | None = None):
        self.booster = booster
        self.target = parse_target(target)
        self.report = report or {}
        self.trained_on = trained_on
        #: Rates of the roofline baseline the trees correct (``_baseline_columns``).
        n = _baseline_columns(np.zeros((1, len(FEATURES)))).shape[1]
        self.baseline = np.asarray(baseline if baseline is not None else np.zeros(n), dtype=np.float64)
        #: What it was trained on (timing method, pipeline digest), for the saved file.
        self.meta = dict(meta or {})

    # ------------------------------------------------------------------------------ training
    @classmethod
    def fit(cls, entries, target=None, held_out: float = 0.2, seed: int = 0, rounds: int | None = None,
            params: dict | None = None, trees: bool = True) -> LatencyModel:
        """Train on latency-cache entries (a namespace's dict or a list). ``held_out`` of the layer
        shapes is held out first to measure the error, then the model is refit on everything.
        ``trees=False``: the roofline baseline alone."""
        import xgboost as xgb

        target = parse_target(target)
        ops = _op_entries(entries)
        if len(ops) < 4:
            raise LatencyError(f"{len(ops)} op measurement(s) are too few to train a latency model (need >= 4)")
        specs = [e["spec"] for e in ops]
        ms = np.array([e["ms"] for e in ops], dtype=np.float64)
        X = _matrix(specs, target)
        p = {**cls.DEFAULT_PARAMS, **(params or {})}
        p["seed"] = seed
        rounds = cls.DEFAULT_ROUNDS if rounds is None else rounds
        meta = {k: sorted({str(s.get(k)) for s in specs}) for k in ("method", "pipeline")}

        def train(idx):
            coef = _fit_baseline(X[idx], ms[idx])
            base = np.log(_baseline_ms(X[idx], coef))
            d = xgb.DMatrix(_tree_matrix(X[idx], base), label=np.log(ms[idx]), base_margin=base,
                            feature_names=list(TREE_FEATURES))
            # No trees: a booster of 0 rounds predicts its base margin, the baseline itself.
            return cls(xgb.train(p, d, rounds if trees else 0), target, baseline=coef, meta=meta)

        report = {}
        if held_out:
            train_idx, test_idx = held_out_split(specs, held_out, seed)
            if train_idx and test_idx:
                pred = train(train_idx).predict_specs([specs[i] for i in test_idx])
                report = {"held_out_shapes_fraction": held_out, "train": len(train_idx),
                          **error_report(ms[test_idx], pred)}
        model = train(list(range(len(ops))))
        model.report, model.trained_on = report, len(ops)
        return model

    # ------------------------------------------------------------------------------ predicting
    def predict_specs(self, specs: Sequence[Mapping]) -> np.ndarray:
        """Predicted ms of each op spec."""
        import xgboost as xgb

        if not specs:
            return np.zeros(0)
        X = _matrix(specs, self.target)
        base = np.log(_baseline_ms(X, self.baseline))
        d = xgb.DMatrix(_tree_matrix(X, base), base_margin=base, feature_names=list(TREE_FEATURES))
        return np.exp(self.booster.predict(d)).astype(np.float64)

    def evaluate(self, entries) -> dict:
        """Error of the predictions on measured ``entries`` (e.g. another model's layers)."""
        ops = _op_entries(entries)
        pred = self.predict_specs([e["spec"] for e in ops])
        return error_report([e["ms"] for e in ops], pred)

    # ------------------------------------------------------------------------------ saving
    def save(self, path: str | os.PathLike) -> str:
        """One JSON file: XGBoost's model JSON with our metadata as booster attributes. Written
        atomically. A directory ``path`` gets ``<target key>.json`` inside it."""
        path = os.fspath(path)
        if os.path.isdir(path) or path.endswith(os.sep):
            path = os.path.join(path, f"{self.target.key}.json")
        meta = {"format": MODEL_FORMAT, "target": self.target.to_dict(), "target_key": self.target.key,
                "features": list(FEATURES), "report": self.report, "trained_on": self.trained_on,
                "baseline": [float(c) for c in self.baseline], "trained": self.meta}
        self.booster.set_attr(tvm_mpq=json.dumps(meta))
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".tmp-{os.getpid()}-{os.path.basename(path)}")
        if not tmp.endswith(".json"):
            tmp += ".json"  # xgboost picks the format from the suffix
        try:
            self.booster.save_model(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, target=None) -> LatencyModel:
        """Load a saved model (a file, or a directory holding ``<target key>.json`` for ``target``)."""
        import xgboost as xgb

        path = os.fspath(path)
        if os.path.isdir(path):
            if target is None:
                raise LatencyError(f"{path!r} is a directory: give the target whose model to load")
            path = os.path.join(path, f"{parse_target(target).key}.json")
        if not os.path.exists(path):
            raise LatencyError(f"no latency model at {path!r}: train one with LatencyModel.fit and save it")
        booster = xgb.Booster()
        booster.load_model(path)
        raw = booster.attr("tvm_mpq")
        meta = json.loads(raw) if raw else {}
        if meta.get("format") != MODEL_FORMAT:
            if str(meta.get("format", "")).startswith("tvm_mpq.latency-model/"):
                raise LatencyError(f"{path!r} was saved by another tvm_mpq version (format {meta['format']!r}, "
                                   f"expected {MODEL_FORMAT!r}); retrain it with LatencyModel.fit")
            raise LatencyError(f"{path!r} is not a tvm_mpq latency model (format {meta.get('format')!r})")
        if meta.get("features") != list(FEATURES):
            raise LatencyError(f"{path!r} was trained on other features; retrain it with this tvm_mpq")
        saved_target = parse_target(meta["target"])
        if target is not None and parse_target(target).key != saved_target.key:
            raise LatencyError(
                f"{path!r} predicts for target {saved_target.key}, not {parse_target(target).key}: "
                "latency models are per target"
            )
        return cls(booster, saved_target, meta.get("report"), meta.get("trained_on", 0), meta.get("baseline"),
                   meta.get("trained"))


class PredictedLatency(PerOpLatency):
    """Latency of a configuration in ms: measured where the cache has the (op, candidate), predicted
    by ``model`` elsewhere; plus the constant C (see tvm_mpq.latency), measured when ``device`` is
    given (one end-to-end run of the float model), else ``constant_ms``.

    ``PredictedLatency.from_sample(quantizer, device, fraction=0.3)`` measures a random sample of
    the distinct (op, candidate) signatures, trains the model on every measurement of the device in
    the cache, and predicts the rest.
    """

    name = "predicted_latency"
    unit = "ms"

    def __init__(self, quantizer, model: LatencyModel, candidates=None, cache=None, device=None,
                 namespace: str | None = None, constant_ms: float = 0.0, use_measured: bool = True):
        self.quantizer = quantizer
        self.model = model
        self.candidates = [Candidate.parse(c) for c in (candidates or DEFAULT_CANDIDATES)]
        self.cache = cache if isinstance(cache, LatencyCache) else LatencyCache(cache)
        self.device = device
        ns = namespace or (device.namespace if device is not None else model.target.key)
        self.namespace = ns
        self.signatures, tasks = op_tasks(quantizer, self.candidates)
        self._specs = {t.signature: t.spec for t in tasks}
        measured = {s: self.cache.get(ns, s) for s in self._specs} if use_measured else {}
        measured = {s: e["ms"] for s, e in measured.items() if e}
        todo = [s for s in self._specs if s not in measured]
        pred = dict(zip(todo, self.model.predict_specs([self._specs[s] for s in todo])))
        self.source = {s: ("measured" if s in measured else "predicted") for s in self._specs}
        by_sig = {**pred, **measured}
        self.table = {k: float(by_sig[s]) for k, s in self.signatures.items()}
        self.constant_ms = float(constant_ms)
        if device is not None:
            float_cfg = Config.uniform(quantizer.group_names, FLOAT)
            sigs = {n: self.signatures[(n, op_candidate_key(quantizer, n, float_cfg))] for n in quantizer.graph.ops}
            task = end_to_end_task(quantizer, float_cfg, sigs, "float")
            e2e = run_tasks(device, [task], self.cache)[task.signature]["ms"]
            self.constant_ms = e2e - self.sum_of_layers(float_cfg)

    @classmethod
    def from_sample(cls, quantizer, device=None, fraction: float = 0.3, candidates=None, cache=None,
                    seed: int = 0, progress: bool = False, **fit_kwargs) -> PredictedLatency:
        """Measure ``fraction`` of the distinct signatures (at least 8), fit (on every measurement of
        the device in the cache made with the current method and pipeline), predict the rest."""
        device = device or LocalDevice(quantizer.target)
        cache = cache if isinstance(cache, LatencyCache) else LatencyCache(cache)
        cands = [Candidate.parse(c) for c in (candidates or DEFAULT_CANDIDATES)]
        _, tasks = op_tasks(quantizer, cands)
        rng = np.random.default_rng(seed)
        n = min(len(tasks), max(8, int(math.ceil(fraction * len(tasks)))))
        sample = [tasks[i] for i in sorted(rng.choice(len(tasks), size=n, replace=False))]
        run_tasks(device, sample, cache, progress)
        model = LatencyModel.fit(current_entries(cache.entries(device.namespace)), device.target, **fit_kwargs)
        return cls(quantizer, model, cands, cache, device)

    def _latencies(self, tasks) -> dict[str, float]:
        specs = {t.signature: t.spec for t in tasks}
        return {s: float(ms) for s, ms in zip(specs, self.model.predict_specs(list(specs.values())))}

    @property
    def measured_fraction(self) -> float:
        return sum(1 for v in self.source.values() if v == "measured") / max(1, len(self.source))
