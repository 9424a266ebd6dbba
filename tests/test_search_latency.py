"""The search with a latency cost: the noise_per_cost flip order, both cost axes on every curve point.

* ``pareto.noise_per_cost_flips`` on synthetic phase-1 entries (no TVM): a group whose flips save
  nothing is the paper order's *first* flip and is left off the noise_per_cost curve (or, saving
  next to nothing, put last); a candidate slower than a cheaper alternative of its group never
  comes before it; the group's steps follow its lower convex hull; on random entries every step
  saves cost, the steps of a group keep their order, and the noise-per-cost ratio never falls.
* ``search`` on the tiny FragileCNN with a fake latency cost in which one group saves nothing: the
  paper order puts that group on the curve, noise_per_cost does not; costs fall at every point.
* ``tvm_mpq.compile(..., order="noise_per_cost")`` end to end; the report (text, report.json,
  pareto.png) shows relative BOPs and ms for every curve point.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tvm_mpq  # noqa: E402
from tvm_mpq import Candidate, Config, ConfigError  # noqa: E402
from tvm_mpq.calibration import sqnr_db  # noqa: E402
from tvm_mpq.pareto import Flip, flips_from, noise_fraction, noise_per_cost_flips  # noqa: E402
from tvm_mpq.report import Report  # noqa: E402
from tvm_mpq.search import search  # noqa: E402
from tvm_mpq.sensitivity import SensitivityEntry, phase1, sort_entries  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import search_child as child  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CANDS = ("w16a16", "w8a16", "w8a8", "w4a8")


def _entries(table: dict[str, dict[str, tuple[float, float]]]) -> list[SensitivityEntry]:
    """group -> candidate -> (SQNR dB, cost saved), as sorted phase-1 entries (paper order)."""
    out = []
    for order, (g, row) in enumerate(table.items()):
        for c, (sqnr, saved) in row.items():
            out.append(SensitivityEntry(g, c, sqnr, Candidate.parse(c).total_bits, saved, order))
    return sort_entries(out)


def _start(table) -> Config:
    return Config({g: "w16a16" for g in table})


# ------------------------------------------------------------------------------------------------
# The order on synthetic entries (no TVM)
# ------------------------------------------------------------------------------------------------


def test_noise_fraction():
    assert noise_fraction(30.0) == pytest.approx(1e-3)
    assert noise_fraction(math.inf) == 0.0 and noise_fraction(math.nan) == math.inf
    # It adds up where dB do not: two groups at 30 dB each give about 27 dB together.
    assert -10 * math.log10(2 * noise_fraction(30.0)) == pytest.approx(26.99, abs=0.01)


def test_flip_that_saves_nothing_is_first_in_paper_order_and_off_the_noise_per_cost_curve():
    # "quiet" is the least sensitive group (its 8-bit flips barely add noise), but on this CPU its
    # integer kernels are no faster than w16a16 (saved 0) or slower (w4a8: -0.3 ms).
    table = {
        "quiet": {"w16a16": (90.0, 0.0), "w8a16": (70.0, 0.0), "w8a8": (65.0, 0.0), "w4a8": (60.0, -0.3)},
        "fast": {"w16a16": (88.0, 0.0), "w8a16": (50.0, 4.0), "w8a8": (45.0, 6.0), "w4a8": (35.0, 6.5)},
        "mid": {"w16a16": (85.0, 0.0), "w8a16": (50.0, 1.0), "w8a8": (44.0, 3.0), "w4a8": (30.0, 2.0)},
    }
    entries = _entries(table)
    paper = flips_from(entries, _start(table))
    assert paper[0] == Flip("quiet", Candidate(8, 16))  # the paper takes it first...
    assert {f.group for f in paper[:3]} == {"quiet"}

    ranked, dropped = noise_per_cost_flips(entries, _start(table))
    flips = [r.flip for r in ranked]
    assert "quiet" not in {f.group for f in flips}  # ...noise_per_cost never
    quiet = {d.candidate: d.reason for d in dropped if d.group == "quiet"}
    assert set(quiet) == {"w8a16", "w8a8", "w4a8"}
    assert "saves nothing" in quiet["w8a16"] and "costs 0.3 more" in quiet["w4a8"]
    # mid's w4a8 is slower than its w8a8 (saves 2 < 3) and noisier: dominated, never on the curve.
    mid = {d.candidate: d.reason for d in dropped if d.group == "mid"}
    assert set(mid) == {"w4a8"} and "dominated by w8a8" in mid["w4a8"]
    # Every step saves time; ratios never fall; each group's steps in hull order.
    assert all(r.cost_saved > 0 for r in ranked)
    ratios = [r.noise_per_cost for r in ranked]
    assert ratios == sorted(ratios)
    assert [str(f.candidate) for f in flips if f.group == "fast"] == ["w8a16", "w8a8", "w4a8"]
    assert [str(f.candidate) for f in flips if f.group == "mid"] == ["w8a16", "w8a8"]
    # The first flip saves 4 ms for 1e-5 of noise: better than mid's 1 ms for 1e-5.
    assert flips[0] == Flip("fast", Candidate(8, 16))


def test_saving_next_to_nothing_goes_last():
    table = {
        "quiet": {"w16a16": (90.0, 0.0), "w8a8": (65.0, 1e-6)},
        "a": {"w16a16": (88.0, 0.0), "w8a8": (40.0, 5.0)},
        "b": {"w16a16": (88.0, 0.0), "w8a8": (35.0, 5.0)},
    }
    entries = _entries(table)
    assert flips_from(entries, _start(table))[0].group == "quiet"
    ranked, dropped = noise_per_cost_flips(entries, _start(table))
    assert [r.flip.group for r in ranked] == ["a", "b", "quiet"] and not dropped


def test_convex_hull_skips_a_candidate_a_mix_of_neighbours_beats():
    # w8a8 saves barely more than w8a16 for ten times the noise; w4a8 saves much more for twice
    # w8a8's noise: w16a16 -> w8a16 -> w4a8 is the hull, w8a8 lies above it.
    table = {"g": {"w16a16": (60.0, 0.0), "w8a16": (30.0, 1.0), "w8a8": (20.0, 1.1), "w4a8": (17.0, 3.0)}}
    ranked, dropped = noise_per_cost_flips(_entries(table), _start(table))
    assert [str(r.flip.candidate) for r in ranked] == ["w8a16", "w4a8"]
    assert [(d.candidate, "convex hull" in d.reason) for d in dropped] == [("w8a8", True)]
    # A candidate cheaper *and* less noisy than the start is taken first (negative ratio).
    table = {"g": {"w16a16": (40.0, 0.0), "w8a16": (45.0, 1.0)}, "h": {"w16a16": (90.0, 0.0), "w8a8": (50.0, 1.0)}}
    ranked, _ = noise_per_cost_flips(_entries(table), _start(table))
    assert ranked[0].flip == Flip("g", Candidate(8, 16)) and ranked[0].noise_per_cost < 0


def test_random_entries_give_a_monotone_curve():
    rng = np.random.default_rng(0)
    for trial in range(200):
        table = {}
        for g in range(int(rng.integers(1, 12))):
            row = {"w16a16": (float(rng.uniform(50, 100)), 0.0)}
            for c in CANDS[1:]:
                row[c] = (float(rng.uniform(0, 70)), float(rng.normal(1.0, 2.0)))
            table[f"g{g}"] = row
        entries = _entries(table)
        start = _start(table)
        ranked, dropped = noise_per_cost_flips(entries, start)
        on = {(r.flip.group, str(r.flip.candidate)) for r in ranked}
        off = {(d.group, d.candidate) for d in dropped}
        assert on.isdisjoint(off) and len(on) + len(off) == len(entries) - len(table)
        # Model cost and noise along the curve: cost falls at every point, noise never drops once
        # the free improvements (negative ratios) are taken.
        cost = {g: 0.0 for g in table}
        noise = {g: noise_fraction(table[g]["w16a16"][0]) for g in table}
        last = {}
        prev_ratio = -math.inf
        for r in ranked:
            g, c = r.flip.group, str(r.flip.candidate)
            saved_before = -cost[g]
            saved, sq = table[g][c][1], table[g][c][0]
            assert saved > saved_before, (trial, r)  # never slower than the group's previous candidate
            assert r.cost_saved == pytest.approx(saved - saved_before)
            assert r.noise_added == pytest.approx(noise_fraction(sq) - noise[g])
            assert r.noise_per_cost >= prev_ratio - 1e-12
            prev_ratio = r.noise_per_cost
            if r.noise_per_cost >= 0:
                assert r.noise_added >= -1e-15
            cost[g], noise[g] = -saved, noise_fraction(sq)
            last[g] = c
        # Every group ends at its largest saving (among candidates that save anything).
        for g, row in table.items():
            best = max(row.items(), key=lambda kv: (kv[1][1], kv[1][0]))
            if best[1][1] > 0:
                assert table[g][last[g]][1] == best[1][1]


# ------------------------------------------------------------------------------------------------
# search() and compile() on the tiny CNN with a fake latency
# ------------------------------------------------------------------------------------------------


class FakeLatency:
    """A latency cost model (unit ms) from a table group -> candidate -> ms: costs add up."""

    name = "fake_latency"
    unit = "ms"

    def __init__(self, table):
        self.table = table
        self.calls = 0

    def __call__(self, config) -> float:
        self.calls += 1
        return float(sum(self.table[g][str(c)] for g, c in config.items()))


MS = {"w16a16": 4.0, "w8a16": 3.0, "w8a8": 2.0, "w4a8": 2.5, "float": 3.5}


@pytest.fixture(scope="module")
def quiet_group(fragile, cal):
    """The group of the paper order's first flip (the least sensitive non-start entry)."""
    entries = phase1(fragile, cal, CANDS, progress=False)
    first = next(e for e in entries if e.candidate != "w16a16")
    return first.group


