"""Optional MetaSchedule tuning of a realized module, with a persistent database.

``tvm_mpq.compile(..., tune=True)`` (or ``tune=N`` trials per kernel) tunes the fused PrimFuncs of
the realized module -- the kernels the template schedules (``targets/schedules.py``) would
otherwise get -- and compiles with the tuned schedule wherever it measured faster than the template
one. Everything else keeps its template schedule, so ``tune=False`` (the default) never needs any
of this.

How it works (``tune_module``):

1. The realized Relax module goes through the front of tvm_mpq's pipeline (library dispatch,
   legalization, FuseOps / FuseTIR, layout-free weight attributes): the same PrimFuncs the template
   schedules see. Float products that LLVM could contract into FMAs once MetaSchedule inlines the
   epilogue are fenced first (``fence_func``), as the template does for the blocks it inlines: a
   tuned integer kernel computes bit for bit what the template one computes.
2. One task per distinct kernel -- by default only kernels with a reduction (convs, matmuls,
   pooling, softmax): the elementwise ones (quantize, requantize) are memory-bound, and their
   template is already one parallel vectorized pass. A kernel the ledger (``tvm_mpq_tuning.json``,
   next to MetaSchedule's JSON database in ``tuning_dir``) has the requested trial count for is not
   tuned again: a second compile of the same model (or of another model with the same layer
   shapes), in this process or another, runs no trial. Asking for more trials later tunes only the
   difference (MetaSchedule's evolutionary search starts from the measured records).
3. The template-scheduled kernels of the remaining tasks are built and timed with MetaSchedule's
   builder and runner, then each task is tuned (evolutionary search, XGBoost cost model) and the
   ledger is written: a killed run keeps every kernel finished so far. A kernel MetaSchedule fails
   on keeps its template (the error is in the ledger and ``logs/tuning.log``).
4. At build time ``ApplyTuningDatabase`` (inserted by ``targets.pipeline.relax_pipeline``) replaces
   a kernel by the database's best schedule only where that one ran faster than the template; the
   dlight template rules then schedule the rest (they skip functions marked ``tirx.is_scheduled``).

MetaSchedule facts this relies on (TVM 0.27 wheel): ``TuneContext.__init__`` and the default
builder import ``tvm.s_tir.tensor_intrin`` (about 60 s here, every intrinsic of every target);
this module builds tune contexts through the FFI constructor and gives the builder its own build
function, so neither pays it. The LLVM (non-VNNI) schedule rules are used for every CPU target:
the stock VNNI intrinsic does not compile with this wheel's LLVM.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import tvm
import tvm_ffi
from tvm import s_tir, tirx

from tvm_mpq.errors import ConfigError, TargetError

from .schedules import _fence, _is_float, fence_products, replace_stored_value

__all__ = [
    "DEFAULT_TRIALS",
    "LEDGER",
    "ApplyTuningDatabase",
    "TuningSummary",
    "check_database",
    "check_tunable_here",
    "default_tuning_dir",
    "fence_func",
    "prepare",
    "tune_module",
    "tune_options",
]

#: Trials per kernel for ``tune=True`` (MetaSchedule costs about 3-5 s per trial on 2 cores).
DEFAULT_TRIALS = 32
#: The ledger: workload -> trials run, template and best tuned times (next to the database).
LEDGER = "tvm_mpq_tuning.json"
_LOG = logging.getLogger("tvm_mpq.tuning")


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------


_OPTIONS = ("trials", "kernels", "op_names", "search", "seed")


def tune_options(tune) -> dict | None:
    """``tune_module`` options for a ``tune=`` value: False / None / 0 -> None (no tuning), True ->
    DEFAULT_TRIALS trials per kernel, N -> N trials per kernel, a dict -> those options
    (``trials``, ``kernels``, ``op_names``, ``search``, ``seed``; see ``tune_module``)."""
    if tune is None or tune is False:
        return None
    if tune is True:
        return {"trials": DEFAULT_TRIALS}
    if isinstance(tune, int) and tune >= 0:
        return {"trials": int(tune)} if tune else None
    if isinstance(tune, dict):
        unknown = sorted(set(tune) - set(_OPTIONS))
        if unknown:
            raise ConfigError(f"unknown tune option(s) {unknown}: use {list(_OPTIONS)}")
        opts = {"trials": DEFAULT_TRIALS, **tune}
        if not isinstance(opts["trials"], int) or isinstance(opts["trials"], bool) or opts["trials"] < 0:
            raise ConfigError(f"tune trials must be a number of trials per kernel (>= 0), got {opts['trials']!r}")
        return opts if opts["trials"] else None
    raise ConfigError(
        f"tune must be True/False, a number of trials per kernel, or a dict of options, got {tune!r}"
    )


def default_tuning_dir(target_info) -> Path:
    """``$XDG_CACHE_HOME/tvm_mpq/tuning/<target>-<digest>`` (``~/.cache`` without XDG_CACHE_HOME).

    The digest covers the whole target and TVM's version: records tuned for another CPU, or traces
    of another TVM, are never applied."""
    blob = json.dumps([target_info.to_dict(), tvm.__version__], sort_keys=True, default=str)
    digest = hashlib.sha1(blob.encode()).hexdigest()[:12]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    name = f"{target_info.kind}-{target_info.arch}-{target_info.mcpu or 'generic'}-{digest}"
    return Path(cache) / "tvm_mpq" / "tuning" / name


# ---------------------------------------------------------------------------------------------
# Preparing the kernels: the front of the pipeline, and FMA fences
# ---------------------------------------------------------------------------------------------


def prepare(mod: tvm.IRModule, target_info) -> tvm.IRModule:
    """The realized module legalized and fused, as the template schedules would receive it."""
    from .pipeline import front_passes

    with target_info.target:
        return tvm.transform.Sequential(front_passes(target_info.target))(mod)


def _fenced_value(value):
    """A float block value with its products fenced (see ``fence_func``); ``value`` if unchanged."""
    if not _is_float(value):
        return value
    new = fence_products(value)
    if isinstance(new, tirx.Mul):  # the block's result is a product: an inlined consumer may add to it
        new = _fence(new)
    return new


def fence_func(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with the float products of its non-reduction blocks fenced against FMA contraction.

    Unscheduled, every op of a fused kernel is its own block and stores its result; once a schedule
    inlines ``T_mul = float(acc) * scale`` into ``T_add = bias + T_mul`` LLVM contracts the two
    into one FMA (one rounding instead of two) and requantized integers can come out off by one.
    The template rules fence what they inline; MetaSchedule does not know about it, so the stored
    products (and products feeding an add inside a block) are fenced before tuning. Reduction
    blocks (``acc += a * b``) are left alone: contracting the accumulation is what both the
    template and MetaSchedule kernels do."""
    sch = s_tir.Schedule(func)
    changed = False
    for rv in _blocks(sch):
        block = sch.get(rv)
        store = block.body
        if block.init is not None or not isinstance(store, tirx.BufferStore):
            continue
        value = _fenced_value(store.value)
        if value.same_as(store.value):
            continue
        replace_stored_value(sch, rv, value)
        changed = True
    return func.with_body(sch.mod["main"].body) if changed else func


