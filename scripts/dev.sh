#!/usr/bin/env bash
# Set-up and the everyday jobs in one place. Each command creates the virtual environment and
# builds torchbridge on first use (a few minutes on 2 cores), then reuses both.
#
#   scripts/dev.sh pipeline [args]   the main job: train -> export -> verify in C++ -> bench -> report
#   scripts/dev.sh test              C++ tests (ctest) and the pytest suite, torch 2.14.1
#   scripts/dev.sh test-cpu          the same against torch 2.13.0+cpu, C++ built from CMAKE_PREFIX_PATH
#   scripts/dev.sh test-avx2 [tests] parity, fallback, tune, quantization, .pt2 and rowwise-kernel tests with
#                                    ATen's and oneDNN's ISA capped at AVX2 (what an AMD EPYC Zen 3 has)
#   scripts/dev.sh zoo [args]        the model zoo (benchmarks/zoo.py; --subset fast in CI) -> docs/zoo.md
#   scripts/dev.sh setup             only create .venv and build
#   scripts/dev.sh triton-setup      .venv-triton: a real tritonserver (nvidia-pytriton) for tests/test_triton.py
#   scripts/dev.sh asan              C++ tests (ctest) with ASan + UBSan (gcc), build/cpp-asan
#   scripts/dev.sh fuzz [seconds]    build the libFuzzer harnesses (clang) into build/cpp-fuzz and run
#                                    each for that long (default 60); non-zero exit on a crash
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

# .venv-triton holds the tritonserver of nvidia-pytriton (Python backend only; pytriton pins numpy<2). Its
# Python backend runs torchbridge: a .pth file appended after its own site-packages lets it import .venv's
# torch and torchbridge while its own numpy 1.x stays first. Same Python as .venv (the .pth needs that).
triton_setup() {
  if [ ! -x .venv-triton/bin/python ]; then
    echo "== creating .venv-triton"
    "$PYTHON" -m venv .venv-triton
  fi
  echo "== installing requirements-triton.txt into .venv-triton"
  .venv-triton/bin/python -m pip install -q -r requirements-triton.txt
  local main own
  main=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_path('purelib'))")
  own=$(.venv-triton/bin/python -c "import sysconfig; print(sysconfig.get_path('purelib'))")
  echo "$main" > "$own/zz_torchbridge_venv.pth"
  .venv-triton/bin/python -c "import numpy, torch, torchbridge; assert numpy.__version__ < '2', numpy.__version__"
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

# The sanitizer legs need only torch in .venv: no reinstall of the package when it is there.
venv_with_torch() {
  if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then return; fi
  setup .venv requirements-dev.txt
}

# Run-time options of the sanitized builds. LibTorch is not instrumented; each exception is
# explained in cpp/tests/sanitizers/README.md (the suppression files sit beside it).
sanitizer_env() {
  local dir=$PWD/cpp/tests/sanitizers
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1:check_initialization_order=1:detect_stack_use_after_return=1"
  export LSAN_OPTIONS="suppressions=$dir/lsan.supp:print_suppressions=0"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:suppressions=$dir/ubsan.supp"
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
  triton-setup)
    setup .venv requirements-dev.txt
    triton_setup
    ;;
  test)
    setup .venv requirements-dev.txt
    triton_setup
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
    [ $# -gt 0 ] || set -- tests/test_parity.py tests/test_fallback.py tests/test_tune.py tests/test_quantize.py tests/test_aoti.py \
      tests/test_rowwise.py  # torchbridge's own AVX2 kernels against the capped ATen
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
  asan)
    # ASan + UBSan on torchbridge's own code (library, torchbridge-run, C++ tests), gcc.
    venv_with_torch
    mkdir -p build
    torch_dir=$(.venv/bin/python -c "import os, torch; print(os.path.dirname(torch.__file__))")
    PATH="$PWD/.venv/bin:$PATH" cmake -S . -B build/cpp-asan -G Ninja -DCMAKE_PREFIX_PATH="$torch_dir" \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTORCHBRIDGE_SANITIZE=address,undefined > build/cpp-asan.configure.log \
      || { cat build/cpp-asan.configure.log; exit 1; }
    cmake --build build/cpp-asan -j "$JOBS"
    sanitizer_env
    ctest --test-dir build/cpp-asan --output-on-failure "$@"
    ;;
  fuzz)
    # scripts/dev.sh fuzz [SECONDS]: each harness of cpp/fuzz for SECONDS (default 60), one after
    # the other, from the committed seeds (cpp/fuzz/corpus/<harness>) plus what earlier runs found
    # (build/cpp-fuzz/corpus/<harness>). Crashing inputs land in build/cpp-fuzz/findings/<harness>/.
    seconds=${1:-60}
    venv_with_torch
    command -v clang++ > /dev/null || { echo "scripts/dev.sh fuzz needs clang++ with libFuzzer (apt-get install clang)"; exit 1; }
    mkdir -p build
    torch_dir=$(.venv/bin/python -c "import os, torch; print(os.path.dirname(torch.__file__))")
    PATH="$PWD/.venv/bin:$PATH" cmake -S . -B build/cpp-fuzz -G Ninja -DCMAKE_PREFIX_PATH="$torch_dir" \
      -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DTORCHBRIDGE_FUZZ=ON -DTORCHBRIDGE_TESTS=OFF -DTORCHBRIDGE_CLI=OFF > build/cpp-fuzz.configure.log \
      || { cat build/cpp-fuzz.configure.log; exit 1; }
    cmake --build build/cpp-fuzz -j "$JOBS" --target fuzz_npy fuzz_manifest fuzz_load
    sanitizer_env
    crashed=0
    for harness in fuzz_npy fuzz_manifest fuzz_load; do
      work=build/cpp-fuzz/corpus/$harness findings=build/cpp-fuzz/findings/$harness
      rm -rf "$findings"; mkdir -p "$work" "$findings"
      dict=()
      case $harness in
        fuzz_npy) dict=(-dict=cpp/fuzz/npy.dict) ;;
        fuzz_manifest) dict=(-dict=cpp/fuzz/manifest.dict) ;;
      esac
      echo "== $harness for ${seconds}s"
      status=0
      build/cpp-fuzz/cpp/fuzz/$harness -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=20 \
        -print_final_stats=1 -artifact_prefix="$findings/" "${dict[@]}" "$work" "cpp/fuzz/corpus/$harness" \
        > "build/cpp-fuzz/$harness.log" 2>&1 || status=$?
      executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "build/cpp-fuzz/$harness.log")
      speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "build/cpp-fuzz/$harness.log")
      # libFuzzer also saves inputs slower than -report_slow_units (slow-unit-*): kept, but not failures.
      crashes=$(find "$findings" -type f ! -name 'slow-unit-*' | wc -l)
      slow=$(find "$findings" -type f -name 'slow-unit-*' | wc -l)
      echo "$harness: ${executions:-?} executions, ${speed:-?}/s, exit $status, $crashes crashing input(s), $slow slow input(s) in $findings"
      if [ "$status" -ne 0 ] || [ "$crashes" -gt 0 ]; then
        crashed=1
        grep -E -A30 "^==[0-9]+==ERROR|runtime error|non-torchbridge|deadly signal|Timeout|out-of-memory" \
          "build/cpp-fuzz/$harness.log" | head -60
      fi
    done
    exit $crashed
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
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
