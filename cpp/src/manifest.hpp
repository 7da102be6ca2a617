// The artifact manifest (extra/torchbridge/manifest.json), parsed once, in C++, for both front ends:
// every field is type- and range-checked here, and the Python side reads the manifest from the
// runtime, so torchbridge-run and the bindings accept and refuse the same files.
#pragma once

#include <string>
#include <vector>

#include "json.hpp"
#include "torchbridge/runtime.hpp"

namespace torchbridge {

/// Bounds a manifest number must respect.
constexpr int64_t kMaxManifestDim = (int64_t{1} << 31) - 1;
constexpr int64_t kMaxOptimizeFromBatch = 1024;

struct ParsedManifest {
  Manifest manifest;
  json::Value root;
  std::vector<std::string> golden_inputs;   // record names, one per input
  std::vector<std::string> golden_outputs;  // one per output
  bool sealed = false;                      // the archive must carry the SHA-256 digest record
  /// TorchScript: batches of this size or more run the module optimized at load, smaller ones the
  /// module as loaded (export measures both; 0: never optimized, 1: always, the default).
  int64_t optimize_from_batch = 1;
  /// TorchScript: false when export found that a runtime pass crashes LibTorch on this model (a
  /// crash cannot be caught and fallen back from inside the process): fuse drops oneDNN Graph
  /// fusion, optimize every pass, whatever the RuntimeOptions ask.
  bool fuse = true;
  bool optimize = true;
  /// TorchScript on the CPU in fp32: the runtime's variants in the order export measured them, fastest
  /// first ("onednn_graph", "optimize_for_inference", "channels_last", "frozen", "as_loaded"); the
  /// runtime tries them in this order at each input shape, and those after "as_loaded" not at all.
  /// Empty: the runtime's own order. Names this runtime does not know are skipped.
  std::vector<std::string> variants;
  /// runtime.large_batches {"from": N, "variants": [...]}: from batch N on (N >= 2) the order is
  /// `large_batch_variants` instead, measured at a large batch (empty: the module as loaded there).
  /// 0: one order for every batch.
  int64_t large_batches_from = 0;
  std::vector<std::string> large_batch_variants;
};

/// Parses and checks `text`; throws Error(kArtifact) "<path>: bad torchbridge manifest: <what>".
ParsedManifest parse_manifest(const std::string& text, const std::string& path);

}  // namespace torchbridge
