"""The native runner ``tvm-mpq-benchmark``: find it, run it on an exported module, parse its output.

``pip install`` (and ``scripts/bootstrap.sh``) builds the C++ runner from ``native/runner/`` with
CMake and installs it next to Python's other scripts (``.venv/bin/tvm-mpq-benchmark``). It loads a
module written by ``QuantizedModule.export_library`` with TVM's C++ runtime alone, runs it with
warm-up and repeats, and prints the milliseconds of every run::

    from tvm_mpq.native import run_benchmark
    qm.export_library("model.so")
    result = run_benchmark("model.so", x, threads=1, repeat=50)
    result.median_ms, result.runs_ms, result.outputs[0]
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

RUNNER_NAME = "tvm-mpq-benchmark"
#: Environment variable naming a runner binary to use instead of the installed one.
RUNNER_ENV = "TVM_MPQ_BENCHMARK"


class NativeRunnerError(RuntimeError):
    """The runner exited with a non-zero code; ``message`` is its error line."""

    def __init__(self, returncode: int, message: str, stdout: str = "", stderr: str = ""):
        super().__init__(f"{RUNNER_NAME} failed (exit code {returncode}): {message}")
        self.returncode, self.message, self.stdout, self.stderr = returncode, message, stdout, stderr


@dataclasses.dataclass
class BenchmarkResult:
    """What ``tvm-mpq-benchmark`` measured (milliseconds) and, if asked for, the outputs."""

    runs_ms: list[float]
    median_ms: float
    min_ms: float
    max_ms: float
    mean_ms: float
    std_ms: float
    threads: int
    outputs: list[np.ndarray]
    stdout: str


def runner_path() -> str:
    """The path of the installed ``tvm-mpq-benchmark`` executable.

    Looked for in ``$TVM_MPQ_BENCHMARK``, this Python's scripts directory (``<venv>/bin``), next to
    ``sys.executable``, then on ``PATH``. Raises FileNotFoundError saying how to build it.
    """
    override = os.environ.get(RUNNER_ENV)
    if override:
        if not os.path.isfile(override):
            raise FileNotFoundError(f"${RUNNER_ENV} names {override!r}, which does not exist")
        return override
    candidates = [
        Path(sysconfig.get_path("scripts")) / RUNNER_NAME,
        Path(sys.executable).parent / RUNNER_NAME,
    ]
    for user_scheme in ("posix_user", "nt_user", "osx_framework_user"):
        try:
            candidates.append(Path(sysconfig.get_path("scripts", user_scheme)) / RUNNER_NAME)
        except KeyError:
            pass
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which(RUNNER_NAME)
    if found:
        return found
    raise FileNotFoundError(
        f"{RUNNER_NAME} is not installed for {sys.executable}: `pip install -e .` (or "
        f"scripts/bootstrap.sh) builds it with CMake; or set ${RUNNER_ENV} to a built binary"
    )


def _package_lib_dir(package: str) -> str | None:
    """``<site-packages>/<package>/lib`` without importing the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    lib = Path(list(spec.submodule_search_locations)[0]) / "lib"
    return str(lib) if lib.is_dir() else None


