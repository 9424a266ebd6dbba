"""What a compile did, in one place: sensitivity, the Pareto curve, the choice, the timings.

``Report.from_module(module)`` reads a ``QuantizedModule`` (and its ``.search``, the
``SearchResult``; None when a configuration was given and nothing was searched) and holds:

* the per-group sensitivity table of phase 1 (group x candidate -> output SQNR in dB with only that
  group quantized),
* the Pareto curve: every point's index, the flip that leads to it, its cost on both axes --
  relative BOPs always, latency in ms when the search's cost was a latency -- and its score where it
  was evaluated, the chosen point, uniform-candidate reference points where known, and the flip
  order (with the flips the ``noise_per_cost`` order left off the curve, and why),
* the chosen configuration, the budget (target score, cost budget), the outcome message, the number
  of evaluations and the wall time of each phase (calibration, simulation compile, phase 1, phase 2,
  the final compile),
* the per-layer table of the realized module (``QuantizedModule.summary``).

``text()`` renders it as aligned plain-text tables for a terminal; ``to_dict()`` as JSON-able data;
``save(dir)`` writes ``report.json``, ``config.json`` and, when a search ran, ``sensitivity.png``
and ``pareto.png`` (matplotlib's Agg canvas: no display, no change to pyplot's global backend;
one panel per cost axis: score vs relative BOPs, and score vs ms beside it when there is a latency).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .config import FLOAT, Candidate, Config, write_json_atomic
from .cost import RelativeBops, precision_key

FORMAT = "tvm_mpq.report/1"
REPORT_FILE = "report.json"
CONFIG_FILE = "config.json"
SENSITIVITY_PNG = "sensitivity.png"
PARETO_PNG = "pareto.png"

__all__ = ["Report", "uniform_reference"]


# ------------------------------------------------------------------------------------- helpers


def _jsonable(x):
    """Plain JSON: non-finite floats as strings ("inf"), numpy scalars as Python numbers."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (Candidate, Config)):
        return str(x) if isinstance(x, Candidate) else x.to_dict()
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", None) == 0:  # numpy scalar
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _num(x, digits: int = 4) -> str:
    """A short number for a table cell: 4 significant digits, '-' for None."""
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x > 0 else ("-inf" if x < 0 else "nan")
    return f"{x:.{digits}g}"


def _seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min"


