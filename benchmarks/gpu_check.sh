#!/usr/bin/env bash
# `make gpu-check GPU_RESULTS=DIR`: on a machine with an NVIDIA GPU and no network (torch, pytest
# preinstalled). Builds rarekit in place for the local GPU with the active Python, runs the CUDA
# tests (`pytest -m cuda`) and the CUDA benchmarks, and writes everything as JSON into DIR.
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-./gpu-results}")
mkdir -p "$out"
PY=${PYTHON:-python}
arch=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())") || { echo "no CUDA GPU visible"; exit 1; }
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch} RAREKIT_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
start=$(date +%s)
if ! "$PY" -m pip install --no-build-isolation --no-deps -e . > "$out/build.log" 2>&1; then
  tail -n 60 "$out/build.log"; echo "build failed"; exit 1
fi
echo "built in $(( $(date +%s) - start )) s"
"$PY" -m pytest -m cuda -q -p no:cacheprovider --junitxml="$out/pytest-cuda.xml" 2>&1 | tee "$out/pytest-cuda.txt"
tests_rc=${PIPESTATUS[0]}
# every benchmarks/bench_*.py on CUDA; JSON into $out, and the RESULTS.md they make beside it
timeout 300 "$PY" -m rarekit bench --device cuda --repeat 5 --out "$out" 2>&1 | tee "$out/benchmarks.txt"
cp benchmarks/RESULTS.md "$out/RESULTS-gpu.md" 2>/dev/null
"$PY" - "$out" "$tests_rc" <<'PY'
import json, sys, xml.etree.ElementTree as ET
out, rc = sys.argv[1], int(sys.argv[2])
suite = ET.parse(f"{out}/pytest-cuda.xml").getroot().iter("testsuite").__next__()
summary = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
summary["pytest_exit_code"] = rc
summary["failed"] = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
                     if case.find("failure") is not None or case.find("error") is not None]
json.dump(summary, open(f"{out}/pytest-cuda.json", "w"), indent=2)
print(json.dumps(summary))
PY
echo "gpu-check finished in $(( $(date +%s) - start )) s; results in $out"
exit "$tests_rc"
