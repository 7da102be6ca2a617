// torchbridge::stem_conv: the first convolution of a CNN (a few input channels: an image's three),
// for the "channels_last" variant. See stem_conv.cpp.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

namespace torchbridge {

/// Input channels up to which a convolution is a stem convolution.
constexpr int64_t kStemMaxChannels = 4;

/// Taps (kh x kw x C_in) up to which the channels-last pass gives a stem convolution to stem_conv: a
/// 3x3 kernel over an image's channels. A 7x7 one (ResNet's, 147 taps) runs faster in oneDNN.
constexpr int64_t kStemMaxTaps = 36;

/// A (C_out, C_in, kh, kw) float weight as pack_linear_weight packs a (C_out, kh kw C_in) matrix
/// whose columns run over the taps in (ky, kx, c_in) order.
at::Tensor pack_stem_weight(const at::Tensor& weight);

/// aten::conv2d(input, weight, bias, stride, padding, [1, 1], 1) for a float input of up to
/// kStemMaxChannels channels in any layout, given `packed` (pack_stem_weight's); the output
/// channels-last. torchbridge's kernel on a CPU with AVX2 and FMA; anything else (other dtypes,
/// shapes, a CPU without the kernel) is that at::conv2d exactly.
at::Tensor stem_conv(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& packed,
                     const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding);

}  // namespace torchbridge
