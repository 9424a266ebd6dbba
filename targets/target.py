"""CPU targets for tvm_mpq: legacy target strings, CPU features, and "can this run here?".

TVM 0.27 accepts only dict/JSON targets, while users type ``"llvm -mcpu=znver4 -mattr=+avx512f"``;
we translate. Quantization choices (VNNI or not, vector width) depend on the target's CPU features,
and code compiled for a CPU this machine is not (LLVM names this host "znver3" and its
``/proc/cpuinfo`` has no AVX-512, so ``mcpu=znver4`` dies with "Illegal instruction") must be
refused before it runs, with a message saying which features are missing.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import tvm
from tvm.target import Target
from tvm.target import codegen as _cg

from tvm_mpq.errors import TargetError

__all__ = [
    "TRACKED_FEATURES",
    "TargetInfo",
    "check_runnable_here",
    "host_features",
    "host_target",
    "parse_target",
]

EXAMPLE = (
    "e.g. 'llvm -mtriple=x86_64-linux-gnu -mcpu=znver4 -mattr=+avx512f,+avx512vnni -num-cores=4' "
    'or {"kind": "llvm", "mcpu": "znver4", "mattr": ["+avx512f"]}'
)

# Features quantization cares about, by LLVM name. Everything else LLVM reports is kept out of
# ``TargetInfo.features`` (but still checked by ``is_native`` on x86).
TRACKED_FEATURES = frozenset(
    {
        "sse4.2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512vnni",
        "avxvnni", "avx512bf16", "neon", "dotprod", "i8mm", "fullfp16", "sve",
    }
)  # fmt: skip

# aarch64 /proc/cpuinfo "Features" names -> LLVM names (x86 flags map by dropping "_" and ".").
_ARM_CPUINFO = {"asimd": "neon", "asimddp": "dotprod", "i8mm": "i8mm", "asimdhp": "fullfp16",
                "sve": "sve", "fphp": "fullfp16"}  # fmt: skip
# LLVM x86 names whose /proc/cpuinfo flag is spelled differently.
_X86_ALIASES = {"sse3": "pni", "pclmul": "pclmulqdq", "rdrnd": "rdrand", "bmi": "bmi1",
                "sahf": "lahf_lm", "lzcnt": "abm", "prfchw": "3dnowprefetch"}  # fmt: skip
# LLVM x86 "features" that only tune code generation (no new instructions).
_X86_TUNING = re.compile(
    r"^(slow-|fast-|faster-|false-deps-|no-bypass-delay|prefer-|tuning-|allow-light-|sbb-dep|"
    r"idiv[lq]-to-div|lea-|pad-short|use-|macrofusion$|branchfusion$|vzeroupper$|ermsb$|"
    r"64bit-mode$|x87$)"
)
# Options a legacy string / dict may not set (internal to TVM or not a single CPU target).
_FORBIDDEN_OPTIONS = {"host", "from_device", "target_device_type"}
_GPU_ARCHES = ("nvptx", "amdgcn", "r600", "spirv")
_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}
_MAIN_KEYS = ("mtriple", "mcpu", "mattr", "num-cores")


@functools.lru_cache(maxsize=None)
def _llvm_options() -> dict[str, str]:
    """Option name -> type name ('str', 'int', 'bool', 'Array<str>') of TVM's llvm target kind."""
    return tvm.target.TargetKind.options_from_name("llvm")


def _fail(msg: str) -> TargetError:
    return TargetError(f"{msg}; {EXAMPLE}")


def _tvm_target(config: Any) -> Target:
    """Construct a TVM Target, re-raising TVM's own errors as TargetError."""
    try:
        return Target(config)
    except Exception as e:  # TVM raises ValueError / RuntimeError / TVMError
        shown = json.dumps(config) if isinstance(config, dict) else repr(config)
        raise TargetError(f"TVM rejected target {shown}: {e}") from e


def _normalize_triple(triple: str) -> str:
    """Drop the vendor of a Linux triple: 'x86_64-conda-linux-gnu' -> 'x86_64-linux-gnu'."""
    parts = triple.split("-")
    if len(parts) == 4 and parts[2] == "linux":
        return "-".join([parts[0], *parts[2:]])
    return triple


def _arch_of(triple: str) -> str:
    arch = triple.split("-")[0]
    return _ARCH_ALIASES.get(arch, arch)


