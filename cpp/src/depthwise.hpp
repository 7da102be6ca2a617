// torchbridge::depthwise_conv: a depthwise convolution (one filter per channel) of a channels-last
// float input, for the "channels_last" variant of depthwise CNNs (EfficientNet, MobileNet). See
// depthwise.cpp.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

namespace torchbridge {

/// A (C, 1, kh, kw) float weight as (kh, kw, C): each tap's C values side by side, as a
/// channels-last input holds a pixel's.
at::Tensor pack_depthwise_weight(const at::Tensor& weight);

/// aten::conv2d(input, weight, bias, stride, padding, [1, 1], C) for a channels-last float input of
/// C channels (C a multiple of 8) and a (C, 1, kh, kw) weight, given `packed`, the weight in
/// pack_depthwise_weight's form: torchbridge's kernel, on a CPU with AVX2 and FMA. Anything else
/// (other layouts, dtypes, shapes, a CPU without the kernel) is that at::conv2d exactly.
at::Tensor depthwise_conv(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& packed,
                          const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding);

}  // namespace torchbridge
