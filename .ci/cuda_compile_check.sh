#!/usr/bin/env bash
# Builds the wheel with the CUDA kernels on this GPU-less machine and imports it: fails when a
# .cu file does not compile. setup.py resolves CUDA_HOME behind a wrapper `nvcc`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(realpath -s "${PYTHON:-.venv/bin/python}")
out=$PWD/build/cuda-check
rm -rf "$out" && mkdir -p "$out/src"
# a clean copy of the sources, so no object from a CPU-only build is reused
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$out/src"
(cd "$out/src" && RAREKIT_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=2 \
  "$PY" -m pip wheel --no-build-isolation --no-deps -w "$out/wheel" . > "$out/build.log" 2>&1) \
  || { tail -n 60 "$out/build.log"; echo "CUDA compile check FAILED"; exit 1; }
"$PY" -m pip install --quiet --no-deps --target "$out/site" "$out"/wheel/rarekit-*.whl
cd "$out" && PYTHONPATH="$out/site" "$PY" - <<'PY'
import rarekit
info = rarekit.backend_info()
assert info["extension_built"] and info["extension_has_cuda"], info
print("CUDA compile check passed:", info)
PY
