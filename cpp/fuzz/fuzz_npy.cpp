// libFuzzer harness: torchbridge::parse_npy on arbitrary bytes (the .npy reader behind read_npy,
// torchbridge-run --input and the golden records of every artifact).
//
// Expected: a tensor, or torchbridge::Error. Anything else (another exception type, a crash, a
// sanitizer report) is a finding. A parsed tensor must also survive a round trip through
// to_npy_bytes unchanged.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "internal.hpp"
#include "torchbridge/runtime.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  at::Tensor tensor;
  try {
    tensor = torchbridge::parse_npy(bytes, "fuzz.npy");
  } catch (const torchbridge::Error&) {
    return 0;  // a refusal, as documented
  } catch (const std::exception& error) {
    std::fprintf(stderr, "parse_npy threw a non-torchbridge exception: %s\n", error.what());
    std::abort();
  }
  try {
    const std::string written = torchbridge::to_npy_bytes(tensor);
    const at::Tensor again = torchbridge::parse_npy(written, "roundtrip.npy");
    if (torchbridge::to_npy_bytes(again) != written || again.sizes() != tensor.sizes() ||
        again.scalar_type() != tensor.scalar_type()) {
      std::fprintf(stderr, "round trip through to_npy_bytes changed the tensor\n");
      std::abort();
    }
  } catch (const std::exception& error) {
    std::fprintf(stderr, "round trip of a parsed tensor failed: %s\n", error.what());
    std::abort();
  }
  return 0;
}
