"""The mixed-precision search (Pandey et al. 2023; AIMET's AMP): phase 1, then the Pareto search.

``search(quantizer, calibration_inputs=..., <a budget>)`` ranks every (group, candidate) by the
output SQNR it costs alone (``sensitivity.phase1``), lays the ranked flips out as a curve from every
group at its highest candidate to every group at its lowest (``pareto``), and finds the cheapest
point on it that meets the budget with a logarithmic number of evaluations. Every evaluation runs
the one compiled simulation module (``Quantizer.simulate``); nothing is compiled until the caller
realizes the chosen configuration.

The budget is given in the user's terms:

* ``eval_fn(module) -> float`` (higher is better) with ``allowed_accuracy_drop``: target =
  ``eval_fn(float model) - drop``. ``module`` is a ``SimulatedModule``: ``.run(*inputs)`` returns
  numpy like ``QuantizedModule.run``, ``.config`` is the configuration being scored.
* ``sqnr_floor_db``: label-free, the output SQNR against the float model on the calibration inputs
  (or ``eval_inputs``) must stay at or above the floor. It is the default when no budget is given
  (``DEFAULT_SQNR_FLOOR_DB``).
* ``cost_budget``: relative BOPs (the start point costs 1.0) must not exceed it. Alone, the first
  curve point within it is taken (one evaluation, to report its score); with an accuracy budget,
  the point the accuracy search finds must also be within it, or the search reports both limits.
* No budget (``eval_fn`` without ``allowed_accuracy_drop``): the curve is traced at
  ``curve_points`` positions plus both ends and the knee is chosen (``pareto.knee``): a starting
  point for the user, who can realize any other point of ``result.curve`` instead.

The cost (``cost=``) is relative BOPs (the paper's) or the latency of the realized kernels in ms
(``"measured"`` / ``"predicted"``, ``tvm_mpq.latency``); ``latency_budget_ms`` is a cost budget in
ms. Every curve point carries both axes: ``CurvePoint.bops`` (relative BOPs, always) and
``CurvePoint.latency_ms`` (when the cost is a latency).

The flip order (``order=``): ``"sensitivity"`` (default) is the paper's -- least sensitive flip first,
whatever it saves, so with a latency cost the curve may take flips that save no time (integer
kernels slower than the ones they replace) and its cost need not fall along it. ``"noise_per_cost"``
ranks the flips by output noise added (``10^(-SQNR/10)`` of phase 1, which adds up across groups,
unlike dB) per unit of cost saved -- per ms with a latency cost -- and leaves off the curve every
flip that saves nothing or is beaten by another candidate of its group (``pareto.noise_per_cost_flips``
says exactly what, and why the curve stays monotone; ``result.dropped`` lists them with the reason).
"""

from __future__ import annotations

import math
import numbers
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from .cache import ResultsCache, digest_inputs, fingerprint
from .config import FLOAT, Config
from .cost import CostModel, RelativeBops
from .errors import ConfigError
from .pareto import (
    MODES,
    ORDERS,
    DroppedFlip,
    Flip,
    RankedFlip,
    curve_configs,
    first_within,
    flips_from,
    knee,
    noise_per_cost_flips,
    search_index,
)
from .sensitivity import (
    OutputSqnr,
    SensitivityEntry,
    as_input_tuples,
    group_options,
    parse_candidates,
    phase1,
)

#: The label-free default budget. 30 dB = quantization noise at 0.1% of the output's energy (RMS
#: error about 3% of the RMS logit). Measured on MobileNetV2 (phase 1 on 8 ImageNet images, then
#: top-1 agreement with float on 96 held-out images): uniform w16a16 48 dB / 100%, w8a16 22.5 dB /
#: 94.8%, w8a8 17.4 dB / 92.7%, w4a8 0.9 dB / 31%; the searched points at floors 35 / 30 / 25 / 20 dB
#: cost 0.73 / 0.60 / 0.41 / 0.27 relative BOPs and agree 100% / 100% / 96.9% / 94.8%. 30 dB is the
#: cheapest floor tried that changed no prediction; with labels, give eval_fn and an allowed drop.
DEFAULT_SQNR_FLOOR_DB = 30.0


class InfeasibleBudgetError(ConfigError):
    """No point of the search curve meets the budget; the message names the best achievable."""


