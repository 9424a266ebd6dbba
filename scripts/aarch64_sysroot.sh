#!/usr/bin/env bash
# An aarch64 Python 3.11 with TVM that runs on x86 under qemu-user-static, for the functional RPC
# test of cross-compiled modules (tests/test_aarch64_rpc.py):
#   build/aarch64/root   Debian bookworm's arm64 python3.11 and its libraries (dpkg -x, not installed)
#   build/aarch64/site   the aarch64 wheels of apache-tvm / apache-tvm-ffi / numpy (pip --platform)
# Run it:  qemu-aarch64-static -L build/aarch64/root build/aarch64/root/usr/bin/python3.11
#          with PYTHONPATH=build/aarch64/site.
# Needs root and apt-get (it enables the arm64 architecture to download packages; nothing arm64 is
# installed on the system). Safe to rerun; exits 0 at once when the sysroot is there.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=build/aarch64
if [ -x "$OUT/root/usr/bin/python3.11" ] && [ -d "$OUT/site/tvm" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
  echo "aarch64 sysroot: needs apt-get and root; skipped" >&2
  exit 1
fi
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
  apt-get update -q >/dev/null
fi
DEBS="$OUT/debs"
mkdir -p "$DEBS" "$OUT/root"
PKGS="python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libgcc-s1 libstdc++6 libexpat1
zlib1g libffi8 libbz2-1.0 liblzma5 libssl3 libncursesw6 libtinfo6 libuuid1 libcrypt1 libsqlite3-0
libreadline8 libnsl2 libtirpc3 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libcom-err2
libkeyutils1 libdb5.3 libgdbm6"
(cd "$DEBS" && apt-get download -q $(for p in $PKGS; do echo "$p:arm64"; done) media-types >/dev/null 2>&1)
for f in "$DEBS"/*.deb; do dpkg -x "$f" "$OUT/root"; done
PY=${PY:-.venv/bin/python}
"$PY" -m pip install --quiet --target "$OUT/site" --python-version 3.11 --implementation cp --only-binary=:all: \
  --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
  apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post0 numpy ml_dtypes typing_extensions psutil
rm -rf "$DEBS"
echo "aarch64 sysroot ready in $OUT"
