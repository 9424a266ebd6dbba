"""Resumable search results on disk: a crash, a Ctrl-C or ``kill -9`` loses one evaluation at most.

Phase 1 on a real model is hundreds of simulations (MobileNetV2: 53 groups x 4 candidates, about
10 s each here), so, like AIMET's ``results_dir/.cache``, every finished phase-1 entry and every
evaluated Pareto point is written to ``results_dir`` the moment it is known, and a rerun reuses
them instead of recomputing. Files are plain JSON (readable, diffable, never pickle), each
rewritten atomically (temporary file + rename), so at any instant the file on disk is a complete
earlier or later version, never half of one:

* ``sensitivity.json``: ``{"format", "fingerprint", "fingerprint_parts", "entries": [{"group",
  "candidate", "sqnr_db", "seconds"}, ...]}``, in the order computed;
* ``pareto.json``: ``{"format", "fingerprint", "fingerprint_parts", "scores": {<score key>:
  {"definition", "points": {<config digest>: {"score", "config"}}}}}`` -- points are keyed by
  the configuration itself, so a different target or search mode reuses every point evaluated
  before, and a different score (another ``eval_fn``, other evaluation inputs) gets its own table.

A fingerprint -- digests of the group and op structure, the weights, the calibration statistics,
the candidates, the phase-1 inputs, the range methods and the score definition -- guards against
reusing results of another model or setup: a mismatch raises ``StaleCacheError`` naming what
changed and never deletes anything; ``clean_start=True`` (or another ``results_dir``) starts over.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from .config import Candidate, Config, write_json_atomic
from .cost import precision_key
from .errors import ConfigError

FORMAT = "tvm_mpq.search-cache/1"
#: What a phase-1 score is; part of the fingerprint (change it when the definition changes).
PHASE1_SCORE = "sqnr_db(float outputs, simulated outputs), all outputs of all inputs concatenated; v1"
SENSITIVITY_FILE = "sensitivity.json"
PARETO_FILE = "pareto.json"


class StaleCacheError(ConfigError):
    """``results_dir`` holds results of a different model, candidate set, data or score."""


def _sha(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(len(c).to_bytes(8, "little"))
        h.update(c)
    return h.hexdigest()


def digest_arrays(arrays: Iterable) -> str:
    """Digest of arrays' dtypes, shapes and bytes, in order."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def digest_inputs(inputs: Iterable) -> str:
    """Digest of a list of input tuples (a bare array counts as a one-input tuple)."""
    flat = []
    for batch in inputs:
        flat.extend(batch if isinstance(batch, (tuple, list)) else (batch,))
    return digest_arrays(flat)


def digest_config(config: Mapping) -> str:
    return _sha(json.dumps({k: str(v) for k, v in config.items()}, sort_keys=True).encode())[:32]


@dataclass(frozen=True)
class Fingerprint:
    """Named parts (short digests or values) and one digest over all of them."""

    parts: dict = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return _sha(json.dumps(self.parts, sort_keys=True).encode())

    def diff(self, other_parts: Mapping) -> list[str]:
        keys = sorted(set(self.parts) | set(other_parts))
        return [k for k in keys if self.parts.get(k) != other_parts.get(k)]


def fingerprint(quantizer, candidates: Iterable[str | Candidate], calibration_inputs) -> Fingerprint:
    """What phase-1 results depend on. Calibration statistics (every observer's min, max, count and
    sample) stand for the Quantizer's own calibration data, which may be a spent generator."""
    graph = quantizer.graph
    structure = {
        "groups": [[g.name, g.root, [list(u) for u in g.uses]] for g in graph.groups.values()],
        "ops": [[o.name, o.kind, o.weight, o.macs] for o in graph.ops.values()],
    }
    params = quantizer.float_model.params
    h = hashlib.sha256()
    for name in sorted(quantizer.observers):
        ob = quantizer.observers[name]
        h.update(f"{name}|{ob.min!r}|{ob.max!r}|{ob.count}".encode())
        h.update(np.ascontiguousarray(ob.samples).tobytes())
    parts = {
        "format": FORMAT,
        "structure": _sha(json.dumps(structure, sort_keys=True).encode())[:16],
        "weights": digest_arrays(params[k] for k in sorted(params))[:16]
        + f" ({len(params)} tensors)",
        "calibration_statistics": h.hexdigest()[:16],
        "candidates": [
            str(c) for c in sorted({Candidate.parse(c) for c in candidates}, key=precision_key, reverse=True)
        ],
        "phase1_inputs": digest_inputs(calibration_inputs)[:16],
        "range_methods": {"activations": quantizer.method, "weights": quantizer.weight_method},
        "score": PHASE1_SCORE,
    }
    return Fingerprint(parts)


