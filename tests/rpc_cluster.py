"""A TVM RPC tracker and servers on 127.0.0.1, as subprocesses in their own process groups.

Used by tests/test_latency.py. Every process is started with ``start_new_session=True`` (its own
process group: the server's forked session workers go with it) and stopped by killing its group,
so nothing outlives the test -- ``RPCCluster.close`` is idempotent and safe after a crash.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float, proc: subprocess.Popen, log: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening: {_tail(log)}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {HOST}:{port} after {timeout:g} s: {_tail(log)}")


def _tail(path: str, n: int = 2000) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return "(no log)"


class RPCCluster:
    """``RPCCluster(tmp_path)``; ``.start_tracker()``; ``.start_server(key)``; ``.close()``."""

    def __init__(self, logdir, python: list[str] | None = None):
        self.logdir = str(logdir)
        self.python = python or [sys.executable]
        self.tracker_port: int | None = None
        self.tracker_proc: subprocess.Popen | None = None
        self.servers: dict[str, list[subprocess.Popen]] = {}
        self._procs: list[subprocess.Popen] = []

    def _spawn(self, args: list[str], name: str, env=None) -> tuple[subprocess.Popen, str]:
        log = os.path.join(self.logdir, f"{name}.log")
        with open(log, "w") as f:
            proc = subprocess.Popen(
                [*self.python, *args], stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=self.logdir, env=env,
            )
        self._procs.append(proc)
        return proc, log

    def start_tracker(self, timeout: float = 60.0) -> tuple[str, int]:
        port = free_port()
        proc, log = self._spawn(
            ["-m", "tvm.exec.rpc_tracker", "--host", HOST, "--port", str(port), "--port-end", str(port + 1)],
            "tracker",
        )
        _wait_port(port, timeout, proc, log)
        self.tracker_port, self.tracker_proc = port, proc
        return HOST, port

    @property
    def tracker(self) -> tuple[str, int]:
        return HOST, self.tracker_port

    def start_server(self, key: str, wait: bool = True, timeout: float = 60.0) -> subprocess.Popen:
        port = free_port()
        n = len(self.servers.get(key, []))
        args = ["-m", "tvm.exec.rpc_server", "--host", HOST, "--port", str(port), "--port-end", str(port + 1)]
        if self.tracker_port is not None:
            args += ["--tracker", f"{HOST}:{self.tracker_port}", "--key", key]
        proc, log = self._spawn(args, f"server-{key}-{n}")
        proc.port = port  # type: ignore[attr-defined]
        proc.log = log  # type: ignore[attr-defined]
        self.servers.setdefault(key, []).append(proc)
        if wait:
            _wait_port(port, timeout, proc, log)
            if self.tracker_port is not None:
                self.wait_registered(key, len(self.alive(key)), timeout)
        return proc

    def alive(self, key: str) -> list[subprocess.Popen]:
        return [p for p in self.servers.get(key, []) if p.poll() is None]

    def registered(self, key: str) -> int:
        from tvm import rpc

        summary = rpc.connect_tracker(*self.tracker).summary()
        return sum(1 for s in summary["server_info"] if s["key"] == f"server:{key}")

    def wait_registered(self, key: str, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.registered(key) == count:
                return
            time.sleep(0.2)
        raise RuntimeError(f"{count} server(s) for {key!r} did not register with the tracker in {timeout:g} s")

    def start_async(self, key: str, servers: int) -> None:
        """Start the tracker, then ``servers`` servers, in a background thread (the imports take
        seconds each); ``wait(key, servers)`` joins it and waits until they are registered."""
        import threading

        def boot():
            try:
                self.start_tracker()
                for _ in range(servers):
                    self.start_server(key, wait=False)
            except BaseException as e:  # noqa: BLE001 - re-raised by wait()
                self._boot_error = e

        self._boot_error = None
        self._boot = threading.Thread(target=boot, daemon=True)
        self._boot.start()

    def wait(self, key: str, servers: int, timeout: float = 90.0) -> None:
        self._boot.join(timeout)
        if self._boot_error is not None:
            raise self._boot_error
        self.wait_registered(key, servers, timeout)

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        """SIGKILL the process group of ``proc`` and reap it."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        for proc in reversed(self._procs):
            self.kill(proc)
        self._procs.clear()
