"""Per-op latency measured on the target: the cost the search trades accuracy against.

For every quantizable op and every candidate, ``one_op_module`` builds a Relax module holding just
that op *as the final module runs it*: ``RealizeQuantization`` applied to a module containing only
the op (input quantize, integer kernel with the int4 unpacking where there is one, zero-point
correction, dequantize by the per-channel scale; for the ``float`` candidate the float op itself),
weights bound as constants, compiled with ``tvm_mpq.targets.pipeline.build`` (the same fusion and
template schedules). It is timed with TVM's ``time_evaluator`` on a device -- here
(``LocalDevice``) or through TVM's RPC (``tvm_mpq.rpc.RPCDevice``): warm-up calls, then
``repeat`` repeats of at least ``min_repeat_ms`` each; the minimum repeat is the latency, in CPU
time of the calling thread where the op runs on it alone (local, one runtime thread), else in
wall time (``Timing``).

Identical layers share one measurement: an op's *signature* is a digest of what decides its code --
op kind, operand / weight / output shapes, conv attributes, the candidate, what the realization
chose for it (activation dtype, zero point present or not, weight storage, accumulator dtype) and
the compilation pipeline (a digest of the code of tvm_mpq's pipeline and schedules, comments and
docstrings left out, and of the TVM version, so changed schedules are measured afresh) --
and the cache (``LatencyCache``) keys measurements by (device namespace = target key [+ RPC key],
signature). The cache file is JSON, rewritten atomically after every measurement, so a crash or a
dead server loses nothing finished and a rerun measures only what is missing.

Cost of a configuration (``MeasuredLatency``, unit "ms")::

    cost(config) = sum over quantizable ops of latency(op, its candidate under config) + C
    C = end_to_end(all float) - sum over quantizable ops of latency(op, float)

``C`` stands for everything outside the quantizable ops (pooling, softmax, layer norm, residual
adds, the model's input/output handling) measured once, on the float model. It is a constant: it
does not change the ranking of configurations, only makes the figure comparable with a measured
end-to-end time. It is *not* clamped: where fusion makes the float model cheaper than its layers
timed apart, C is negative, and that is the honest correction. The sum of per-op latencies differs
from the real end-to-end time for known reasons -- in the whole module an op's input quantize fuses
into the producer's epilogue and its bias / activation / next quantize fuse into its own epilogue,
caches are warm or cold differently -- so ``MeasuredLatency.end_to_end_check`` measures realized
modules end to end and reports the sum-of-layers error for each.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import tvm
from tqdm.auto import tqdm
from tvm import relax

from tvm_mpq.passes.realize import RealizeQuantization
from tvm_mpq.targets import check_runnable_here, parse_target
from tvm_mpq.targets.pipeline import build

from .config import FLOAT, Candidate, Config, write_json_atomic
from .errors import ConfigError, TvmMpqError
from .plan import OpQuant
from .relax_utils import static_shape

__all__ = [
    "LatencyCache",
    "LatencyError",
    "LocalDevice",
    "MeasureTask",
    "MeasuredLatency",
    "Timing",
    "measure_ops",
    "op_candidate_key",
    "op_candidate_keys",
    "one_op_module",
]

CACHE_FORMAT = "tvm_mpq.latency-cache/1"
#: Part of every signature: change it when what a measurement means changes. v2: the latency is
#: the *minimum* over repeats of the per-call time, measured in CPU time of the calling thread
#: where the whole op runs on it (local CPU, one runtime thread), else in wall time (v1: the
#: median repeat in wall time, whose repeat-to-repeat spread on a shared machine was 30-50%).
METHOD = "one-op realized module, tvm_mpq pipeline; min over repeats, thread CPU time at 1 runtime thread else wall; v2"


class LatencyError(TvmMpqError):
    """A latency measurement could not be made (device unreachable, build or run failure)."""


# ---------------------------------------------------------------------------------------------
# Timing protocol
# ---------------------------------------------------------------------------------------------

CLOCKS = ("auto", "thread", "wall")
STATISTICS = ("min", "median")


@dataclass(frozen=True)
class Timing:
    """How one module is timed: ``warmup`` untimed calls, then ``repeat`` repeats, each running
    the module ``number`` times or more until it lasts ``min_repeat_ms``; each repeat gives the mean
    time per call within it, and ``statistic`` of the repeats (default the minimum) is the latency.

    ``clock``: ``"thread"`` -- CPU time of the calling thread (``time.thread_time``) around TVM's
    time_evaluator: what the op costs when it has a core to itself, blind to the time other jobs
    hold the core (valid only where the runtime does all the work on the calling thread: a local
    CPU with one runtime thread, e.g. ``TVM_NUM_THREADS=1``); ``"wall"`` -- time_evaluator's wall
    clock (a remote device, or several runtime threads); ``"auto"`` (default) -- ``"thread"``
    where it is valid, else ``"wall"``. Why the minimum: interference on a shared machine only adds
    time. Measured on MobileNetV2 one-op modules on 2 shared, overloaded cores (benchmarks/
    latency_measured.py --noise): two passes minutes apart differed by 29-51% (median over ops)
    with the v1 protocol (wall clock, median of 7 repeats of >= 20 ms) and by 1.3-3.3% with this
    one (thread CPU time, minimum of 15 repeats of >= 5 ms).
    """

    warmup: int = 3
    repeat: int = 15
    number: int = 1
    min_repeat_ms: float = 5.0
    clock: str = "auto"
    statistic: str = "min"

    def __post_init__(self):
        if self.clock not in CLOCKS:
            raise ConfigError(f"Timing.clock must be one of {CLOCKS}, not {self.clock!r}")
        if self.statistic not in STATISTICS:
            raise ConfigError(f"Timing.statistic must be one of {STATISTICS}, not {self.statistic!r}")

    def to_dict(self) -> dict:
        return {"warmup": self.warmup, "repeat": self.repeat, "number": self.number,
                "min_repeat_ms": self.min_repeat_ms, "clock": self.clock, "statistic": self.statistic}


class Runs(list):
    """Per-call seconds of each repeat (a list), with how they were taken: ``clock`` ("thread" or
    "wall"), ``statistic`` (what ``summarize`` reports as ``ms``) and, for the thread clock, the
    wall seconds of the same repeats (``wall``)."""

    def __init__(self, runs, clock: str, statistic: str, wall=None):
        super().__init__(float(r) for r in runs)
        self.clock, self.statistic = clock, statistic
        self.wall = None if wall is None else [float(w) for w in wall]


def runtime_threads() -> int | None:
    """The TVM runtime's thread count in this process (None when it cannot be asked)."""
    try:
        return int(tvm.get_global_func("runtime.NumThreads")())
    except Exception:  # noqa: BLE001 - an older runtime without the function
        return None


