// torchbridge::encoder_layer: aten::_transformer_encoder_layer_fwd, the one operator that
// nn.TransformerEncoderLayer's inference fast path records in a trace for a whole layer, with its
// four linear layers through the packed GEMM on weights the variants' passes pack once (rowwise.cpp),
// and its layer norms, GELU and attention through the kernels of the "rowwise" variant where they
// take the shapes (ATen's elsewhere). ATen's operator runs each linear layer as MKL's GEMM on the
// weight transposed, packing it again on every call, and its attention as two batched products
// around a softmax, with copies between them.
//
// The steps are ATen's, in its order (aten/src/ATen/native/transformers/transformer.cpp): layer
// norm first where norm_first, the attention's input projection, attention per head, the output
// projection, the residual, layer norm; then the feed-forward block the same way. A mask, an input
// that is not a 3-d float tensor of embed_dim features, and a CPU without the kernels go to ATen's
// operator with the operands as given.
#include "encoder_layer.hpp"

#include "rowwise.hpp"

#include <ATen/ATen.h>
#include <torch/library.h>

namespace torchbridge {
namespace {

// Self-attention of a (batch, sequence, embed_dim) input: the input projection, attention per head,
// the output projection, each linear layer given its weight packed.
at::Tensor self_attention(const at::Tensor& x, int64_t embed_dim, int64_t num_heads, const at::Tensor& qkv_weight,
                          const at::Tensor& qkv_bias, const at::Tensor& proj_weight, const at::Tensor& proj_bias,
                          const at::Tensor& qkv_packed, const at::Tensor& proj_packed) {
  const int64_t batch = x.size(0), sequence = x.size(1), head = embed_dim / num_heads;
  const at::Tensor qkv = packed_linear(x, qkv_weight, qkv_packed, qkv_bias);  // (batch, sequence, 3 x embed_dim)
  // Query, key and value as (batch, heads, sequence, head) views of the projection: no copies.
  const auto heads = [&](int64_t i) {
    return qkv.narrow(2, i * embed_dim, embed_dim).view({batch, sequence, num_heads, head}).transpose(1, 2);
  };
  const at::Tensor attended = small_attention(heads(0), heads(1), heads(2), std::nullopt, 0.0, false, std::nullopt,
                                              false)
                                  .transpose(1, 2)
                                  .reshape({batch, sequence, embed_dim});
  return packed_linear(attended, proj_weight, proj_packed, proj_bias);
}

}  // namespace

at::Tensor encoder_layer(const at::Tensor& src, int64_t embed_dim, int64_t num_heads, const at::Tensor& qkv_weight,
                         const at::Tensor& qkv_bias, const at::Tensor& proj_weight, const at::Tensor& proj_bias,
                         bool use_gelu, bool norm_first, double eps, const at::Tensor& norm_weight_1,
                         const at::Tensor& norm_bias_1, const at::Tensor& norm_weight_2, const at::Tensor& norm_bias_2,
                         const at::Tensor& ffn_weight_1, const at::Tensor& ffn_bias_1, const at::Tensor& ffn_weight_2,
                         const at::Tensor& ffn_bias_2, const std::optional<at::Tensor>& mask,
                         std::optional<int64_t> mask_type, at::TensorList packed) {
  const bool takes = rowwise_kernels_available() && packed.size() == 4 && !(mask && mask->defined()) &&
                     plain_float(src) && src.dim() == 3 && src.numel() > 0 && embed_dim > 0 && num_heads > 0 &&
                     embed_dim % num_heads == 0 && src.size(2) == embed_dim && plain_float(qkv_weight) &&
                     qkv_weight.dim() == 2 && qkv_weight.size(0) == 3 * embed_dim;
  if (!takes)
    return at::_transformer_encoder_layer_fwd(src, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias,
                                              use_gelu, norm_first, eps, norm_weight_1, norm_bias_1, norm_weight_2,
                                              norm_bias_2, ffn_weight_1, ffn_bias_1, ffn_weight_2, ffn_bias_2, mask,
                                              mask_type);
  const auto norm = [&](const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
    return small_layer_norm(x, {embed_dim}, weight, bias, eps, true);
  };
  at::Tensor x = norm_first ? norm(src, norm_weight_1, norm_bias_1) : src;
  x = self_attention(x, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias, packed[0], packed[1]);
  x.add_(src);
  if (!norm_first) x = norm(x, norm_weight_1, norm_bias_1);
  const at::Tensor residual = x;
  if (norm_first) x = norm(x, norm_weight_2, norm_bias_2);
  x = packed_linear(x, ffn_weight_1, packed[2], ffn_bias_1);
  x = use_gelu ? small_gelu(x, "none") : x.relu_();
  x = packed_linear(x, ffn_weight_2, packed[3], ffn_bias_2);
  x.add_(residual);
  if (!norm_first) x = norm(x, norm_weight_2, norm_bias_2);
  return x;
}

std::tuple<at::Tensor, at::Tensor> multi_head_attention(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value, int64_t embed_dim, int64_t num_head,
    const at::Tensor& qkv_weight, const at::Tensor& qkv_bias, const at::Tensor& proj_weight,
    const at::Tensor& proj_bias, const std::optional<at::Tensor>& mask, bool need_weights, bool average_attn_weights,
    std::optional<int64_t> mask_type, at::TensorList packed) {
  const bool takes = rowwise_kernels_available() && packed.size() == 2 && !(mask && mask->defined()) &&
                     !need_weights && query.is_same(key) && key.is_same(value) && plain_float(query) &&
                     query.dim() == 3 && query.numel() > 0 && embed_dim > 0 && num_head > 0 &&
                     embed_dim % num_head == 0 && query.size(2) == embed_dim && plain_float(qkv_weight) &&
                     qkv_weight.dim() == 2 && qkv_weight.size(0) == 3 * embed_dim;
  if (!takes)
    return at::_native_multi_head_attention(query, key, value, embed_dim, num_head, qkv_weight, qkv_bias, proj_weight,
                                            proj_bias, mask, need_weights, average_attn_weights, mask_type);
  return {self_attention(query, embed_dim, num_head, qkv_weight, qkv_bias, proj_weight, proj_bias, packed[0],
                         packed[1]),
          at::Tensor()};
}

}  // namespace torchbridge

TORCH_LIBRARY_FRAGMENT(torchbridge, m) {
  m.def(
      "encoder_layer(Tensor src, int embed_dim, int num_heads, Tensor qkv_weight, Tensor qkv_bias, "
      "Tensor proj_weight, Tensor proj_bias, bool use_gelu, bool norm_first, float eps, Tensor norm_weight_1, "
      "Tensor norm_bias_1, Tensor norm_weight_2, Tensor norm_bias_2, Tensor ffn_weight_1, Tensor ffn_bias_1, "
      "Tensor ffn_weight_2, Tensor ffn_bias_2, Tensor? mask, int? mask_type, Tensor[] packed) -> Tensor");
  m.def(
      "multi_head_attention(Tensor query, Tensor key, Tensor value, int embed_dim, int num_head, Tensor qkv_weight, "
      "Tensor qkv_bias, Tensor proj_weight, Tensor proj_bias, Tensor? mask, bool need_weights, "
      "bool average_attn_weights, int? mask_type, Tensor[] packed) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(torchbridge, CPU, m) {
  m.impl("encoder_layer", torchbridge::encoder_layer);
  m.impl("multi_head_attention", torchbridge::multi_head_attention);
}
