#!/usr/bin/env bash
# One-step set-up of a fresh machine for vla-ttq (CPU): system libraries, torch, the package.
# Idempotent: re-running only installs what is missing. Used by the README and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

# OSMesa/EGL let MuJoCo render LIBERO's cameras headless on a machine without a GPU.
if command -v apt-get >/dev/null && ! ldconfig -p | grep -q libOSMesa; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libosmesa6 libegl1 libgl1 >/dev/null
fi

PY=${PYTHON:-python3}
# torch first, pinned, so no extra below can pull a multi-GB CUDA build (a CPU wheel here).
$PY -m pip install -q "torch==2.13.0"
$PY -m pip install -q -e ".[model,libero,server,kernels,dist,dev,quality]"
# openpi's client is only a test peer of our server; it pins numpy<2, which our stack does not need,
# so it comes without its dependencies (msgpack and websockets are in the server extra).
$PY -m pip install -q --no-deps "openpi-client==0.1.2"
# The quality test's Gemma-3-270M: dequantize its GGUF once (~45 s) into ~/.cache/vla_ttq.
$PY -m eval.quality.model >/dev/null
