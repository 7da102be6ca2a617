// torchbridge's GEMM for a linear layer whose weight is a constant: the weight packed once into
// panels of 16 output columns, each panel's K rows of 16 values side by side, and a 6x16 register
// tile (AVX2 and FMA) run over them. MKL and oneDNN pack the weight again on every call for a small
// input; with the packing paid once, the product of a few dozen rows runs near the core's FMA rate.
// Used for the variants' linear layers of constant weights (torchbridge::packed_linear, up to
// kPackedMaxRows rows), 1x1 convolutions (pointwise_conv) and an LSTM's input projection and, past
// kRowwiseMaxRows sequences, its steps (rowwise.cpp).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace torchbridge {

/// Output columns per packed panel.
constexpr int64_t kPackedPanel = 16;

/// Inputs of more rows go to at::linear: there ATen's GEMM, which blocks for large inputs, is as fast.
constexpr int64_t kPackedMaxRows = 1024;

/// Pixels up to which a 1x1 convolution of a channels-last input (torchbridge::pointwise_conv) runs
/// the packed GEMM: a batch of one at 224x224 has up to 112 x 112 of them. There ATen runs its
/// reference convolution (MKL's GEMM after copying the bias into the output) on one thread where
/// its kernels are AVX2, and oneDNN's where they are AVX-512; the packed GEMM, its rows split
/// between threads, measured faster than either on both CPU kinds (docs/performance.md).
constexpr int64_t kPointwiseMaxPixels = 16384;

/// A (N, K) float weight as (ceil(N / 16), K, 16): packed[p][k][j] = weight[16 p + j][k], zeros past N.
at::Tensor pack_linear_weight(const at::Tensor& weight);

/// out[m * n_out + n] = bias[n] (where given) + sum_k in[m * k_in + k] * weight[n][k], for k_in >= 1;
/// `packed` is pack_linear_weight's. One row (a matrix-vector product) runs the panels in pairs, each
/// input value broadcast once for two, split among ATen's threads by pair. Otherwise ATen's threads
/// split the rows where each gets two tiles of them (kTileRows in packed_gemm.cpp), else the output
/// columns by panel; each output is summed the same
/// way at any thread count. Only on a CPU with AVX2 and FMA
/// (rowwise_kernels_available()).
/// `recurrent`: the same weight runs again right after (an LSTM's steps), so threads split the
/// panels whatever the rows, and each keeps its share of the weight in its cache from step to step.
void packed_gemm(const float* in, const float* packed, const float* bias, float* out, int64_t rows, int64_t n_out,
                 int64_t k_in, bool recurrent = false);

}  // namespace torchbridge
