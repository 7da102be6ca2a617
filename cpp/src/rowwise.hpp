// The runtime's "rowwise" variant: torchbridge's own kernels for layers run on a few rows (a batch
// of up to kRowwiseMaxRows rows or sequences), and the pass that puts them in a frozen graph (see
// rowwise.cpp). torchbridge::rowwise_linear stands for aten::linear, torchbridge::rowwise_lstm for
// aten::lstm, torchbridge::layer_norm, gelu and attention for aten's operators of those names (for
// attention scaled_dot_product_attention); each is the aten operator exactly for what its kernel
// does not take.
#pragma once

#include <ATen/ATen.h>
#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/ir/ir.h>

#include <cstdint>

namespace torchbridge {

/// torchbridge::rowwise_linear's limit (more rows, the product of all but the input's last
/// dimension, go to aten::linear), and the LSTM's for its steps through the row kernel (past it the
/// packed GEMM per step). In the variant's graph linear layers run torchbridge::packed_linear
/// (packed_gemm.hpp) at any number of rows up to kPackedMaxRows.
constexpr int64_t kRowwiseMaxRows = 16;

/// The same variant replaces aten::layer_norm, aten::gelu and aten::scaled_dot_product_attention by
/// kernels for small inputs, where ATen's fixed cost per call is most of the call (a small
/// transformer at batch 1): layer norm over the last dimension of any size; GELU up to this many
/// values; attention up to this many keys and this head size.
constexpr int64_t kSmallGeluElements = int64_t{1} << 15;
constexpr int64_t kSmallAttentionKeys = 64;
constexpr int64_t kSmallAttentionHead = 128;

/// The "channels_last" variant replaces aten::silu and aten::silu_ by torchbridge's, on float
/// tensors dense in memory in any layout (ATen's SiLU costs about twice the kernel's time per
/// value), runs 1x1 convolutions of up to kPointwiseMaxPixels pixels through the packed GEMM
/// (torchbridge::pointwise_conv), depthwise convolutions through torchbridge::depthwise_conv and
/// linear layers of constant weights through torchbridge::packed_linear.

/// Pixels up to which torchbridge::pointwise_conv runs the packed GEMM (kPointwiseMaxPixels), on
/// every CPU with the kernels.
int64_t pointwise_max_pixels();

/// A strided float CPU tensor the kernels can read (no gradient, not oneDNN's layout).
bool plain_float(const at::Tensor& t);

/// Whether this CPU runs the kernels (AVX2 and FMA, ATen not capped below AVX2); without them the
/// operators are aten's.
bool rowwise_kernels_available();

/// Whether the kernels that have an AVX-512 form run it: the CPU has AVX-512F and ATen runs its own
/// AVX-512 kernels (so ATEN_CPU_CAPABILITY=avx2 caps these as it caps ATen's).
bool avx512_kernels_available();

/// The variants' operators that other kernels compose (encoder_layer.cpp): torchbridge::packed_linear
/// (aten::linear given also the weight as pack_linear_weight packs it), layer_norm, gelu and
/// attention, each the aten operator exactly for what its kernel does not take.
at::Tensor packed_linear(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& packed,
                         const std::optional<at::Tensor>& bias);
at::Tensor small_layer_norm(const at::Tensor& input, at::IntArrayRef normalized_shape,
                            const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps,
                            bool cudnn_enable);
at::Tensor small_gelu(const at::Tensor& input, c10::string_view approximate);
at::Tensor small_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                           const std::optional<at::Tensor>& attn_mask, double dropout_p, bool is_causal,
                           std::optional<double> scale, bool enable_gqa);

/// Replaces each aten::linear of `graph` whose weight (and bias, if any) is a float constant (by
/// torchbridge::packed_linear, given the weight and its packed form as a new constant), each
/// aten::lstm whose parameters are constants (a frozen graph's), each aten::layer_norm, gelu and
/// scaled_dot_product_attention by torchbridge's operator, and each
/// aten::_transformer_encoder_layer_fwd and _native_multi_head_attention of constant weights by
/// torchbridge::encoder_layer and multi_head_attention (encoder_layer.hpp), given them packed; in any
/// block of the graph. Returns how many.
int rewrite_rowwise(torch::jit::Graph& graph);

/// Freezing leaves nn.MultiheadAttention's in_proj_weight and in_proj_bias as attributes of a
/// scripted module: in each aten::_transformer_encoder_layer_fwd and _native_multi_head_attention
/// of `module`'s forward (in any block), makes each tensor operand that is such an attribute a
/// constant of its value, so that the passes below can pack it. Returns how many operands it folded.
int fold_fused_layer_weights(torch::jit::Module& module);

/// The "channels_last" variant's pass: replaces each aten::silu and aten::silu_ of `graph` by
/// torchbridge's, each aten::adaptive_avg_pool2d by torchbridge's (pooling.hpp), each 1x1 convolution (stride 1, no padding, one group) of a constant float weight
/// by torchbridge::pointwise_conv, the packed GEMM on the channels-last input's pixels, and each
/// depthwise convolution of a constant float weight (a multiple of 8 channels, no dilation) by
/// torchbridge::depthwise_conv (depthwise.hpp), given that weight packed once, and each linear layer
/// of a float constant weight (the classifier head) by torchbridge::packed_linear and each
/// transformer encoder layer by torchbridge::encoder_layer, as rewrite_rowwise does; in any block
/// of the graph. Returns how many.
int rewrite_channels_last(torch::jit::Graph& graph);

}  // namespace torchbridge