def _os_of(triple: str) -> str:
    parts = triple.split("-")[1:]
    if "android" in triple:
        return "android"
    for p in parts:
        for name in ("linux", "darwin", "macos", "ios", "windows", "freebsd", "none"):
            if p.startswith(name):
                return "darwin" if name == "macos" else name
    return "unknown"


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


def _parse_legacy(text: str) -> dict[str, Any]:
    """'llvm -mcpu=znver4 -mattr=+avx2' -> {"kind": "llvm", "mcpu": "znver4", "mattr": [...]}."""
    tokens = text.split()
    kind = tokens[0]
    if kind.startswith("-"):
        raise _fail(f"target string {text!r} must start with a kind ('llvm'), not flag {kind!r}")
    if kind != "llvm":
        if kind in Target.list_kinds():
            raise _not_cpu(kind)
        raise _fail(f"unknown target kind {kind!r} in {text!r}")
    options = _llvm_options()
    config: dict[str, Any] = {"kind": "llvm"}
    for tok in tokens[1:]:
        if not tok.startswith("-"):
            raise _fail(f"target token {tok!r} does not start with '-' (flags: -mcpu=znver4)")
        name, has_eq, value = tok[1:].partition("=")
        flags = [o for o in options if o not in _FORBIDDEN_OPTIONS | {"kind", "tag"}]
        if name not in flags:
            known = ", ".join("-" + o for o in flags)
            raise _fail(f"unknown target flag {tok!r} (known flags: {known})")
        if name in config:
            raise _fail(f"target flag -{name} given twice in {text!r}")
        typ = options[name]
        if not has_eq and typ == "bool":
            config[name] = True
            continue
        if not value:
            raise _fail(f"target flag {tok!r} needs a value: -{name}=<value>")
        config[name] = _convert(name, typ, value, tok)
    return config


def _convert(name: str, typ: str, value: str, tok: str) -> Any:
    if typ == "int":
        try:
            return int(value)
        except ValueError:
            raise _fail(f"target flag {tok!r}: -{name} takes an integer, not {value!r}") from None
    if typ == "bool":
        low = value.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise _fail(f"target flag {tok!r}: -{name} takes true/false, not {value!r}")
    if typ.startswith("Array"):
        items = value.split(",")
        if any(not i for i in items):
            raise _fail(f"target flag {tok!r} has an empty entry in its comma-separated list")
        return items
    return value


def _not_cpu(kind: str) -> TargetError:
    return _fail(
        f"target kind {kind!r} is not supported: tvm_mpq targets CPUs through LLVM "
        "(use kind 'llvm')"
    )


def _config_from_dict(d: dict) -> dict[str, Any]:
    """Check a user's dict and let TVM resolve it (tags, types); return our canonical config."""
    for k in d:
        if not isinstance(k, str):
            raise _fail(f"target dict key {k!r} is not a string")
    if "kind" not in d and "tag" not in d:
        raise _fail(f"target dict {d!r} has no 'kind'")
    if "kind" in d and d["kind"] != "llvm":
        raise _not_cpu(d["kind"])
    bad = sorted(set(d) & _FORBIDDEN_OPTIONS)
    if bad:
        raise _fail(f"target option {bad[0]!r} is not supported by tvm_mpq (one CPU target only)")
    return _config_from_target(_tvm_target(dict(d)))


def _config_from_target(t: Target) -> dict[str, Any]:
    """Canonical config of an llvm Target: user-set options only, without TVM's defaults."""
    if t.kind.name != "llvm":
        raise _not_cpu(t.kind.name)
    if t.host is not None and not (t.host.kind.name == "llvm" and str(t.host) == str(t)):
        raise _fail(f"target {t} has a separate host target, which tvm_mpq does not support")
    exported = dict(t.export())
    config: dict[str, Any] = {"kind": "llvm"}
    for k, v in exported.items():
        # "tag" names a preset whose settings are all in the other fields; "feature.*" is derived.
        if k in ("kind", "host", "tag") or k.startswith("feature."):
            continue
        if k in _FORBIDDEN_OPTIONS:
            raise _fail(f"target option {k!r} is not supported by tvm_mpq")
        config[k] = v if isinstance(v, str | int | float) else [str(x) for x in v]
    # TVM adds default keys (and "arm_cpu" for aarch64): keep keys only when they differ.
    if "keys" in config:
        without = {k: v for k, v in config.items() if k != "keys"}
        if list(_tvm_target(without).keys) == config["keys"]:
            del config["keys"]
    return config