def runner_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment for the runner: where this Python's tvm and tvm_ffi keep their libraries.

    The installed runner finds them through its RUNPATH already; this makes a runner from a build
    tree (or one found on PATH) use the same libraries as this Python.
    """
    env = dict(os.environ if base is None else base)
    tvm_lib, ffi_lib = _package_lib_dir("tvm"), _package_lib_dir("tvm_ffi")
    if tvm_lib and "TVM_LIBRARY_PATH" not in env:
        env["TVM_LIBRARY_PATH"] = tvm_lib
    extra = [d for d in (ffi_lib, tvm_lib) if d]
    if extra:
        env["LD_LIBRARY_PATH"] = os.pathsep.join([p for p in [env.get("LD_LIBRARY_PATH", "")] if p] + extra)
    return env


_STATS = re.compile(
    r"^count=(\d+) median_ms=(\S+) min_ms=(\S+) max_ms=(\S+) mean_ms=(\S+) std_ms=(\S+)$", re.M
)


def parse_output(stdout: str) -> dict:
    """The numbers of a ``tvm-mpq-benchmark`` report: runs_ms, median/min/max/mean/std ms, threads."""
    runs = re.search(r"^runs_ms:(.*)$", stdout, re.M)
    stats = _STATS.search(stdout)
    if runs is None or stats is None:
        raise ValueError(f"not a {RUNNER_NAME} report:\n{stdout}")
    threads = re.search(r"^threads: (-?\d+)$", stdout, re.M)
    out = {
        "runs_ms": [float(v) for v in runs.group(1).split()],
        "median_ms": float(stats.group(2)), "min_ms": float(stats.group(3)),
        "max_ms": float(stats.group(4)), "mean_ms": float(stats.group(5)), "std_ms": float(stats.group(6)),
        "threads": int(threads.group(1)) if threads else -1,
    }
    if len(out["runs_ms"]) != int(stats.group(1)):
        raise ValueError(f"{RUNNER_NAME} report lists {len(out['runs_ms'])} runs but count={stats.group(1)}")
    return out


def run_benchmark(
    model: str | os.PathLike,
    *inputs,
    threads: int | None = None,
    repeat: int = 10,
    warmup: int = 3,
    function: str = "main",
    return_outputs: bool = True,
    extra_args: Sequence[str] = (),
    timeout: float | None = None,
) -> BenchmarkResult:
    """Run ``tvm-mpq-benchmark`` on an exported module and parse what it measured.

    ``inputs``, one per parameter of ``function`` in order: numpy arrays (passed as .npy files),
    paths of .npy files, runner SPEC strings (``"x.bin:1x3x224x224:float32"``, or
    ``"1x3x224x224"`` for seeded random data), or shape tuples (random float32).
    ``threads``: TVM runtime threads (None: TVM's default). Raises NativeRunnerError when the
    runner fails (missing file, wrong shape, ...), with its error message.
    """
    with tempfile.TemporaryDirectory(prefix="tvm_mpq_bench_") as tmp:
        cmd = [runner_path(), os.fspath(model), "--repeat", str(repeat), "--warmup", str(warmup),
               "--function", function]
        for i, x in enumerate(inputs):
            if isinstance(x, (str, os.PathLike)):
                spec = os.fspath(x)
            elif isinstance(x, tuple) and all(isinstance(d, (int, np.integer)) for d in x):
                spec = "x".join(str(int(d)) for d in x) or "scalar"
            else:
                arr = np.ascontiguousarray(x.numpy() if hasattr(x, "numpy") else x)
                spec = os.path.join(tmp, f"input{i}.npy")
                np.save(spec, arr)
            cmd += ["--input", spec]
        if threads is not None:
            cmd += ["--threads", str(int(threads))]
        out_path = os.path.join(tmp, "output.npy")
        if return_outputs:
            cmd += ["--output", out_path]
        cmd += list(extra_args)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=runner_env(), timeout=timeout)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            message = lines[-1] if lines else f"no error message (stdout: {proc.stdout.strip()[-500:]})"
            message = message.removeprefix(f"{RUNNER_NAME}: error: ")
            raise NativeRunnerError(proc.returncode, message, proc.stdout, proc.stderr)
        parsed = parse_output(proc.stdout)
        outputs = []
        if return_outputs:
            n = len(re.findall(r"^output \d+:", proc.stdout, re.M))
            if n == 1:
                outputs = [np.load(out_path)]
            else:
                outputs = [np.load(os.path.join(tmp, f"output_{i}.npy")) for i in range(n)]
        return BenchmarkResult(outputs=outputs, stdout=proc.stdout, **parsed)
