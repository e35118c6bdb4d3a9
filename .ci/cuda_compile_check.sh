#!/usr/bin/env bash
# Builds the wheel with the CUDA kernels on this GPU-less machine and imports it. Fails when
#  - a .cu file does not compile;
#  - a kernel (__global__ in csrc/cuda/*.cu: all of them are on the hot path) spills registers:
#    ptxas -v (through nvcc's NVCC_APPEND_FLAGS) reports its spill stores and loads into the build
#    log, build/cuda-check/build.log, with its registers;
#  - a torch.ops.rarekit op has no CUDA kernel registered.
# setup.py resolves CUDA_HOME behind a wrapper `nvcc`.
#
# --use_fast_math (setup.py) is kept for now: it changes single-precision expf/logf/powf, division and
# square roots (--ftz, --prec-div=false, --prec-sqrt=false, --fmad), which only the cross-entropy
# kernels use; count sums in integers and float64, and the sampling draws multiply doubles without a
# following add, so no contraction can change them. Whether the cross-entropy accuracy tests still pass
# at fp32 tolerance can only be seen on a GPU (`make gpu-check`, `pytest -m cuda`): drop the flag if not.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(realpath -s "${PYTHON:-.venv/bin/python}")
out=$PWD/build/cuda-check
rm -rf "$out" && mkdir -p "$out/src"
# a clean copy of the sources, so no object from a CPU-only build is reused
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$out/src"
(cd "$out/src" && RAREKIT_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=2 \
  NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:-} -Xptxas -v" \
  "$PY" -m pip wheel -v --no-build-isolation --no-deps -w "$out/wheel" . > "$out/build.log" 2>&1) \
  || { tail -n 60 "$out/build.log"; echo "CUDA compile check FAILED"; exit 1; }

"$PY" - "$out/build.log" csrc/cuda/*.cu <<'PY'
"""Fails on any register spill of a csrc/cuda kernel, as ptxas -v reports it in the build log."""
import re
import subprocess
import sys

log_path, *sources = sys.argv[1:]
kernels = set()
for source in sources:
    kernels |= set(re.findall(r"__global__\s+(?:__launch_bounds__\([^)]*\)\s+)?void\s+(\w+)\s*\(", open(source).read()))
log = open(log_path, errors="replace").read()
entries = re.findall(r"Function properties for (\S+)\s+(\d+) bytes stack frame, (\d+) bytes spill stores, "
                     r"(\d+) bytes spill loads(?:\s+ptxas info\s*: Used (\d+) registers)?", log)
names = subprocess.run(["c++filt"], input="\n".join(entry[0] for entry in entries), capture_output=True,
                       text=True, check=True).stdout.splitlines() if entries else []
seen, spills = set(), []
for name, (_, stack, stores, loads, registers) in zip(names, entries):
    kernel = next((k for k in kernels if re.search(rf"\b{k}\b", name)), None)
    if kernel is None:
        continue
    seen.add(kernel)
    if int(stores) or int(loads):
        spills.append(f"  {name}: {stores} bytes spill stores, {loads} bytes spill loads, {registers or '?'} registers")
missing = sorted(kernels - seen)
if missing:
    sys.exit(f"CUDA compile check FAILED: no ptxas -v report for the kernels {missing} in {log_path}")
if spills:
    sys.exit("CUDA compile check FAILED: register spills in hot kernels:\n" + "\n".join(spills))
print(f"no register spills in {len(seen)} kernels ({len(names)} compiled functions checked)")
PY

"$PY" -m pip install --quiet --no-deps --target "$out/site" "$out"/wheel/rarekit-*.whl
cd "$out" && PYTHONPATH="$out/site" "$PY" - <<'PY'
import torch

import rarekit

info = rarekit.backend_info()
assert info["extension_built"] and info["extension_has_cuda"], info
ops = sorted({name for name in torch._C._dispatch_get_all_op_names() if name.startswith("rarekit::")})
assert ops, "no rarekit op is registered"
without_cuda = [op for op in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")]
assert not without_cuda, f"CUDA compile check FAILED: ops without a CUDA kernel: {without_cuda}"
print(f"CUDA compile check passed: {len(ops)} ops with CUDA kernels ({', '.join(ops)});", info)
PY
