"""Phase 1 of the search: how much each quantizer group, alone, hurts the network's output.

For every group and every candidate offered to it, quantize only that group (every other group
stays float), run the calibration samples through the simulation (one compiled module for every
configuration; nothing is compiled per entry) and score the network's final outputs against the
float outputs by SQNR in dB. The list, sorted least sensitive first, is the order in which phase 2
lowers precision (DESIGN §1).

A group whose consumers have no weights (activation x activation matmuls) has only activation
bits: candidates that differ only in weight bits are the same configuration for it, so it is
offered one candidate per activation width (the one with the most weight bits) -- evaluating the
others would cost simulations and put duplicate flips on the curve.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
from tqdm.auto import tqdm

from .calibration import sqnr_db
from .config import DEFAULT_CANDIDATES, FLOAT, Candidate, Config
from .cost import CostModel, RelativeBops, precision_key
from .errors import ConfigError


@dataclass(frozen=True)
class SensitivityEntry:
    """One (group, candidate) of phase 1: the output SQNR with only this group quantized.

    ``cost_saved``: cost of the start point (every group at its highest candidate) minus the cost
    with this group flipped to ``candidate``, in the cost model's unit; ``order``: the group's
    position in graph order (the last tie-break).
    """

    group: str
    candidate: str
    sqnr_db: float
    total_bits: int
    cost_saved: float
    order: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sqnr_db"] = self.sqnr_db if math.isfinite(self.sqnr_db) else str(self.sqnr_db)
        return d


def sort_key(e: SensitivityEntry) -> tuple:
    """Descending SQNR (least sensitive first); ties: fewer total bits, more cost saved, graph order.

    On a tie in SQNR the flip with fewer bits (then the larger saving) goes first: it buys more for
    the same damage.
    """
    return (-e.sqnr_db, e.total_bits, -e.cost_saved, e.order)


def sort_entries(entries: Iterable[SensitivityEntry]) -> list[SensitivityEntry]:
    return sorted(entries, key=sort_key)


def parse_candidates(candidates) -> list[Candidate]:
    """A candidate list, highest precision first, without duplicates; None = the defaults."""
    if candidates is None:
        candidates = DEFAULT_CANDIDATES
    if isinstance(candidates, (str, Candidate)):
        candidates = [candidates]
    parsed = sorted({Candidate.parse(c) for c in candidates}, key=precision_key, reverse=True)
    if not parsed:
        raise ConfigError("the candidate list is empty: give at least one, e.g. ['w8a8', 'w4a8']")
    return parsed


def is_weightless(quantizer, group: str) -> bool:
    """True when no op the group feeds has a weight (its candidates set activation bits only)."""
    g = quantizer.graph.groups[group]
    return all(quantizer.graph.ops[op].weight is None for op in g.op_names)


def group_options(quantizer, candidates=None) -> dict[str, list[Candidate]]:
    """The candidates offered to each group, highest precision first."""
    cands = parse_candidates(candidates)
    options = {}
    for name in quantizer.group_names:
        if not is_weightless(quantizer, name):
            options[name] = list(cands)
            continue
        by_act: dict[int | None, Candidate] = {}
        for c in cands:  # highest first: the first one per activation width has the most weight bits
            by_act.setdefault(c.activation_bits, c)
        options[name] = list(by_act.values())
    return options


def as_input_tuples(inputs) -> list[tuple]:
    """A list of input tuples (a bare array is a one-input batch)."""
    if inputs is None:
        raise ConfigError("inputs are required: a list of input tuples (or arrays for one-input models)")
    if isinstance(inputs, np.ndarray) or hasattr(inputs, "detach"):
        inputs = [inputs]
    batches = [tuple(b) if isinstance(b, (tuple, list)) else (b,) for b in inputs]
    if not batches:
        raise ConfigError("the list of inputs is empty: give at least one batch")
    return batches


def flat_outputs(outputs) -> np.ndarray:
    return np.concatenate([np.asarray(o, dtype=np.float64).ravel() for o in outputs])


class OutputSqnr:
    """SQNR (dB) of a configuration's final outputs (all outputs, all inputs concatenated) against
    the float model's, on fixed inputs. ``simulations`` counts the simulated configurations."""

    def __init__(self, quantizer, inputs):
        self.quantizer = quantizer
        self.inputs = as_input_tuples(inputs)
        self.reference = flat_outputs(o for b in self.inputs for o in quantizer.run_float(*b))
        self.simulations = 0

    def __call__(self, config: Config) -> float:
        self.simulations += 1
        out = flat_outputs(o for b in self.inputs for o in self.quantizer.simulate(config, *b))
        return sqnr_db(self.reference, out)


def phase1(
    quantizer,
    calibration_inputs,
    candidates=None,
    *,
    cost_model: CostModel | None = None,
    cache=None,
    progress: bool = True,
    scorer: OutputSqnr | None = None,
) -> list[SensitivityEntry]:
    """Score every (group, offered candidate); return the entries sorted least sensitive first.

    ``calibration_inputs``: list of input tuples. ``cache``: a ``ResultsCache``; finished entries
    are read from it and every new one is written to it as soon as it is computed.
    """
    options = group_options(quantizer, candidates)
    cost_model = cost_model or RelativeBops(quantizer, parse_candidates(candidates))
    start = Config({g: opts[0] for g, opts in options.items()})
    start_cost = cost_model(start)
    float_cfg = Config.uniform(quantizer.group_names, FLOAT)

    todo, scores = [], {}
    for g, opts in options.items():
        for c in opts:
            cached = cache.sensitivity(g, c) if cache is not None else None
            if cached is None:
                todo.append((g, c))
            else:
                scores[(g, c)] = cached
    if cache is not None:
        cache.stats["phase1"]["reused"] += len(scores)
    if todo:
        scorer = scorer or OutputSqnr(quantizer, calibration_inputs)
        bar = tqdm(total=len(todo) + len(scores), initial=len(scores), desc="sensitivity", disable=not progress)
        for g, c in todo:
            bar.set_postfix_str(f"{g} {c}", refresh=False)
            t0 = time.perf_counter()
            s = scorer(float_cfg.updated({g: c}))
            scores[(g, c)] = s
            if cache is not None:
                cache.put_sensitivity(g, c, s, time.perf_counter() - t0)
                cache.stats["phase1"]["computed"] += 1
            bar.update(1)
        bar.close()

    order = {g: i for i, g in enumerate(quantizer.group_names)}
    entries = [
        SensitivityEntry(
            group=g, candidate=str(c), sqnr_db=float(scores[(g, c)]), total_bits=c.total_bits,
            cost_saved=start_cost - cost_model(start.updated({g: c})), order=order[g],
        )
        for g, opts in options.items()
        for c in opts
    ]
    return sort_entries(entries)