def _thread_clock_valid(dev) -> bool:
    return dev.dlpack_device_type() == 1 and runtime_threads() == 1  # kDLCPU in this process


def time_vm(vm: relax.VirtualMachine, dev, args: Sequence, timing: Timing) -> Runs:
    """Per-call seconds of each repeat of ``vm["main"](*args)`` under ``timing`` (see ``Timing``)."""
    clock = timing.clock
    if clock == "auto":
        clock = "thread" if _thread_clock_valid(dev) else "wall"
    if clock == "wall":
        for _ in range(timing.warmup):
            vm["main"](*args)
        ftimer = vm.time_evaluator(
            "main", dev, number=timing.number, repeat=timing.repeat, min_repeat_ms=int(timing.min_repeat_ms)
        )
        return Runs(ftimer(*args).results, "wall", timing.statistic)
    if not _thread_clock_valid(dev):
        raise LatencyError(
            f"Timing(clock='thread') needs a local CPU and one TVM runtime thread (here: {dev}, "
            f"{runtime_threads()} thread(s)); set TVM_NUM_THREADS=1 or use clock='wall'"
        )
    main = vm["main"]
    first = []
    for _ in range(max(1, timing.warmup)):
        c0 = time.thread_time_ns()
        main(*args)
        first.append(time.thread_time_ns() - c0)
    per_call_ns = max(min(first), 1000)
    number = max(timing.number, int(math.ceil(timing.min_repeat_ms * 1e6 / per_call_ns)))
    # time_evaluator runs 1 discarded + ``number`` calls back to back, all on this thread (one
    # runtime thread): its CPU time / (number + 1) is the CPU time per call, Python not included.
    ftimer = vm.time_evaluator("main", dev, number=number, repeat=1, min_repeat_ms=0)
    cpu, wall = [], []
    for _ in range(timing.repeat):
        w0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        ftimer(*args)
        cpu.append((time.thread_time_ns() - c0) * 1e-9 / (number + 1))
        wall.append((time.perf_counter_ns() - w0) * 1e-9 / (number + 1))
    return Runs(cpu, "thread", timing.statistic, wall)


