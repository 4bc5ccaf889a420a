#!/usr/bin/env bash
# Puts the ONNX Runtime shared library that modeld loads at run time into .ort/.
# The library comes from the pinned PyPI wheel (the only registry reachable from build
# machines); its sha256 is checked so a changed wheel cannot slip in unnoticed.
set -euo pipefail

ORT_VERSION=1.31.1
ORT_SHA256=fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3
dest=${1:-"$(cd "$(dirname "$0")/.." && pwd)/.ort"}
lib="$dest/libonnxruntime.so.$ORT_VERSION"

if [[ -f $lib ]] && echo "$ORT_SHA256  $lib" | sha256sum --check --status; then
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --platform manylinux_2_28_x86_64 --python-version 3.11 \
  "onnxruntime==$ORT_VERSION" -d "$tmp"
mkdir -p "$dest"
python3 - "$tmp"/onnxruntime-*.whl "$lib" "$ORT_VERSION" <<'PY'
import shutil, sys, zipfile
wheel, out, version = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(f"onnxruntime/capi/libonnxruntime.so.{version}") as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
echo "$ORT_SHA256  $lib" | sha256sum --check --quiet
echo "ONNX Runtime $ORT_VERSION -> $lib"
