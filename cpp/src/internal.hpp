// What the library's own programs (bindings, tests, fuzz harnesses) use beyond the public header:
// reached through a PRIVATE include of cpp/src, never installed.
#pragma once

#include <string>

#include "torchbridge/runtime.hpp"

namespace torchbridge {

/// Input shapes (all inputs' sizes together) a float TorchScript model gets oneDNN Graph kernels
/// for, in the order they are first seen; the runtime's warm-up takes the golden batch and batch 1.
constexpr int kFusedShapes = 8;

/// Input shapes at which an optimized TorchScript model's variant is chosen (and checked against the
/// module as loaded) on the first call; calls at further shapes run the module as loaded.
constexpr int kCheckedShapes = 1024;

/// Input shapes a float TorchScript model on a CUDA device gets a CUDA graph for (captured on the
/// first call at each shape, replayed afterwards); other shapes run without one.
constexpr int kCudaGraphShapes = 8;

/// oneDNN Graph fusion is a TorchScript graph pass. While a OneDnnFusionScope lives, the graphs the
/// profiling executor optimizes in this thread are fused; other threads are not affected. The runtime
/// opens one around the first calls of each new input shape; torchbridge's Python mirror of the
/// runtime (mirror.RuntimeMirror) opens the same scope to run the same graphs.
class OneDnnFusionScope {
 public:
  OneDnnFusionScope();
  ~OneDnnFusionScope();
  OneDnnFusionScope(const OneDnnFusionScope&) = delete;
  OneDnnFusionScope& operator=(const OneDnnFusionScope&) = delete;
};

/// The operators in the TorchScript archive at `path` that choose by comparing values (topk, sort,
/// argmax, nonzero, NMS, ...), comma-separated, "" when none: such a model runs as loaded whatever
/// the options ask (a faster variant's rounding can change what it selects).
std::string selecting_ops_in(const std::string& path);

/// The .npy reader and writer behind read_npy/write_npy, on bytes in memory; `what` names the
/// source in error messages.
at::Tensor parse_npy(const std::string& bytes, const std::string& what);
std::string to_npy_bytes(const at::Tensor& tensor);

}  // namespace torchbridge
