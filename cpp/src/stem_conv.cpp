// torchbridge::stem_conv. A CNN's first convolution reads an image of three channels: with so few
// input channels ATen's convolution (oneDNN's, at one image) runs well below the core's
// multiply-add rate, and a channels-last variant first copies the caller's NCHW image into
// channels-last for it. This kernel reads the image in whatever layout it comes and treats the
// convolution as a GEMM whose rows are output pixels and whose K runs over the taps (ky, kx, c_in):
// the weight packed once by the graph pass into panels of 16 output channels (pack_linear_weight's
// form), and each input value broadcast straight from the image (no im2col copy), through a
// precomputed offset per tap. Six output pixels of a row by one panel at a time, twelve
// accumulators; the pixels whose taps reach into the padding run one by one, skipping those taps.
// Every output is the bias plus its taps in (ky, kx, c_in) order whichever path and thread
// computes it, so results do not depend on the thread count.
#include "stem_conv.hpp"

#include "packed_gemm.hpp"
#include "rowwise.hpp"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define TORCHBRIDGE_STEM_X86 1
#endif

namespace torchbridge {

namespace {

struct StemGeometry {
  int64_t cin, h, w, out_h, out_w, kh, kw, sh, sw, ph, pw, cout;
  int64_t sc, sy, sx;  // the input's strides (elements) between channels, rows and columns
};

#ifdef TORCHBRIDGE_STEM_X86
constexpr int64_t kStemTile = 6;

// Pixels [0, R) of a row, each `step` apart in the input, by one panel: c[r * ldc + 0..16) = init +
// sum over taps k of x0[r * step + offsets[k]] * panel[k][0..16).
template <int R>
__attribute__((target("avx2,fma"))) void stem_tile_avx2(const float* x0, int64_t step, const int64_t* offsets,
                                                        int64_t taps, const float* panel, const float* init, float* c,
                                                        int64_t ldc) {
  __m256 acc[R][2];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) acc[r][0] = _mm256_loadu_ps(init), acc[r][1] = _mm256_loadu_ps(init + 8);
  for (int64_t k = 0; k < taps; ++k) {
    const __m256 b0 = _mm256_loadu_ps(panel + k * kPackedPanel), b1 = _mm256_loadu_ps(panel + k * kPackedPanel + 8);
    const float* x = x0 + offsets[k];
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m256 v = _mm256_broadcast_ss(x + r * step);
      acc[r][0] = _mm256_fmadd_ps(v, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(v, b1, acc[r][1]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(c + r * ldc, acc[r][0]), _mm256_storeu_ps(c + r * ldc + 8, acc[r][1]);
}

using StemTile = void (*)(const float*, int64_t, const int64_t*, int64_t, const float*, const float*, float*, int64_t);
constexpr StemTile kStemTiles[kStemTile + 1] = {nullptr,           stem_tile_avx2<1>, stem_tile_avx2<2>,
                                                stem_tile_avx2<3>, stem_tile_avx2<4>, stem_tile_avx2<5>,
                                                stem_tile_avx2<6>};

// Output pixel (oh, ow) of one image by one panel, its taps in the padding skipped.
__attribute__((target("avx2,fma"))) void stem_pixel_avx2(const float* image, const StemGeometry& g, int64_t oh,
                                                         int64_t ow, const float* panel, const float* init,
                                                         float* c) {
  __m256 acc0 = _mm256_loadu_ps(init), acc1 = _mm256_loadu_ps(init + 8);
  for (int64_t ky = 0; ky < g.kh; ++ky) {
    const int64_t iy = oh * g.sh - g.ph + ky;
    if (iy < 0 || iy >= g.h) continue;
    for (int64_t kx = 0; kx < g.kw; ++kx) {
      const int64_t ix = ow * g.sw - g.pw + kx;
      if (ix < 0 || ix >= g.w) continue;
      for (int64_t ci = 0; ci < g.cin; ++ci) {
        const float* b = panel + ((ky * g.kw + kx) * g.cin + ci) * kPackedPanel;
        const __m256 v = _mm256_broadcast_ss(image + ci * g.sc + iy * g.sy + ix * g.sx);
        acc0 = _mm256_fmadd_ps(v, _mm256_loadu_ps(b), acc0);
        acc1 = _mm256_fmadd_ps(v, _mm256_loadu_ps(b + 8), acc1);
      }
    }
  }
  _mm256_storeu_ps(c, acc0);
  _mm256_storeu_ps(c + 8, acc1);
}

// Output row `oh` of one image into `out` (out_w, cout): panel by panel, the pixels whose taps all
// lie inside the image in tiles of six, the others one by one.
__attribute__((target("avx2,fma"))) void stem_row_avx2(const float* image, const float* packed, const float* bias,
                                                       float* out, const StemGeometry& g, const int64_t* offsets,
                                                       int64_t oh) {
  const int64_t taps = g.kh * g.kw * g.cin, panels = (g.cout + kPackedPanel - 1) / kPackedPanel;
  const int64_t iy0 = oh * g.sh - g.ph;
  const bool row_inside = iy0 >= 0 && iy0 + g.kh <= g.h;
  const int64_t inner_begin = std::min<int64_t>(g.out_w, (g.pw + g.sw - 1) / g.sw);
  const int64_t inner_end =
      row_inside && g.w + g.pw >= g.kw
          ? std::max<int64_t>(inner_begin, std::min<int64_t>(g.out_w, (g.w + g.pw - g.kw) / g.sw + 1))
          : inner_begin;
  alignas(32) float init[kPackedPanel];
  alignas(32) float spare[kStemTile * kPackedPanel];
  for (int64_t p = 0; p < panels; ++p) {
    const float* panel = packed + p * taps * kPackedPanel;
    const int64_t n0 = p * kPackedPanel, columns = std::min(kPackedPanel, g.cout - n0);
    for (int64_t j = 0; j < kPackedPanel; ++j) init[j] = bias && j < columns ? bias[n0 + j] : 0.0f;
    const bool full = columns == kPackedPanel;
    // Pixels [ow, ow + count) of this panel, to the output (a full panel) or through `spare`.
    const auto store = [&](int64_t ow, int64_t count, const auto& compute) {
      float* c = full ? out + ow * g.cout + n0 : spare;
      compute(c, full ? g.cout : kPackedPanel);
      if (!full)
        for (int64_t r = 0; r < count; ++r)
          std::copy_n(spare + r * kPackedPanel, columns, out + (ow + r) * g.cout + n0);
    };
    const auto one = [&](int64_t ow) {
      store(ow, 1, [&](float* c, int64_t) { stem_pixel_avx2(image, g, oh, ow, panel, init, c); });
    };
    int64_t ow = 0;
    for (; ow < inner_begin; ++ow) one(ow);
    for (; ow < inner_end;) {
      const int64_t count = std::min(kStemTile, inner_end - ow);
      const float* x0 = image + iy0 * g.sy + (ow * g.sw - g.pw) * g.sx;
      store(ow, count, [&](float* c, int64_t ldc) {
        kStemTiles[count](x0, g.sw * g.sx, offsets, taps, panel, init, c, ldc);
      });
      ow += count;
    }
    for (; ow < g.out_w; ++ow) one(ow);
  }
}
#endif

}  // namespace

at::Tensor pack_stem_weight(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 4 && weight.scalar_type() == at::kFloat,
              "pack_stem_weight: expected a (C_out, C_in, kh, kw) float weight, got ", weight.sizes(), " ",
              weight.scalar_type());
  return pack_linear_weight(weight.permute({0, 2, 3, 1}).reshape({weight.size(0), -1}).contiguous());
}

at::Tensor stem_conv(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& packed,
                     const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding) {
  const auto aten = [&] { return at::conv2d(input, weight, bias, stride, padding, {1, 1}, 1); };
#ifdef TORCHBRIDGE_STEM_X86
  const bool has_bias = bias && bias->defined();
  if (!rowwise_kernels_available() || input.dim() != 4 || weight.dim() != 4 || stride.size() != 2 ||
      padding.size() != 2 || !plain_float(input) || !plain_float(weight) || !plain_float(packed) ||
      !packed.is_contiguous() || packed.dim() != 3 || input.size(0) < 1)
    return aten();
  StemGeometry g{input.size(1), input.size(2), input.size(3), 0, 0, weight.size(2), weight.size(3), stride[0],
                 stride[1], padding[0], padding[1], weight.size(0), input.stride(1), input.stride(2), input.stride(3)};
  const int64_t taps = g.kh * g.kw * g.cin, panels = (g.cout + kPackedPanel - 1) / kPackedPanel;
  if (g.cin < 1 || g.cin > kStemMaxChannels || weight.size(1) != g.cin || g.cout < 1 ||
      packed.sizes() != at::IntArrayRef{panels, taps, kPackedPanel} || g.sh < 1 || g.sw < 1 || g.ph < 0 ||
      g.pw < 0 || g.ph >= g.kh || g.pw >= g.kw || g.h + 2 * g.ph < g.kh || g.w + 2 * g.pw < g.kw ||
      (has_bias && (!plain_float(*bias) || !bias->is_contiguous() || bias->dim() != 1 || bias->size(0) != g.cout)))
    return aten();
  g.out_h = (g.h + 2 * g.ph - g.kh) / g.sh + 1;
  g.out_w = (g.w + 2 * g.pw - g.kw) / g.sw + 1;
  std::vector<int64_t> offsets(taps);
  for (int64_t ky = 0; ky < g.kh; ++ky)
    for (int64_t kx = 0; kx < g.kw; ++kx)
      for (int64_t ci = 0; ci < g.cin; ++ci) offsets[(ky * g.kw + kx) * g.cin + ci] = ky * g.sy + kx * g.sx + ci * g.sc;
  const int64_t n = input.size(0);
  at::Tensor out = at::empty({n, g.out_h, g.out_w, g.cout}, input.options());
  const float* in_data = input.const_data_ptr<float>();
  const float* packed_data = packed.const_data_ptr<float>();
  const float* bias_data = has_bias ? bias->const_data_ptr<float>() : nullptr;
  float* out_data = out.mutable_data_ptr<float>();
  const int64_t row_work = g.out_w * panels * kPackedPanel * taps;  // multiply-adds per output row
  at::parallel_for(0, n * g.out_h, std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, row_work)),
                   [&](int64_t first, int64_t last) {
                     for (int64_t r = first; r < last; ++r) {
                       const int64_t b = r / g.out_h, oh = r % g.out_h;
                       stem_row_avx2(in_data + b * input.stride(0), packed_data, bias_data,
                                     out_data + r * g.out_w * g.cout, g, offsets.data(), oh);
                     }
                   });
  return out.permute({0, 3, 1, 2});
#else
  return aten();
#endif
}

}  // namespace torchbridge

TORCH_LIBRARY_FRAGMENT(torchbridge, m) {
  m.def("pack_stem_weight(Tensor weight) -> Tensor");
  m.def(
      "stem_conv(Tensor input, Tensor weight, Tensor packed, Tensor? bias, int[] stride, int[] padding) -> Tensor");
}

TORCH_LIBRARY_IMPL(torchbridge, CPU, m) {
  m.impl("pack_stem_weight", torchbridge::pack_stem_weight);
  m.impl("stem_conv", torchbridge::stem_conv);
}
