"""A TVM RPC server that listens in this process (no helper process): for devices and emulators.

    python -m tvm_mpq.rpc_server --host 127.0.0.1 --port 9091 [--tracker 127.0.0.1:9190 --key rasp4]
    python path/to/rpc_server.py ...           # on a device with only TVM installed: copy this file

``python -m tvm.exec.rpc_server`` starts the listening loop in a helper process (TVM's PopenWorker,
which ships the function to it with cloudpickle); under ``qemu-user`` and on minimal device images
that helper is the fragile part. This runs the same listening loop (``tvm.rpc.server``) in a thread
of this process; each session still runs in a forked child, as TVM's server does. It imports only
TVM and the standard library. Binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import argparse
import logging


def serve(host: str = "127.0.0.1", port: int = 9091, port_end: int | None = None, tracker: str | None = None,
          key: str = "", silent: bool = False) -> None:
    """Listen until killed."""
    from tvm.rpc import server as _server

    tracker_addr = None
    if tracker:
        h, _, p = tracker.rpartition(":")
        tracker_addr = (h, int(p))
        if not key:
            raise SystemExit("a server registered with a tracker needs --key")
    bound = _server._popen_start_rpc_server(  # the function TVM's PopenWorker would run
        host, port, port_end if port_end is not None else port + 1, False, tracker_addr, key, None, None, silent
    )
    print(f"tvm_mpq.rpc_server listening on {host}:{bound}", flush=True)
    _server.PopenRPCServerState.current.thread.join()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9091)
    ap.add_argument("--port-end", type=int, default=None)
    ap.add_argument("--tracker", default=None, help="host:port of a TVM RPC tracker to register with")
    ap.add_argument("--key", default="")
    ap.add_argument("--silent", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    serve(args.host, args.port, args.port_end, args.tracker, args.key, args.silent)


if __name__ == "__main__":
    main()
