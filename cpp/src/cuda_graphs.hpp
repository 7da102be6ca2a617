// CUDA graphs for the TorchScript backend on a CUDA device. The capture code needs the CUDA
// runtime headers and libtorch_cuda, which a CPU-capable build must not depend on, so it lives in a
// plugin, libtorchbridge_cuda.so (cuda_graphs.cpp), built beside libtorchbridge when the LibTorch is a
// CUDA build and CUDA headers are found, and loaded by the runtime on the first CUDA device.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <vector>

namespace torchbridge::cuda {

using Forward = std::function<std::vector<at::Tensor>(const std::vector<at::Tensor>&)>;

/// A forward captured once at one set of input shapes and replayed: one graph launch instead of one
/// launch per kernel.
class Graph {
 public:
  virtual ~Graph() = default;
  /// Copies `inputs` (the shapes of the capture, on its device) into the graph's own input tensors,
  /// replays it on the current stream and returns copies of its outputs. Serialized per graph.
  virtual std::vector<at::Tensor> replay(const std::vector<at::Tensor>& inputs) = 0;
};

/// The plugin's entry point (extern "C", symbol kCaptureSymbol): runs `forward` warmup_runs times on
/// copies of `inputs` (cuDNN picks its algorithms, the profiling executor optimizes), then captures
/// one more run. Throws what the forward or the capture throws (for example a model that synchronizes
/// with the host, such as a branch on a tensor's value). The graph keeps `forward` alive.
using CaptureFn = Graph* (*)(const Forward& forward, const std::vector<at::Tensor>& inputs, int warmup_runs);
constexpr char kCaptureSymbol[] = "torchbridge_cuda_graph_capture";
constexpr char kPluginFile[] = "libtorchbridge_cuda.so";

}  // namespace torchbridge::cuda