def summarize(runs_s: Sequence[float], statistic: str | None = None) -> dict:
    """``ms``: ``statistic`` of the repeats (default: what ``time_vm`` was told, the minimum;
    the median for a plain list); ``min_ms`` / ``median_ms``, ``runs_ms``, and ``clock`` (and
    ``wall_min_ms`` for the thread clock) where ``runs_s`` came from ``time_vm``."""
    statistic = statistic or getattr(runs_s, "statistic", "median")
    runs_ms = [r * 1e3 for r in runs_s]
    med = float(np.median(runs_ms)) if runs_ms else float("nan")
    lo = float(min(runs_ms)) if runs_ms else float("nan")
    ms = lo if statistic == "min" else med
    if not (math.isfinite(ms) and ms > 0):
        raise LatencyError(f"timing returned a non-positive or non-finite time: {runs_ms}")
    out = {"ms": ms, "min_ms": lo, "median_ms": med, "runs_ms": [round(r, 6) for r in runs_ms]}
    if getattr(runs_s, "clock", None):
        out["clock"] = runs_s.clock
        out["statistic"] = statistic
    if getattr(runs_s, "wall", None):
        out["wall_min_ms"] = float(min(runs_s.wall)) * 1e3
    return out


# ---------------------------------------------------------------------------------------------
# Op candidates
# ---------------------------------------------------------------------------------------------


def _operand_key(c: Candidate) -> str:
    return "f" if c.is_float else f"a{c.activation_bits}"


def op_candidate_key(quantizer, op_name: str, config: Mapping[str, Candidate]) -> str:
    """What decides ``op_name``'s kernel under ``config``: its group's candidate ("w8a8", "float")
    for an op with weights; for an activation x activation matmul the activation width of each
    operand ("a8xa16", "fxa8"; "float" when both are float)."""
    graph = quantizer.graph
    op = graph.ops[op_name]
    cands = [Candidate.parse(config[graph.group_of(op_name, i).name]) for i in range(len(op.inputs))]
    if op.weight is not None:
        return str(cands[0])
    if all(c.is_float for c in cands):
        return "float"
    return "x".join(_operand_key(c) for c in cands)


def _parse_matmul_key(key: str) -> list[int | None]:
    if key == "float":
        return [None, None]
    return [None if p == "f" else int(p[1:]) for p in key.split("x")]


def op_candidate_keys(quantizer, op_name: str, candidates: Iterable[str | Candidate]) -> list[str]:
    """The candidate keys of ``op_name`` reachable with ``candidates`` (float always included)."""
    cands = [Candidate.parse(c) for c in candidates]
    if FLOAT not in cands:
        cands.append(FLOAT)
    op = quantizer.graph.ops[op_name]
    if op.weight is not None:
        return list(dict.fromkeys(str(c) for c in cands))
    widths = list(dict.fromkeys(_operand_key(c) for c in cands))
    keys = []
    for a in widths:
        for b in widths:
            keys.append("float" if a == b == "f" else f"{a}x{b}")
    return list(dict.fromkeys(keys))


def op_quant(quantizer, op_name: str, key: str) -> OpQuant:
    """The OpQuant of ``op_name`` at candidate ``key`` (as ``Quantizer.plan`` would make it)."""
    graph = quantizer.graph
    op = graph.ops[op_name]
    if op.weight is not None:
        c = Candidate.parse(key)
        if c.is_float:
            return OpQuant((None,))
        enc = quantizer.activation_encoding(graph.group_of(op_name, 0).name, c.activation_bits)
        wenc, wq = quantizer.weight_quant(op_name, c.weight_bits)
        return OpQuant((enc,), wenc, wq)
    bits = _parse_matmul_key(key)
    act = tuple(
        None if b is None else quantizer.activation_encoding(graph.group_of(op_name, i).name, b)
        for i, b in enumerate(bits)
    )
    return OpQuant(act)