def _validate(config: dict[str, Any]) -> dict[str, Any]:
    """Check CPU, features and numbers against LLVM; return the config with an explicit triple."""
    triple = config.get("mtriple") or _system_triple()
    if not isinstance(triple, str):
        raise _fail(f"-mtriple must be a string, not {triple!r}")
    triple = _normalize_triple(triple)
    if triple.startswith(_GPU_ARCHES):
        raise _fail(f"-mtriple={triple} is a GPU: tvm_mpq targets CPUs through LLVM")
    if not _cg.llvm_is_valid_cpu("generic", triple):
        raise _fail(f"-mtriple={triple!r} is not a triple this LLVM knows")
    config = {**config, "mtriple": triple}
    mcpu = config.get("mcpu")
    if mcpu is not None:
        if not isinstance(mcpu, str) or not _cg.llvm_is_valid_cpu(mcpu, triple):
            cpus = _cg.llvm_get_cpu_archlist(_tvm_target({"kind": "llvm", "mtriple": triple}))
            close = difflib.get_close_matches(str(mcpu), list(cpus), n=4)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            for other in ("x86_64-linux-gnu", "aarch64-linux-gnu"):
                if _arch_of(other) != _arch_of(triple) and _cg.llvm_is_valid_cpu(mcpu, other):
                    hint = f" ({mcpu} is a {_arch_of(other)} CPU: add -mtriple={other})"
            raise _fail(f"-mcpu={mcpu} is not a CPU LLVM knows for {triple}{hint}")
    mattr = config.get("mattr")
    if mattr is not None:
        if isinstance(mattr, str) or not all(isinstance(a, str) for a in mattr):
            raise _fail(f"mattr must be a list of strings like ['+avx512f'], not {mattr!r}")
        for a in mattr:
            if len(a) < 2 and a in ("+", "-"):
                raise _fail(f"-mattr entry {a!r} has no feature name, e.g. -mattr={a}avx2")
            if len(a) < 2 or a[0] not in "+-":
                raise _fail(f"-mattr entry {a!r} must start with '+' (enable) or '-' (disable), "
                            f"e.g. -mattr=+{a.lstrip('+-') or 'avx2'}")
            if not _feature_known(a[1:], triple):
                raise _fail(f"-mattr entry {a!r}: LLVM knows no feature {a[1:]!r} for {triple}")
        config["mattr"] = list(mattr)
    for name, low, high in (("num-cores", 1, None), ("opt-level", 0, 3), ("vector-width", 1, None)):
        if name not in config:
            continue
        v = config[name]
        bad = isinstance(v, bool) or not isinstance(v, int)
        if bad or v < low or (high is not None and v > high):
            rng = f"{low}..{high}" if high is not None else f">= {low}"
            raise _fail(f"-{name}={v!r} is invalid: it takes an integer {rng}")
    return config


@functools.lru_cache(maxsize=None)
def _feature_known(name: str, triple: str) -> bool:
    t = _tvm_target({"kind": "llvm", "mtriple": triple, "mattr": ["+" + name]})
    return name in _cg.llvm_get_cpu_features(t)


def _ordered(config: dict[str, Any]) -> dict[str, Any]:
    out = {"kind": "llvm"}
    for k in _MAIN_KEYS:
        if k in config:
            out[k] = config[k]
    for k in sorted(config):
        if k not in out:
            out[k] = config[k]
    return out


def _build(config: dict[str, Any]) -> TargetInfo:
    config = _ordered(_validate(config))
    target = _tvm_target(config)
    llvm_features = frozenset(_cg.llvm_get_cpu_features(target))
    triple = config["mtriple"]
    options = tuple(
        (k, tuple(v) if isinstance(v, list) else v)
        for k, v in config.items()
        if k not in ("kind", *_MAIN_KEYS)
    )
    return TargetInfo(
        target=target,
        kind="llvm",
        arch=_arch_of(triple),
        mcpu=config.get("mcpu"),
        mtriple=triple,
        mattr=tuple(config.get("mattr", ())),
        num_cores=config.get("num-cores"),
        features=llvm_features & TRACKED_FEATURES,
        options=options,
        llvm_features=llvm_features,
    )