def _blocks(sch: s_tir.Schedule) -> list:
    """Every block of ``sch``'s function below its root block (none without a root block)."""
    try:
        stack = [sch.get_sblock("root")]
    except Exception:  # noqa: BLE001 - no root block
        return []
    out = []
    while stack:
        children = list(sch.get_child_blocks(stack.pop()))
        out += children
        stack += children
    return out


def _workload_mod(func: tirx.PrimFunc) -> tvm.IRModule:
    """The module MetaSchedule keys a kernel by (its own normalization of a PrimFunc)."""
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    return _normalize_mod(func)


def _workload_key(mod: tvm.IRModule, target) -> str:
    """The ledger's key of a kernel: its structural hash (what MetaSchedule's database keys
    workloads by, stable across processes) and a digest of the target."""
    digest = hashlib.sha1(str(target).encode()).hexdigest()[:8]
    return f"{tvm_ffi.structural_hash(mod) & 0xFFFFFFFFFFFFFFFF:016x}-{digest}"


def _has_reduction(func: tirx.PrimFunc) -> bool:
    sch = s_tir.Schedule(func)
    return any(sch.get(b).init is not None for b in _blocks(sch))


def _kernels(fused: tvm.IRModule, reductions_only: bool = False) -> dict:
    """GlobalVar -> (original PrimFunc, fenced workload module) for the unscheduled PrimFuncs
    (with ``reductions_only``: those with a reduction -- convs, matmuls, pooling, softmax)."""
    out = {}
    for gv, func in fused.functions_items():
        if not isinstance(func, tirx.PrimFunc) or (func.attrs and func.attrs.get("tirx.is_scheduled", False)):
            continue
        if reductions_only and not _has_reduction(func):
            continue
        out[gv] = (func, _workload_mod(fence_func(func)))
    return out


