// torchbridge::encoder_layer: a transformer encoder layer (aten::_transformer_encoder_layer_fwd's
// operands) through the variants' kernels; see encoder_layer.cpp.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

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

}  // namespace torchbridge
