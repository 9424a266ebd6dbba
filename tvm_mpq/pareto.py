"""Phase 2 of the search: the greedy Pareto curve and the index searches along it (pure Python).

The curve (DESIGN §1): start with every group at its highest candidate; the phase-1 list, least
sensitive first, is a list of *flips* (group -> candidate); curve position k applies the first k
flips (position 0 is the start, position n applies them all; a later flip of a group overwrites an
earlier one; flips to a group's start candidate are dropped, they change nothing). Scores are
assumed to fall along the curve, so the point to take is the last one whose score meets the
target, found by ``search_index`` with few evaluations -- each one is a full evaluation of the
user's metric. Everything here is pure: ``evaluate`` is any callable, so the searches are tested on
synthetic curves without TVM.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .config import Candidate, Config

MODES = ("sequential", "binary", "interpolation")


@dataclass(frozen=True)
class Flip:
    """One step along the curve: set ``group`` to ``candidate``."""

    group: str
    candidate: Candidate


@dataclass
class IndexSearch:
    """What ``search_index`` found. ``index`` None: no index meets the target.

    ``exit``: "first misses" / "first meets" / "last meets" / "last misses" (the early exits, see
    ``search_index``) or "searched"; ``values``: every evaluated index -> score (memoized, so
    ``evaluations == len(values)``).
    """

    index: int | None
    exit: str
    values: dict[int, float] = field(default_factory=dict)

    @property
    def evaluations(self) -> int:
        return len(self.values)


def search_index(
    n: int,
    evaluate: Callable[[int], float],
    target: float,
    mode: str = "binary",
    *,
    rising: bool = False,
) -> IndexSearch:
    """Find the boundary of ``evaluate(i) >= target`` over ``i in [0, n)``.

    Falling curve (default): the largest i that meets the target. Rising curve (``rising=True``,
    the reverse search): the smallest i that meets it. Scores are assumed monotone; evaluations
    are memoized and counted.

    Every mode first evaluates the two ends, in index order (AIMET's early exits): falling -- if
    index 0 misses, nothing meets ("first misses"); if index n-1 meets, take it ("last meets").
    Rising -- if index 0 meets, take it ("first meets"); if index n-1 misses, nothing meets
    ("last misses"). Then, between a known hit and a known miss:

    * ``sequential``: walk from index 1 until the first change (n evaluations at worst);
    * ``binary``: split at the midpoint;
    * ``interpolation``: split where the straight line through the two bracketing scores crosses
      the target, clamped into the open interval -- and into the window that still lets bisection
      finish within binary search's worst case, so a cliff in the curve (where plain
      interpolation search degrades to a linear scan) costs no more evaluations than binary:
      at most ``2 + ceil(log2(n - 1))`` in all, against ``log log n`` on smooth curves.
    """
    if mode not in MODES:
        raise ValueError(f"unknown search mode {mode!r}: use one of {MODES}")
    values: dict[int, float] = {}

    def ev(i: int) -> float:
        if i not in values:
            v = float(evaluate(i))
            values[i] = -math.inf if math.isnan(v) else v
        return values[i]

    if n <= 0:
        return IndexSearch(None, "empty", values)
    meets = lambda i: ev(i) >= target  # noqa: E731
    first = meets(0)
    if not rising and not first:
        return IndexSearch(None, "first misses", values)
    if rising and first:
        return IndexSearch(0, "first meets", values)
    if n == 1:
        return IndexSearch(0 if first else None, "searched", values)
    last = meets(n - 1)
    if not rising and last:
        return IndexSearch(n - 1, "last meets", values)
    if rising and not last:
        return IndexSearch(None, "last misses", values)

    # Bracket: lo and hi are evaluated and differ; the answer is lo (falling) or hi (rising).
    lo, hi = 0, n - 1
    if mode == "sequential":
        for i in range(1, n - 1):
            if meets(i) != first:
                return IndexSearch(i - 1 if not rising else i, "searched", values)
        return IndexSearch(n - 2 if not rising else n - 1, "searched", values)

    budget = math.ceil(math.log2(hi - lo))  # bisection's worst case for the hi - lo - 1 inner points
    while hi - lo > 1:
        if mode == "binary":
            p = (lo + hi) // 2
        else:
            v_lo, v_hi = values[lo], values[hi]
            frac = 0.5 if not (math.isfinite(v_lo) and math.isfinite(v_hi)) or v_hi == v_lo else (
                (target - v_lo) / (v_hi - v_lo))
            x = lo + min(max(frac, 0.0), 1.0) * (hi - lo)
            # The boundary between hit and miss lies at the crossing: probe the side of it that
            # is expected to hold the answer, so a straight curve is settled in two evaluations.
            p = math.floor(x) if not rising else math.ceil(x)
            half = 2 ** (budget - 1)
            p = min(max(p, lo + 1, hi - half), hi - 1, lo + half)
        budget -= 1
        if meets(p) == (not rising):
            lo = p
        else:
            hi = p
    return IndexSearch(lo if not rising else hi, "searched", values)


# ---------------------------------------------------------------------------------------- curve


def flips_from(entries: Iterable, start: Mapping[str, Candidate]) -> list[Flip]:
    """The sorted phase-1 entries (``.group``, ``.candidate``) as flips away from ``start``.

    Entries whose candidate is the group's start candidate are dropped: applying one changes
    nothing, and a curve point that repeats its neighbour is an evaluation wasted.
    """
    flips = []
    for e in entries:
        c = Candidate.parse(e.candidate)
        if c != Candidate.parse(start[e.group]):
            flips.append(Flip(e.group, c))
    return flips


def curve_configs(start: Config, flips: Sequence[Flip]) -> list[Config]:
    """Configurations of positions 0..n: position k applies the first k flips."""
    configs = [start]
    current = dict(start)
    for f in flips:
        current[f.group] = f.candidate
        configs.append(Config(current))
    return configs


def first_within(costs: Sequence[float], budget: float) -> int | None:
    """The first position whose cost is within ``budget`` (the least-flipped affordable point)."""
    for k, c in enumerate(costs):
        if c <= budget:
            return k
    return None


def knee(points: Sequence[tuple[int, float, float]]) -> int | None:
    """The knee of a falling (cost, score) curve: ``points`` = (position, cost, score).

    Cost and score are normalized to [0, 1] between the curve's ends; the knee is the point
    farthest above the chord between them (Kneedle): the most cost saved for the least score lost,
    after which the score starts to fall faster than the cost. Ties go to fewer flips (safer);
    a curve with no point above its chord gives the start (position 0 or the first listed).
    """
    pts = [(k, c, s) for k, c, s in points if math.isfinite(c)]
    if not pts:
        return None
    finite = [s for _, _, s in pts if math.isfinite(s)]
    if not finite:
        return min(k for k, _, _ in pts)
    s_hi, s_lo = max(finite), min(finite)
    c_hi, c_lo = max(c for _, c, _ in pts), min(c for _, c, _ in pts)
    best, best_gain = None, -math.inf
    for k, c, s in sorted(pts):
        s = min(max(s, s_lo), s_hi)
        saved = (c_hi - c) / (c_hi - c_lo) if c_hi > c_lo else 0.0
        kept = (s - s_lo) / (s_hi - s_lo) if s_hi > s_lo else 1.0
        gain = saved + kept - 1.0
        if gain > best_gain + 1e-12:
            best, best_gain = k, gain
    return best