# ---------------------------------------------------------------------------------------------
# One-op modules
# ---------------------------------------------------------------------------------------------


@dataclass
class OneOpModule:
    """A realized one-op Relax module (weights bound), its inputs and its signature."""

    op_name: str
    key: str
    mod: tvm.IRModule
    inputs: list[tuple[tuple[int, ...], str]]
    spec: dict
    signature: str

    def example_inputs(self, seed: int = 0) -> list[np.ndarray]:
        return random_inputs(self.inputs, seed)


def random_inputs(specs: Sequence[tuple[tuple[int, ...], str]], seed: int = 0) -> list[np.ndarray]:
    """Inputs for timing: standard normal floats, small non-negative integers (token ids, masks)."""
    rng = np.random.default_rng(seed)
    out = []
    for shape, dtype in specs:
        if np.issubdtype(np.dtype(dtype), np.floating):
            out.append(rng.standard_normal(shape).astype(dtype))
        else:
            out.append(np.ones(shape, dtype=dtype))
    return out


def _bindings(func: relax.Function) -> dict[str, relax.Expr]:
    return {b.var.name: b.value for blk in func.body.blocks for b in blk.bindings}


def _attrs_dict(call) -> dict:
    a = call.attrs
    if a is None or call.op.name != "relax.nn.conv2d":
        return {}
    return {
        "strides": [int(x) for x in a.strides],
        "padding": [int(x) for x in a.padding],
        "dilation": [int(x) for x in a.dilation],
        "groups": int(a.groups),
        "layout": f"{a.data_layout}/{a.kernel_layout}",
    }