def parse_target(target: Any = None) -> TargetInfo:
    """Parse None (the host), a legacy string, a JSON string, a dict, a Target or a TargetInfo."""
    if isinstance(target, TargetInfo):
        return target
    if target is None:
        return host_target()
    if isinstance(target, Target):
        return _build(_config_from_target(target))
    if isinstance(target, dict):
        return _build(_config_from_dict(target))
    if isinstance(target, str):
        text = target.strip()
        if not text:
            raise _fail("target string is empty")
        if text.startswith(("{", "[")):
            try:
                d = json.loads(text)
            except json.JSONDecodeError as e:
                raise _fail(f"target JSON {text!r} does not parse: {e}") from None
            if not isinstance(d, dict):
                raise _fail(f"target JSON {text!r} is not an object")
            return _build(_config_from_dict(d))
        if " " not in text and text in tvm.target.list_tags():
            return _build(_config_from_target(_tvm_target(text)))
        return _build(_config_from_dict(_parse_legacy(text)))
    raise _fail(
        f"a target must be None, a string, a dict, a tvm.target.Target or a TargetInfo, "
        f"not {type(target).__name__}"
    )


# ---------------------------------------------------------------------------------------------
# TargetInfo
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetInfo:
    """A validated CPU target and the features that matter for quantization.

    Equality ignores the ``target`` object itself (TVM Targets compare by identity).
    """

    target: Target = field(compare=False, hash=False, repr=False)
    kind: str
    arch: str
    mcpu: str | None
    mtriple: str
    mattr: tuple[str, ...]
    num_cores: int | None
    features: frozenset[str]
    # Other llvm options set by the user (opt-level, keys, fast-math, ...), as sorted pairs.
    options: tuple[tuple[str, Any], ...] = ()
    # Everything LLVM reports for mcpu + mattr (ISA and tuning); used by is_native.
    llvm_features: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    @property
    def has_avx512(self) -> bool:
        return "avx512f" in self.features

    @property
    def has_vnni(self) -> bool:
        """x86 int8 dot-product instructions (AVX512-VNNI or AVX-VNNI)."""
        return self.arch == "x86_64" and bool({"avx512vnni", "avxvnni"} & self.features)

    @property
    def vector_bits(self) -> int:
        """Widest SIMD register: 512 (AVX-512), 256 (AVX2), 128 (SSE / NEON), 0 if none known."""
        if "avx512f" in self.features:
            return 512
        if "avx2" in self.features:
            return 256
        if self.arch in ("x86_64", "i386", "i686") or "neon" in self.features:
            return 128
        return 0

    @property
    def is_native(self) -> bool:
        """Whether code compiled for this target can run on this machine."""
        return not _native_problems(self)

    @property
    def key(self) -> str:
        """Short stable string for cache keys, e.g. 'llvm-x86_64-znver4-avx2+avx512f+...'."""
        feats = "+".join(sorted(self.features)) or "nofeat"
        key = f"{self.kind}-{self.arch}-{self.mcpu or 'generic'}-{feats}"
        if self.num_cores is not None:
            key += f"-c{self.num_cores}"
        extra = [a for a in self.mattr if a[1:] not in TRACKED_FEATURES]
        if extra or self.options or _os_of(self.mtriple) != "linux":
            blob = json.dumps([self.mtriple, extra, self.options], sort_keys=True, default=str)
            key += "-" + hashlib.sha1(blob.encode()).hexdigest()[:8]
        return key

    def to_dict(self) -> dict[str, Any]:
        """JSON-able TVM config dict; ``parse_target(info.to_dict()) == info``."""
        d: dict[str, Any] = {"kind": self.kind, "mtriple": self.mtriple}
        if self.mcpu is not None:
            d["mcpu"] = self.mcpu
        if self.mattr:
            d["mattr"] = list(self.mattr)
        if self.num_cores is not None:
            d["num-cores"] = self.num_cores
        for k, v in self.options:
            d[k] = list(v) if isinstance(v, tuple) else v
        return d

    def __str__(self) -> str:
        """Legacy string form: 'llvm -mtriple=... -mcpu=... -mattr=+a,+b -num-cores=N'."""
        parts = [self.kind]
        for k, v in self.to_dict().items():
            if k == "kind":
                continue
            if isinstance(v, list):
                v = ",".join(v)
            elif isinstance(v, bool):
                v = "true" if v else "false"
            parts.append(f"-{k}={v}")
        return " ".join(parts)


# ---------------------------------------------------------------------------------------------
# The host
# ---------------------------------------------------------------------------------------------


def _system_triple() -> str:
    return _normalize_triple(str(_cg.llvm_get_system_triple()))