class SimulatedModule:
    """What ``eval_fn`` receives: a configuration run through the simulation (no compile).

    ``run`` follows ``QuantizedModule.run``: numpy (or torch) in; one array, or a tuple of arrays
    for several outputs, out.
    """

    def __init__(self, quantizer, config: Config):
        self.quantizer = quantizer
        self.config = config

    def run(self, *inputs):
        outs = self.quantizer.simulate(self.config, *inputs)
        return outs[0] if len(outs) == 1 else tuple(outs)

    __call__ = run

    def __repr__(self) -> str:
        return f"SimulatedModule({len(self.config)} groups)"


def _num(x):
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else str(x)


@dataclass
class CurvePoint:
    """Position ``index`` of the curve: the first ``index`` flips applied (0 = the start point).

    ``flip``: the flip that leads here from the previous point; ``cost``: in the search's cost
    unit; ``bops``: relative BOPs (1.0 = every group at the highest candidate), always;
    ``latency_ms``: the latency cost in ms when the search's cost is a latency (else None);
    ``score``: None if not evaluated.
    """

    index: int
    flip: Flip | None
    config: Config
    cost: float
    score: float | None = None
    bops: float | None = None
    latency_ms: float | None = None

    @property
    def flips_applied(self) -> int:
        return self.index

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "flip": None if self.flip is None else {"group": self.flip.group, "candidate": str(self.flip.candidate)},
            "cost": self.cost,
            "bops": self.bops,
            "latency_ms": self.latency_ms,
            "score": _num(self.score),
        }


