#!/usr/bin/env bash
# The benchmark on a GPU machine without network: install carried wheels, then python -m vla_ttq.bench.
#   bash scripts/bench_gpu.sh OUT_DIR [bench args...]
# Wheels: ./.whl/*.whl (rich, pyyaml; installed only when missing) and, for the lerobot ratio,
# $LEROBOT_WHEELS/*.whl (lerobot 0.6.1 and its dependencies, see docs/bench.md).
set -uo pipefail
OUT=${1:?usage: bench_gpu.sh OUT_DIR [bench args...]}; shift
SITE=/tmp/bench-site
mkdir -p "$OUT" "$SITE"
python3 -c "import rich, yaml" 2>/dev/null || [ -d "$SITE/base" ] || python3 -m pip install -q --no-index --no-deps --no-compile \
  --target "$SITE/base" .whl/*.whl
if [ -n "${LEROBOT_WHEELS:-}" ] && [ ! -d "$SITE/lerobot" ] && ls "$LEROBOT_WHEELS"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE/lerobot" "$LEROBOT_WHEELS"/*.whl \
    || echo "lerobot wheels did not install"
fi
export PYTHONPATH="$PWD:$SITE/base:$SITE/lerobot${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 COLUMNS=${COLUMNS:-200}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,power.limit --format=csv | tee "$OUT/gpu.txt"
python3 -m vla_ttq.bench --out "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"