# ---------------------------------------------------------------------------------------------
# The ledger
# ---------------------------------------------------------------------------------------------


def _load_ledger(work_dir: Path) -> dict:
    path = work_dir / LEDGER
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        _LOG.warning("tuning ledger %s is unreadable: starting a new one", path)
        return {}


def _save_ledger(work_dir: Path, ledger: dict) -> None:
    path = work_dir / LEDGER
    # Another process may have added entries meanwhile: merge, keeping the larger trial count.
    merged = _load_ledger(work_dir)
    for key, entry in ledger.items():
        if entry.get("trials", 0) >= merged.get(key, {}).get("trials", 0):
            merged[key] = entry
    fd, tmp = tempfile.mkstemp(dir=work_dir, prefix=".ledger-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(merged, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
    ledger.update(merged)


# ---------------------------------------------------------------------------------------------
# MetaSchedule plumbing
# ---------------------------------------------------------------------------------------------


def _worker_init():
    """The builder workers' initializer: fence.register_intrinsics, pickled by value (cloudpickle)
    so that workers register tvm_mpq's ops without importing tvm_mpq."""
    import cloudpickle

    from . import fence

    cloudpickle.register_pickle_by_value(fence)
    return fence.register_intrinsics


def _make_build():
    """MetaSchedule's default build without its ``import tvm.s_tir.tensor_intrin`` (by value)."""

    def build(mod, target, _params):
        from tvm.driver import build as tvm_build
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

        mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
        return tvm_build(mod, target=target)

    return build


def _tune_context(mod, target, name, logger, seed, num_threads, search=None):
    """``TuneContext(...)`` without the 60 s ``import tvm.s_tir.tensor_intrin`` of its __init__
    (the LLVM rules use no tensor intrinsic)."""
    from tvm.s_tir.meta_schedule import _ffi_api as ms_ffi
    from tvm.s_tir.meta_schedule.logging import get_logging_func
    from tvm.s_tir.meta_schedule.search_strategy import EvolutionarySearch
    from tvm.s_tir.meta_schedule.space_generator import SpaceGenerator
    from tvm.s_tir.meta_schedule.tune_context import TuneContext

    ctx = TuneContext.__new__(TuneContext)
    ctx.__init_handle_by_constructor__(
        ms_ffi.TuneContext, mod, target, SpaceGenerator.create("llvm"), EvolutionarySearch(**(search or {})),
        name, num_threads, seed, get_logging_func(logger),
    )  # fmt: skip
    ms_ffi.TuneContextInitialize(ctx)
    return ctx


@dataclass
class _Measure:
    builder: object
    runner: object

    def close(self) -> None:
        """Stop the runner's worker process (the builder starts a pool per batch and stops it)."""
        pool = getattr(self.runner, "pool", None)
        if pool is not None:
            pool.shutdown()


def _measurer(num_workers: int) -> _Measure:
    from tvm.s_tir.meta_schedule.builder import LocalBuilder
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, LocalRunner

    builder = LocalBuilder(
        max_workers=num_workers, timeout_sec=120.0, f_build=_make_build(), initializer=_worker_init()
    )
    runner = LocalRunner(
        timeout_sec=60.0,
        evaluator_config=EvaluatorConfig(number=3, repeat=3, min_repeat_ms=40, enable_cpu_cache_flush=False),
    )
    return _Measure(builder, runner)


def _template_kernels(fused: tvm.IRModule, names: list[str], target_info) -> list[tirx.PrimFunc]:
    """The kernels ``names`` of ``fused`` as the template path runs them: scheduled by the template
    rules, with the weight copies they mark as layout rewrites split off (done once at compile time
    by the pipeline, so not part of a call: ``<name>_prepacked`` then)."""
    from tvm import relax
    from tvm.s_tir import dlight

    from .pipeline import template_rules

    keep = set(names)
    with target_info.target:
        mod = dlight.ApplyDefaultSchedule(*template_rules(target_info))(fused)
        mod = relax.transform.SplitLayoutRewritePreproc()(mod)
    funcs = {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}
    assert keep <= set(funcs) | {n.removesuffix("_prepacked") for n in funcs}
    return [funcs.get(f"{n}_prepacked", funcs.get(n)) for n in names]


def _time_templates(measure: _Measure, funcs: list, target_info) -> list[float | None]:
    """Seconds per call of each (template-scheduled) kernel, built and timed like a tuning
    candidate (one builder batch, so one worker pool for all)."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.builder import BuilderInput
    from tvm.s_tir.meta_schedule.runner import RunnerInput

    mods = [_workload_mod(f) for f in funcs]
    built = measure.builder.build([BuilderInput(m, target_info.target) for m in mods])
    out: list[float | None] = [None] * len(funcs)
    runs = []
    for i, (m, b) in enumerate(zip(mods, built)):
        if b.error_msg:
            _LOG.warning("template kernel failed to build for timing: %s", b.error_msg.strip().splitlines()[-1:])
            continue
        args = ArgInfo.from_entry_func(m, remove_preproc=True)
        runs.append((i, measure.runner.run([RunnerInput(b.artifact_path, "cpu", args)])[0]))
    for i, fut in runs:
        res = fut.result()
        if res.error_msg:
            _LOG.warning("template kernel failed to run for timing: %s", res.error_msg.strip().splitlines()[-1:])
            continue
        out[i] = min(float(t) for t in res.run_secs)
    return out


def _records(db, workload_mod, target) -> list:
    """The valid records of a workload for ``target``, fastest first (none if the database does
    not know the workload). A database directory shared between targets keeps them apart."""
    if not db.has_workload(workload_mod):
        return []
    want = str(target)
    top = db.get_top_k(db.commit_workload(workload_mod), 1 << 30)
    return [r for r in top if r.target is None or str(r.target) == want]


def _best_record(db, workload_mod, target):
    """(seconds, record) of the fastest valid record of a workload for ``target``, or (None, None)."""
    records = _records(db, workload_mod, target)
    if not records:
        return None, None
    return min(float(s) for s in records[0].run_secs), records[0]


# ---------------------------------------------------------------------------------------------
# Tuning
# ---------------------------------------------------------------------------------------------


@dataclass
class TuningSummary:
    """What ``tune_module`` did: kernels found, tuned now or reused, and the trials it ran."""

    tuning_dir: str
    trials_per_kernel: int
    kernels: int = 0
    tuned: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    new_trials: int = 0
    new_records: int = 0
    seconds: float = 0.0
    #: task name -> {"template_us", "tuned_us", "uses": "tuned" | "template"[, "error"]}
    kernels_table: dict[str, dict] = field(default_factory=dict)

    def text(self) -> str:
        lines = [
            f"tuning: {self.kernels} kernel(s), {len(self.tuned)} tuned now ({self.new_trials} trial(s)), "
            f"{len(self.reused)} reused from {self.tuning_dir} in {self.seconds:.1f} s"
        ]
        for name, row in self.kernels_table.items():
            t = row.get("template_us")
            b = row.get("tuned_us")
            lines.append(
                f"  {name}: template {'-' if t is None else f'{t:.1f} us'}, tuned {'-' if b is None else f'{b:.1f} us'}"
                f" -> {row['uses']}" + (f" (tuning failed: {row['error']})" if "error" in row else "")
            )
        return "\n".join(lines)


def check_database(tuning_dir) -> None:
    """Raise ConfigError unless ``tuning_dir`` holds a MetaSchedule JSON database."""
    if not (Path(tuning_dir) / "database_workload.json").is_file():
        raise ConfigError(
            f"tuning_dir {os.fspath(tuning_dir)!r} holds no tuning database (database_workload.json): "
            "give tune=True (or a trial count) to create one there"
        )


def check_tunable_here(target_info) -> None:
    """Raise TargetError unless kernels compiled for ``target_info`` can be timed on this machine."""
    from .target import _native_problems, host_target

    problems = _native_problems(target_info)
    if problems:
        raise TargetError(
            f"tuning measures every candidate kernel on this machine, but code for target '{target_info}' "
            f"cannot run here: {'; '.join(problems)}. Tune on a machine of that kind (the database in "
            f"tuning_dir can then be copied to where you compile), compile for this host "
            f"('{host_target()}'), or compile without tune= to use the template schedules."
        )


def tune_module(
    mod: tvm.IRModule,
    target_info,
    trials: int,
    tuning_dir=None,
    progress: bool = True,
    *,
    kernels: str = "reductions",
    op_names: list[str] | None = None,
    search: dict | None = None,
    seed: int = 0,
) -> TuningSummary:
    """Tune the kernels of the realized Relax module ``mod`` (weights bound) for ``target_info``,
    ``trials`` trials per kernel, recording into ``tuning_dir`` (default: ``default_tuning_dir``).

    Kernels the ledger already has at least ``trials`` trials for are not tuned again.
    ``kernels``: "reductions" (default: kernels with a reduction -- convs, matmuls, pooling,
    softmax; the elementwise ones, quantize / requantize, are memory-bound and their template is
    one parallel vectorized loop) or "all". ``op_names``: tune only kernels whose name contains one
    of these strings. ``search``: options of MetaSchedule's ``EvolutionarySearch``
    (``population_size``, ``max_fail_count``, ...)."""
    from tqdm.auto import tqdm
    from tvm.s_tir.meta_schedule.database import JSONDatabase

    if kernels not in ("reductions", "all"):
        raise ConfigError(f"kernels must be 'reductions' or 'all', got {kernels!r}")
    t0 = time.perf_counter()
    check_tunable_here(target_info)
    work_dir = Path(tuning_dir) if tuning_dir is not None else default_tuning_dir(target_info)
    work_dir.mkdir(parents=True, exist_ok=True)
    summary = TuningSummary(str(work_dir), trials)
    fused = prepare(mod, target_info)
    # One task per distinct workload (structurally equal kernels share one), in module order.
    tasks: dict[str, dict] = {}
    for gv, (func, wmod) in _kernels(fused, reductions_only=kernels == "reductions").items():
        if op_names and not any(n in gv.name_hint for n in op_names):
            continue
        key = _workload_key(wmod, target_info.target)
        entry = tasks.setdefault(key, {"name": gv.name_hint, "wmod": wmod, "count": 0})
        entry["count"] += 1
    summary.kernels = len(tasks)
    ledger = _load_ledger(work_dir)
    db = JSONDatabase(work_dir=str(work_dir), module_equality="structural")
    records_before = len(db)

    todo, done_trials = [], {}
    for key, task in tasks.items():
        done = ledger.get(key, {}).get("trials")
        if done is None:  # no ledger entry (a database from elsewhere): count its records
            done = len(_records(db, task["wmod"], target_info.target))
        done_trials[key] = done
        if trials and done < trials:
            todo.append((key, task, trials - done))
        else:
            summary.reused.append(task["name"])
    # Template times: for the kernels tuned now, and any the ledger has none for (a database from
    # elsewhere, an interrupted run) -- a tuned kernel is only used where it beat its template.
    tuning_now = {k for k, _, _ in todo}
    to_time = [k for k in tasks if k in tuning_now or "template_s" not in ledger.get(k, {})]

    if to_time:
        num_threads = max(1, os.cpu_count() or 1)
        total = sum(n for _, _, n in todo)
        msg = (
            f"tuning {len(todo)} of {len(tasks)} kernel(s), {total} trial(s) in all (a few seconds "
            f"each), database {work_dir}"
            if todo
            else f"timing the template schedule of {len(to_time)} kernel(s) of database {work_dir}"
        )
        _LOG.info(msg)
        if progress:
            print(msg, flush=True)
        measure = _measurer(min(num_threads, 4))
        try:
            templates = _template_kernels(fused, [tasks[k]["name"] for k in to_time], target_info)
            for key, secs in zip(to_time, _time_templates(measure, templates, target_info)):
                entry = ledger.setdefault(key, {"task": tasks[key]["name"], "trials": done_trials[key]})
                entry["template_s"] = secs if secs is not None else entry.get("template_s")
            _save_ledger(work_dir, ledger)
            with _log_to(work_dir / "logs" / "tuning.log"):
                bar = tqdm(todo, desc="tuning", unit="kernel", disable=not progress or not todo)
                for key, task, n in bar:
                    bar.set_postfix_str(f"{task['name'][:40]} ({n} trials)")
                    error = _tune_one(task, n, target_info, work_dir, measure, db, seed, num_threads, search)
                    entry = ledger[key]
                    entry.pop("error", None)
                    entry.update(trials=done_trials[key] + n, tuned_s=_best_record(db, task["wmod"], target_info.target)[0])
                    if error:
                        entry["error"] = error
                    _save_ledger(work_dir, ledger)
                    summary.tuned.append(task["name"])
                    summary.new_trials += n
        finally:
            measure.close()
    for key, task in tasks.items():
        best_s, _ = _best_record(db, task["wmod"], target_info.target)
        template_s = ledger.get(key, {}).get("template_s")
        summary.kernels_table[task["name"]] = {
            "template_us": None if template_s is None else template_s * 1e6,
            "tuned_us": None if best_s is None else best_s * 1e6,
            "uses": "tuned" if _use_tuned(best_s, template_s) else "template",
            **({"error": ledger[key]["error"]} if ledger.get(key, {}).get("error") else {}),
        }
    summary.new_records = len(db) - records_before
    summary.seconds = time.perf_counter() - t0
    _LOG.info(summary.text())
    if progress and todo:
        print(summary.text(), flush=True)
    return summary


def _tune_one(task, n, target_info, work_dir, measure, db, seed, num_threads, search) -> str | None:
    """Run ``n`` MetaSchedule trials on one kernel into ``db``; the error (one line) if it failed."""
    from tvm.s_tir.meta_schedule.tune import tune_tasks

    logger = logging.getLogger(f"{_MS_LOGGER}.tvm_mpq.{task['name'][:100]}")
    try:
        ctx = _tune_context(task["wmod"], target_info.target, task["name"], logger, seed, num_threads, search)
        tune_tasks(
            tasks=[ctx], task_weights=[1.0], work_dir=str(work_dir), max_trials_global=n,
            max_trials_per_task=n, num_trials_per_iter=min(64, n), builder=measure.builder,
            runner=measure.runner, database=db, cost_model="xgb", task_scheduler="round-robin",
            module_equality="structural",
        )  # fmt: skip
    except Exception as err:  # noqa: BLE001 - a kernel MetaSchedule cannot tune keeps its template
        lines = str(err).strip().splitlines()
        error = f"{type(err).__name__}: {lines[0] if lines else ''}"
        logger.error("tuning failed", exc_info=True)  # the whole message, into the log file
        _LOG.warning(
            "tuning %s failed (%s; see %s): it keeps its template schedule",
            task["name"], error, work_dir / "logs" / "tuning.log",
        )  # fmt: skip
        return error
    return None


def _use_tuned(best_s, template_s) -> bool:
    """Take the tuned schedule only where it ran faster than the template (both timed here)."""
    return best_s is not None and template_s is not None and best_s < template_s


_MS_LOGGER = "tvm.s_tir.meta_schedule"


@contextlib.contextmanager
def _log_to(path: Path):
    """MetaSchedule's log (task tables, per-task search logs) into ``path`` while tuning. Unless the
    user configured MetaSchedule's logger (``tvm.s_tir.meta_schedule``), it goes only there: the
    console shows tvm_mpq's progress bar and summary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ms = logging.getLogger(_MS_LOGGER)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(name)s %(message)s"))
    level, propagate = ms.level, ms.propagate
    if level == logging.NOTSET:
        ms.setLevel(logging.INFO)
        ms.propagate = False
    ms.addHandler(handler)
    try:
        yield
    finally:
        ms.removeHandler(handler)
        handler.close()
        ms.setLevel(level)
        ms.propagate = propagate


# ---------------------------------------------------------------------------------------------
# Applying the database
# ---------------------------------------------------------------------------------------------


def ApplyTuningDatabase(tuning_dir, target_info, use_tuned: str = "faster") -> tvm.transform.Pass:  # noqa: N802
    """Replace each kernel by its best tuned schedule in ``tuning_dir`` -- with ``use_tuned=
    "faster"`` only where that one measured faster than the template schedule (the ledger has both
    times; ``tune_module`` times the template of every kernel it looks at), with "always" wherever
    the database has a record -- and leave the rest unscheduled for the template rules. Kernels are
    looked up fenced (see ``fence_func``)."""
    if use_tuned not in ("faster", "always"):
        raise ValueError(f"use_tuned must be 'faster' or 'always', got {use_tuned!r}")

    @tvm.transform.module_pass(opt_level=0, name="TvmMpqApplyTuningDatabase")
    def _apply(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        from tvm.s_tir.meta_schedule.database import JSONDatabase

        work_dir = Path(tuning_dir)
        if not (work_dir / "database_workload.json").exists():
            return mod
        db = JSONDatabase(work_dir=str(work_dir), module_equality="structural")
        ledger = _load_ledger(work_dir)
        updates = {}
        for gv, (func, wmod) in _kernels(mod).items():
            best_s, record = _best_record(db, wmod, target_info.target)
            if record is None:
                continue
            template_s = ledger.get(_workload_key(wmod, target_info.target), {}).get("template_s")
            if use_tuned == "faster" and not _use_tuned(best_s, template_s):
                continue
            try:  # what MetaSchedule's Database.query_schedule does, with the record chosen here
                sch = s_tir.Schedule(wmod, error_render_level="detail")
                record.trace.apply_to_schedule(sch, remove_postproc=False)
            except Exception as err:  # noqa: BLE001 - a stale or foreign record: keep the template
                _LOG.warning("tuning record for %s does not apply (%s): template schedule kept", gv.name_hint, err)
                continue
            new = sch.mod["main"]  # normalized: global_symbol "main"; keep the kernel's own attrs
            new = tirx.PrimFunc(new.params, new.body, new.ret_type, func.attrs)
            updates[gv] = new.with_attr("tirx.is_scheduled", True)
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return _apply
