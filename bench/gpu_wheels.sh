#!/usr/bin/env bash
# Fill .whl/ (git-ignored; it travels to the lent GPU machine as a carried path) with the wheels
# that machine's image lacks (../shared/DESIGN.md): the versions this checkout's .venv runs, for
# CPython 3.12 on manylinux x86_64, plus DeepSpeed's sdist (built there with DS_BUILD_OPS=0).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
pins=$($PY - <<'PYEOF'
from importlib.metadata import version
names = ["pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions",
         "math-verify", "latex2sympy2_extended", "trl", "datasets", "dill", "multiprocess",
         "xxhash", "hjson", "peft"]
print(" ".join(f"{n}=={version(n)}" for n in names) + " antlr4-python3-runtime==4.13.2")
PYEOF
)
mkdir -p .whl
# shellcheck disable=SC2086
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any \
    --implementation cp -d .whl $pins
$PY -m pip download -q --no-deps --no-binary=:all: -d .whl "deepspeed==$($PY -c \
    'from importlib.metadata import version; print(version("deepspeed"))')"
du -sh .whl && ls .whl
