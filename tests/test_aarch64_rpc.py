"""Cross-compiled aarch64 modules run correctly through an RPC server under qemu-user-static.

A functional check (timings under emulation mean nothing): the realized FragileCNN (w8a8, and
w4a8 with its in-kernel int4 unpacking) is compiled for ``aarch64-linux-gnu`` with NEON, linked by
Debian's ``aarch64-linux-gnu-g++``, uploaded to a TVM RPC server running in an aarch64 Python
under ``qemu-aarch64-static`` (tvm_mpq/rpc_server.py, listening on 127.0.0.1 in-process), and its
outputs must match the same configuration realized for this x86 host. Then ``RPCDevice`` (direct
connection, aarch64 target) measures a few one-op modules through the same server.

Needs ``aarch64-linux-gnu-g++``, ``qemu-aarch64-static`` (scripts/bootstrap.sh installs them where
apt-get and root are available) and the aarch64 Python + TVM of scripts/aarch64_sysroot.sh in
build/aarch64; skips, saying which is missing, otherwise.
"""

from __future__ import annotations

import gc
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
SYSROOT = ROOT / "build" / "aarch64"
PYTHON_A64 = SYSROOT / "root" / "usr" / "bin" / "python3.11"
QEMU = shutil.which("qemu-aarch64-static")
GXX = shutil.which("aarch64-linux-gnu-g++")

pytestmark = pytest.mark.skipif(
    QEMU is None or GXX is None or not PYTHON_A64.exists() or not (SYSROOT / "site" / "tvm").is_dir(),
    reason=(
        "aarch64 emulation unavailable: needs qemu-aarch64-static and aarch64-linux-gnu-g++ "
        "(apt-get install qemu-user-static g++-aarch64-linux-gnu) and the aarch64 Python + TVM of "
        "scripts/aarch64_sysroot.sh in build/aarch64"
    ),
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search_child as child  # noqa: E402

AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """An aarch64 TVM RPC server under qemu, in its own process group, killed at the end."""
    port = _free_port()
    log = tmp_path_factory.mktemp("qemu") / "server.log"
    env = {**os.environ, "PYTHONPATH": str(SYSROOT / "site"), "TVM_NUM_THREADS": "1"}
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [QEMU, "-L", str(SYSROOT / "root"), str(PYTHON_A64), str(ROOT / "tvm_mpq" / "rpc_server.py"),
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env,
            cwd=str(log.parent),
        )
    try:
        deadline = time.monotonic() + 240  # importing TVM under emulation takes a while
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"the aarch64 RPC server exited: {log.read_text()[-2000:]}")
            if "listening on" in log.read_text():
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the aarch64 RPC server did not start in 240 s: {log.read_text()[-2000:]}")
        yield ("127.0.0.1", port)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def quantizers():
    import tvm_mpq

    cal = child.calibration()
    model = child.FragileCNN().eval()
    ex = (torch.from_numpy(cal[0][0]),)
    arm = tvm_mpq.Quantizer(model, AARCH64, cal, ex, progress=False)
    host = tvm_mpq.Quantizer(model, None, cal, ex, progress=False)
    return arm, host, cal


@pytest.mark.parametrize("config", ["w8a8", "w4a8"])
def test_cross_compiled_module_runs_under_qemu(server, quantizers, config, tmp_path):
    import tvm
    from tvm import relax, rpc
    from tvm.support import cc

    arm, host, cal = quantizers
    module = arm.realize(config)
    assert module.target.arch == "aarch64"
    lib_path = tmp_path / "model.so"
    module.export_library(lib_path, fcompile=cc.cross_compiler(GXX))
    out = subprocess.run(["file", str(lib_path)], capture_output=True, text=True).stdout if shutil.which("file") else ""
    assert not out or "aarch64" in out, out

    remote = rpc.connect(*server, session_timeout=600)
    remote.upload(str(lib_path))
    lib = remote.load_module("model.so")
    dev = remote.cpu()
    vm = relax.VirtualMachine(lib, dev)
    x = cal[0][0]
    # Over RPC a returned tensor is an opaque remote reference: use the VM's stateful interface.
    vm.set_input("main", tvm.runtime.tensor(x, dev))
    vm.invoke_stateful("main")
    got = vm.get_outputs("main")
    while isinstance(got, (tuple, list)):  # the torch frontend returns a tuple of outputs
        got = got[0]
    got = got.numpy()
    # Close the RPC session now: the server serves one session at a time, and the VM and module
    # objects sit in reference cycles, so the next test's connect would wait for a garbage
    # collection -- or for the session timeout (600 s).
    del vm, lib, dev, remote
    gc.collect()
    want = host.realize(config).run(x)
    # Integer kernels are exact; the float epilogue may round differently (FMA contraction).
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_rpc_device_measures_aarch64_ops(server, quantizers, tmp_path):
    from tvm_mpq.latency import LatencyCache, Timing, measure_ops
    from tvm_mpq.rpc import RPCDevice

    arm, _, _ = quantizers
    device = RPCDevice(*server, target=AARCH64, timing=Timing(warmup=1, repeat=3, min_repeat_ms=1),
                       timeout_s=300, connect_timeout_s=60)
    assert device.compiler == "aarch64-linux-gnu-g++"
    assert device.namespace.startswith("llvm-aarch64-")
    cache = LatencyCache(tmp_path / "latency.json")
    ms = measure_ops(arm, ["w8a8", "w4a8"], device=device, cache=cache, ops=["fc", "conv3"])
    assert len(ms) == 6 and all(math.isfinite(v) and v > 0 for v in ms.values())
    assert cache.namespaces == [device.namespace]
