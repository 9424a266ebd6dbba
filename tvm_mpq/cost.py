"""The cost of a configuration: what the search trades accuracy against.

Phase 1 ranks flips by "cost saved" and phase 2 reports (and may budget) the cost of every curve
point, so both go through one small interface, ``CostModel`` (``name``, ``unit``,
``__call__(config) -> float``), and the measured / predicted latency model of a later issue slots
in beside the baseline here: bit operations (BOPs), the paper's and AIMET's cost.

BOPs of an op = MACs x activation bits x weight bits; a float operand counts 32 bits; an
activation x activation matmul multiplies the activation bits of its two operands. Relative BOPs
divide by the BOPs of every group at the highest candidate, so the search's start point costs 1.0.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from .config import DEFAULT_CANDIDATES, Candidate, Config

#: Bits a float operand counts in BOPs (fp32).
FLOAT_BITS = 32


@runtime_checkable
class CostModel(Protocol):
    """Anything that prices a configuration: lower is better, ``unit`` says in what."""

    name: str
    unit: str

    def __call__(self, config: Config) -> float: ...


def precision_key(c: Candidate) -> tuple:
    """Order candidates from low to high precision: float highest, then by bits per MAC."""
    if c.is_float:
        return (1, 0, 0, 0)
    return (0, c.weight_bits * c.activation_bits, c.activation_bits, c.weight_bits)


def highest_candidate(candidates: Iterable[str | Candidate]) -> Candidate:
    return max((Candidate.parse(c) for c in candidates), key=precision_key)


def lowest_candidate(candidates: Iterable[str | Candidate]) -> Candidate:
    return min((Candidate.parse(c) for c in candidates), key=precision_key)


def _act_bits(c: Candidate) -> int:
    return FLOAT_BITS if c.is_float else c.activation_bits


def _weight_bits(c: Candidate) -> int:
    return FLOAT_BITS if c.is_float else c.weight_bits


class Bops:
    """Absolute BOPs of a configuration; per-op operand groups are looked up once."""

    name = "bops"
    unit = "bit operations"

    def __init__(self, quantizer):
        graph = quantizer.graph
        self._ops = []  # (macs, group of operand 0, group of operand 1 or None)
        for name, op in graph.ops.items():
            groups = [graph.group_of(name, i).name for i in range(len(op.inputs))]
            rhs = groups[1] if op.weight is None and len(groups) > 1 else None
            self._ops.append((op.macs, groups[0], rhs))

    def __call__(self, config: Config) -> float:
        total = 0.0
        for macs, lhs, rhs in self._ops:
            a = config[lhs]
            other = _act_bits(config[rhs]) if rhs is not None else _weight_bits(a)
            total += float(macs) * _act_bits(a) * other
        return total


class RelativeBops:
    """BOPs relative to every group at the highest of ``candidates`` (the search's start = 1.0)."""

    name = "relative_bops"
    unit = "x BOPs at the highest candidate"

    def __init__(self, quantizer, candidates: Iterable[str | Candidate] | None = None):
        self.bops = Bops(quantizer)
        top = highest_candidate(candidates or DEFAULT_CANDIDATES)
        self.reference = self.bops(Config.uniform(quantizer.group_names, top))

    def __call__(self, config: Config) -> float:
        return self.bops(config) / self.reference if self.reference else 0.0


def bops(quantizer, config) -> float:
    """Σ over quantizable ops of MACs · activation bits · weight bits (float = 32 bits)."""
    return Bops(quantizer)(quantizer.config(config))


def relative_bops(quantizer, config, candidates: Iterable[str | Candidate] | None = None) -> float:
    """``bops(config)`` over the BOPs of every group at the highest candidate (default w16a16)."""
    return RelativeBops(quantizer, candidates)(quantizer.config(config))
