"""Tests of tvm_mpq.targets: legacy strings, features, errors, and running on the host."""

import json

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from tvm_mpq.errors import TargetError
from tvm_mpq.targets import (
    TargetInfo,
    check_runnable_here,
    host_features,
    host_target,
    parse_target,
)

HOST_ARCH = host_target().arch
X86 = pytest.mark.skipif(HOST_ARCH != "x86_64", reason="x86_64 host only")
HOST_HAS_AVX512 = "avx512f" in host_features()

# legacy string -> (mcpu, triple arch, mattr, num_cores, features that must be present)
LEGACY = {
    "llvm": (None, HOST_ARCH, (), None, set()),
    "llvm -mcpu=znver4": (
        "znver4", "x86_64", (), None, {"avx2", "fma", "avx512f", "avx512bw", "avx512vnni"}
    ),
    "llvm -mtriple=aarch64-linux-gnu -mattr=+neon": (None, "aarch64", ("+neon",), None, {"neon"}),
    "llvm -mcpu=cascadelake -mattr=+avx512f,+avx512vnni": (
        "cascadelake", "x86_64", ("+avx512f", "+avx512vnni"), None, {"avx512f", "avx512vnni"}
    ),
    "llvm -mcpu=znver4 -num-cores=2": ("znver4", "x86_64", (), 2, {"avx512vnni"}),
    "llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a76 -mattr=+neon,+dotprod": (
        "cortex-a76", "aarch64", ("+neon", "+dotprod"), None, {"neon", "dotprod"}
    ),
}  # fmt: skip


@pytest.mark.parametrize("text", list(LEGACY))
def test_legacy_strings_parse(text):
    if text != "llvm" and "aarch64" not in text and HOST_ARCH != "x86_64":
        pytest.skip("x86 CPU names without -mtriple need an x86_64 host")
    mcpu, arch, mattr, cores, feats = LEGACY[text]
    info = parse_target(text)
    assert info.kind == "llvm"
    assert info.target.kind.name == "llvm"
    assert info.mcpu == mcpu
    assert info.arch == arch
    assert info.mtriple.startswith(arch)
    assert "conda" not in info.mtriple
    assert info.mattr == mattr
    assert info.num_cores == cores
    assert feats <= info.features
    assert all(f == f.lower() for f in info.features)
    # The TVM Target carries the same settings.
    attrs = info.target.attrs
    assert attrs.get("mcpu") == mcpu
    assert tuple(attrs.get("mattr", ())) == mattr
    assert attrs.get("num-cores") == cores


@pytest.mark.parametrize("text", list(LEGACY))
def test_round_trip(text):
    info = parse_target(text)
    again = parse_target(str(info))
    assert again == info
    assert str(again) == str(info)
    assert again.key == info.key
    assert parse_target(json.dumps(info.to_dict())) == info
    assert parse_target(info.to_dict()) == info
    assert parse_target(info.target) == info
    assert parse_target(info) is info


def test_legacy_string_form():
    info = parse_target("llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a76 -mattr=+neon,+dotprod")
    assert str(info) == "llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a76 -mattr=+neon,+dotprod"
    assert info.key.startswith("llvm-aarch64-cortex-a76-")
    assert "dotprod" in info.key


def test_dict_json_and_target_inputs():
    d = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver4", "num-cores": 2}
    from_dict = parse_target(d)
    assert from_dict == parse_target("llvm -mtriple=x86_64-linux-gnu -mcpu=znver4 -num-cores=2")
    assert parse_target(json.dumps(d)) == from_dict
    assert parse_target(tvm.target.Target(d)) == from_dict
    assert from_dict.to_dict() == d
    # A TVM Target without a triple gets the host triple, without a vendor like "conda".
    plain = parse_target(tvm.target.Target({"kind": "llvm"}))
    assert plain.mtriple == host_target().mtriple


def test_tvm_tag():
    info = parse_target({"tag": "aws/cpu/c5.large", "num-cores": 2})
    assert info.mcpu == "skylake-avx512" and info.num_cores == 2 and info.has_avx512
    assert parse_target(str(info)) == info
    assert parse_target("aws/cpu/c5.large").num_cores == 1


def test_other_llvm_options():
    info = parse_target("llvm -mtriple=x86_64-linux-gnu -keys=arm_cpu,cpu -opt-level=2 -fast-math")
    opts = dict(info.options)
    assert opts == {"keys": ("arm_cpu", "cpu"), "opt-level": 2, "fast-math": True}
    assert info.target.attrs["opt-level"] == 2
    assert tuple(info.target.keys) == ("arm_cpu", "cpu")
    assert parse_target(str(info)) == info
    # Options change the cache key.
    assert info.key != parse_target("llvm -mtriple=x86_64-linux-gnu").key