@functools.lru_cache(maxsize=None)
def _cpuinfo_flags() -> frozenset[str] | None:
    """Raw CPU flags of this Linux machine (x86 'flags' / aarch64 'Features'), None elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return None


def _norm(name: str) -> str:
    return name.replace("_", "").replace(".", "").lower()


def _cpuinfo_has(llvm_name: str, flags: frozenset[str], arch: str) -> bool:
    if arch == "aarch64":
        return any(_ARM_CPUINFO.get(f) == llvm_name for f in flags)
    normed = {_norm(f) for f in flags}
    return _norm(_X86_ALIASES.get(llvm_name, llvm_name)) in normed


@functools.lru_cache(maxsize=None)
def _host_llvm_model() -> tuple[str | None, frozenset[str]]:
    """(mcpu, features) LLVM assumes for this machine's CPU name."""
    cpu = str(_cg.llvm_get_system_cpu())
    triple = _system_triple()
    if not cpu or cpu == "generic" or not _cg.llvm_is_valid_cpu(cpu, triple):
        cpu = None
    cfg = {"kind": "llvm", "mtriple": triple, **({"mcpu": cpu} if cpu else {})}
    return cpu, frozenset(_cg.llvm_get_cpu_features(_tvm_target(cfg)))


@functools.lru_cache(maxsize=None)
def host_features() -> frozenset[str]:
    """Tracked features this machine really has (from /proc/cpuinfo where available)."""
    arch = _arch_of(_system_triple())
    flags = _cpuinfo_flags()
    if flags is None:  # no /proc/cpuinfo: trust LLVM's model of the host CPU
        return _host_llvm_model()[1] & TRACKED_FEATURES
    if arch == "x86_64":
        return frozenset(f for f in TRACKED_FEATURES if _cpuinfo_has(f, flags, arch))
    if arch == "aarch64":
        return frozenset(_ARM_CPUINFO[f] for f in flags if f in _ARM_CPUINFO)
    return _host_llvm_model()[1] & TRACKED_FEATURES


@functools.lru_cache(maxsize=None)
def host_target() -> TargetInfo:
    """The machine we run on: LLVM's CPU name, corrected by /proc/cpuinfo, all cores."""
    cpu, model = _host_llvm_model()
    real = host_features()
    claimed = model & TRACKED_FEATURES
    # LLVM's CPU model may claim features the (virtual) CPU hides, or miss ones it has.
    mattr = [f"+{f}" for f in sorted(real - claimed)] + [f"-{f}" for f in sorted(claimed - real)]
    config: dict[str, Any] = {"kind": "llvm", "mtriple": _system_triple()}
    if cpu:
        config["mcpu"] = cpu
    if mattr:
        config["mattr"] = mattr
    if os.cpu_count():
        config["num-cores"] = os.cpu_count()
    return _build(config)


def _native_problems(info: TargetInfo) -> list[str]:
    """Why code for ``info`` cannot run here; empty if it can."""
    host_triple = _system_triple()
    host_arch = _arch_of(host_triple)
    if info.arch != host_arch:
        return [f"it is built for {info.arch} but this machine is {host_arch}"]
    if _os_of(info.mtriple) != _os_of(host_triple):
        return [f"its triple {info.mtriple} is for another OS than this machine ({host_triple})"]
    missing = sorted(info.features - host_features())
    flags = _cpuinfo_flags()
    if host_arch == "x86_64":
        # Untracked ISA extensions: accept what /proc/cpuinfo or LLVM's host model shows.
        model = _host_llvm_model()[1]
        other = sorted(
            f
            for f in info.llvm_features - TRACKED_FEATURES
            if not _X86_TUNING.match(f)
            and f not in model
            and not (flags is not None and _cpuinfo_has(f, flags, host_arch))
        )
        missing += other
    return [f"this CPU lacks {', '.join(missing)}"] if missing else []


def check_runnable_here(info: Any) -> None:
    """Raise TargetError, naming the missing features, if ``info``'s code cannot run here."""
    info = parse_target(info)
    problems = _native_problems(info)
    if problems:
        host = host_target()
        crash = " (it would die with 'Illegal instruction')" if info.arch == host.arch else ""
        raise TargetError(
            f"code compiled for target '{info}' cannot run on this machine: "
            f"{'; '.join(problems)}{crash}. "
            f"This host is '{host}' with features {', '.join(sorted(host.features)) or 'none'}. "
            "Compile for tvm_mpq.targets.host_target() to run locally, or run the module on a "
            "machine with those features (e.g. over RPC)."
        )