def _table(header: Sequence[str], rows: Iterable[Sequence], right: Iterable[int] = ()) -> list[str]:
    """Aligned columns (two spaces apart), a dashed rule under the header; ``right``: numeric columns."""
    right = set(right)
    cells = [[str(h) for h in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def fmt(row):
        out = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return "  ".join(out).rstrip()

    lines = [fmt(cells[0]), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in cells[1:]]
    return lines


def _section(title: str) -> list[str]:
    return ["", title, "-" * len(title)]


def _uniform_config(quantizer, options: Mapping[str, Sequence[Candidate]], cand: Candidate) -> Config:
    """Every group at ``cand``; a group not offered ``cand`` (no weights: activation bits only) takes
    its offered candidate with the same activation bits -- the same configuration for it."""
    out = {}
    for g in quantizer.group_names:
        opts = list(options.get(g, ()))
        if not opts or cand in opts:
            out[g] = cand
        else:
            same = [o for o in opts if o.activation_bits == cand.activation_bits]
            out[g] = same[0] if same else cand
    return Config(out)


def uniform_reference(quantizer, search_result, inputs=None, candidates=None) -> list[dict]:
    """Uniform-candidate reference points for the Pareto plot:
    ``[{"candidate", "cost", "bops", "latency_ms", "score"}]``.

    bops: relative BOPs. cost: in the search's cost unit (priced by the search's cost model, e.g.
    the measured latency table; None when the result does not carry it). latency_ms: the cost when
    it is a latency, else None. score: taken from
    the curve where the uniform configuration is an evaluated curve point (the start point, and the
    end point when it was evaluated); otherwise, when ``inputs`` (a list of input tuples) are given
    and the search scored by output SQNR on the same kind of inputs, computed by simulation (one
    simulation of ``inputs`` per candidate); else None.
    """
    from .sensitivity import OutputSqnr, group_options, parse_candidates

    if search_result is None:
        return []
    if candidates is None:
        seen = {Candidate.parse(e.candidate) for e in search_result.sensitivity}
        candidates = sorted(seen, key=precision_key, reverse=True)
    cands = parse_candidates(candidates)
    options = group_options(quantizer, cands)
    bops = RelativeBops(quantizer, cands)
    cost_model = getattr(search_result, "cost_model", None)
    if cost_model is None and search_result.cost_name == RelativeBops.name:
        cost_model = bops
    is_ms = search_result.cost_unit == "ms"
    known = {p.config: p.score for p in search_result.curve if p.score is not None}
    scorer = None
    if inputs is not None and search_result.score_name.startswith("output SQNR"):
        scorer = OutputSqnr(quantizer, inputs)
    out = []
    for c in cands:
        cfg = _uniform_config(quantizer, options, c)
        score = known.get(cfg)
        if score is None and scorer is not None:
            score = float(scorer(cfg))
        cost = None if cost_model is None else float(cost_model(cfg))
        out.append({"candidate": str(c), "cost": cost, "bops": float(bops(cfg)),
                    "latency_ms": cost if is_ms else None, "score": score})
    return out


# ------------------------------------------------------------------------------------- Report


class Report:
    """Everything a compile did, readable (``text``), machine-readable (``to_dict``) and on disk
    (``save``). Build with ``Report.from_module(module)`` (or ``Report.from_search`` when the search
    found no feasible point and there is no module)."""

    def __init__(
        self,
        *,
        target: str,
        config: Config | None,
        search=None,
        model: dict | None = None,
        timings: Mapping[str, float] | None = None,
        layers: list[dict] | None = None,
        layer_summary: str | None = None,
        uniform: list[dict] | None = None,
        notes: Sequence[str] = (),
    ):
        self.target = target
        self.config = config
        #: The SearchResult, or None when a configuration was given.
        self.search = search
        self.model = dict(model or {})
        #: Wall seconds per phase, in pipeline order (keys end in "_s").
        self.timings: dict[str, float] = dict(timings or {})
        self.layers = layers
        self.layer_summary = layer_summary
        #: Uniform-candidate reference points: [{"candidate", "cost", "score"}].
        self.uniform: list[dict] = list(uniform or [])
        self.notes: list[str] = list(notes)

    # --------------------------------------------------------------------------- construction
    @staticmethod
    def _model_info(quantizer) -> dict:
        fm = quantizer.float_model
        return {
            "source": fm.source,
            "inputs": [{"name": n, "shape": list(s), "dtype": d} for n, s, d in fm.input_signature()],
            "groups": list(quantizer.group_names),
            "quantizable_ops": len(quantizer.graph.ops),
            "unquantized_ops": [{"binding": b, "op": op, "reason": why} for b, op, why in quantizer.graph.unquantized],
            "calibration_batches": getattr(quantizer, "num_calibration_batches", None),
            "method": getattr(quantizer, "method", None),
        }

    @staticmethod
    def _timings(quantizer, search, compile_s: float | None, extra: Mapping[str, float] | None) -> dict:
        t: dict[str, float] = {}
        extra = dict(extra or {})
        for k in list(extra):
            if k in ("import_s", "load_data_s"):
                t[k] = float(extra.pop(k))
        qt = dict(getattr(quantizer, "timings", {}) or {})
        if "calibration_s" in qt:
            t["calibration_s"] = float(qt.pop("calibration_s"))
        if "simulation_compile_s" in qt:
            t["simulation_compile_s"] = float(qt.pop("simulation_compile_s"))
        if search is not None:
            for k, v in search.phase_seconds.items():
                t[f"{k}_s"] = float(v)
        if compile_s is not None:
            t["compile_s"] = float(compile_s)
        t.update({k: float(v) for k, v in qt.items()})
        t.update({k: float(v) for k, v in extra.items()})
        return t

    @classmethod
    def from_module(cls, module, *, uniform: list[dict] | None = None,
                    timings: Mapping[str, float] | None = None, notes: Sequence[str] = ()) -> Report:
        """The report of a compiled ``QuantizedModule``; its ``.search`` (None: no search ran).

        uniform: reference points for the plot (``uniform_reference``); by default only what costs
        nothing -- relative BOPs of every uniform candidate, and scores where a uniform
        configuration is an evaluated curve point. timings: extra phases (``import_s``,
        ``load_data_s``, ...) measured by the caller.
        """
        q = module.quantizer
        search = getattr(module, "search", None)
        if uniform is None and search is not None:
            uniform = uniform_reference(q, search)
        return cls(
            target=str(module.target),
            config=module.config,
            search=search,
            model=cls._model_info(q),
            timings=cls._timings(q, search, getattr(module, "compile_seconds", None), timings),
            layers=module.layer_table(),
            layer_summary=module.summary(),
            uniform=uniform,
            notes=notes,
        )

    @classmethod
    def from_search(cls, search, quantizer=None, *, target=None, uniform: list[dict] | None = None,
                    timings: Mapping[str, float] | None = None, notes: Sequence[str] = ()) -> Report:
        """The report of a search alone (nothing realized: e.g. an infeasible budget)."""
        if uniform is None and quantizer is not None:
            uniform = uniform_reference(quantizer, search)
        if target is None and quantizer is not None:
            target = quantizer.target
        return cls(
            target=str(target) if target is not None else "-",
            config=search.config,
            search=search,
            model=cls._model_info(quantizer) if quantizer is not None else {},
            timings=cls._timings(quantizer, search, None, timings),
            uniform=uniform,
            notes=notes,
        )

    # --------------------------------------------------------------------------- derived data
    @property
    def searched(self) -> bool:
        return self.search is not None

    @property
    def outcome(self) -> str:
        if self.search is not None:
            return self.search.message
        if self.config is None:
            return "nothing realized"
        return "no search ran: the configuration was given (realized as is)"

    def candidates(self) -> list[str]:
        """Candidates of the sensitivity table, highest precision first."""
        if self.search is None:
            return []
        seen = {Candidate.parse(e.candidate) for e in self.search.sensitivity}
        return [str(c) for c in sorted(seen, key=precision_key, reverse=True)]

    def groups(self) -> list[str]:
        """Group names in graph order."""
        if self.model.get("groups"):
            return list(self.model["groups"])
        if self.search is not None:
            return [g for g, _ in sorted({(e.group, e.order) for e in self.search.sensitivity}, key=lambda t: t[1])]
        return list(self.config or [])

    def sensitivity_table(self) -> dict[str, dict[str, float]]:
        """group -> candidate -> output SQNR (dB) with only that group quantized (phase 1)."""
        table: dict[str, dict[str, float]] = {g: {} for g in self.groups()}
        if self.search is not None:
            for e in self.search.sensitivity:
                table.setdefault(e.group, {})[e.candidate] = e.sqnr_db
        return table

    def has_latency(self) -> bool:
        """True when the curve points carry a latency in ms (the search's cost was a latency)."""
        return self.search is not None and any(getattr(p, "latency_ms", None) is not None for p in self.search.curve)

    def pareto_points(self) -> list[dict]:
        """Every curve point: index, flip, cost (the search's unit), bops (relative BOPs), latency_ms
        (None without a latency cost), score (None unless evaluated), evaluated, chosen."""
        if self.search is None:
            return []
        chosen = self.search.chosen
        return [
            {
                "index": p.index,
                "flip": None if p.flip is None else {"group": p.flip.group, "candidate": str(p.flip.candidate)},
                "cost": p.cost,
                "bops": getattr(p, "bops", None),
                "latency_ms": getattr(p, "latency_ms", None),
                "score": p.score,
                "evaluated": p.score is not None,
                "chosen": p.index == chosen,
            }
            for p in self.search.curve
        ]

    def evaluations(self) -> dict:
        """Phase 1 simulations (computed / reused from the cache) and phase 2 curve evaluations."""
        if self.search is None:
            return {}
        n1 = len(self.search.sensitivity)
        cache = self.search.cache_stats or {}
        p1 = cache.get("phase1", {})
        p2 = cache.get("phase2", {})
        return {
            "phase1": n1,
            "phase1_reused": int(p1.get("reused", 0)),
            "phase2": self.search.evaluations,
            "phase2_reused": int(p2.get("reused", 0)),
        }

    # --------------------------------------------------------------------------- outputs
    def to_dict(self) -> dict:
        s = self.search
        d: dict = {
            "format": FORMAT,
            "target": self.target,
            "model": self.model,
            "searched": s is not None,
            "outcome": self.outcome,
            "config": None if self.config is None else self.config.to_dict(),
            "config_counts": self._config_counts(),
            "timings": self.timings,
            "notes": self.notes,
        }
        if s is not None:
            chosen = s.chosen_point
            d["budget"] = {
                "score": s.score_name, "target": s.target, "float_score": s.float_score,
                "cost": s.cost_name, "cost_unit": s.cost_unit, "cost_budget": s.cost_budget,
            }
            d["search"] = {
                "mode": s.mode, "reverse": s.reverse, "order": getattr(s, "order", "sensitivity"), "exit": s.exit,
                "evaluations": self.evaluations(), "results_dir": s.results_dir, "cache": s.cache_stats,
                "dropped": [x.to_dict() for x in getattr(s, "dropped", [])],
            }
            d["chosen"] = None if chosen is None else {
                "index": chosen.index, "cost": chosen.cost, "bops": getattr(chosen, "bops", None),
                "latency_ms": getattr(chosen, "latency_ms", None), "score": chosen.score}
            d["sensitivity"] = {
                "candidates": self.candidates(),
                "table": self.sensitivity_table(),
                "sorted": [e.to_dict() for e in s.sensitivity],
            }
            d["pareto"] = {"points": self.pareto_points(), "uniform": self.uniform}
        else:
            d["budget"] = d["search"] = d["chosen"] = d["sensitivity"] = d["pareto"] = None
        d["layers"] = self.layers
        return _jsonable(d)

    def _config_counts(self) -> dict[str, int]:
        if self.config is None:
            return {}
        counts: dict[str, int] = {}
        for c in sorted(self.config.values(), key=precision_key, reverse=True):
            counts[str(c)] = counts.get(str(c), 0) + 1
        return counts

    def text(self, full_curve: bool = False) -> str:
        """Plain-text tables for a terminal. ``full_curve``: list every curve point, not only the
        evaluated ones (runs of unevaluated points are folded into one line by default)."""
        s = self.search
        lines = ["tvm_mpq report", "=============="]
        head = [("target", self.target)]
        if self.model:
            parts = [self.model["source"]] if self.model.get("source") else []
            if self.model.get("inputs"):
                parts.append("input(s) " + ", ".join(
                    f"{i['name']} {tuple(i['shape'])} {i['dtype']}" for i in self.model["inputs"]))
            sizes = [f"{len(self.model['groups'])} quantizer groups"] if self.model.get("groups") else []
            if self.model.get("quantizable_ops") is not None:
                sizes.append(f"{self.model['quantizable_ops']} quantizable ops")
            if sizes:
                parts.append(", ".join(sizes))
            if self.model.get("unquantized_ops"):
                parts.append(f"{len(self.model['unquantized_ops'])} op(s) left in float")
            head.append(("model", "; ".join(parts)))
        if s is None:
            head.append(("search", "none: the configuration was given"))
        else:
            head.append(("score", s.score_name))
            budget = f"target score {_num(s.target)}" if s.target is not None else "no target score"
            if s.float_score is not None and _finite(s.float_score):
                budget += f" (float model {_num(s.float_score)})"
            budget += f"; cost budget {_num(s.cost_budget) if s.cost_budget is not None else 'none'}"
            head.append(("budget", budget))
            head.append(("cost", f"{s.cost_name} ({s.cost_unit})" if s.cost_unit else s.cost_name))
            ev = self.evaluations()
            p1 = f"{ev['phase1']} phase-1 simulations"
            if ev["phase1_reused"]:
                p1 += f" ({ev['phase1_reused']} from the cache)"
            p2 = f"{ev['phase2']} curve evaluations"
            if ev["phase2_reused"]:
                p2 += f" ({ev['phase2_reused']} from the cache)"
            order = getattr(s, "order", "sensitivity")
            order_desc = ("flip order: sensitivity (the paper's)" if order == "sensitivity" else
                          f"flip order: {order} (noise added per {s.cost_unit if s.cost_unit == 'ms' else 'cost'} saved)")
            head.append(("search", f"{s.mode}{', reverse' if s.reverse else ''}; {order_desc}; {p1}, {p2}; "
                                   f"exit: {s.exit or '-'}"))
            cp = s.chosen_point
            head.append(("chosen", "none (infeasible)" if cp is None else
                         f"point {cp.index} of {len(s.curve) - 1}: {self._axes_text(cp)}, score {_num(cp.score)}"))
        head.append(("outcome", self.outcome))
        w = max(len(k) for k, _ in head)
        lines += [f"{k.ljust(w)}  {v}" for k, v in head]
        lines += [f"note: {n}" for n in self.notes]

        if s is not None:
            lines += self._sensitivity_text()
            lines += self._curve_text(full_curve)
        lines += self._config_text()
        lines += self._timings_text()
        if self.layer_summary:
            lines += _section("Per-layer table")
            lines += self.layer_summary.splitlines()
        return "\n".join(lines)

    def _sensitivity_text(self) -> list[str]:
        cands = self.candidates()
        table = self.sensitivity_table()
        chosen = self.config or {}
        out = _section("Phase 1 sensitivity: output SQNR (dB) with only this group quantized "
                       "(* = chosen; - = not offered)")
        rows = []
        for g, row in table.items():
            cells = [g]
            for c in cands:
                v = row.get(c)
                cell = "-" if v is None else (_num(v) if not _finite(v) else f"{v:.2f}")
                cell += "*" if g in chosen and str(chosen[g]) == c else " "  # keeps the decimals aligned
                cells.append(cell)
            rows.append(cells)
        out += _table(["group"] + cands, rows, right=range(1, len(cands) + 1))
        if any(len(r) < len(cands) for r in table.values()):
            out.append("(groups without weights set activation bits only: one candidate per activation width)")
        return out

    def _cost_columns(self) -> list[tuple[str, str]]:
        """(point key, header) of the cost axes shown: relative BOPs always, latency ms when known,
        and the search's own cost when it is neither."""
        s = self.search
        cols = [("bops", "rel. BOPs")]
        if self.has_latency():
            cols.append(("latency_ms", f"ms ({s.cost_name.replace('_latency', '')})"))
        elif s.cost_name != RelativeBops.name:
            cols.append(("cost", f"cost ({s.cost_name})"))
        return cols

    def _axes_text(self, p) -> str:
        """'0.41 x BOPs, 85.3 ms' for a curve point (object or dict)."""
        get = (lambda k: p.get(k)) if isinstance(p, Mapping) else (lambda k: getattr(p, k, None))
        parts = []
        bops = get("bops")
        if bops is None and self.search.cost_name == RelativeBops.name:
            bops = get("cost")
        if bops is not None:
            parts.append(f"{_num(bops)} x BOPs")
        if get("latency_ms") is not None:
            parts.append(f"{_num(get('latency_ms'))} ms")
        if not parts or (self.search.cost_name != RelativeBops.name and self.search.cost_unit != "ms"):
            parts.append(f"cost {_num(get('cost'))}")
        return ", ".join(parts)

    def _curve_text(self, full: bool) -> list[str]:
        s = self.search
        pts = self.pareto_points()
        n_eval = sum(p["evaluated"] for p in pts)
        order = getattr(s, "order", "sensitivity")
        what = ("the phase-1 order" if order == "sensitivity" else
                f"the {order} order")
        out = _section(f"Pareto curve: {len(pts)} points, {n_eval} evaluated "
                       f"(point k applies the first k flips of {what})")
        cols = self._cost_columns()
        if not any(p.get("bops") is not None for p in pts) and cols[0][0] == "bops":
            cols[0] = ("cost", "rel. BOPs" if s.cost_name == RelativeBops.name else f"cost ({s.cost_name})")
        show = set(range(len(pts))) if full else {p["index"] for p in pts if p["evaluated"] or p["chosen"]}
        if pts:
            show |= {0, len(pts) - 1}
        rows, skipped = [], []

        def flush():
            if skipped:
                a, b = skipped[0], skipped[-1]
                rows.append(["", f"... {len(skipped)} point(s) {a}-{b} not evaluated" if a != b
                             else f"... point {a} not evaluated"] + [""] * (len(cols) + 2))
                skipped.clear()

        for p in pts:
            if p["index"] not in show:
                skipped.append(p["index"])
                continue
            flush()
            flip = "(start)" if p["flip"] is None else f"{p['flip']['group']} -> {p['flip']['candidate']}"
            mark = "<- chosen" if p["chosen"] else ""
            rows.append([str(p["index"]), flip] + [_num(p.get(k)) for k, _ in cols] + [_num(p["score"]), mark])
        flush()
        out += _table(["point", "flip"] + [h for _, h in cols] + ["score", ""], rows,
                      right=range(2, 3 + len(cols)))
        if s.target is not None or s.cost_budget is not None:
            parts = [] if s.target is None else [f"target score {_num(s.target)}"]
            if s.cost_budget is not None:
                parts.append(f"cost budget {_num(s.cost_budget)}{' ' + s.cost_unit if s.cost_unit == 'ms' else ''}")
            out.append("; ".join(parts))
        if self.uniform:
            out.append("uniform references: " + "; ".join(
                f"{u['candidate']} {self._axes_text(u)} score {_num(u['score'])}" for u in self.uniform))
        dropped = getattr(s, "dropped", [])
        if dropped:
            out.append(f"left off the curve by the {order} order ({len(dropped)}):")
            shown = dropped if full or len(dropped) <= 12 else dropped[:12]
            out += [f"  {d.group} -> {d.candidate}: {d.reason}" for d in shown]
            if len(shown) < len(dropped):
                out.append(f"  ... {len(dropped) - len(shown)} more (report.json: search.dropped)")
        return out

    def _config_text(self) -> list[str]:
        if self.config is None:
            return _section("Chosen configuration") + ["none"]
        counts = ", ".join(f"{n} x {c}" for c, n in self._config_counts().items())
        what = "Chosen configuration" if self.search is not None else "Configuration (given, not searched)"
        out = _section(f"{what}: {len(self.config)} groups ({counts})")
        sens = self.sensitivity_table() if self.search is not None else {}
        rows = []
        for g, c in self.config.items():
            alone = sens.get(g, {}).get(str(c))
            rows.append([g, str(c)] + ([_num(alone)] if self.search is not None else []))
        header = ["group", "candidate"] + (["SQNR alone (dB)"] if self.search is not None else [])
        out += _table(header, rows, right=(2,))
        return out

    _TIMING_NAMES = {
        "import_s": "model import",
        "load_data_s": "calibration data loading",
        "calibration_s": "calibration",
        "simulation_compile_s": "simulation module compile",
        "phase1_s": "phase 1 (sensitivity)",
        "phase2_s": "phase 2 (Pareto search)",
        "compile_s": "realize + compile",
    }

    def _timings_text(self) -> list[str]:
        if not self.timings:
            return []
        out = _section("Wall time")
        rows = [[self._TIMING_NAMES.get(k, k.removesuffix("_s").replace("_", " ")), _seconds(v)]
                for k, v in self.timings.items()]
        rows.append(["total", _seconds(sum(self.timings.values()))])
        out += _table(["phase", "time"], rows, right=(1,))
        return out

    def __str__(self) -> str:
        return self.text()

    def __repr__(self) -> str:
        return f"Report(target={self.target!r}, searched={self.searched}, outcome={self.outcome!r})"

    # --------------------------------------------------------------------------- files
    def save(self, directory: str | os.PathLike) -> dict[str, Path]:
        """Write ``report.json`` and ``config.json`` (when there is a configuration) and, when a search
        ran, ``sensitivity.png`` and ``pareto.png``; return {name: path}. PNGs of an earlier search
        in ``directory`` are removed when this report has none, so nothing stale is left beside it.
        Raises ImportError (after writing the JSON files) if matplotlib is not installed."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        written: dict[str, Path] = {}
        write_json_atomic(d / REPORT_FILE, self.to_dict())
        written[REPORT_FILE] = d / REPORT_FILE
        if self.config is not None:
            self.config.to_json(d / CONFIG_FILE)
            written[CONFIG_FILE] = d / CONFIG_FILE
        if self.search is None:
            for name in (SENSITIVITY_PNG, PARETO_PNG):
                (d / name).unlink(missing_ok=True)
            return written
        try:
            import matplotlib  # noqa: F401
        except ImportError as e:
            raise ImportError(
                f"the report's plots need matplotlib (pip install matplotlib); {REPORT_FILE} and "
                f"{CONFIG_FILE} were written to {d}"
            ) from e
        self.plot_sensitivity(d / SENSITIVITY_PNG)
        written[SENSITIVITY_PNG] = d / SENSITIVITY_PNG
        self.plot_pareto(d / PARETO_PNG)
        written[PARETO_PNG] = d / PARETO_PNG
        return written

    def plot_sensitivity(self, path: str | os.PathLike) -> None:
        """Heat map: one row per group (graph order), one column per candidate, cell = SQNR (dB)
        printed in the cell; the chosen candidate of each group is outlined."""
        import numpy as np
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle

        cands = self.candidates()
        table = self.sensitivity_table()
        groups = list(table)
        values = np.full((len(groups), len(cands)), np.nan)
        for i, g in enumerate(groups):
            for j, c in enumerate(cands):
                v = table[g].get(c)
                if v is not None:
                    values[i, j] = v
        finite = values[np.isfinite(values)]
        vmax = float(finite.max()) if finite.size else 1.0
        vmin = float(finite.min()) if finite.size else 0.0
        shown = np.where(np.isposinf(values), vmax, values)  # lossless (inf dB) shows as the best

        label_w = max([len(g) for g in groups] + [5]) * 0.075
        fig = Figure(figsize=(label_w + 1.1 * len(cands) + 2.2, 0.3 * len(groups) + 1.8), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        cmap = matplotlib_cmap("viridis")
        if hasattr(cmap, "with_extremes"):
            cmap = cmap.with_extremes(bad="#dddddd")
        else:  # pragma: no cover - matplotlib < 3.4
            cmap.set_bad("#dddddd")
        im = ax.imshow(np.ma.masked_invalid(shown), aspect="auto", cmap=cmap, vmin=vmin,
                       vmax=vmax if vmax > vmin else vmin + 1)
        ax.set_xticks(range(len(cands)), cands)
        ax.set_yticks(range(len(groups)), groups, fontsize=8)
        ax.xaxis.tick_top()
        ax.tick_params(axis="x", labelsize=9)
        chosen = self.config or {}
        span = (vmax - vmin) or 1.0
        for i, g in enumerate(groups):
            for j, c in enumerate(cands):
                v = values[i, j]
                if np.isnan(v):
                    ax.text(j, i, "-", ha="center", va="center", fontsize=7, color="#666666")
                    continue
                txt = "inf" if np.isinf(v) else f"{v:.1f}"
                dark = (shown[i, j] - vmin) / span < 0.6
                ax.text(j, i, txt, ha="center", va="center", fontsize=7, color="white" if dark else "black")
                if g in chosen and str(chosen[g]) == c:
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
        fig.colorbar(im, ax=ax, label="output SQNR (dB)", fraction=0.05, pad=0.02)
        title = "Phase 1: output SQNR with only this group quantized"
        if self.config is not None:
            title += "\n(red box: chosen candidate)"
        ax.set_title(title, fontsize=10, pad=22)
        fig.tight_layout()
        fig.savefig(os.fspath(path), format="png")

    def plot_pareto(self, path: str | os.PathLike) -> None:
        """Score vs cost of the evaluated curve points, the target line, the cost budget, the chosen
        point (star) and the uniform candidates (diamonds; dotted lines where only the cost is known):
        one panel per cost axis, side by side with a shared score axis -- relative BOPs, and the
        latency in ms when the search's cost was a latency (or the search's own cost when it is
        neither)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        s = self.search
        pts = [p for p in self.pareto_points() if p["evaluated"]]
        axes = []  # (point key, x label, budget on this axis)
        is_bops = s.cost_name == RelativeBops.name
        if is_bops or any(p.get("bops") is not None for p in pts):
            axes.append(("bops" if not is_bops else "cost", "relative BOPs (1.0 = every group at the highest candidate)",
                         s.cost_budget if is_bops else None))
        if self.has_latency():
            axes.append(("latency_ms", f"latency (ms, {s.cost_name.replace('_', ' ')})", s.cost_budget))
        elif not is_bops:
            unit = f" ({s.cost_unit})" if s.cost_unit else ""
            axes.append(("cost", f"cost: {s.cost_name}{unit}", s.cost_budget))

        finite = [p["score"] for p in pts if _finite(p["score"])]
        finite += [u["score"] for u in self.uniform if _finite(u.get("score"))]
        hi = max(finite) if finite else 1.0
        lo = min(finite) if finite else 0.0
        if s.target is not None and _finite(s.target):
            hi, lo = max(hi, s.target), min(lo, s.target)
        pad = 0.08 * ((hi - lo) or 1.0)

        def clip(v):  # non-finite scores drawn at the edge of the plot
            if _finite(v):
                return v
            return hi + pad * 0.5 if v > 0 else lo - pad * 0.5

        fig = Figure(figsize=(7.5 * len(axes) if len(axes) > 1 else 7.5, 5), dpi=100)
        FigureCanvasAgg(fig)
        panels = fig.subplots(1, len(axes), sharey=True, squeeze=False)[0]
        cp = s.chosen_point
        chosen = next((p for p in self.pareto_points() if p["chosen"]), None)
        for i, (ax, (key, label, budget)) in enumerate(zip(panels, axes)):
            shown = [p for p in pts if _finite(p.get(key))]
            if shown:
                ax.plot([p[key] for p in shown], [clip(p["score"]) for p in shown], "o-", color="tab:blue",
                        label=f"evaluated curve points ({len(shown)} of {len(s.curve)})", zorder=3)
                for p in shown:
                    ax.annotate(str(p["index"]), (p[key], clip(p["score"])), textcoords="offset points",
                                xytext=(4, 4), fontsize=7, color="tab:blue")
            if s.target is not None and _finite(s.target):
                ax.axhline(s.target, color="tab:red", linestyle="--", label=f"target {_num(s.target)}")
            if budget is not None:
                ax.axvline(budget, color="tab:orange", linestyle="--", label=f"cost budget {_num(budget)}")
            first_line = True
            for u in self.uniform:
                x = u.get(key)
                if not _finite(x):
                    continue
                if _finite(u.get("score")):
                    ax.plot([x], [u["score"]], "D", color="tab:gray", markersize=7, zorder=4,
                            label="uniform candidates" if first_line else None)
                    ax.annotate(u["candidate"], (x, u["score"]), textcoords="offset points", xytext=(6, -10),
                                fontsize=8, color="tab:gray")
                else:
                    ax.axvline(x, color="tab:gray", linestyle=":", linewidth=1,
                               label="uniform candidates (cost only)" if first_line else None)
                    ax.annotate(u["candidate"], (x, 1.0), xycoords=("data", "axes fraction"),
                                textcoords="offset points", xytext=(2, -12), fontsize=8, color="tab:gray")
                first_line = False
            if cp is not None and cp.score is not None and chosen is not None and _finite(chosen.get(key)):
                ax.plot([chosen[key]], [clip(cp.score)], "*", color="tab:green", markersize=18, zorder=5,
                        markeredgecolor="black", label=f"chosen: point {cp.index}")
            ax.set_ylim(lo - pad, hi + pad)
            ax.set_xlabel(label)
            if i == 0:
                ax.set_ylabel(s.score_name if len(s.score_name) < 45 else s.score_name.split(" vs ")[0])
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8, loc="best")
        order = getattr(s, "order", "sensitivity")
        fig.suptitle("Pareto curve" + ("" if cp is not None else " (no feasible point)")
                     + f" -- flip order: {order}", fontsize=11)
        fig.tight_layout()
        fig.savefig(os.fspath(path), format="png")

    @staticmethod
    def load(path: str | os.PathLike) -> dict:
        """Read a saved ``report.json`` (or the directory holding it) back as a dict."""
        p = Path(path)
        if p.is_dir():
            p = p / REPORT_FILE
        with open(p, encoding="utf-8") as f:
            return json.load(f)


def matplotlib_cmap(name: str):
    """A copy of a registered colormap (matplotlib >= 3.6 API, with the old one as fallback)."""
    try:
        import matplotlib

        return matplotlib.colormaps[name].copy()
    except (AttributeError, KeyError):  # pragma: no cover - old matplotlib
        from matplotlib import cm

        return cm.get_cmap(name).copy()
