"""tvm_mpq: target-aware mixed-precision post-training quantization for Apache TVM.

``tvm_mpq.compile(model, target, calibration=..., config=...)`` imports a float model, calibrates it
on unlabeled data, and returns a module whose layers run real integer kernels at the bit-widths of
the configuration (group name -> "w8a8" / "w4a8" / "w7a8" / "w8a16" / "w16a16" / "float") -- given,
or found by the mixed-precision search (``tvm_mpq.search``) within an accuracy / SQNR / cost budget.
"""

from .config import DEFAULT_CANDIDATES, FLOAT, Candidate, Config
from .errors import (
    CalibrationError,
    ConfigError,
    ModelImportError,
    ModelUnavailable,
    TargetError,
    TvmMpqError,
)
from .quantizer import Quantizer
from .report import Report
from .result import QuantizedModule
from .search import InfeasibleBudgetError, SearchResult
from .search import search as run_search


def __getattr__(name):  # RPCDevice imports tvm.rpc: load it on first use
    if name == "RPCDevice":
        from .rpc import RPCDevice

        return RPCDevice
    raise AttributeError(f"module 'tvm_mpq' has no attribute {name!r}")


__version__ = "0.1.0"


def compile(  # noqa: A001 - the name users asked for, like tvm.compile
    model,
    target=None,
    calibration=None,
    config=None,
    example_inputs=None,
    method: str = "mse",
    progress: bool = True,
    *,
    candidates=None,
    eval_fn=None,
    allowed_accuracy_drop: float | None = None,
    sqnr_floor_db: float | None = None,
    cost_budget: float | None = None,
    search: str = "binary",
    reverse: bool = False,
    results_dir=None,
    clean_start: bool = False,
    cost=None,
    latency_budget_ms: float | None = None,
    device=None,
    latency_cache=None,
    latency_model=None,
    order: str = "sensitivity",
    tune=False,
    tuning_dir=None,
) -> QuantizedModule:
    """Quantize ``model`` per ``config`` (or a searched one) and compile it for ``target``.

    model: a torch.nn.Module (with ``example_inputs``), a torch.export.ExportedProgram, an ONNX
        model or .onnx path, or a Relax IRModule (weights bound or as parameters).
    target: a legacy string ("llvm -mcpu=znver4"), a dict, a tvm.target.Target; None = this host.
    calibration: iterable of batches (tuple of arrays in input order, or one array); read once.
    config: a tvm_mpq.Config, a JSON path, or one candidate for all groups. None = search for one
        (``tvm_mpq.search.search``) within the budget given by the keyword arguments --
        ``eval_fn`` + ``allowed_accuracy_drop``, ``sqnr_floor_db`` (default 30 dB when no budget is
        given), ``cost_budget`` (relative BOPs) -- over ``candidates``, with the calibration
        batches as phase-1 data; the result is on the returned module's ``.search``. An
        infeasible budget raises ``InfeasibleBudgetError`` naming the best achievable score.
    method: activation range method, "mse" (default) or "minmax".
    cost: what the search trades accuracy against -- "bops" (default), "measured" (per-op latency
        timed on ``device``: this machine, or a ``tvm_mpq.RPCDevice``), "predicted" (an XGBoost
        model, ``latency_model``, or one trained on a measured sample); ``latency_budget_ms`` is
        the budget in milliseconds; ``latency_cache`` a JSON path that keeps measurements.
    order: the search's flip order -- "sensitivity" (the paper's, default) or "noise_per_cost"
        (output noise added per unit of cost saved, per ms with a latency cost: flips that save no
        time are left off the curve).
    tune: False (default: template schedules, nothing tuned), True (32 trials per kernel) or a number
        of trials per kernel -- tune the final module's kernels with MetaSchedule (a few seconds
        per trial) and use each tuned kernel that measured faster than its template schedule.
        ``tuning_dir``: the persistent tuning database (default: a per-target folder under
        ``~/.cache/tvm_mpq/tuning``); kernels tuned there before are not tuned again. A
        ``tuning_dir`` without ``tune`` applies that database and tunes nothing. See
        ``module.tuning``.
    """
    searching = {
        "candidates": candidates is not None, "eval_fn": eval_fn is not None,
        "allowed_accuracy_drop": allowed_accuracy_drop is not None, "sqnr_floor_db": sqnr_floor_db is not None,
        "cost_budget": cost_budget is not None, "search": search != "binary", "reverse": bool(reverse),
        "results_dir": results_dir is not None, "clean_start": bool(clean_start),
        "cost": cost is not None, "latency_budget_ms": latency_budget_ms is not None,
        "device": device is not None, "latency_cache": latency_cache is not None,
        "latency_model": latency_model is not None, "order": order != "sensitivity",
    }
    if config is not None and any(searching.values()):
        raise ConfigError(
            f"search options ({', '.join(k for k, v in searching.items() if v)}) apply only when "
            f"config is None (then the search chooses the configuration); drop them or the config"
        )
    from .targets import parse_target, tuning

    if tuning.tune_options(tune) is not None:  # a bad value fails now, not after calibration and search
        tuning.check_tunable_here(parse_target(target))
    # The calibration iterable may be a one-shot generator: read it once, for calibration and search.
    batches = None if calibration is None else list(calibration)
    quantizer = Quantizer(model, target, batches, example_inputs, method=method, progress=progress)
    if config is not None:
        module = quantizer.realize(config, tune=tune, tuning_dir=tuning_dir)
        module.search = None
        module.report = Report.from_module(module)
        return module
    result = run_search(
        quantizer, candidates=candidates, calibration_inputs=batches, eval_fn=eval_fn,
        allowed_accuracy_drop=allowed_accuracy_drop, sqnr_floor_db=sqnr_floor_db, cost_budget=cost_budget,
        search=search, reverse=reverse, results_dir=results_dir, clean_start=clean_start, progress=progress,
        cost=cost, latency_budget_ms=latency_budget_ms, device=device, latency_cache=latency_cache,
        latency_model=latency_model, order=order,
    )
    if not result.feasible:
        raise InfeasibleBudgetError(result.message)
    module = quantizer.realize(result.config, tune=tune, tuning_dir=tuning_dir)
    module.search = result
    module.report = Report.from_module(module)
    return module


__all__ = [
    "compile", "Quantizer", "QuantizedModule", "Config", "Candidate", "FLOAT", "DEFAULT_CANDIDATES",
    "SearchResult", "InfeasibleBudgetError", "Report", "RPCDevice",
    "TvmMpqError", "TargetError", "ConfigError", "CalibrationError", "ModelImportError", "ModelUnavailable",
]