def _fake(fragile, quiet, saving=0.0):
    table = {g: dict(MS) for g in fragile.group_names}
    table[quiet] = {k: (MS["w16a16"] if k == "w16a16" else MS["w16a16"] - saving) for k in MS}
    return FakeLatency(table)


def test_search_orders_with_a_group_that_saves_nothing(fragile, cal, quiet_group):
    kw = dict(calibration_inputs=cal, sqnr_floor_db=40, cost=_fake(fragile, quiet_group), progress=False)
    paper = search(fragile, order="sensitivity", **kw)
    ours = search(fragile, order="noise_per_cost", **kw)
    paper_groups = [p.flip.group for p in paper.curve[1:]]
    assert paper_groups[0] == quiet_group and paper.order == "sensitivity" and not paper.dropped
    assert quiet_group not in {p.flip.group for p in ours.curve[1:]}
    assert {d.group for d in ours.dropped if "saves nothing" in d.reason} == {quiet_group}
    # Costs fall at every point of the noise_per_cost curve (they need not along the paper's: w4a8 is
    # slower than w8a8 in this table); both curves carry both axes.
    costs = [p.cost for p in ours.curve]
    assert all(b < a for a, b in zip(costs, costs[1:]))
    assert any(b > a for a, b in zip([p.cost for p in paper.curve], [p.cost for p in paper.curve][1:]))
    for r in (paper, ours):
        assert r.cost_unit == "ms" and all(p.latency_ms == p.cost for p in r.curve)
        assert r.curve[0].bops == 1.0 and all(0 < p.bops <= 1.0 for p in r.curve)
        assert r.feasible and r.chosen_point.score >= 40
        d = r.to_dict()
        json.dumps(d)
        assert d["order"] == r.order and all("bops" in p and "latency_ms" in p for p in d["curve"])
    assert ours.chosen_point.cost <= paper.chosen_point.cost
    assert "left off the curve" in ours.message
    # Saving next to nothing: on the curve, but last.
    last = search(fragile, order="noise_per_cost", **{**kw, "cost": _fake(fragile, quiet_group, 1e-9)})
    groups = [p.flip.group for p in last.curve[1:]]
    assert quiet_group in groups and set(groups[groups.index(quiet_group):]) == {quiet_group}

    with pytest.raises(ConfigError, match="flip order"):
        search(fragile, order="fastest", **kw)


