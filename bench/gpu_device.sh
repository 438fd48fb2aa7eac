#!/usr/bin/env bash
# The one script for the lent GPU machine (run from the repository root, .whl/ carried):
#   bash bench/gpu_device.sh [extra bench_gpu.py flags]
# installs the wheelhouse (bench/gpu_wheels.sh fills it here), then measures the char
# vocabulary first and the 151,936-token vocabulary second, each under its own time limit,
# writing gpu.json to $OUT (or bench/results) after each, so a cut-off run keeps its figures.
set -uo pipefail
OUT_DIR=${OUT:-bench/results}
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
if compgen -G ".whl/*.whl" > /dev/null; then
    pip install -q --no-deps --no-index .whl/*.whl
    DS_BUILD_OPS=0 pip install -q --no-deps --no-index --no-build-isolation .whl/deepspeed-*.tar.gz \
        || echo "deepspeed did not install: --deepspeed figures skipped"
fi
python -c "import deepspeed" 2>/dev/null && DS=--deepspeed || DS=
export PYTHONPATH=.
timeout "${CHAR_LIMIT_S:-240}" python bench/bench_gpu.py --vocab char $DS --out-dir "$OUT_DIR" "$@"
cp "$OUT_DIR/gpu.json" "$OUT_DIR/gpu-char.json" 2>/dev/null || true
timeout "${BIG_LIMIT_S:-240}" python bench/bench_gpu.py --vocab 151936 --out-dir "$OUT_DIR" "$@"
cp "$OUT_DIR/gpu.json" "$OUT_DIR/gpu-151936.json" 2>/dev/null || true
