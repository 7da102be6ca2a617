// torchbridge::encoder_layer and multi_head_attention: a transformer encoder layer and
// self-attention (the operands of aten::_transformer_encoder_layer_fwd and
// _native_multi_head_attention) through the variants' kernels; see encoder_layer.cpp.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace torchbridge {

/// aten::_transformer_encoder_layer_fwd, given also its four weights (in_proj, out_proj, linear1,
/// linear2) as pack_linear_weight packs them: the same steps with the linear layers through the
/// packed GEMM and the attention, layer norms and GELU through the rowwise variant's kernels. A
/// mask, other inputs and a CPU without the kernels run ATen's operator.
at::Tensor encoder_layer(const at::Tensor& src, int64_t embed_dim, int64_t num_heads, const at::Tensor& qkv_weight,
                         const at::Tensor& qkv_bias, const at::Tensor& proj_weight, const at::Tensor& proj_bias,
                         bool use_gelu, bool norm_first, double eps, const at::Tensor& norm_weight_1,
                         const at::Tensor& norm_bias_1, const at::Tensor& norm_weight_2, const at::Tensor& norm_bias_2,
                         const at::Tensor& ffn_weight_1, const at::Tensor& ffn_bias_1, const at::Tensor& ffn_weight_2,
                         const at::Tensor& ffn_bias_2, const std::optional<at::Tensor>& mask,
                         std::optional<int64_t> mask_type, at::TensorList packed);

/// aten::_native_multi_head_attention (nn.MultiheadAttention's fast path), given also its two
/// weights (in_proj, out_proj) packed: self-attention (query, key and value one tensor) without
/// weights asked for or a mask runs the encoder layer's attention block; anything else ATen's.
std::tuple<at::Tensor, at::Tensor> multi_head_attention(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value, int64_t embed_dim, int64_t num_head,
    const at::Tensor& qkv_weight, const at::Tensor& qkv_bias, const at::Tensor& proj_weight,
    const at::Tensor& proj_bias, const std::optional<at::Tensor>& mask, bool need_weights, bool average_attn_weights,
    std::optional<int64_t> mask_type, at::TensorList packed);

}  // namespace torchbridge