def code_digest_text(source: str) -> str:
    """A module's code without its comments and docstrings (its AST, dumped): what a pipeline
    digest hashes, so that editing a comment does not invalidate every cached timing."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):  # fmt: skip
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


@functools.lru_cache(maxsize=None)
def pipeline_digest() -> str:
    """Digest of the compilation pipeline's code (tvm_mpq.targets: the pipeline, the schedule
    rules, fast math, the x86 intrinsics; tvm_mpq.passes.integer_ops: the kernels realize emits;
    ``code_digest_text``) and the TVM version: part of every signature, so new schedules never
    reuse old timings."""
    import inspect

    from tvm_mpq.passes import integer_ops
    from tvm_mpq.targets import depthwise, fast_math, pipeline, schedules, x86

    h = hashlib.sha256(tvm.__version__.encode())
    for m in (pipeline, schedules, depthwise, fast_math, x86, integer_ops):
        h.update(code_digest_text(inspect.getsource(m)).encode())
    return h.hexdigest()[:16]


def signature_of(spec: Mapping) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


def one_op_module(quantizer, op_name: str, key: str) -> OneOpModule:
    """Build ``op_name`` alone at candidate ``key``, realized exactly as ``Quantizer.realize`` does.

    The module is ``main(operands...)`` computing the op's output in float (the dequantized
    accumulator): what the op contributes to the whole module minus its fused float epilogue.
    """
    fm = quantizer.float_model
    op = quantizer.graph.ops[op_name]
    bind = _bindings(fm.main)
    call = bind[op.var]
    out_var = next(b.var for blk in fm.main.body.blocks for b in blk.bindings if b.var.name == op.var)

    weight_var = None
    weight_param = None
    if op.weight is not None:
        weight_param = next(v for v in fm.main.params if v.name == op.weight)
    act_positions = [0] if op.weight is not None else [0, 1]
    params = [relax.Var(f"x{i}", call.args[i].ty) for i in act_positions]
    bb = relax.BlockBuilder()
    fparams = list(params)
    if weight_param is not None:
        weight_var = relax.Var(op.weight, weight_param.ty)
        fparams.append(weight_var)
    with bb.function("main", fparams):
        with bb.dataflow():
            args = list(params)
            if op.weight is not None:
                if op.weight_transposed:
                    perm = bind[call.args[1].name]
                    args.append(bb.emit(relax.Call(perm.op, [weight_var], perm.attrs, perm.ty_args)))
                else:
                    args.append(weight_var)
            y = bb.emit(relax.Call(call.op, args, call.attrs, call.ty_args), name_hint=op.var)
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    mod = bb.get()

    oq = op_quant(quantizer, op_name, key)
    realize = RealizeQuantization(quantizer.graph, {op_name: oq})
    mod = realize(mod)
    if weight_param is not None:
        mod = relax.transform.BindParams("main", {op.weight: tvm.runtime.tensor(fm.params[op.weight])})(mod)

    info = realize.report[0] if realize.report else {"activation": "float", "weight": "float",
                                                     "accumulator": "float32"}
    inputs = [(static_shape(p.ty), str(p.ty.dtype)) for p in params]
    spec = {
        "method": METHOD,
        "pipeline": pipeline_digest(),
        "kind": op.kind,
        "candidate": key,
        "inputs": [list(s) for s, _ in inputs],
        "input_dtypes": [d for _, d in inputs],
        "weight": None if weight_param is None else list(static_shape(weight_param.ty)),
        "weight_transposed": bool(op.weight_transposed),
        "output": list(static_shape(out_var.ty)),
        "attrs": _attrs_dict(call),
        "macs": int(op.macs),
        "zero_points": [None if e is None else bool(int(e.zero_point)) for e in oq.act],
        "realized": {k: str(v) for k, v in sorted(info.items()) if k != "op"},
    }
    return OneOpModule(op_name, key, mod, inputs, spec, signature_of(spec))


# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------


class LatencyCache:
    """Measurements on disk: ``{"format", "namespaces": {namespace: {signature: entry}}}``.

    A namespace is a device's identity (the target key, plus ``@rpc:<key>`` for a remote device);
    an entry holds ``ms`` (the latency per call: the minimum over repeats -- ``Timing.statistic`` --
    of thread CPU time or wall time -- ``clock``; the spec's ``method`` names the protocol),
    ``min_ms`` / ``median_ms`` / ``runs_ms``, the op ``spec`` (what the predicted model trains
    on), the timing protocol (``timing``) and when it was measured. Every ``put`` re-reads the file,
    merges and rewrites it atomically (tvm_mpq.config.write_json_atomic), so two runs sharing a
    cache do not erase each other's entries and a killed run loses at most the measurement in
    flight. ``path=None`` keeps everything in memory.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self._data: dict[str, dict[str, dict]] = {}
        self._lock = threading.Lock()
        if self.path is not None and os.path.exists(self.path):
            self._data = self._read()

    def _read(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"latency cache {self.path!r} cannot be read ({e}); delete it or choose another path") from None
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
            raise ConfigError(
                f"{self.path!r} is not a tvm_mpq latency cache (format "
                f"{data.get('format') if isinstance(data, dict) else None!r}, expected {CACHE_FORMAT!r})"
            )
        return {ns: dict(v) for ns, v in data.get("namespaces", {}).items()}

    def get(self, namespace: str, signature: str) -> dict | None:
        return self._data.get(namespace, {}).get(signature)

    def entries(self, namespace: str | None = None) -> dict[str, dict]:
        """Every entry of ``namespace`` (or of all namespaces, keyed ``namespace/signature``)."""
        if namespace is not None:
            return dict(self._data.get(namespace, {}))
        return {f"{ns}/{s}": e for ns, d in self._data.items() for s, e in d.items()}

    @property
    def namespaces(self) -> list[str]:
        return list(self._data)

    def put(self, namespace: str, signature: str, entry: dict) -> None:
        with self._lock:
            if self.path is not None and os.path.exists(self.path):
                for ns, d in self._read().items():
                    for s, e in d.items():
                        self._data.setdefault(ns, {}).setdefault(s, e)
            self._data.setdefault(namespace, {})[signature] = entry
            if self.path is not None:
                write_json_atomic(self.path, {"format": CACHE_FORMAT, "namespaces": self._data})

    def __len__(self) -> int:
        return sum(len(d) for d in self._data.values())


# ---------------------------------------------------------------------------------------------
# Tasks and the local device
# ---------------------------------------------------------------------------------------------


_BUILD_LOCK = threading.Lock()


@dataclass
class MeasureTask:
    """One module to time: ``build(target_info)`` returns a compiled VM executable."""

    signature: str
    spec: dict
    build: Callable[[object], object]
    inputs: list[tuple[tuple[int, ...], str]]
    label: str = ""
    attempts: int = 0
    errors: list[str] = field(default_factory=list)

    def compile(self, target_info):
        # tvm.compile from several threads at once is not something TVM promises: one at a time.
        with _BUILD_LOCK:
            return self.build(target_info)


class LocalDevice:
    """Measure on this machine, for ``target`` (default: the host). The target must be runnable
    here (``check_runnable_here``): code for a CPU this machine is not dies with SIGILL."""

    def __init__(self, target=None, timing: Timing | None = None):
        self.target = parse_target(target)
        self.timing = timing or Timing()

    @property
    def namespace(self) -> str:
        """The target key, plus the runtime thread count when TVM_NUM_THREADS pins it (timings at
        1 and at 16 threads are different measurements)."""
        threads = os.environ.get("TVM_NUM_THREADS")
        return self.target.key + (f"-t{threads}" if threads else "")

    def describe(self) -> str:
        threads = os.environ.get("TVM_NUM_THREADS")
        return f"local ({self.target}{', TVM_NUM_THREADS=' + threads if threads else ''})"

    def measure(self, tasks: Sequence[MeasureTask], on_result: Callable[[MeasureTask, dict], None],
                progress: bool = False) -> None:
        check_runnable_here(self.target)
        dev = tvm.cpu()
        for task in tqdm(tasks, desc="measuring (local)", disable=not progress):
            t0 = time.perf_counter()
            exe = task.compile(self.target)
            build_s = time.perf_counter() - t0
            vm = relax.VirtualMachine(exe, dev)
            args = [tvm.runtime.tensor(a, dev) for a in random_inputs(task.inputs)]
            res = summarize(time_vm(vm, dev, args, self.timing))
            on_result(task, {**res, "build_s": round(build_s, 3), "device": self.describe()})


def _entry(task: MeasureTask, res: dict, timing: Timing) -> dict:
    return {**res, "spec": task.spec, "label": task.label, "timing": timing.to_dict(),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}


def run_tasks(device, tasks: Sequence[MeasureTask], cache: LatencyCache, progress: bool = False) -> dict[str, dict]:
    """Measure the tasks whose signature ``cache`` lacks for ``device``; return every entry."""
    ns = device.namespace
    todo, seen = [], set()
    for t in tasks:
        if cache.get(ns, t.signature) is None and t.signature not in seen:
            todo.append(t)
            seen.add(t.signature)
    if todo:
        def on_result(task, res):
            cache.put(ns, task.signature, _entry(task, res, device.timing))

        device.measure(todo, on_result, progress=progress)
    missing = [t.label or t.signature for t in tasks if cache.get(ns, t.signature) is None]
    if missing:
        raise LatencyError(f"{len(missing)} measurement(s) missing after measuring on {device.describe()}: "
                           f"{missing[:5]}")
    return {t.signature: cache.get(ns, t.signature) for t in tasks}


def _compile_mod(mod):
    return lambda target_info: build(mod, target_info)


def op_tasks(quantizer, candidates: Iterable[str | Candidate], ops: Iterable[str] | None = None,
             ) -> tuple[dict[tuple[str, str], str], list[MeasureTask]]:
    """(op, candidate key) -> signature, and one task per distinct signature."""
    table: dict[tuple[str, str], str] = {}
    tasks: dict[str, MeasureTask] = {}
    candidates = list(candidates)
    for name in ops if ops is not None else quantizer.graph.ops:
        for key in op_candidate_keys(quantizer, name, candidates):
            m = one_op_module(quantizer, name, key)
            table[(name, key)] = m.signature
            if m.signature not in tasks:
                tasks[m.signature] = MeasureTask(m.signature, m.spec, _compile_mod(m.mod), m.inputs,
                                                 label=f"{name}@{key}")
    return table, list(tasks.values())


def measure_ops(quantizer, candidates: Iterable[str | Candidate], device=None, cache: LatencyCache | None = None,
                progress: bool = False, ops: Iterable[str] | None = None) -> dict[tuple[str, str], float]:
    """Latency (ms) of every (op, candidate key) of ``quantizer`` on ``device`` (default: local)."""
    device = device or LocalDevice(quantizer.target)
    cache = cache if cache is not None else LatencyCache()
    table, tasks = op_tasks(quantizer, candidates, ops)
    entries = run_tasks(device, tasks, cache, progress)
    return {k: entries[s]["ms"] for k, s in table.items()}


# ---------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------


def _structure_digest(quantizer) -> str:
    g = quantizer.graph
    blob = {
        "ops": [[o.name, o.kind, o.macs] for o in g.ops.values()],
        "inputs": [[n, list(s), d] for n, s, d in quantizer.float_model.input_signature()],
        "main": len([b for blk in quantizer.float_model.main.body.blocks for b in blk.bindings]),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def end_to_end_task(quantizer, config: Config, op_signatures: Mapping[str, str], label: str = "") -> MeasureTask:
    """The whole realized module under ``config``, as a task (compiled for the device's target)."""
    config = quantizer.config(config)
    spec = {
        "method": METHOD,
        "pipeline": pipeline_digest(),
        "kind": "end_to_end",
        "model": _structure_digest(quantizer),
        "ops": dict(sorted(op_signatures.items())),
    }
    inputs = [(tuple(s), d) for _, s, d in quantizer.float_model.input_signature()]

    def build_e2e(target_info):
        realize = RealizeQuantization(quantizer.graph, quantizer.plan(config))
        mod = quantizer._bind_float(realize(quantizer.float_model.mod))
        return build(mod, target_info)

    return MeasureTask(signature_of(spec), spec, build_e2e, inputs, label=label or "end_to_end")


# ---------------------------------------------------------------------------------------------
# The cost model
# ---------------------------------------------------------------------------------------------


class PerOpLatency:
    """A configuration's latency in ms as the sum of its ops' latencies (a table per (op, candidate
    key), filled on first use by ``_latencies``) plus the constant C (``constant_ms``, see the
    module docstring). Subclasses say where the figures come from: measurements or a model."""

    quantizer = None
    constant_ms = 0.0

    def _latencies(self, tasks: Sequence[MeasureTask]) -> dict[str, float]:
        """ms of each task, by signature."""
        raise NotImplementedError

    def op_latency(self, op_name: str, config: Mapping[str, Candidate]) -> float:
        key = op_candidate_key(self.quantizer, op_name, config)
        if (op_name, key) not in self.table:  # a combination outside the candidate list
            sig, tasks = op_tasks(self.quantizer, [Candidate.parse(config[g]) for g in config], [op_name])
            self.signatures.update(sig)
            ms = self._latencies(tasks)
            self.table.update({k: ms[s] for k, s in sig.items()})
        return self.table[(op_name, key)]

    def per_op(self, config) -> dict[str, float]:
        config = self.quantizer.config(config)
        return {name: self.op_latency(name, config) for name in self.quantizer.graph.ops}

    def sum_of_layers(self, config) -> float:
        return float(sum(self.per_op(config).values()))

    def __call__(self, config) -> float:
        return self.sum_of_layers(config) + self.constant_ms


class MeasuredLatency(PerOpLatency):
    """Measured latency of a configuration in milliseconds (a ``tvm_mpq.cost.CostModel``).

    quantizer: the calibrated Quantizer; candidates: those the search offers (float is measured
        too: it anchors the constant C); device: ``LocalDevice`` (default, for the quantizer's
        target) or ``tvm_mpq.rpc.RPCDevice``; cache: a LatencyCache or a JSON path (reruns reuse it).
    Every (op, candidate) is measured up front (identical layers once); a configuration's cost is
    then a table lookup. ``constant_ms`` is C (see the module docstring).
    """

    name = "measured_latency"
    unit = "ms"

    def __init__(self, quantizer, candidates=None, device=None, cache=None, progress: bool = True):
        from .config import DEFAULT_CANDIDATES

        self.quantizer = quantizer
        self.candidates = [Candidate.parse(c) for c in (candidates or DEFAULT_CANDIDATES)]
        self.device = device or LocalDevice(quantizer.target)
        self.cache = cache if isinstance(cache, LatencyCache) else LatencyCache(cache)
        self.progress = progress
        self.signatures, tasks = op_tasks(quantizer, self.candidates)
        t0 = time.perf_counter()
        entries = run_tasks(self.device, tasks, self.cache, progress)
        self.table: dict[tuple[str, str], float] = {k: entries[s]["ms"] for k, s in self.signatures.items()}
        float_cfg = Config.uniform(quantizer.group_names, FLOAT)
        self.float_end_to_end_ms = self.end_to_end(float_cfg)
        self.constant_ms = self.float_end_to_end_ms - self.sum_of_layers(float_cfg)
        self.seconds = time.perf_counter() - t0

    def _latencies(self, tasks: Sequence[MeasureTask]) -> dict[str, float]:
        return {s: e["ms"] for s, e in run_tasks(self.device, tasks, self.cache).items()}

    def op_signatures(self, config) -> dict[str, str]:
        config = self.quantizer.config(config)
        return {n: self.signatures[(n, op_candidate_key(self.quantizer, n, config))] for n in self.quantizer.graph.ops}

    def end_to_end(self, config, label: str = "") -> float:
        """Measured latency (ms) of the whole realized module under ``config`` (cached)."""
        task = end_to_end_task(self.quantizer, config, self.op_signatures(config), label)
        return run_tasks(self.device, [task], self.cache)[task.signature]["ms"]

    def end_to_end_check(self, configs: Mapping[str, object]) -> list[dict]:
        """For each named configuration: sum of layers, + C, measured end to end, and the errors
        (relative to the end-to-end time) of both estimates."""
        rows = []
        for label, cfg in configs.items():
            cfg = self.quantizer.config(cfg)
            e2e = self.end_to_end(cfg, label)
            sol = self.sum_of_layers(cfg)
            rows.append({
                "config": label, "sum_of_layers_ms": sol, "estimate_ms": sol + self.constant_ms,
                "end_to_end_ms": e2e, "sum_of_layers_error": (sol - e2e) / e2e,
                "estimate_error": (sol + self.constant_ms - e2e) / e2e,
            })
        return rows


# ---------------------------------------------------------------------------------------------
# Choosing the cost model (search / compile)
# ---------------------------------------------------------------------------------------------

COSTS = ("bops", "measured", "predicted")


def cost_model_for(quantizer, cost, candidates=None, device=None, cache=None, latency_model=None,
                   progress: bool = True):
    """The CostModel for ``cost``: "bops" (relative BOPs, the paper's), "measured"
    (``MeasuredLatency`` on ``device``, default this machine), "predicted" (``PredictedLatency``:
    from ``latency_model`` -- a LatencyModel or a saved model's path -- or trained on a measured
    sample), or a CostModel object, returned as is."""
    from .cost import RelativeBops

    if cost is None or cost == "bops":
        return RelativeBops(quantizer, candidates)
    if not isinstance(cost, str):
        if not (callable(cost) and hasattr(cost, "unit") and hasattr(cost, "name")):
            raise ConfigError(f"cost must be one of {COSTS} or a CostModel (name, unit, __call__), not {cost!r}")
        return cost
    if cost == "measured":
        return MeasuredLatency(quantizer, candidates, device=device, cache=cache, progress=progress)
    if cost == "predicted":
        from .latency_model import LatencyModel, PredictedLatency

        if latency_model is None:
            return PredictedLatency.from_sample(quantizer, device, candidates=candidates, cache=cache, progress=progress)
        if not isinstance(latency_model, LatencyModel):
            target = device.target if device is not None else quantizer.target
            latency_model = LatencyModel.load(latency_model, target)
        return PredictedLatency(quantizer, latency_model, candidates, cache, device)
    raise ConfigError(f"unknown cost {cost!r}: use one of {', '.join(COSTS)} or a CostModel")
