// The runtime's "rowwise" variant: torchbridge's own kernels for layers run on a few rows (a batch
// of up to kRowwiseMaxRows rows or sequences), and the pass that puts them in a frozen graph (see
// rowwise.cpp). torchbridge::rowwise_linear stands for aten::linear, torchbridge::rowwise_lstm for
// aten::lstm; each is the aten operator exactly for what its kernel does not take.
#pragma once

#include <torch/csrc/jit/ir/ir.h>

#include <cstdint>

namespace torchbridge {

/// Inputs of more rows (the product of all but a linear input's last dimension; an LSTM's batch)
/// go to the aten operator.
constexpr int64_t kRowwiseMaxRows = 16;

/// Whether this CPU runs the kernels (AVX2 and FMA, ATen not capped below AVX2); without them the
/// operators are aten's.
bool rowwise_kernels_available();

/// Replaces each aten::linear of `graph` whose weight (and bias, if any) is a float constant, and
/// each aten::lstm whose parameters are constants (a frozen graph's), by torchbridge's operator;
/// returns how many.
int rewrite_rowwise(torch::jit::Graph& graph);

}  // namespace torchbridge
