#!/usr/bin/env bash
# Put DeepSpeed and the wheels it needs that the GPU image lacks (~8 MB) into .whl/ (git-ignored), for
# benchmarks/distributed.py's ZeRO-3 jobs on the device machine. DeepSpeed ships only an sdist: it is built here
# as a pure-Python wheel (its CUDA ops compile at run time there; this benchmark uses none of them).
# Usage: benchmarks/fetch-deepspeed-wheels.sh [python with torch installed, default: python3]
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
python=${1:-python3}
grep -qx '/.whl/' "$(git rev-parse --git-common-dir)/info/exclude" 2>/dev/null || echo '/.whl/' >> "$(git rev-parse --git-common-dir)/info/exclude"
mkdir -p .whl
"$python" -m pip wheel -q --no-deps --no-build-isolation -w .whl deepspeed
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  einops hjson msgpack ninja psutil py-cpuinfo pydantic pydantic-core annotated-types typing-inspection typing-extensions tqdm
du -sh .whl
