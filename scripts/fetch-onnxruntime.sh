#!/usr/bin/env bash
# Puts the ONNX Runtime shared library that modeld loads at run time into .ort/ (or $1).
# The library comes from the pinned PyPI wheel (the only registry reachable from build
# machines); its sha256 is checked so a changed wheel cannot slip in unnoticed.
# ORT_ARCH (x86_64 or aarch64, default: this machine's) picks the wheel, for image builds.
set -euo pipefail

ORT_VERSION=1.31.1
arch=${ORT_ARCH:-$(uname -m)}
case $arch in
  x86_64 | amd64) platform=manylinux_2_28_x86_64 sha256=fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3 ;;
  aarch64 | arm64) platform=manylinux_2_28_aarch64 sha256=8aa3b76b28c778a2b1dd660d34161adb1d508c9ccd04ff9dc80e26eca5df8467 ;;
  *) echo "fetch-onnxruntime: no pinned ONNX Runtime for architecture $arch" >&2; exit 1 ;;
esac
dest=${1:-"$(cd "$(dirname "$0")/.." && pwd)/.ort"}
lib="$dest/libonnxruntime.so.$ORT_VERSION"

if [[ -f $lib ]] && echo "$sha256  $lib" | sha256sum --check --status; then
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --platform "$platform" --python-version 3.11 \
  "onnxruntime==$ORT_VERSION" -d "$tmp"
mkdir -p "$dest"
python3 - "$tmp"/onnxruntime-*.whl "$lib" "$ORT_VERSION" <<'PY'
import shutil, sys, zipfile
wheel, out, version = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(f"onnxruntime/capi/libonnxruntime.so.{version}") as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
echo "$sha256  $lib" | sha256sum --check --quiet
echo "ONNX Runtime $ORT_VERSION ($arch) -> $lib"