def test_features_from_cpu_and_mattr():
    znver4 = parse_target("llvm -mtriple=x86_64-linux-gnu -mcpu=znver4")
    assert {"avx2", "fma", "avx512f", "avx512bw", "avx512vnni"} <= znver4.features
    assert znver4.has_avx512 and znver4.has_vnni and znver4.vector_bits == 512
    znver3 = parse_target("llvm -mtriple=x86_64-linux-gnu -mcpu=znver3")
    assert {"avx2", "fma", "sse4.2"} <= znver3.features
    assert not znver3.has_avx512 and not znver3.has_vnni and znver3.vector_bits == 256
    skx = parse_target("llvm -mtriple=x86_64-linux-gnu -mcpu=skylake-avx512")
    assert skx.has_avx512 and not skx.has_vnni
    alder = parse_target("llvm -mtriple=x86_64-linux-gnu -mcpu=alderlake")
    assert "avxvnni" in alder.features and alder.has_vnni and not alder.has_avx512
    # mattr adds features (and what they imply) ...
    plus = parse_target("llvm -mtriple=x86_64-linux-gnu -mattr=+avx512f,+avx512vnni")
    assert {"avx512f", "avx512vnni", "avx2"} <= plus.features
    # ... and removes them.
    minus = parse_target("llvm -mtriple=x86_64-linux-gnu -mcpu=znver4 -mattr=-avx512vnni")
    assert "avx512vnni" not in minus.features and "avx512f" in minus.features
    assert minus.key != znver4.key
    generic = parse_target("llvm -mtriple=x86_64-linux-gnu")
    assert not generic.features & {"avx2", "avx512f"} and generic.vector_bits == 128


def test_aarch64_features():
    base = parse_target("llvm -mtriple=aarch64-linux-gnu -mattr=+neon")
    assert "neon" in base.features and "dotprod" not in base.features
    assert base.vector_bits == 128 and not base.has_vnni and not base.has_avx512
    a76 = parse_target("llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a76 -mattr=+neon,+dotprod")
    assert {"neon", "dotprod"} <= a76.features
    i8mm = parse_target("llvm -mtriple=aarch64-linux-gnu -mattr=+neon,+i8mm")
    assert "i8mm" in i8mm.features


def test_targetinfo_is_frozen_and_hashable():
    info = parse_target("llvm -mtriple=x86_64-linux-gnu -mcpu=znver4")
    with pytest.raises(AttributeError):
        info.mcpu = "znver3"
    assert len({info, parse_target(str(info))}) == 1
    assert isinstance(info, TargetInfo)


BAD = [
    ("llvm -foo=1", ["-foo=1", "unknown target flag"]),
    ("llvm -mcpu", ["-mcpu", "needs a value"]),
    ("llvm -mcpu=", ["-mcpu", "needs a value"]),
    ("llvm mcpu=x", ["mcpu=x", "does not start with '-'"]),
    ("llvm -mattr=avx512f", ["avx512f", "'+'"]),
    ("llvm -mattr=+", ["'+'", "no feature name"]),
    ("llvm -mattr=+avx2,,+fma", ["empty entry"]),
    ("llvm -mtriple=x86_64-linux-gnu -mattr=+neon", ["neon", "no feature"]),
    ("llvm -num-cores=two", ["-num-cores", "two", "integer"]),
    ("llvm -num-cores=0", ["-num-cores=0", ">= 1"]),
    ("llvm -opt-level=7", ["-opt-level=7"]),
    ("llvm -fast-math=maybe", ["maybe"]),
    ("llvm -mtriple=x86_64-linux-gnu -mcpu=bogus", ["bogus", "not a CPU"]),
    ("llvm -mtriple=x86_64-linux-gnu -mcpu=znver", ["znver", "did you mean", "znver4"]),
    ("llvm -mtriple=x86_64-linux-gnu -mcpu=cortex-a76", ["cortex-a76", "aarch64"]),
    ("llvm -mcpu=znver4 -mcpu=znver3", ["-mcpu", "twice"]),
    ("llvm -host=llvm", ["-host=llvm", "unknown target flag"]),
    ("llvm -mtriple=foo-bar-baz", ["foo-bar-baz"]),
    ("llvm -mtriple=nvptx64-nvidia-cuda", ["nvptx64", "CPUs through LLVM"]),
    ("-mcpu=znver4", ["-mcpu=znver4", "kind"]),
    ("foo -mcpu=x", ["'foo'", "unknown target kind"]),
    ("", ["empty"]),
    ("   ", ["empty"]),
    ("{not json", ["{not json", "JSON"]),
    ('["llvm"]', ["not an object"]),
    ("cuda", ["'cuda'", "tvm_mpq targets CPUs through LLVM"]),
    ("c", ["'c'", "tvm_mpq targets CPUs through LLVM"]),
    ('{"kind": "cuda"}', ["'cuda'", "tvm_mpq targets CPUs through LLVM"]),
    ({"kind": "opencl"}, ["'opencl'", "tvm_mpq targets CPUs through LLVM"]),
    ({"mcpu": "znver4"}, ["no 'kind'"]),
    ({"kind": "llvm", "host": {"kind": "llvm"}}, ["'host'"]),
    ({"kind": "llvm", "mattr": ["avx2"]}, ["'avx2'", "'+'"]),
    ({"kind": "llvm", "num-cores": 0}, ["-num-cores=0"]),
    (42, ["int"]),
    (["llvm"], ["list"]),
]


