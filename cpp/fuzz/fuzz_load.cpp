// libFuzzer harness: the whole load path of torchbridge::Runtime on arbitrary bytes. The bytes are
// written to a file (the runtime loads from a path) and loaded on the CPU with warm-up off and one
// thread; an artifact that loads then runs forward on example inputs built from its manifest.
//
// Expected: torchbridge::Error from the constructor, example_inputs or forward. Anything else (a
// c10::Error or other exception escaping the runtime, a crash, a sanitizer report) is a finding.
//
// TORCHBRIDGE_FUZZ_OPTIMIZE=1 loads with optimize on (freezing, oneDNN Graph at the first call):
// closer to the default, several times slower per input.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <string>

#include "torchbridge/runtime.hpp"

namespace {

const std::string& scratch_path() {
  static const std::string path = [] {
    const char* dir = std::getenv("TMPDIR");
    return std::string(dir != nullptr && *dir != '\0' ? dir : "/tmp") + "/torchbridge-fuzz-load-" +
           std::to_string(getpid()) + ".pt";
  }();
  return path;
}

// Example inputs are allocated from the manifest's shapes: a manifest may (validly) declare
// dimensions up to 2^31 - 1, which would only test the allocator. Skip forward above this size.
constexpr int64_t kMaxInputElements = int64_t{1} << 22;

bool small_enough(const torchbridge::Manifest& manifest) {
  for (const auto& spec : manifest.inputs) {
    int64_t elements = 1;
    for (const int64_t dim : spec.shape) {
      const int64_t size = dim < 0 ? 1 : dim;
      if (size != 0 && elements > kMaxInputElements / size) return false;
      elements *= size;
    }
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = scratch_path();
  {
    std::ofstream file(path, std::ios::binary | std::ios::trunc);
    file.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
    if (!file) {
      std::fprintf(stderr, "cannot write %s\n", path.c_str());
      std::abort();
    }
  }
  torchbridge::RuntimeOptions options;
  options.threads = 1;
  options.warmup_runs = 0;
  static const bool optimize = [] {
    const char* value = std::getenv("TORCHBRIDGE_FUZZ_OPTIMIZE");
    return value != nullptr && std::string(value) == "1";
  }();
  options.optimize = optimize;
  try {
    torchbridge::Runtime runtime(path, options);
    (void)runtime.optimization();
    if (runtime.manifest().present && small_enough(runtime.manifest())) {
      const std::vector<at::Tensor> inputs = runtime.example_inputs(2);
      (void)runtime.forward(inputs);
      if (!runtime.golden_inputs().empty()) (void)runtime.selftest();
    }
  } catch (const torchbridge::Error&) {
    return 0;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "the runtime let a non-torchbridge exception escape: %s\n", error.what());
    std::abort();
  }
  return 0;
}
