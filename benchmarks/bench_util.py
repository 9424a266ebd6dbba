"""Helpers shared by the benchmark scripts (run from the repository root; benchmarks/ is the
script's own folder, so ``from bench_util import ...`` works)."""

from __future__ import annotations

import tvm

_config_threadpool = tvm.get_global_func("runtime.config_threadpool")


def set_threads(n: int) -> None:
    """TVM's pool (``runtime.config_threadpool``) and torch's intra-op threads to ``n``. TVM's pool
    cannot grow past the size it started with: set TVM_NUM_THREADS before importing tvm."""
    _config_threadpool(1, n)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass
