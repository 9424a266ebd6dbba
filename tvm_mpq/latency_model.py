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
* the target: vector width in bits, VNNI, AVX-512, NEON / dot-product, core count.

It regresses log(ms) (latencies span four decades; relative error is what matters): a log-linear
baseline (least squares on log MACs, log bytes and the kernel-changing flags) corrected by
shallow boosted trees, with a fixed seed, and reports its own held-out error on layer *shapes* it never saw (every candidate of a
held-out shape is held out together): median absolute relative error and Spearman rank
correlation. Saved per target as one JSON file -- XGBoost's own ``save_model`` JSON with the
feature names, the target and the held-out report as booster attributes -- and loaded without
re-measuring. Nothing is pickled.

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

from tvm_mpq.targets import parse_target

from .config import DEFAULT_CANDIDATES, FLOAT, Candidate, Config
from .latency import (
    LatencyCache,
    LatencyError,
    LocalDevice,
    end_to_end_task,
    op_candidate_key,
    op_tasks,
    run_tasks,
)

__all__ = ["LatencyModel", "PredictedLatency", "features", "FEATURES", "held_out_split", "spearman"]

MODEL_FORMAT = "tvm_mpq.latency-model/1"

FEATURES = (
    "kind_conv2d", "kind_depthwise", "kind_dense", "kind_matmul",
    "batch", "c_in", "c_out", "h_in", "w_in", "h_out", "w_out", "kh", "kw", "stride", "groups",
    "gemm_m", "gemm_n", "gemm_k",
    "in_elems", "in1_elems", "weight_elems", "out_elems",
    "log_macs", "macs", "in_bytes", "weight_bytes", "out_bytes", "log_bytes", "macs_per_byte",
    "w_bits", "a_bits", "a1_bits", "is_float", "zero_point", "acc_bits", "int4_unpack",
    "layout_nchw", "weight_transposed",
    "vector_bits", "vnni", "avx512", "neon", "dotprod", "cores",
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
    return {k: float(v) for k, v in f.items()}


def _matrix(specs: Sequence[Mapping], target) -> np.ndarray:
    return np.array([[features(s, target)[k] for k in FEATURES] for s in specs], dtype=np.float32)


_FI = {f: i for i, f in enumerate(FEATURES)}


def _baseline_matrix(X: np.ndarray) -> np.ndarray:
    """Columns of the log-linear baseline: log work, log traffic, and what changes the kernel."""
    X = np.asarray(X, dtype=np.float64)
    cols = [np.log10(X[:, _FI[k]] + 1.0) for k in ("macs", "in_bytes", "weight_bytes", "out_bytes")]
    cols += [X[:, _FI[k]] for k in ("kind_depthwise", "kind_dense", "kind_matmul", "is_float", "int4_unpack",
                                    "zero_point")]
    cols += [X[:, _FI["a_bits"]] / 16.0, np.ones(len(X))]
    return np.stack(cols, axis=1)


def _fit_baseline(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    A = _baseline_matrix(X)
    # A little ridge: constant columns (a model of convolutions only has no dense rows) stay at 0.
    reg = 1e-3 * np.eye(A.shape[1])
    return np.linalg.solve(A.T @ A + reg, A.T @ y)


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


class LatencyModel:
    """XGBoost regressor of log(ms) from ``features``; one per target."""

    #: Shallow trees on top of a log-linear baseline: measured on 620 MobileNetV2 + random-zoo
    #: layers (5 held-out-shape splits), the baseline + depth 3 cut the median error from 45% to
    #: 36% and raised Spearman from 0.91 to 0.94 against depth-6 trees alone.
    DEFAULT_PARAMS = {
        "objective": "reg:squarederror", "eta": 0.05, "max_depth": 3, "min_child_weight": 1.0,
        "subsample": 0.9, "colsample_bytree": 0.9, "lambda": 1.0, "seed": 0, "nthread": 1,
    }  # fmt: skip

    def __init__(self, booster, target, report: dict | None = None, trained_on: int = 0,
                 baseline: Sequence[float] | None = None):
        self.booster = booster
        self.target = parse_target(target)
        self.report = report or {}
        self.trained_on = trained_on
        #: Coefficients of the log-linear baseline the trees correct (``_baseline_matrix``).
        self.baseline = np.asarray(baseline if baseline is not None else np.zeros(12), dtype=np.float64)

    # ------------------------------------------------------------------------------ training
    @classmethod
    def fit(cls, entries, target=None, held_out: float = 0.2, seed: int = 0, rounds: int = 300,
            params: dict | None = None) -> LatencyModel:
        """Train on latency-cache entries (a namespace's dict or a list). ``held_out`` of the layer
        shapes is held out first to measure the error, then the model is refit on everything."""
        import xgboost as xgb

        target = parse_target(target)
        ops = _op_entries(entries)
        if len(ops) < 4:
            raise LatencyError(f"{len(ops)} op measurement(s) are too few to train a latency model (need >= 4)")
        specs = [e["spec"] for e in ops]
        y = np.log(np.array([e["ms"] for e in ops], dtype=np.float64))
        X = _matrix(specs, target)
        p = {**cls.DEFAULT_PARAMS, **(params or {})}
        p["seed"] = seed
        report = {}
        def train(idx):
            coef = _fit_baseline(X[idx], y[idx])
            d = xgb.DMatrix(X[idx], label=y[idx], base_margin=_baseline_matrix(X[idx]) @ coef,
                            feature_names=list(FEATURES))
            return cls(xgb.train(p, d, rounds), target, baseline=coef)

        if held_out:
            train_idx, test_idx = held_out_split(specs, held_out, seed)
            if train_idx and test_idx:
                pred = train(train_idx).predict_specs([specs[i] for i in test_idx])
                report = {"held_out_shapes_fraction": held_out, "train": len(train_idx),
                          **error_report(np.exp(y[test_idx]), pred)}
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
        margin = _baseline_matrix(X) @ self.baseline
        d = xgb.DMatrix(X, base_margin=margin, feature_names=list(FEATURES))
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
                "baseline": [float(c) for c in self.baseline]}
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
            raise LatencyError(f"{path!r} is not a tvm_mpq latency model (format {meta.get('format')!r})")
        if meta.get("features") != list(FEATURES):
            raise LatencyError(f"{path!r} was trained on other features; retrain it with this tvm_mpq")
        saved_target = parse_target(meta["target"])
        if target is not None and parse_target(target).key != saved_target.key:
            raise LatencyError(
                f"{path!r} predicts for target {saved_target.key}, not {parse_target(target).key}: "
                "latency models are per target"
            )
        return cls(booster, saved_target, meta.get("report"), meta.get("trained_on", 0), meta.get("baseline"))


class PredictedLatency:
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
        """Measure ``fraction`` of the distinct signatures (at least 8), fit, predict the rest."""
        device = device or LocalDevice(quantizer.target)
        cache = cache if isinstance(cache, LatencyCache) else LatencyCache(cache)
        cands = [Candidate.parse(c) for c in (candidates or DEFAULT_CANDIDATES)]
        _, tasks = op_tasks(quantizer, cands)
        rng = np.random.default_rng(seed)
        n = min(len(tasks), max(8, int(math.ceil(fraction * len(tasks)))))
        sample = [tasks[i] for i in sorted(rng.choice(len(tasks), size=n, replace=False))]
        run_tasks(device, sample, cache, progress)
        model = LatencyModel.fit(cache.entries(device.namespace), device.target, **fit_kwargs)
        return cls(quantizer, model, cands, cache, device)

    def op_latency(self, op_name: str, config) -> float:
        key = op_candidate_key(self.quantizer, op_name, config)
        if (op_name, key) not in self.table:
            sig, tasks = op_tasks(self.quantizer, [Candidate.parse(config[g]) for g in config], [op_name])
            specs = {t.signature: t.spec for t in tasks}
            pred = dict(zip(specs, self.model.predict_specs(list(specs.values()))))
            self.table.update({k: float(pred[s]) for k, s in sig.items()})
            self.signatures.update(sig)
        return self.table[(op_name, key)]

    def per_op(self, config) -> dict[str, float]:
        config = self.quantizer.config(config)
        return {name: self.op_latency(name, config) for name in self.quantizer.graph.ops}

    def sum_of_layers(self, config) -> float:
        return float(sum(self.per_op(config).values()))

    def __call__(self, config) -> float:
        return self.sum_of_layers(config) + self.constant_ms

    @property
    def measured_fraction(self) -> float:
        return sum(1 for v in self.source.values() if v == "measured") / max(1, len(self.source))
