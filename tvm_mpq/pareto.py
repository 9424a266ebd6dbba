"""Phase 2 of the search: the greedy Pareto curve and the index searches along it (pure Python).

The curve (DESIGN §1): start with every group at its highest candidate; the phase-1 list, least
sensitive first, is a list of *flips* (group -> candidate); curve position k applies the first k
flips (position 0 is the start, position n applies them all; a later flip of a group overwrites an
earlier one; flips to a group's start candidate are dropped, they change nothing). Scores are
assumed to fall along the curve, so the point to take is the last one whose score meets the
target, found by ``search_index`` with few evaluations -- each one is a full evaluation of the
user's metric. Everything here is pure: ``evaluate`` is any callable, so the searches are tested on
synthetic curves without TVM.

Two flip orders (``ORDERS``): ``"sensitivity"``, the paper's (``flips_from``: the phase-1 list as
sorted, least sensitive first, blind to what a flip saves), and ``"noise_per_cost"``
(``noise_per_cost_flips``): the flips ranked by output noise added per unit of cost saved -- per
millisecond with a latency cost -- so a flip that saves no time is never taken and one that saves
much time for little noise comes first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .config import Candidate, Config

MODES = ("sequential", "binary", "interpolation")
#: Flip orders of the curve: the paper's pure-sensitivity order, and noise added per cost saved.
ORDERS = ("sensitivity", "noise_per_cost")


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


def noise_fraction(sqnr_db: float) -> float:
    """Noise power over signal power of an output SQNR in dB: ``10 ** (-sqnr_db / 10)``.

    Unlike dB, it adds up: independent noises from several groups sum to the noise of all of them
    together (to first order), so "noise added by a flip" is a difference of these. inf dB (lossless)
    is 0; NaN (a broken score) is inf.
    """
    s = float(sqnr_db)
    if math.isnan(s):
        return math.inf
    if s == math.inf:
        return 0.0
    return 10.0 ** (-s / 10.0)


@dataclass(frozen=True)
class RankedFlip:
    """A flip of the ``noise_per_cost`` order: it moves ``flip.group`` from its previous candidate
    on the curve to ``flip.candidate``, saving ``cost_saved`` (cost-model unit) and adding
    ``noise_added`` (noise power / signal power, phase-1 estimate); ``noise_per_cost`` is their ratio
    (negative where the flip removes noise too)."""

    flip: Flip
    cost_saved: float
    noise_added: float
    noise_per_cost: float

    def to_dict(self) -> dict:
        return {"group": self.flip.group, "candidate": str(self.flip.candidate), "cost_saved": self.cost_saved,
                "noise_added": self.noise_added, "noise_per_cost": self.noise_per_cost}


@dataclass(frozen=True)
class DroppedFlip:
    """A (group, candidate) the ``noise_per_cost`` order leaves off the curve, and why."""

    group: str
    candidate: str
    cost_saved: float
    sqnr_db: float
    reason: str

    def to_dict(self) -> dict:
        return {"group": self.group, "candidate": self.candidate, "cost_saved": self.cost_saved,
                "sqnr_db": self.sqnr_db if math.isfinite(self.sqnr_db) else str(self.sqnr_db),
                "reason": self.reason}


def noise_per_cost_flips(entries: Iterable, start: Mapping[str, Candidate], *, rel_tol: float = 1e-9,
                         ) -> tuple[list[RankedFlip], list[DroppedFlip]]:
    """Order the flips by output noise added per unit of cost saved (the ``noise_per_cost`` order).

    ``entries``: phase-1 entries (``.group``, ``.candidate``, ``.sqnr_db``, ``.cost_saved`` -- the
    cost of the start point minus its cost with only this group flipped -- and ``.order``), the
    group's start candidate among them. Returns (ranked flips, dropped (group, candidate)s).

    Per group, each candidate is a point (cost saved x, noise n = ``noise_fraction(sqnr_db)``); the
    start candidate is (0, its own noise). The group's flips are the steps along the *lower convex
    hull* of those points from the start towards the largest saving: from the current candidate,
    the next is the one of larger saving with the least noise added per cost saved (ties: the
    nearer). So, within a group, every step saves cost (a flip that makes the group slower or
    saves nothing is never on the curve, let alone before a cheaper alternative), and the ratio
    does not decrease from one step to the next. All groups' steps are then merged by that ratio,
    lowest first (ties: graph order; within a group the hull order is kept), which is the greedy
    solution of the relaxed problem "least total noise for a given total saving" under two model
    assumptions: noises of different groups add up, and costs of different groups add up (true of
    BOPs and of the per-op latency sum, except that an activation x activation matmul's kernel
    depends on both operands' groups; its saving is measured with the other operand at its start).

    Dropped, with the reason, rather than put last: candidates that save nothing (x <= 0: on this
    CPU an integer kernel can be slower than the float or 16-bit one it replaces), candidates with
    a non-finite SQNR, and candidates above the hull (another candidate of the group saves at least
    as much for no more noise, or a mix of two hull neighbours beats it). Applying any of them
    after the hull steps would move the curve to a point with more noise and no more saving than
    one already on it.

    The curve's monotone assumption (scores fall along it) holds as well here as in the paper's
    order: under the additive-noise model each step adds ``noise_added >= 0`` (a negative step --
    a candidate both cheaper and less noisy than the start, e.g. w8a16 scoring above w16a16 by
    chance -- goes first and raises the score), and cost falls at every step. Where the model is
    wrong (noises that interact, the sum of per-op latencies vs the real module), scores and costs
    can wiggle, as they do along the paper's curve; the curve's costs are priced exactly, per
    configuration, by the search.
    """
    by_group: dict[str, list] = {}
    orders: dict[str, int] = {}
    for e in entries:
        by_group.setdefault(e.group, []).append(e)
        orders[e.group] = e.order
    ranked: list[tuple[float, int, int, RankedFlip]] = []
    dropped: list[DroppedFlip] = []
    for g, group_entries in by_group.items():
        s_cand = Candidate.parse(start[g])
        points = {}
        for e in group_entries:
            points[Candidate.parse(e.candidate)] = (float(e.cost_saved), noise_fraction(e.sqnr_db), e)
        x0, n0 = 0.0, points[s_cand][1] if s_cand in points else 0.0
        if not math.isfinite(n0):
            n0 = 0.0  # a broken start score: measure the others' noise from zero
        others = {c: p for c, p in points.items() if c != s_cand}
        scale = max([abs(x) for x, _, _ in others.values()] + [0.0])
        steps, cur, cur_x, cur_n = [], s_cand, x0, n0
        while True:
            best = None
            for c, (x, n, _) in others.items():
                if not math.isfinite(n) or x <= cur_x + rel_tol * scale:
                    continue
                slope = (n - cur_n) / (x - cur_x)
                key = (slope, x)
                if best is None or key < best[0]:
                    best = (key, c)
            if best is None:
                break
            (slope, _), c = best
            x, n, _ = others[c]
            if steps:  # the hull's ratios do not decrease; rounding must not reorder a group's steps
                slope = max(slope, steps[-1].noise_per_cost)
            steps.append(RankedFlip(Flip(g, c), x - cur_x, n - cur_n, slope))
            cur, cur_x, cur_n = c, x, n
        on_curve = {s.flip.candidate for s in steps} | {s_cand}
        for c, (x, n, e) in others.items():
            if c in on_curve:
                continue
            if not math.isfinite(n):
                why = f"no finite SQNR ({e.sqnr_db})"
            elif x <= rel_tol * scale:
                why = (f"saves nothing: costs {-x:.4g} more than {s_cand}" if x < 0 else
                       f"saves nothing against {s_cand}")
            else:
                better = [d for d, (xd, nd, _) in points.items() if d != c and xd >= x and nd <= n]
                why = (f"dominated by {better[0]} (saves at least as much, no more noise)" if better else
                       "above the group's lower convex hull (its neighbours on the curve save more per noise added)")
            dropped.append(DroppedFlip(g, str(c), x, float(e.sqnr_db), why))
        for i, s in enumerate(steps):
            ranked.append((s.noise_per_cost, orders[g], i, s))
    ranked.sort(key=lambda t: t[:3])
    dropped.sort(key=lambda d: (orders[d.group], d.candidate))
    return [r for *_, r in ranked], dropped


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
