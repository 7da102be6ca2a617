#!/usr/bin/env bash
# Set-up and the everyday jobs in one place. Each command creates the virtual environment and
# builds torchbridge on first use (a few minutes on 2 cores), then reuses both.
#
#   scripts/dev.sh pipeline [args]   the main job: train -> export -> verify in C++ -> bench -> report
#   scripts/dev.sh test              C++ tests (ctest) and the pytest suite, torch 2.14.1
#   scripts/dev.sh test-cpu          the same against torch 2.13.0+cpu, C++ built from CMAKE_PREFIX_PATH
#   scripts/dev.sh test-avx2 [tests] parity, fallback, quantization and .pt2 tests with ATen's and
#                                    oneDNN's ISA capped at AVX2 (what an AMD EPYC Zen 3 has)
#   scripts/dev.sh zoo [args]        the model zoo (benchmarks/zoo.py; --subset fast in CI) -> docs/zoo.md
#   scripts/dev.sh setup             only create .venv and build
#   scripts/dev.sh gpu               on a CUDA machine: build into the python3 that has torch, run
#                                    tests/test_cuda.py and benchmarks/gpu.py (docs/bench_gpu.md)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
JOBS=${JOBS:-2}

setup() {  # setup VENV REQUIREMENTS
  local venv=$1 requirements=$2
  if [ ! -x "$venv/bin/python" ]; then
    echo "== creating $venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
  fi
  echo "== installing $requirements into $venv"
  "$venv/bin/python" -m pip install -q -r "$requirements"
  echo "== building torchbridge (C++ runtime, torchbridge-run, bindings) into $venv"
  # --no-build-isolation: the native parts must link the torch installed in this environment.
  "$venv/bin/python" -m pip install -q --no-build-isolation --no-deps .
}

ctest_build() {  # ctest_build VENV BUILD_DIR: a pure CMake build, LibTorch given by CMAKE_PREFIX_PATH
  local venv=$1 build=$2 torch_dir
  torch_dir=$("$venv/bin/python" -c "import os, torch; print(os.path.dirname(torch.__file__))")
  echo "== C++ build against $torch_dir (no Python in the build)"
  PATH="$venv/bin:$PATH" cmake -S . -B "$build" -G Ninja -DCMAKE_PREFIX_PATH="$torch_dir" > "$build.configure.log" \
    || { cat "$build.configure.log"; return 1; }
  PATH="$venv/bin:$PATH" cmake --build "$build" -j "$JOBS"
  PATH="$venv/bin:$PATH" ctest --test-dir "$build" --output-on-failure
}

command=${1:-}
shift || true
case "$command" in
  setup)
    setup .venv requirements-dev.txt
    ;;
  pipeline)
    setup .venv requirements-dev.txt
    exec .venv/bin/torchbridge pipeline "$@"
    ;;
  test)
    setup .venv requirements-dev.txt
    mkdir -p build
    ctest_build .venv build/cpp
    .venv/bin/ruff check python tests examples benchmarks
    .venv/bin/python -m pytest "$@"
    ;;
  test-avx2)
    setup .venv requirements-dev.txt
    export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
    # Both caps must take effect, or this leg proves nothing about AVX2 machines.
    .venv/bin/python - <<'PY'
import subprocess, sys
import torch
capability = torch.backends.cpu.get_cpu_capability()
probe = "import torch; torch.nn.Conv2d(3, 8, 3).eval()(torch.rand(8, 3, 64, 64))"
verbose = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env={**__import__("os").environ, "ONEDNN_VERBOSE": "1"}).stdout
isa = next((line.split("isa:")[1] for line in verbose.splitlines() if "isa:" in line), "unknown")
print(f"ATen CPU capability: {capability}; oneDNN ISA: {isa}")
sys.exit(0 if capability == "AVX2" and "AVX2" in isa and "512" not in isa else "the AVX2 cap did not take effect")
PY
    [ $# -gt 0 ] || set -- tests/test_parity.py tests/test_fallback.py tests/test_quantize.py tests/test_aoti.py
    .venv/bin/python -m pytest "$@"
    ;;
  zoo)
    setup .venv requirements-dev.txt
    .venv/bin/python benchmarks/zoo.py "$@"
    ;;
  corrupt)
    # scripts/dev.sh corrupt [SEED] [pytest args]: the seeded corruption test at full size, 300
    # damaged copies of each artifact kind (CI's sample is 100, seed 1616); the tables go to the terminal.
    setup .venv requirements-dev.txt
    seed=1616
    if [[ ${1:-} =~ ^[0-9]+$ ]]; then seed=$1; shift; fi
    TORCHBRIDGE_CORRUPT_N=${TORCHBRIDGE_CORRUPT_N:-300} TORCHBRIDGE_CORRUPT_SEED=$seed \
      .venv/bin/python -m pytest -v tests/test_corruption.py "$@"
    ;;
  test-cpu)
    setup .venv-cpu requirements-cpu.txt
    mkdir -p build
    ctest_build .venv-cpu build/cpp-cpu
    # Parity, bad input and the C++ consumer prove this build; the rest is the same Python code.
    [ $# -gt 0 ] || set -- tests/test_parity.py tests/test_bad_input.py tests/test_cpp_app.py tests/test_runtime_options.py
    .venv-cpu/bin/python -m pytest "$@"
    ;;
  gpu)
    # The GPU machine's own torch (a CUDA build, any release from 2.11): no venv, nothing downloaded.
    "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'torch sees no CUDA GPU')"
    echo "== building torchbridge into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
    CMAKE_BUILD_PARALLEL_LEVEL=$JOBS "$PYTHON" -m pip install -q --no-build-isolation --no-deps .
    status=0
    "$PYTHON" -m pytest -v tests/test_cuda.py "$@" || status=$?
    "$PYTHON" benchmarks/gpu.py
    exit $status
    ;;
  *)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
