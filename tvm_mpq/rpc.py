"""Measure latencies on a device through TVM's RPC: a tracker (host, port, key) or a direct server.

    device = tvm_mpq.RPCDevice(tracker=("127.0.0.1", 9190), key="rasp4", target="llvm -mtriple=aarch64-linux-gnu -mattr=+neon")
    cost = tvm_mpq.latency.MeasuredLatency(quantizer, device=device, cache="latency.json")

Each module is compiled here for the device's ``target`` (cross-compiled, and linked with
``<arch>-linux-gnu-g++`` when the device is another architecture), ``export_library``-ed, uploaded,
loaded with ``remote.load_module`` and timed with ``relax.VirtualMachine(lib, remote.cpu())
.time_evaluator`` -- the protocol of ``tvm_mpq.latency.Timing``.

Fan-out uses TVM's tracker as the distributed engine: one worker thread per server the tracker
holds for the key, each requesting its own session from the tracker (which hands each request a
free server) and taking modules from a shared queue. There is no scheduler of ours beyond that
queue.

Faults. Every remote step runs under a deadline (``timeout_s``; the session request under
``connect_timeout_s``): a server that dies (its socket closes) or hangs (the deadline passes) costs
that worker its session; the module goes back on the queue for any worker, the worker reconnects
(with back-off) and the module is retried up to ``retries`` times. When no worker can go on, the
run raises ``RPCError`` saying what failed, how many measurements finished and that they are
cached. Every finished measurement is written to the latency cache at once (atomic JSON), so a
rerun measures only what is missing. The tracker speaks JSON and the RPC protocol carries only
tensors, modules and strings: nothing here is unpickled. Defaults bind and connect to 127.0.0.1.
"""

from __future__ import annotations

import collections
import os
import platform
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence

import tvm
from tqdm.auto import tqdm
from tvm import relax, rpc

from tvm_mpq.targets import host_target, parse_target

from .latency import LatencyError, MeasureTask, Timing, random_inputs, summarize, time_vm

__all__ = ["RPCDevice", "RPCError", "RPCTimeout"]

DEFAULT_HOST = "127.0.0.1"


class RPCError(LatencyError):
    """Measuring through RPC failed after retries; finished measurements are in the cache."""


class RPCTimeout(RPCError):
    """A remote step did not finish within its deadline (server hung or unreachable)."""


