// torchbridge::adaptive_avg_pool2d: a CNN's global average pooling (squeeze-excite blocks, the head)
// of a channels-last float input, for the "channels_last" variant. See pooling.cpp.
#pragma once

#include <ATen/ATen.h>

namespace torchbridge {

/// aten::adaptive_avg_pool2d(input, output_size) for output_size [1, 1] and a channels-last float
/// (N, C, H, W) input: torchbridge's kernel, on a CPU with AVX2 and FMA. Anything else (another
/// output size, layout or dtype, a CPU without the kernel) is that ATen operator exactly.
at::Tensor adaptive_avg_pool2d(const at::Tensor& input, at::IntArrayRef output_size);

}  // namespace torchbridge
