// libFuzzer harness: torchbridge::parse_manifest (cpp/src/manifest.cpp, with the strict JSON reader
// of cpp/src/json.cpp) on arbitrary text, as the runtime reads extra/torchbridge/manifest.json.
//
// Expected: a parsed manifest, or torchbridge::Error(kArtifact). Anything else is a finding.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "manifest.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const torchbridge::ParsedManifest parsed = torchbridge::parse_manifest(text, "fuzz");
    // What the runtime does next with a manifest it accepted: print the specs.
    for (const auto& spec : parsed.manifest.inputs) (void)spec.to_string();
    for (const auto& spec : parsed.manifest.outputs) (void)spec.to_string();
    if (parsed.golden_inputs.size() > parsed.manifest.inputs.size() ||
        parsed.golden_outputs.size() > parsed.manifest.outputs.size()) {
      std::fprintf(stderr, "more golden records than specs\n");
      std::abort();
    }
  } catch (const torchbridge::Error& error) {
    if (error.code() != torchbridge::ErrorCode::kArtifact) {
      std::fprintf(stderr, "parse_manifest threw Error with code %d: %s\n", static_cast<int>(error.code()), error.what());
      std::abort();
    }
  } catch (const std::exception& error) {
    std::fprintf(stderr, "parse_manifest threw a non-torchbridge exception: %s\n", error.what());
    std::abort();
  }
  return 0;
}