@pytest.mark.parametrize("bad,needles", BAD, ids=[repr(b) for b, _ in BAD])
def test_bad_input_raises_target_error(bad, needles):
    with pytest.raises(TargetError) as err:
        parse_target(bad)
    msg = str(err.value)
    for needle in needles:
        assert needle in msg, msg
    assert "e.g. 'llvm -mtriple=" in msg  # every message shows valid syntax


def test_tvm_errors_are_wrapped_with_their_text():
    with pytest.raises(TargetError) as err:
        parse_target({"kind": "llvm", "num-cores": "two"})
    assert "TVM rejected target" in str(err.value)
    assert "num-cores" in str(err.value) and "expected type 'int'" in str(err.value)
    with pytest.raises(TargetError, match="Unknown config option 'bogus'"):
        parse_target({"kind": "llvm", "bogus": 1})
    with pytest.raises(TargetError, match="tvm_mpq targets CPUs through LLVM"):
        parse_target(tvm.target.Target({"kind": "c"}))


def test_target_error_is_a_value_error():
    with pytest.raises(ValueError):
        parse_target("llvm -mcpu")


def test_host_target():
    host = host_target()
    assert parse_target(None) is host
    assert host.is_native
    check_runnable_here(host)  # no error
    assert host.features == host_features()
    assert host.num_cores is not None and host.num_cores >= 1
    assert "conda" not in host.mtriple
    assert parse_target(str(host)) == host
    assert host.mcpu == str(tvm.target.codegen.llvm_get_system_cpu())
    if not HOST_HAS_AVX512:
        assert not host.has_avx512 and host.vector_bits <= 256


@X86
def test_host_features_follow_cpuinfo():
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split(":")[1].split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags")
    assert ("avx2" in flags) == ("avx2" in host_features())
    assert ("avx512f" in flags) == ("avx512f" in host_features())
    assert ("avx512_vnni" in flags) == ("avx512vnni" in host_features())


@X86
def test_znver4_needs_avx512_here():
    info = parse_target("llvm -mcpu=znver4")
    assert "avx512vnni" in info.features
    if HOST_HAS_AVX512:
        pytest.skip("this host has AVX-512")
    assert not info.is_native
    with pytest.raises(TargetError) as err:
        check_runnable_here(info)
    msg = str(err.value)
    assert "avx512f" in msg and "Illegal instruction" in msg and "host_target()" in msg
    # The string form is accepted too.
    with pytest.raises(TargetError, match="avx512vnni"):
        check_runnable_here("llvm -mcpu=znver4")


@X86
def test_aarch64_not_native_here():
    info = parse_target("llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a76 -mattr=+neon,+dotprod")
    assert not info.is_native
    with pytest.raises(TargetError, match="built for aarch64 but this machine is x86_64"):
        check_runnable_here(info)


@X86
def test_avx2_targets_native_here():
    if "avx2" not in host_features():
        pytest.skip("this host has no AVX2")
    assert parse_target("llvm -mcpu=x86-64-v3").is_native
    assert parse_target("llvm").is_native


@I.ir_module
class _Add:
    @R.function
    def main(x: R.Tensor((2, 3), "float32"), y: R.Tensor((2, 3), "float32")):
        return R.add(x, y)


def test_compile_and_run_on_host():
    host = host_target()
    ex = tvm.compile(_Add, target=host.target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    a = np.arange(6, dtype="float32").reshape(2, 3)
    b = np.full((2, 3), 0.5, dtype="float32")
    out = vm["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b))
    np.testing.assert_allclose(out.numpy(), a + b)
