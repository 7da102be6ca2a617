// torchbridge::adaptive_avg_pool2d. ATen computes a global average pooling as a mean over H and W,
// a reduction over the outer dimensions of a channels-last input, which it runs well below memory
// speed when C is more than a few vectors wide (docs/performance.md). A channels-last image is
// H * W rows of C values: this kernel reads them in order, once, adding each row into C sums.
// Each channel's pixels are summed in the same order (in blocks of kBlockPixels, whose sums are
// then added in order) whichever thread takes it, so results do not depend on the thread count;
// the blocks keep the rounding error near that of a pairwise sum.
#include "pooling.hpp"

#include "rowwise.hpp"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define TORCHBRIDGE_POOLING_X86 1
#endif

namespace torchbridge {

namespace {

#ifdef TORCHBRIDGE_POOLING_X86
constexpr int64_t kBlockPixels = 64;

// sums[0..width) += the sum, pixel by pixel, of rows [0, pixels) of `x` (each `stride` apart).
__attribute__((target("avx2,fma"))) void add_rows_avx2(const float* x, int64_t pixels, int64_t stride,
                                                       int64_t width, float* block, float* sums) {
  std::fill_n(block, width, 0.0f);
  for (int64_t p = 0; p < pixels; ++p) {
    const float* row = x + p * stride;
    int64_t j = 0;
    for (; j + 32 <= width; j += 32) {
      _mm256_storeu_ps(block + j, _mm256_add_ps(_mm256_loadu_ps(block + j), _mm256_loadu_ps(row + j)));
      _mm256_storeu_ps(block + j + 8, _mm256_add_ps(_mm256_loadu_ps(block + j + 8), _mm256_loadu_ps(row + j + 8)));
      _mm256_storeu_ps(block + j + 16,
                       _mm256_add_ps(_mm256_loadu_ps(block + j + 16), _mm256_loadu_ps(row + j + 16)));
      _mm256_storeu_ps(block + j + 24,
                       _mm256_add_ps(_mm256_loadu_ps(block + j + 24), _mm256_loadu_ps(row + j + 24)));
    }
    for (; j + 8 <= width; j += 8)
      _mm256_storeu_ps(block + j, _mm256_add_ps(_mm256_loadu_ps(block + j), _mm256_loadu_ps(row + j)));
    for (; j < width; ++j) block[j] += row[j];
  }
  for (int64_t j = 0; j < width; ++j) sums[j] += block[j];
}
#endif

}  // namespace

at::Tensor adaptive_avg_pool2d(const at::Tensor& input, at::IntArrayRef output_size) {
#ifdef TORCHBRIDGE_POOLING_X86
  if (!rowwise_kernels_available() || output_size.size() != 2 || output_size[0] != 1 || output_size[1] != 1 ||
      input.dim() != 4 || !plain_float(input) || !input.is_contiguous(at::MemoryFormat::ChannelsLast) ||
      input.numel() == 0)
    return at::adaptive_avg_pool2d(input, output_size);
  const int64_t n = input.size(0), c = input.size(1), pixels = input.size(2) * input.size(3);
  at::Tensor out = at::empty({n, c, 1, 1}, input.options().memory_format(at::MemoryFormat::ChannelsLast));
  const float* x = input.const_data_ptr<float>();
  float* y = out.mutable_data_ptr<float>();
  // Whole images per task; where there are fewer images than threads, ranges of channels (a
  // multiple of 8) so that every thread has some.
  const int64_t threads = at::get_num_threads();
  const int64_t width = n >= threads ? c : std::max<int64_t>(8, (c / threads + 7) / 8 * 8);
  const int64_t ranges = (c + width - 1) / width;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, pixels * width));
  at::parallel_for(0, n * ranges, grain, [&](int64_t first, int64_t last) {
    std::vector<float> block(static_cast<size_t>(width)), sums(static_cast<size_t>(width));
    for (int64_t task = first; task < last; ++task) {
      const int64_t b = task / ranges, c0 = task % ranges * width, count = std::min(width, c - c0);
      std::fill_n(sums.data(), count, 0.0f);
      const float* image = x + b * pixels * c + c0;
      for (int64_t p = 0; p < pixels; p += kBlockPixels)
        add_rows_avx2(image + p * c, std::min(kBlockPixels, pixels - p), c, count, block.data(), sums.data());
      for (int64_t j = 0; j < count; ++j) y[b * c + c0 + j] = sums[j] / static_cast<float>(pixels);
    }
  });
  return out;
#else
  return at::adaptive_avg_pool2d(input, output_size);
#endif
}

}  // namespace torchbridge

TORCH_LIBRARY_FRAGMENT(torchbridge, m) {
  m.def("adaptive_avg_pool2d(Tensor self, int[2] output_size) -> Tensor");
}

TORCH_LIBRARY_IMPL(torchbridge, CPU, m) { m.impl("adaptive_avg_pool2d", torchbridge::adaptive_avg_pool2d); }