def _num(x: float):
    """JSON has no inf/nan: write them as strings."""
    x = float(x)
    return x if math.isfinite(x) else str(x)


def _unnum(x) -> float:
    return float(x)


class ResultsCache:
    """Phase-1 entries and Pareto-point scores of one search setup, persisted after each one.

    ``stats`` counts, per phase, entries ``reused`` from disk and ``computed`` in this run.
    """

    def __init__(self, results_dir: str | os.PathLike, fingerprint: Fingerprint, clean_start: bool = False):
        self.dir = os.fspath(results_dir)
        self.fingerprint = fingerprint
        self.stats = {"phase1": {"reused": 0, "computed": 0}, "phase2": {"reused": 0, "computed": 0}}
        os.makedirs(self.dir, exist_ok=True)
        self._sens: dict[tuple[str, str], dict] = {}
        self._scores: dict[str, dict] = {}
        if not clean_start:
            self._load()
        # Claim the directory now: an empty cache with this fingerprint.
        if clean_start or not os.path.exists(self.path(SENSITIVITY_FILE)):
            self._write_sensitivity()
        if clean_start or not os.path.exists(self.path(PARETO_FILE)):
            self._write_pareto()

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    # ------------------------------------------------------------------------------ loading
    def _read(self, name: str) -> dict | None:
        path = self.path(name)
        if not os.path.exists(path):
            return None
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise StaleCacheError(
                f"search cache {path!r} cannot be read ({e}); pass clean_start=True to start over "
                f"or choose another results_dir"
            ) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            fmt = data.get("format") if isinstance(data, dict) else None
            raise StaleCacheError(
                f"{path!r} is not a tvm_mpq search cache (format {fmt!r}, expected {FORMAT!r}); pass "
                f"clean_start=True to start over or choose another results_dir"
            )
        if data.get("fingerprint") != self.fingerprint.digest:
            old = data.get("fingerprint_parts", {})
            changed = self.fingerprint.diff(old)
            detail = "; ".join(
                f"{k}: cached {old.get(k)!r}, now {self.fingerprint.parts.get(k)!r}" for k in changed
            ) or "fingerprint differs"
            raise StaleCacheError(
                f"results_dir {self.dir!r} holds search results of a different setup ({detail}). "
                f"Reusing them would be wrong and they are not deleted: pass clean_start=True to "
                f"overwrite them, or choose another results_dir"
            )
        return data

    def _load(self) -> None:
        data = self._read(SENSITIVITY_FILE)
        if data is not None:
            for r in data.get("entries", []):
                self._sens[(r["group"], r["candidate"])] = r
        data = self._read(PARETO_FILE)
        if data is not None:
            self._scores = data.get("scores", {})

    # ------------------------------------------------------------------------------ writing
    def _header(self) -> dict:
        return {"format": FORMAT, "fingerprint": self.fingerprint.digest, "fingerprint_parts": self.fingerprint.parts}

    def _write_sensitivity(self) -> None:
        write_json_atomic(self.path(SENSITIVITY_FILE), {**self._header(), "entries": list(self._sens.values())})

    def _write_pareto(self) -> None:
        write_json_atomic(self.path(PARETO_FILE), {**self._header(), "scores": self._scores})

    # ------------------------------------------------------------------------------ phase 1
    def sensitivity(self, group: str, candidate: str | Candidate) -> float | None:
        """The cached SQNR of (group, candidate), or None if not computed yet."""
        r = self._sens.get((group, str(Candidate.parse(candidate))))
        return None if r is None else _unnum(r["sqnr_db"])

    def put_sensitivity(self, group: str, candidate: str | Candidate, sqnr_db: float, seconds: float = 0.0) -> None:
        key = (group, str(Candidate.parse(candidate)))
        self._sens[key] = {"group": key[0], "candidate": key[1], "sqnr_db": _num(sqnr_db), "seconds": round(seconds, 4)}
        self._write_sensitivity()

    @property
    def num_sensitivity_entries(self) -> int:
        return len(self._sens)

    # ------------------------------------------------------------------------------ phase 2
    def score(self, score_key: str, config: Config) -> float | None:
        r = self._scores.get(score_key, {}).get("points", {}).get(digest_config(config))
        return None if r is None else _unnum(r["score"])

    def put_score(self, score_key: str, definition: str, config: Config, score: float) -> None:
        table = self._scores.setdefault(score_key, {"definition": definition, "points": {}})
        table["points"][digest_config(config)] = {"score": _num(score), "config": config.to_dict()}
        self._write_pareto()