@dataclass
class SearchResult:
    """The outcome of ``search``: the configuration to realize (None if the budget is infeasible),
    the sensitivity list, the curve (every point's cost; scores where evaluated) and how it went.
    ``chosen`` is a curve index (number of flips applied) or None."""

    config: Config | None
    sensitivity: list[SensitivityEntry]
    curve: list[CurvePoint]
    chosen: int | None
    target: float | None
    evaluations: int
    phase_seconds: dict[str, float]
    message: str
    score_name: str = "output SQNR (dB)"
    float_score: float | None = None
    cost_name: str = "relative_bops"
    cost_unit: str = ""
    cost_budget: float | None = None
    mode: str = "binary"
    reverse: bool = False
    exit: str = ""
    cache_stats: dict | None = None
    results_dir: str | None = None
    extra: dict = field(default_factory=dict)
    #: The flip order of the curve ("sensitivity" | "noise_per_cost", see pareto.ORDERS).
    order: str = "sensitivity"
    #: noise_per_cost: each flip's cost saved and noise added (curve order); empty for "sensitivity".
    ranked: list[RankedFlip] = field(default_factory=list)
    #: noise_per_cost: the (group, candidate)s left off the curve, each with the reason.
    dropped: list[DroppedFlip] = field(default_factory=list)
    #: The cost model that priced the curve (not serialized): prices other configurations alike.
    cost_model: object = field(default=None, repr=False, compare=False)

    @property
    def feasible(self) -> bool:
        return self.config is not None

    @property
    def best_score(self) -> float | None:
        """The highest score evaluated on the curve (what the best point achieves)."""
        scores = [p.score for p in self.curve if p.score is not None]
        return max(scores) if scores else None

    @property
    def chosen_point(self) -> CurvePoint | None:
        return None if self.chosen is None else self.curve[self.chosen]

    def to_dict(self) -> dict:
        """JSON-able (non-finite numbers as strings): the report's search section."""
        return {
            "config": None if self.config is None else self.config.to_dict(),
            "chosen": self.chosen,
            "chosen_cost": None if self.chosen is None else self.curve[self.chosen].cost,
            "chosen_bops": None if self.chosen is None else self.curve[self.chosen].bops,
            "chosen_latency_ms": None if self.chosen is None else self.curve[self.chosen].latency_ms,
            "chosen_score": None if self.chosen is None else _num(self.curve[self.chosen].score),
            "target": _num(self.target),
            "score": self.score_name,
            "float_score": _num(self.float_score),
            "cost": {"name": self.cost_name, "unit": self.cost_unit, "budget": self.cost_budget},
            "mode": self.mode,
            "reverse": self.reverse,
            "order": self.order,
            "exit": self.exit,
            "evaluations": self.evaluations,
            "phase_seconds": dict(self.phase_seconds),
            "message": self.message,
            "cache": self.cache_stats,
            "results_dir": self.results_dir,
            "sensitivity": [e.to_dict() for e in self.sensitivity],
            "curve": [p.to_dict() for p in self.curve],
            "ranked": [r.to_dict() for r in self.ranked],
            "dropped": [d.to_dict() for d in self.dropped],
        }

    def __repr__(self) -> str:
        return f"SearchResult(chosen={self.chosen}, evaluations={self.evaluations}, message={self.message!r})"


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def search(
    quantizer,
    *,
    candidates=None,
    calibration_inputs,
    eval_fn: Callable[[SimulatedModule], float] | None = None,
    allowed_accuracy_drop: float | None = None,
    sqnr_floor_db: float | None = None,
    cost_budget: float | None = None,
    search: str = "binary",
    reverse: bool = False,
    results_dir: str | os.PathLike | None = None,
    clean_start: bool = False,
    progress: bool = True,
    curve_points: int = 12,
    eval_inputs=None,
    cost_model: CostModel | None = None,
    cost: str | CostModel | None = None,
    latency_budget_ms: float | None = None,
    device=None,
    latency_cache=None,
    latency_model=None,
    order: str = "sensitivity",
) -> SearchResult:
    """Find a mixed-precision configuration of ``quantizer``'s groups that meets the budget.

    candidates: candidate list (default ``DEFAULT_CANDIDATES``), offered to every group.
    calibration_inputs: list of input tuples for phase 1 (and for the SQNR score unless
        ``eval_inputs`` is given).
    search: "sequential" | "binary" | "interpolation" (see ``pareto.search_index``).
    reverse: search from the lowest end of the curve, raising the most sensitive groups first.
    results_dir: persist phase-1 entries and evaluated points there and resume from them.
    cost_model: prices a configuration (default relative BOPs); ``cost_budget`` is in its unit.
    cost: "bops" | "measured" | "predicted" | a CostModel (``tvm_mpq.latency.cost_model_for``);
        latency costs are in ms, measured on ``device`` (default this machine; a
        ``tvm_mpq.RPCDevice`` for a remote one), cached in ``latency_cache`` (a JSON path), or
        predicted by ``latency_model`` (a trained LatencyModel or its saved JSON).
    latency_budget_ms: the cost budget in milliseconds (implies cost="measured" unless "predicted").
    order: the flip order of the curve: "sensitivity" (the paper's, default) or "noise_per_cost"
        (noise added per unit of cost saved: per ms with a latency cost; see the module docstring
        and ``pareto.noise_per_cost_flips``).
    Returns a SearchResult; an infeasible budget gives ``config=None`` and says why in ``message``.
    """
    mode = search
    if mode not in MODES:
        raise ConfigError(f"unknown search mode {mode!r}: use one of {', '.join(MODES)}")
    if order not in ORDERS:
        raise ConfigError(f"unknown flip order {order!r}: use one of {', '.join(ORDERS)}")
    if allowed_accuracy_drop is not None and eval_fn is None:
        raise ConfigError("allowed_accuracy_drop needs eval_fn (the metric it is a drop of)")
    if eval_fn is not None and sqnr_floor_db is not None:
        raise ConfigError(
            "give one accuracy budget: eval_fn with allowed_accuracy_drop, or sqnr_floor_db (label-free)"
        )
    for name, v in (("allowed_accuracy_drop", allowed_accuracy_drop), ("sqnr_floor_db", sqnr_floor_db)):
        if v is not None and not (isinstance(v, numbers.Real) and math.isfinite(v)):
            raise ConfigError(f"{name} must be a finite number, got {v!r}")
    if cost_budget is not None and not (isinstance(cost_budget, numbers.Real) and cost_budget > 0):
        raise ConfigError(
            f"cost_budget must be a positive number (relative BOPs: 1.0 = the start point), got {cost_budget!r}"
        )
    if latency_budget_ms is not None:
        if cost_budget is not None:
            raise ConfigError("give cost_budget or latency_budget_ms, not both")
        if cost is None and cost_model is None:
            cost = "measured"
        elif cost == "bops" or (cost is None and cost_model is not None and getattr(cost_model, "unit", "") != "ms"):
            raise ConfigError("latency_budget_ms needs a latency cost: cost='measured' or 'predicted'")
        if not (isinstance(latency_budget_ms, numbers.Real) and latency_budget_ms > 0):
            raise ConfigError(f"latency_budget_ms must be a positive number of milliseconds, got {latency_budget_ms!r}")
        cost_budget = float(latency_budget_ms)
    if eval_fn is None and sqnr_floor_db is None and cost_budget is None:
        sqnr_floor_db = DEFAULT_SQNR_FLOOR_DB
    curve_points = max(0, int(curve_points))

    cands = parse_candidates(candidates)
    calibration_inputs = as_input_tuples(calibration_inputs)
    options = group_options(quantizer, cands)
    if cost is not None:
        from .latency import cost_model_for

        cost_model = cost_model_for(quantizer, cost, cands, device=device, cache=latency_cache,
                                    latency_model=latency_model, progress=progress)
    cost_model = cost_model or RelativeBops(quantizer, cands)

    cache = None
    if results_dir is not None:
        cache = ResultsCache(results_dir, fingerprint(quantizer, cands, calibration_inputs), clean_start=clean_start)

    # ---------------------------------------------------------------------------- scores
    if eval_fn is None:
        inputs = calibration_inputs if eval_inputs is None else as_input_tuples(eval_inputs)
        scorer = OutputSqnr(quantizer, inputs)
        score_fn = scorer
        which = "calibration" if eval_inputs is None else "evaluation"
        score_name = f"output SQNR (dB) vs float on {len(inputs)} {which} batch(es)"
        score_key = f"sqnr_db:{digest_inputs(inputs)[:16]}"
        float_score = math.inf
    else:
        scorer = None
        score_fn = lambda cfg: float(eval_fn(SimulatedModule(quantizer, cfg)))  # noqa: E731
        float_score = score_fn(Config.uniform(quantizer.group_names, FLOAT))
        fn_name = f"{getattr(eval_fn, '__module__', '?')}.{getattr(eval_fn, '__qualname__', type(eval_fn).__name__)}"
        score_name = f"eval_fn {fn_name}"
        # A changed eval_fn almost always changes the float score: key the table by both.
        score_key = f"eval_fn:{fn_name}:{float_score!r}"

    # ---------------------------------------------------------------------------- phase 1
    t0 = time.perf_counter()
    entries = phase1(
        quantizer, calibration_inputs, cands, cost_model=cost_model, cache=cache, progress=progress,
        scorer=scorer if scorer is not None and eval_inputs is None else None,
    )
    t1 = time.perf_counter()

    # ---------------------------------------------------------------------------- the curve
    start = Config({g: opts[0] for g, opts in options.items()})
    ranked, dropped = [], []
    if order == "noise_per_cost":
        ranked, dropped = noise_per_cost_flips(entries, start)
        flips = [r.flip for r in ranked]
    else:
        flips = flips_from(entries, start)
    configs = curve_configs(start, flips)
    costs = [float(cost_model(c)) for c in configs]
    is_bops = getattr(cost_model, "name", "") == RelativeBops.name
    bops_of = cost_model if is_bops else RelativeBops(quantizer, cands)
    rel_bops = costs if is_bops else [float(bops_of(c)) for c in configs]
    latency = costs if getattr(cost_model, "unit", "") == "ms" else [None] * len(configs)
    n = len(configs)
    scores: dict[int, float] = {}
    bar = tqdm(desc=f"pareto search ({mode})", total=None, disable=not progress, unit="eval")

    def evaluate(k: int) -> float:
        if k in scores:
            return scores[k]
        cfg = configs[k]
        s = cache.score(score_key, cfg) if cache is not None else None
        if s is None:
            s = float(score_fn(cfg))
            if cache is not None:
                cache.put_score(score_key, score_name, cfg, s)
                cache.stats["phase2"]["computed"] += 1
        elif cache is not None:
            cache.stats["phase2"]["reused"] += 1
        scores[k] = s
        bar.update(1)
        bar.set_postfix_str(f"point {k}/{n - 1}: {s:.4g}", refresh=False)
        return s

    target = None
    if eval_fn is not None and allowed_accuracy_drop is not None:
        target = float_score - float(allowed_accuracy_drop)
    elif sqnr_floor_db is not None:
        target = float(sqnr_floor_db)

    chosen, exit_ = None, ""
    lowest_desc = ("every flip applied (each group at its lowest candidate)" if order == "sensitivity" else
                   "every flip applied (each group at its cheapest candidate on the curve)")
    if target is not None:
        if not reverse:
            found = search_index(n, evaluate, target, mode)
            chosen, exit_ = found.index, found.exit
        else:
            found = search_index(n, lambda j: evaluate(n - 1 - j), target, mode, rising=True)
            chosen = None if found.index is None else n - 1 - found.index
            exit_ = found.exit
        if chosen is None:
            message = (
                f"target {target:.4g} is unreachable even at the highest candidate: with every group at "
                f"{'/'.join(sorted({str(o[0]) for o in options.values()}))} the {score_name} is "
                f"{_fmt(scores.get(0))}, the best achievable. Lower the target, or add 'float' to the candidates."
            )
        elif chosen == n - 1 and exit_ in ("last meets", "first meets"):
            message = (f"{lowest_desc} already meets the target {target:.4g} (score {_fmt(scores[chosen])}, "
                       f"cost {costs[chosen]:.4g} {cost_model.unit})")
        else:
            message = (
                f"point {chosen} of {n - 1} flips meets the target {target:.4g} (score {_fmt(scores[chosen])}, "
                f"cost {costs[chosen]:.4g} {cost_model.unit}; the next point scores {_fmt(scores.get(chosen + 1))})"
            )
        if chosen is not None and cost_budget is not None and costs[chosen] > cost_budget:
            within = first_within(costs, cost_budget)
            detail = "no point of the curve is within it"
            if within is not None:
                detail = (f"the first point within it (index {within}) scores "
                          f"{_fmt(evaluate(within))} < target {target:.4g}")
            message = (
                f"infeasible: the cheapest point meeting the target {target:.4g} (index {chosen}) costs "
                f"{costs[chosen]:.4g} {cost_model.unit} > cost budget {cost_budget:.4g}, and {detail}. "
                f"Loosen the accuracy target or the cost budget."
            )
            chosen, exit_ = None, "cost budget"
    elif cost_budget is not None:
        chosen = first_within(costs, cost_budget)
        exit_ = "cost budget"
        if chosen is None:
            message = (
                f"infeasible: even {lowest_desc} costs {min(costs):.4g} {cost_model.unit} > cost budget "
                f"{cost_budget:.4g}"
            )
        else:
            message = (
                f"point {chosen} of {n - 1} is the first within the cost budget {cost_budget:.4g} "
                f"(cost {costs[chosen]:.4g}, score {_fmt(evaluate(chosen))})"
            )
    else:  # no budget: trace the curve, choose its knee
        positions = sorted(set(int(round(x)) for x in np.linspace(0, n - 1, curve_points + 2)))
        for k in positions:
            evaluate(k)
        chosen = knee([(k, costs[k], scores[k]) for k in positions])
        exit_ = "traced"
        message = (
            f"no budget given: traced {len(positions)} points of the curve; chose its knee, point {chosen} "
            f"(cost {costs[chosen]:.4g}, score {_fmt(scores[chosen])}). Any point of result.curve can be "
            f"realized instead (quantizer.realize(result.curve[k].config))."
        )
    bar.close()
    t2 = time.perf_counter()
    if dropped:
        message += (f"; {len(dropped)} flip(s) left off the curve by the noise_per_cost order (they save no "
                    f"cost, or another candidate of their group is better: result.dropped)")

    curve = [
        CurvePoint(k, flips[k - 1] if k else None, configs[k], costs[k], scores.get(k), rel_bops[k], latency[k])
        for k in range(n)
    ]
    return SearchResult(
        config=None if chosen is None else configs[chosen],
        sensitivity=entries,
        curve=curve,
        chosen=chosen,
        target=target,
        evaluations=len(scores),
        phase_seconds={"phase1": t1 - t0, "phase2": t2 - t1},
        message=message,
        score_name=score_name,
        float_score=float_score,
        cost_name=cost_model.name,
        cost_unit=cost_model.unit,
        cost_budget=cost_budget,
        mode=mode,
        reverse=reverse,
        exit=exit_,
        cache_stats=None if cache is None else cache.stats,
        results_dir=None if results_dir is None else os.fspath(results_dir),
        order=order,
        ranked=ranked,
        dropped=dropped,
        cost_model=cost_model,
    )