def call_with_timeout(fn: Callable, timeout_s: float | None, what: str, on_timeout: Callable | None = None):
    """Run ``fn()`` with a deadline. On timeout call ``on_timeout`` (e.g. close a socket so the
    blocked call returns) and raise RPCTimeout; the call's thread is a daemon and is abandoned."""
    if not timeout_s:
        return fn()
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    th = threading.Thread(target=target, daemon=True, name=f"tvm_mpq-rpc-{what}")
    th.start()
    th.join(timeout_s)
    if th.is_alive():
        if on_timeout is not None:
            try:
                on_timeout()
            except Exception:  # noqa: BLE001 - best effort
                pass
        raise RPCTimeout(f"{what} did not finish within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _parse_addr(addr, default_port: int) -> tuple[str, int]:
    if isinstance(addr, str):
        host, _, port = addr.rpartition(":")
        if not host:
            host, port = addr, str(default_port)
        return host, int(port)
    host, port = addr
    return str(host), int(port)


def _default_compiler(target_info) -> str | None:
    """The C++ driver that links a shared library for ``target_info`` (None = this host's)."""
    here = platform.machine().lower().replace("amd64", "x86_64").replace("arm64", "aarch64")
    if target_info.arch == here:
        return None
    return f"{target_info.arch}-linux-gnu-g++"


class RPCDevice:
    """A device reached through TVM RPC.

    ``RPCDevice(tracker=("127.0.0.1", 9190), key="x86-bench")``: every server registered with the
    tracker under ``key`` measures in parallel. ``RPCDevice("127.0.0.1", 9090)``: one server,
    connected directly (a server registered with a tracker cannot be: request it by key).

    target: what the device runs (string / dict / Target / TargetInfo); default this host's target.
    timing: the timing protocol (tvm_mpq.latency.Timing). timeout_s: deadline of one module's
    upload + load + timing; connect_timeout_s: of one session request; retries: attempts per
    module (and reconnects per worker) before giving up; session_timeout_s: the server ends a
    session after this long (protects it from a hung client; workers renew sessions before);
    max_servers: cap on parallel sessions; compiler: C++ driver for ``export_library``
    (default: the host's, or ``<arch>-linux-gnu-g++`` for another architecture).
    """

    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        *,
        tracker=None,
        key: str | None = None,
        target=None,
        timing: Timing | None = None,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 60.0,
        retries: int = 3,
        session_timeout_s: float = 600.0,
        max_servers: int | None = None,
        compiler: str | None = None,
        backoff_s: float = 1.0,
    ):
        if tracker is None and host is None:
            raise RPCError("give a tracker (tracker=(host, port), key=...) or a server (host, port)")
        if tracker is not None and host is not None:
            raise RPCError("give either a tracker or a direct server (host, port), not both")
        if tracker is not None and not key:
            raise RPCError("a tracker serves devices by key: give key=... (the servers' --key)")
        self.tracker = None if tracker is None else _parse_addr(tracker, 9190)
        self.key = key
        self.addr = None if host is None else (host, int(port if port is not None else 9090))
        self.target = host_target() if target is None else parse_target(target)
        self.timing = timing or Timing()
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        self.retries = max(0, int(retries))
        self.session_timeout_s = session_timeout_s
        self.max_servers = max_servers
        self.compiler = compiler if compiler is not None else _default_compiler(self.target)
        self.backoff_s = backoff_s
        #: What the last ``measure`` did: workers, sessions opened, failures (for reports and tests).
        self.last_run: dict = {}

    # ------------------------------------------------------------------------------ identity
    @property
    def namespace(self) -> str:
        """Cache namespace: the target key plus the RPC device key (or server address)."""
        who = self.key if self.key else f"{self.addr[0]}:{self.addr[1]}"
        return f"{self.target.key}@rpc:{who}"

    def describe(self) -> str:
        if self.tracker is not None:
            return f"RPC tracker {self.tracker[0]}:{self.tracker[1]} key {self.key!r} ({self.target})"
        return f"RPC server {self.addr[0]}:{self.addr[1]} ({self.target})"

    def __repr__(self) -> str:
        return f"RPCDevice({self.describe()})"

    # ------------------------------------------------------------------------------ sessions
    def num_servers(self) -> int:
        """Servers the tracker holds for ``key`` (1 for a direct server)."""
        if self.tracker is None:
            return 1
        box: dict = {}

        def summary():
            box["t"] = rpc.connect_tracker(*self.tracker)
            return box["t"].summary()

        def close():
            if "t" in box:
                box["t"].close()

        try:
            s = call_with_timeout(summary, self.connect_timeout_s, "tracker summary", close)
        except RPCTimeout:
            raise
        except Exception as e:  # noqa: BLE001
            raise RPCError(f"cannot reach the RPC tracker at {self.tracker[0]}:{self.tracker[1]}: {e}") from e
        finally:
            close()
        return sum(1 for item in s.get("server_info", []) if item.get("key") == f"server:{self.key}")

    def connect(self) -> rpc.RPCSession:
        """A new session (through the tracker: on whichever server is free)."""
        sto = int(self.session_timeout_s or 0)
        if self.tracker is None:
            return call_with_timeout(
                lambda: rpc.connect(self.addr[0], self.addr[1], session_timeout=sto),
                self.connect_timeout_s, f"connect to {self.addr[0]}:{self.addr[1]}",
            )
        # Fail fast when no server is registered: a request would wait for one until the deadline.
        if self.num_servers() == 0:
            raise RPCError(f"the tracker holds no server for key {self.key!r}")
        box: dict = {}

        def request():
            box["t"] = rpc.connect_tracker(*self.tracker)
            return box["t"].request(self.key, priority=1, session_timeout=sto, max_retry=1)

        def close():
            if "t" in box:
                box["t"].close()  # unblocks the pending request; the tracker drops it

        try:
            return call_with_timeout(request, self.connect_timeout_s, f"session request for key {self.key!r}", close)
        finally:
            close()

    # ------------------------------------------------------------------------------ measuring
    def _export(self, task: MeasureTask, workdir: str, built: dict, lock: threading.Lock) -> str:
        with lock:
            if task.signature in built:
                return built[task.signature]
        exe = task.compile(self.target)
        path = os.path.join(workdir, f"m_{task.signature}.so")
        kwargs = {}
        if self.compiler:
            from tvm.support import cc

            kwargs["fcompile"] = cc.cross_compiler(self.compiler)
        exe.export_library(path, **kwargs)
        with lock:
            built[task.signature] = path
        return path

    def _run_remote(self, sess: rpc.RPCSession, path: str, task: MeasureTask) -> dict:
        name = os.path.basename(path)

        def remote():
            sess.upload(path)
            lib = sess.load_module(name)
            dev = sess.cpu()
            vm = relax.VirtualMachine(lib, dev)
            args = [tvm.runtime.tensor(a, dev) for a in random_inputs(task.inputs)]
            runs = time_vm(vm, dev, args, self.timing)
            try:
                sess.remove(name)
            except Exception:  # noqa: BLE001 - housekeeping only
                pass
            return runs

        return summarize(call_with_timeout(remote, self.timeout_s, f"measuring {task.label or task.signature}"))

    def measure(self, tasks: Sequence[MeasureTask], on_result: Callable[[MeasureTask, dict], None],
                progress: bool = False) -> None:
        """Measure ``tasks`` over every server; ``on_result(task, result)`` as each one finishes."""
        if not tasks:
            return
        deadline = time.monotonic() + self.connect_timeout_s
        n = self.num_servers()
        while n == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
            n = self.num_servers()
        if n == 0:
            raise RPCError(
                f"the RPC tracker at {self.tracker[0]}:{self.tracker[1]} holds no server for key "
                f"{self.key!r} (waited {self.connect_timeout_s:g} s): start one with "
                f"'python -m tvm.exec.rpc_server --host 127.0.0.1 --tracker "
                f"{self.tracker[0]}:{self.tracker[1]} --key {self.key}'"
            )
        workers = max(1, min(n, len(tasks), self.max_servers or n))
        queue = collections.deque(tasks)
        cond = threading.Condition()
        state = {"in_flight": 0, "done": 0, "sessions": 0, "failures": [], "gave_up": [], "alive": workers}
        built: dict[str, str] = {}
        build_lock = threading.Lock()
        bar = tqdm(total=len(tasks), desc=f"measuring ({workers} RPC session(s))", disable=not progress)
        workdir = tempfile.mkdtemp(prefix="tvm_mpq_rpc_")

        def next_task():
            with cond:
                while not queue and state["in_flight"] > 0:
                    cond.wait(0.5)
                if not queue:
                    return None
                state["in_flight"] += 1
                return queue.popleft()

        def finish(task, requeue: bool):
            with cond:
                state["in_flight"] -= 1
                if requeue:
                    queue.append(task)
                cond.notify_all()

        def has_work() -> bool:
            with cond:
                return bool(queue) or state["in_flight"] > 0

        def worker(i: int):
            sess, opened, conn_failures = None, 0.0, 0
            try:
                while True:
                    if not has_work():
                        return
                    # Renew a session the server would soon end on its own.
                    if sess is not None and self.session_timeout_s and (
                        time.monotonic() - opened > 0.8 * self.session_timeout_s
                    ):
                        sess = None
                    # A session first, a module second: a worker waiting for a server holds no
                    # module another worker could measure.
                    if sess is None:
                        try:
                            sess = self.connect()
                            opened = time.monotonic()
                            conn_failures = 0
                            with cond:
                                state["sessions"] += 1
                        except Exception as e:  # noqa: BLE001
                            conn_failures += 1
                            with cond:
                                state["failures"].append(f"worker {i}: session: {type(e).__name__}: {e}")
                            if conn_failures > self.retries:
                                return
                            time.sleep(self.backoff_s * conn_failures)
                            continue
                    task = next_task()
                    if task is None:
                        return
                    try:
                        path = self._export(task, workdir, built, build_lock)
                    except Exception as e:  # noqa: BLE001 - a build error is not the device's fault
                        task.attempts = self.retries + 1
                        task.errors.append(f"build: {e}")
                        with cond:
                            state["gave_up"].append(task)
                        finish(task, requeue=False)
                        continue
                    try:
                        res = self._run_remote(sess, path, task)
                    except Exception as e:  # noqa: BLE001
                        sess = None  # dead, hung or broken: never reuse it
                        task.attempts += 1
                        task.errors.append(f"{type(e).__name__}: {e}")
                        give_up = task.attempts > self.retries
                        with cond:
                            state["failures"].append(f"worker {i}: {task.label}: {type(e).__name__}: {e}")
                            if give_up:
                                state["gave_up"].append(task)
                        finish(task, requeue=not give_up)
                        time.sleep(self.backoff_s)
                        continue
                    on_result(task, {**res, "device": self.describe()})
                    with cond:
                        state["done"] += 1
                    bar.update(1)
                    finish(task, requeue=False)
            finally:
                sess = None
                with cond:
                    state["alive"] -= 1
                    cond.notify_all()

        threads = [threading.Thread(target=worker, args=(i,), daemon=True, name=f"tvm_mpq-rpc-worker-{i}")
                   for i in range(workers)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            bar.close()
            shutil.rmtree(workdir, ignore_errors=True)
        self.last_run = {"workers": workers, "sessions": state["sessions"], "done": state["done"],
                         "failures": list(state["failures"])}
        left = list(queue) + state["gave_up"]
        if left:
            detail = "; ".join(f"{t.label or t.signature}: {t.errors[-1] if t.errors else 'not attempted'}"
                               for t in left[:3])
            last = state["failures"][-1] if state["failures"] else "none"
            raise RPCError(
                f"measuring on {self.describe()} failed: {len(left)} of {len(tasks)} module(s) not measured "
                f"after {self.retries} retr{'y' if self.retries == 1 else 'ies'} ({detail}; last failure: {last}). "
                f"The {state['done']} finished measurement(s) are in the latency cache: rerun to resume "
                f"once the device is reachable."
            )
