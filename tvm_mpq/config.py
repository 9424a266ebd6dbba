"""Candidates ("w8a8") and configurations (group name -> candidate): the user-editable contract.

A configuration is what the search produces and what realization consumes; it is plain JSON so a
user can read it, edit it and hand it back.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from .errors import ConfigError

_CANDIDATE_RE = re.compile(r"^w(\d+)a(\d+)$")

#: Weight and activation bit-widths with a realization (integer kernel) on every target. 7-bit
#: weights (stored as int8) are int8's counterpart for AVX2 CPUs: against uint8 activations they
#: run in exact ``vpmaddubsw`` byte quads, as int4 weights do (targets/x86.py), where 8-bit weights
#: need int16 pairs -- the arithmetic of ONNX Runtime's ``reduce_range`` int8 on AVX2.
SUPPORTED_WEIGHT_BITS = (4, 7, 8, 16)
SUPPORTED_ACTIVATION_BITS = (8, 16)
#: The candidates of the paper's experiments, highest precision first.
DEFAULT_CANDIDATES = ("w16a16", "w8a16", "w8a8", "w4a8")


@dataclass(frozen=True, order=True)
class Candidate:
    """A bit-width pair for one quantizer group; ``float`` leaves the group unquantized."""

    weight_bits: int | None
    activation_bits: int | None

    @property
    def is_float(self) -> bool:
        return self.weight_bits is None

    @property
    def total_bits(self) -> int:
        """Tie-break key of the sensitivity sort (float counts as 32+32)."""
        return 64 if self.is_float else self.weight_bits + self.activation_bits

    def __str__(self) -> str:
        return "float" if self.is_float else f"w{self.weight_bits}a{self.activation_bits}"

    @staticmethod
    def parse(text: str | Candidate) -> Candidate:
        """Parse ``"w8a8"``, ``"W4A8"`` or ``"float"``; anything else is a ConfigError."""
        if isinstance(text, Candidate):
            return text
        if not isinstance(text, str):
            raise ConfigError(f"a candidate must be a string like 'w8a8' or 'float', got {text!r}")
        t = text.strip().lower()
        if t in ("float", "fp32", "none"):
            return Candidate(None, None)
        m = _CANDIDATE_RE.match(t)
        if not m:
            raise ConfigError(
                f"unknown candidate {text!r}: write 'w<weight bits>a<activation bits>' "
                f"(one of {', '.join(DEFAULT_CANDIDATES)}) or 'float'"
            )
        wb, ab = int(m.group(1)), int(m.group(2))
        if wb not in SUPPORTED_WEIGHT_BITS or ab not in SUPPORTED_ACTIVATION_BITS:
            raise ConfigError(
                f"candidate {text!r} has no integer realization: weight bits must be one of "
                f"{SUPPORTED_WEIGHT_BITS} and activation bits one of {SUPPORTED_ACTIVATION_BITS}"
            )
        return Candidate(wb, ab)


FLOAT = Candidate(None, None)


class Config(Mapping[str, Candidate]):
    """Mapping quantizer-group name -> Candidate. Immutable; ``with_`` returns a changed copy."""

    def __init__(self, entries: Mapping[str, str | Candidate] | None = None):
        self._entries = {str(k): Candidate.parse(v) for k, v in (entries or {}).items()}

    @classmethod
    def uniform(cls, groups, candidate: str | Candidate) -> Config:
        c = Candidate.parse(candidate)
        return cls({g: c for g in groups})

    def __getitem__(self, key: str) -> Candidate:
        return self._entries[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __eq__(self, other) -> bool:
        return isinstance(other, Config) and self._entries == other._entries

    def __hash__(self):
        return hash(tuple(sorted(self._entries.items())))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k!r}: '{v}'" for k, v in self._entries.items())
        return f"Config({{{inner}}})"

    def with_(self, **changes: str | Candidate) -> Config:
        d = dict(self._entries)
        d.update({k: Candidate.parse(v) for k, v in changes.items()})
        return Config(d)

    def updated(self, changes: Mapping[str, str | Candidate]) -> Config:
        d = dict(self._entries)
        d.update({k: Candidate.parse(v) for k, v in changes.items()})
        return Config(d)

    def validate(self, group_names) -> None:
        """Raise ConfigError if this config names groups the model does not have or misses some."""
        known = list(group_names)
        unknown = [g for g in self._entries if g not in set(known)]
        if unknown:
            raise ConfigError(
                f"configuration names {len(unknown)} group(s) the model does not have: "
                f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}; the model's groups are "
                f"{known[:8]}{' ...' if len(known) > 8 else ''}"
            )
        missing = [g for g in known if g not in self._entries]
        if missing:
            raise ConfigError(
                f"configuration gives no candidate for {len(missing)} group(s): "
                f"{missing[:5]}{' ...' if len(missing) > 5 else ''} (use 'float' to leave one unquantized)"
            )

    def to_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in self._entries.items()}

    def to_json(self, path: str | os.PathLike) -> None:
        """Write atomically (a crash never leaves half a file)."""
        write_json_atomic(path, {"format": "tvm_mpq.config/1", "groups": self.to_dict()})

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Config:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise ConfigError(f"configuration file {os.fspath(path)!r} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"configuration file {os.fspath(path)!r} is not valid JSON: {e}") from None
        except OSError as e:
            raise ConfigError(f"cannot read configuration file {os.fspath(path)!r}: {e}") from None
        groups = data.get("groups", data) if isinstance(data, dict) else None
        if not isinstance(groups, dict):
            raise ConfigError(
                f"configuration file {os.fspath(path)!r} must hold an object "
                '{"groups": {"<group name>": "w8a8", ...}}'
            )
        return cls(groups)


def write_json_atomic(path: str | os.PathLike, data) -> None:
    """Write JSON to a temporary file in the same directory, then rename over ``path``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; respect the umask like open() does
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def as_config(config, group_names) -> Config:
    """Accept a Config, a mapping, a JSON path, or one candidate string for all groups."""
    group_names = list(group_names)
    if config is None:
        config = "w8a8"
    if isinstance(config, Config):
        cfg = config
    elif isinstance(config, Mapping):
        cfg = Config(config)
    elif isinstance(config, (str, os.PathLike)):
        text = os.fspath(config)
        if text.lower().endswith(".json") or os.path.sep in text or os.path.exists(text):
            cfg = Config.from_json(text)
        else:
            cfg = Config.uniform(group_names, text)
    else:
        raise ConfigError(
            f"config must be a tvm_mpq.Config, a mapping, a JSON path or a candidate string, "
            f"got {type(config).__name__}"
        )
    cfg.validate(group_names)
    return cfg