def test_noise_per_cost_with_bops(fragile, cal):
    """With BOPs as the cost the order is noise per relative BOP saved; every lower candidate saves
    BOPs, so only hull and domination decide what is left off; the latency axis is absent."""
    r = search(fragile, calibration_inputs=cal, sqnr_floor_db=40, order="noise_per_cost", progress=False)
    assert r.cost_name == "relative_bops" and all(p.latency_ms is None for p in r.curve)
    assert all(p.bops == p.cost for p in r.curve)
    assert all(b < a for a, b in zip([p.cost for p in r.curve], [p.cost for p in r.curve][1:]))
    assert all("saves nothing" not in d.reason for d in r.dropped)
    text = Report.from_search(r, fragile).text()
    assert "rel. BOPs" in text and "ms (" not in text


def test_compile_with_order_end_to_end(fragile, cal, quiet_group, tmp_path):
    model = child.FragileCNN().eval()
    example = (torch.from_numpy(cal[0][0]),)
    cost = _fake(fragile, quiet_group)
    qm = tvm_mpq.compile(model, calibration=cal, example_inputs=example, sqnr_floor_db=40, cost=cost,
                         order="noise_per_cost", progress=False)
    res = qm.search
    assert res.order == "noise_per_cost" and res.cost_unit == "ms" and res.cost_model is cost
    assert qm.config[quiet_group] == Candidate(16, 16)  # no flip of it saves anything
    x = np.concatenate([b[0] for b in cal])
    ref = np.concatenate([fragile.run_float(b[0])[0] for b in cal])
    assert sqnr_db(ref, qm.run(x)) >= 40 - 0.5

    report = qm.report
    text = report.text()
    assert "flip order: noise_per_cost" in text and "rel. BOPs" in text and "ms (fake)" in text
    assert "left off the curve by the noise_per_cost order" in text
    cp = res.chosen_point
    assert f"{cp.bops:.4g} x BOPs, {cp.latency_ms:.4g} ms" in text
    written = report.save(tmp_path)
    data = json.loads(written["report.json"].read_text())
    assert data["search"]["order"] == "noise_per_cost" and data["budget"]["cost_unit"] == "ms"
    assert data["chosen"]["bops"] == cp.bops and data["chosen"]["latency_ms"] == cp.latency_ms
    for p in data["pareto"]["points"]:
        assert isinstance(p["bops"], float) and isinstance(p["latency_ms"], float)
    assert {d["group"] for d in data["search"]["dropped"] if "saves nothing" in d["reason"]} == {quiet_group}
    # Uniform references are priced on both axes by the search's own cost model.
    for u in data["pareto"]["uniform"]:
        assert u["latency_ms"] == pytest.approx(sum(cost.table[g][u["candidate"]] for g in qm.config))
        assert 0 < u["bops"] <= 1.0
    png = written["pareto.png"].read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 1000

    with pytest.raises(ConfigError, match="order"):
        tvm_mpq.compile(model, calibration=cal, example_inputs=example, config="w8a8", order="noise_per_cost")
