// Shared libraries loaded at run time (libraries.cpp).
#pragma once

#include <string>

#include "cuda_graphs.hpp"

namespace torchbridge {

/// The folder (with a trailing '/') of the shared library that holds `symbol`; "" if unknown.
std::string library_folder(const void* symbol);

/// The CUDA graph plugin, or nullptr with `why` when this build or LibTorch has none.
cuda::CaptureFn cuda_graph_plugin(std::string& why);

/// Loads LibTorch's `name` (libtorch_cuda.so, libtorch.so) from libtorch_cpu's folder, once per process.
void load_torch_library(const std::string& name);

}  // namespace torchbridge
