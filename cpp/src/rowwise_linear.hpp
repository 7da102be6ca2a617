// The runtime's "rowwise_linear" variant: torchbridge::rowwise_linear, a linear layer for inputs of
// up to kRowwiseLinearMaxRows rows, and the pass that puts it in a frozen graph (see the .cpp).
#pragma once

#include <torch/csrc/jit/ir/ir.h>

#include <cstdint>

namespace torchbridge {

/// Inputs of more rows (the product of all but the last dimension) go to at::linear.
constexpr int64_t kRowwiseLinearMaxRows = 16;

/// Whether this CPU runs the kernel (AVX2 and FMA, ATen not capped below AVX2); without it
/// torchbridge::rowwise_linear is at::linear.
bool rowwise_linear_kernel_available();

/// Replaces each aten::linear of `graph` whose weight (and bias, if any) is a float constant (a
/// frozen graph's parameters) by torchbridge::rowwise_linear; returns how many.
int rewrite_rowwise_linear(torch::jit::Graph& graph);

}  // namespace torchbridge
