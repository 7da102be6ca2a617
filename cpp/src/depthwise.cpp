// torchbridge::depthwise_conv. ATen runs a channels-last depthwise convolution through oneDNN,
// which reorders the weight into its blocked layout and sets up its primitive on every call; on the
// small images of a depthwise CNN at batch 1 that fixed work is a large part of each call. This
// kernel reads the weight packed once by the graph pass (each tap's channels side by side, as a
// pixel's are in the input) and computes each output row from the input rows it covers: 16 channels
// (two AVX2 vectors) of four neighbouring output pixels at a time, each weight tap loaded once for
// the four; at stride 1 with 3 or 5 tap columns, 8 channels of eight pixels, each input column
// loaded once for the taps that read it (16 channels in AVX-512, where ATen runs its AVX-512
// kernels). Groups whose taps all fall inside the image run without bounds checks; the columns at
// an edge run one by one, skipping the taps in the padding, or, on an image with fewer than four
// inner columns, in groups of four where each pixel checks each tap column. A small image with 5
// tap columns at stride 1 runs padded instead (runs_padded), every pixel through the stride-1
// tiles. An input too large to stay in the caches between layers (a
// batch of 32) comes from memory, where the core's prefetchers, following a few rows read
// piecewise, keep too little in flight: each group of output pixels then also asks for the part
// of the input rows that the next output row adds (kPrefetchInputBytes). Every output is the bias
// plus its taps in row-major tap order, whichever path and thread computes it, so results do not
// depend on the thread count.
#include "depthwise.hpp"

#include "rowwise.hpp"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define TORCHBRIDGE_DEPTHWISE_X86 1
#endif

namespace torchbridge {

namespace {

// Inputs of more bytes than this are taken to come from memory, not from a cache (the largest
// input at batch 1 of the depthwise CNNs in the zoo is about 4.8 MB, at batch 32 these are 7 MB to
// 150 MB); under it the prefetches only cost.
constexpr int64_t kPrefetchInputBytes = int64_t{8} << 20;

struct Geometry {
  int64_t h, w, c, out_h, out_w, kh, kw, sh, sw, ph, pw;
  bool avx512 = false;  // avx512_kernels_available()
};

#ifdef TORCHBRIDGE_DEPTHWISE_X86
// Output pixels [ow, ow + T) of one output row, channels [c0, c0 + 8 V), tap rows [i_begin, i_end)
// (those inside the image). `image` is the (h, w, c) input of one image, `ih0` the input row of tap
// row 0; `out` the output row, (out_w, c). Edge: some of the pixels' taps fall outside the image's
// columns, and each pixel skips its own; otherwise every tap column is inside for all of them.
template <int V, int T, bool Edge>
__attribute__((target("avx2,fma"), always_inline)) inline void tile_avx2(const float* image, const float* packed,
                                                                        const float* bias, float* out,
                                                                        const Geometry& g, int64_t ih0, int64_t ow,
                                                                        int64_t c0, int64_t i_begin, int64_t i_end) {
  __m256 acc[T][V];
#pragma GCC unroll 2
  for (int v = 0; v < V; ++v) {
    const __m256 start = bias ? _mm256_loadu_ps(bias + c0 + 8 * v) : _mm256_setzero_ps();
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[t][v] = start;
  }
  const int64_t pixel_step = g.sw * g.c;  // between neighbouring output pixels' inputs
  const int64_t iw0 = ow * g.sw - g.pw;   // the input column of pixel 0's tap column 0
  // The tap columns inside the image for some pixel: from pixel T-1's first to pixel 0's last.
  const int64_t j_begin = Edge ? std::max<int64_t>(0, -(iw0 + (T - 1) * g.sw)) : 0;
  const int64_t j_end = Edge ? std::min<int64_t>(g.kw, g.w - iw0) : g.kw;
  for (int64_t i = i_begin; i < i_end; ++i) {
    const float* row = image + (ih0 + i) * g.w * g.c + iw0 * g.c + c0;
    const float* taps = packed + i * g.kw * g.c + c0;
    for (int64_t j = j_begin; j < j_end; ++j) {
      const float* x = row + j * g.c;
      const float* tap = taps + j * g.c;
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) {
        const __m256 weight = _mm256_loadu_ps(tap + 8 * v);
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          if constexpr (Edge && T > 1) {
            const int64_t column = iw0 + t * g.sw + j;
            if (column < 0 || column >= g.w) continue;
          }
          acc[t][v] = _mm256_fmadd_ps(_mm256_loadu_ps(x + t * pixel_step + 8 * v), weight, acc[t][v]);
        }
      }
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t)
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) _mm256_storeu_ps(out + (ow + t) * g.c + c0 + 8 * v, acc[t][v]);
}

// Whether tile_stride1_avx2 takes this convolution's inner pixels: stride 1, 3 or 5 tap columns.
inline bool stride1_tiles(const Geometry& g) { return g.sw == 1 && (g.kw == 3 || g.kw == 5); }

// Where a stride-1 tile reads and writes: `in` is the input of its first tap row at its first
// pixel's tap column 0 and its first channel, `rows` tap rows of `in_row` floats apart, pixels
// `in_pixel` apart; `taps` the packed weight of its first tap row and channel (tap columns `c`
// apart, tap rows KW c); `bias` (or null) and `out` at its first channel and pixel, output pixels
// `c` apart.
struct Stride1 {
  const float* in;
  int64_t in_row, in_pixel;
  const float* taps;
  const float* bias;
  float* out;
  int64_t c, rows;
};

// tile_avx2<1, T, false> for stride 1 and KW tap columns: neighbouring pixels share input columns
// (pixel t's tap j reads column t + j), so each tap row loads its T + KW - 1 input columns and its
// KW weights once, not T x KW inputs. Each output still adds its taps in row-major order.
template <int T, int KW>
__attribute__((target("avx2,fma"), always_inline)) inline void tile_stride1_avx2(const Stride1& a) {
  __m256 acc[T];
  const __m256 start = a.bias ? _mm256_loadu_ps(a.bias) : _mm256_setzero_ps();
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) acc[t] = start;
  for (int64_t i = 0; i < a.rows; ++i) {
    const float* row = a.in + i * a.in_row;
    const float* taps = a.taps + i * KW * a.c;
    __m256 weight[KW];
#pragma GCC unroll 8
    for (int j = 0; j < KW; ++j) weight[j] = _mm256_loadu_ps(taps + j * a.c);
#pragma GCC unroll 16
    for (int column = 0; column < T + KW - 1; ++column) {
      const __m256 x = _mm256_loadu_ps(row + column * a.in_pixel);
      // Pixel t = column - j; j rising, so each pixel's taps come in order.
#pragma GCC unroll 8
      for (int j = KW - 1; j >= 0; --j) {
        const int t = column - j;
        if (t >= 0 && t < T) acc[t] = _mm256_fmadd_ps(x, weight[j], acc[t]);
      }
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) _mm256_storeu_ps(a.out + t * a.c, acc[t]);
}

// tile_stride1_avx2 in AVX-512: 16 channels (`mask`: those of them that exist) in each register.
// The same sums in the same order, so the same bits; but with twice the values per instruction,
// each accumulator's chain of dependent multiply-adds (a pixel's taps, in order) no longer sets
// the pace where the CPU runs fewer AVX-512 multiply-adds per cycle than AVX2 ones (AMD Zen 4).
template <int T, int KW>
__attribute__((target("avx512f"), always_inline)) inline void tile_stride1_avx512(const Stride1& a,
                                                                                  __mmask16 mask) {
  __m512 acc[T];
  const __m512 start = a.bias ? _mm512_maskz_loadu_ps(mask, a.bias) : _mm512_setzero_ps();
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) acc[t] = start;
  for (int64_t i = 0; i < a.rows; ++i) {
    const float* row = a.in + i * a.in_row;
    const float* taps = a.taps + i * KW * a.c;
    __m512 weight[KW];
#pragma GCC unroll 8
    for (int j = 0; j < KW; ++j) weight[j] = _mm512_maskz_loadu_ps(mask, taps + j * a.c);
#pragma GCC unroll 16
    for (int column = 0; column < T + KW - 1; ++column) {
      const __m512 x = _mm512_maskz_loadu_ps(mask, row + column * a.in_pixel);
#pragma GCC unroll 8
      for (int j = KW - 1; j >= 0; --j) {
        const int t = column - j;
        if (t >= 0 && t < T) acc[t] = _mm512_fmadd_ps(x, weight[j], acc[t]);
      }
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) _mm512_mask_storeu_ps(a.out + t * a.c, mask, acc[t]);
}

// The tile at image pixel (ih0 + i_begin, ow), channel c0, of an unpadded channels-last image.
inline Stride1 stride1_at(const float* image, const float* packed, const float* bias, float* out, const Geometry& g,
                          int64_t ih0, int64_t ow, int64_t c0, int64_t i_begin, int64_t i_end) {
  return {image + (ih0 + i_begin) * g.w * g.c + (ow - g.pw) * g.c + c0,
          g.w * g.c,
          g.c,
          packed + i_begin * g.kw * g.c + c0,
          bias ? bias + c0 : nullptr,
          out + ow * g.c + c0,
          g.c,
          i_end - i_begin};
}

inline __mmask16 channel_mask(int64_t left) {
  return left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
}

// Output pixels [ow, ow + T) of one output row, all channels, by tile_stride1_avx512.
template <int T>
__attribute__((target("avx512f"))) void stride1_pixels_avx512(const float* image, const float* packed,
                                                              const float* bias, float* out, const Geometry& g,
                                                              int64_t ih0, int64_t ow, int64_t i_begin,
                                                              int64_t i_end) {
  for (int64_t c0 = 0; c0 < g.c; c0 += 16) {
    const Stride1 a = stride1_at(image, packed, bias, out, g, ih0, ow, c0, i_begin, i_end);
    if (g.kw == 3) tile_stride1_avx512<T, 3>(a, channel_mask(g.c - c0));
    else tile_stride1_avx512<T, 5>(a, channel_mask(g.c - c0));
  }
}

// Output pixels [ow, ow + T) of one output row, all channels: 16 at a time, the last 8 alone (8 at
// a time at stride 1 with 3 or 5 tap columns, or 16 in AVX-512).
template <int T, bool Edge>
__attribute__((target("avx2,fma"))) inline void pixels_avx2(const float* image, const float* packed,
                                                            const float* bias, float* out, const Geometry& g,
                                                            int64_t ih0, int64_t ow, int64_t i_begin, int64_t i_end) {
  if constexpr (!Edge && T > 1) {
    if (stride1_tiles(g)) {
      if (g.avx512) return stride1_pixels_avx512<T>(image, packed, bias, out, g, ih0, ow, i_begin, i_end);
      for (int64_t c0 = 0; c0 < g.c; c0 += 8) {
        const Stride1 a = stride1_at(image, packed, bias, out, g, ih0, ow, c0, i_begin, i_end);
        if (g.kw == 3) tile_stride1_avx2<T, 3>(a);
        else tile_stride1_avx2<T, 5>(a);
      }
      return;
    }
  }
  int64_t c0 = 0;
  for (; c0 + 16 <= g.c; c0 += 16) tile_avx2<2, T, Edge>(image, packed, bias, out, g, ih0, ow, c0, i_begin, i_end);
  if (c0 < g.c) tile_avx2<1, T, Edge>(image, packed, bias, out, g, ih0, ow, c0, i_begin, i_end);
}

// Output pixels [ow, ow + count), 1 <= count <= 7, in one tile: pixels_avx2<count, Edge>.
template <bool Edge>
__attribute__((target("avx2,fma"))) void some_pixels_avx2(int64_t count, const float* image, const float* packed,
                                                          const float* bias, float* out, const Geometry& g,
                                                          int64_t ih0, int64_t ow, int64_t i_begin, int64_t i_end) {
  switch (count) {
    case 7: return pixels_avx2<7, Edge>(image, packed, bias, out, g, ih0, ow, i_begin, i_end);
    case 6: return pixels_avx2<6, Edge>(image, packed, bias, out, g, ih0, ow, i_begin, i_end);
    case 5: return pixels_avx2<5, Edge>(image, packed, bias, out, g, ih0, ow, i_begin, i_end);
    case 4: return pixels_avx2<4, Edge>(image, packed, bias, out, g, ih0, ow, i_begin, i_end);
    case 3: return pixels_avx2<3, Edge>(image, packed, bias, out, g, ih0, ow, i_begin, i_end);
    case 2: return pixels_avx2<2, Edge>(image, packed, bias, out, g, ih0, ow, i_begin, i_end);
    default: return pixels_avx2<1, Edge>(image, packed, bias, out, g, ih0, ow, i_begin, i_end);
  }
}

// Output row `oh` of one image, (out_w, c) at `out`, in groups of output pixels. With `prefetch`,
// while it computes each group it asks for the input rows the next output row adds, over the
// columns that group reads, into the core's L2.
__attribute__((target("avx2,fma"))) void row_avx2(const float* image, const float* packed, const float* bias,
                                                  float* out, const Geometry& g, int64_t oh, bool prefetch) {
  constexpr int64_t T = 4;
  const int64_t ih0 = oh * g.sh - g.ph;
  const int64_t i_begin = std::max<int64_t>(0, -ih0), i_end = std::min<int64_t>(g.kh, g.h - ih0);
  // Output columns whose taps all lie inside the image: [inner_begin, inner_end).
  const int64_t inner_begin = std::min<int64_t>(g.out_w, (g.pw + g.sw - 1) / g.sw);
  const int64_t inner_end =
      g.w + g.pw < g.kw ? inner_begin
                        : std::max<int64_t>(inner_begin, std::min<int64_t>(g.out_w, (g.w + g.pw - g.kw) / g.sw + 1));
  const int64_t new_rows = prefetch && oh + 1 < g.out_h ? std::min<int64_t>(g.sh, g.h - (ih0 + g.kh)) : 0;
  const float* next_rows = new_rows > 0 ? image + (ih0 + g.kh) * g.w * g.c : image;
  // The columns left of the inner ones one by one, the inner ones in groups of eight (`wide`; the
  // last few in one group) or four, the rest (a few inner ones, those right of them) one by one.
  // A pixel alone runs only its taps inside the image; in a group, each pixel checks each tap
  // column, which costs more than it saves unless most columns are at an edge: where fewer than
  // four are inner, groups of up to four from the first column.
  // `ask` must be inlined: as a function of its own, GCC finds it free of side effects (a prefetch
  // is none to it) and drops every call, so the kernel ran without its prefetches.
  const auto ask = [&](int64_t ow, int64_t count) __attribute__((always_inline)) {
    const int64_t from = std::max<int64_t>(0, ow * g.sw - g.pw) * g.c;
    const int64_t to = std::min<int64_t>(g.w, (ow + count) * g.sw - g.pw + g.kw) * g.c;
    for (int64_t r = 0; r < new_rows; ++r)
      for (int64_t f = from; f < to; f += 16)  // a cache line of 16 floats
        _mm_prefetch(reinterpret_cast<const char*>(next_rows + r * g.w * g.c + f), _MM_HINT_T1);
  };
  int64_t ow = 0;
  if (inner_end - inner_begin < T) {  // a small image: groups of four from the first column
    for (int64_t count; ow < g.out_w; ow += count) {
      count = std::min(T, g.out_w - ow);
      if (new_rows > 0) ask(ow, count);
      some_pixels_avx2<true>(count, image, packed, bias, out, g, ih0, ow, i_begin, i_end);
    }
    return;
  }
  const bool wide = stride1_tiles(g);  // tile_stride1_avx2 takes eight pixels
  for (; ow < g.out_w;) {
    if (new_rows > 0) ask(ow, ow >= inner_begin && ow + T <= inner_end ? (wide ? 2 * T : T) : 1);
    if (ow < inner_begin || ow >= inner_end) {
      pixels_avx2<1, true>(image, packed, bias, out, g, ih0, ow, i_begin, i_end);
      ++ow;
    } else if (wide && ow + 2 * T <= inner_end) {
      pixels_avx2<2 * T, false>(image, packed, bias, out, g, ih0, ow, i_begin, i_end);
      ow += 2 * T;
    } else if (wide && ow + 2 <= inner_end) {  // the last 2 to 7 inner columns, in one tile
      const int64_t count = inner_end - ow;
      some_pixels_avx2<false>(count, image, packed, bias, out, g, ih0, ow, i_begin, i_end);
      ow += count;
    } else if (ow + T <= inner_end) {
      pixels_avx2<T, false>(image, packed, bias, out, g, ih0, ow, i_begin, i_end);
      ow += T;
    } else {
      pixels_avx2<1, false>(image, packed, bias, out, g, ih0, ow, i_begin, i_end);
      ++ow;
    }
  }
}

// Images whose padded form has at most this many pixels run padded (runs_padded): a block of 16
// channels of it, 25.6 KB, stays in L1 while its output is computed.
constexpr int64_t kPaddedMaxPixels = 400;

// A stride-1 convolution with 5 tap columns of a small image (EfficientNet's and MobileNetV3's 7x7
// and 14x14). There a large share of the pixels are at an edge, where the row-wise path checks tap
// by tap, and fewer than eight are inner on a 7x7 image; instead each block of channels is copied
// into the middle of a zero-bordered image and all its pixels run the stride-1 tiles. The taps in
// the border add zero: the same sums as the row-wise path (the graph pass takes only finite
// weights, so a zero input times a weight stays zero). With 3 tap columns the copy costs more than
// the edges.
inline bool runs_padded(const Geometry& g) {
  return g.sh == 1 && g.sw == 1 && g.kw == 5 && (g.h + 2 * g.ph) * (g.w + 2 * g.pw) <= kPaddedMaxPixels;
}

// One output row of a padded block, from `a`'s pixel 0: tiles of eight pixels, then the rest in one.
template <int KW>
__attribute__((target("avx2,fma"))) void padded_row_avx2(Stride1 a, int64_t out_w) {
  int64_t ow = 0;
  for (; ow + 8 <= out_w; ow += 8, a.in += 8 * a.in_pixel, a.out += 8 * a.c) tile_stride1_avx2<8, KW>(a);
  switch (out_w - ow) {
    case 7: return tile_stride1_avx2<7, KW>(a);
    case 6: return tile_stride1_avx2<6, KW>(a);
    case 5: return tile_stride1_avx2<5, KW>(a);
    case 4: return tile_stride1_avx2<4, KW>(a);
    case 3: return tile_stride1_avx2<3, KW>(a);
    case 2: return tile_stride1_avx2<2, KW>(a);
    case 1: return tile_stride1_avx2<1, KW>(a);
    default: return;
  }
}

template <int KW>
__attribute__((target("avx512f"))) void padded_row_avx512(Stride1 a, int64_t out_w, __mmask16 mask) {
  int64_t ow = 0;
  for (; ow + 8 <= out_w; ow += 8, a.in += 8 * a.in_pixel, a.out += 8 * a.c) tile_stride1_avx512<8, KW>(a, mask);
  switch (out_w - ow) {
    case 7: return tile_stride1_avx512<7, KW>(a, mask);
    case 6: return tile_stride1_avx512<6, KW>(a, mask);
    case 5: return tile_stride1_avx512<5, KW>(a, mask);
    case 4: return tile_stride1_avx512<4, KW>(a, mask);
    case 3: return tile_stride1_avx512<3, KW>(a, mask);
    case 2: return tile_stride1_avx512<2, KW>(a, mask);
    case 1: return tile_stride1_avx512<1, KW>(a, mask);
    default: return;
  }
}

// The first output row's tile of a padded block of `block` channels at `buf`, starting at channel c0.
inline Stride1 padded_at(const float* buf, int64_t block, const float* packed, const float* bias, float* out,
                         const Geometry& g, int64_t c0) {
  const int64_t wp = g.w + 2 * g.pw;
  return {buf, wp * block, block, packed + c0, bias ? bias + c0 : nullptr, out + c0, g.c, g.kh};
}

// Channels [c0, c0 + 8) of one image (`image`, (h, w, c); `out`, (out_h, out_w, c)), through `buf`,
// a (h + 2 ph, w + 2 pw, 8) image whose border is zero: the block is copied into its middle.
__attribute__((target("avx2,fma"))) void padded_block_avx2(const float* image, const float* packed,
                                                           const float* bias, float* out, const Geometry& g,
                                                           int64_t c0, float* buf) {
  constexpr int64_t B = 8;
  const int64_t wp = g.w + 2 * g.pw;
  for (int64_t y = 0; y < g.h; ++y)
    for (int64_t x = 0; x < g.w; ++x)
      _mm256_storeu_ps(buf + ((y + g.ph) * wp + x + g.pw) * B, _mm256_loadu_ps(image + (y * g.w + x) * g.c + c0));
  Stride1 a = padded_at(buf, B, packed, bias, out, g, c0);
  for (int64_t oh = 0; oh < g.out_h; ++oh, a.in += a.in_row, a.out += g.out_w * g.c) {
    padded_row_avx2<5>(a, g.out_w);
  }
}

// padded_block_avx2 for 16 channels (the last block: 8 or 16) in AVX-512; `buf` has 16 a pixel.
__attribute__((target("avx512f"))) void padded_block_avx512(const float* image, const float* packed,
                                                            const float* bias, float* out, const Geometry& g,
                                                            int64_t c0, float* buf) {
  constexpr int64_t B = 16;
  const __mmask16 mask = channel_mask(g.c - c0);
  const int64_t wp = g.w + 2 * g.pw;
  for (int64_t y = 0; y < g.h; ++y)
    for (int64_t x = 0; x < g.w; ++x)
      _mm512_storeu_ps(buf + ((y + g.ph) * wp + x + g.pw) * B,
                       _mm512_maskz_loadu_ps(mask, image + (y * g.w + x) * g.c + c0));
  Stride1 a = padded_at(buf, B, packed, bias, out, g, c0);
  for (int64_t oh = 0; oh < g.out_h; ++oh, a.in += a.in_row, a.out += g.out_w * g.c) {
    padded_row_avx512<5>(a, g.out_w, mask);
  }
}
#endif

}  // namespace

at::Tensor pack_depthwise_weight(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == 1 && weight.scalar_type() == at::kFloat,
              "pack_depthwise_weight: expected a (C, 1, kh, kw) float weight, got ", weight.sizes(), " ",
              weight.scalar_type());
  return weight.select(1, 0).permute({1, 2, 0}).contiguous();
}

at::Tensor depthwise_conv(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& packed,
                          const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding) {
  const auto aten = [&] {
    return at::conv2d(input, weight, bias, stride, padding, {1, 1}, weight.dim() == 4 ? weight.size(0) : 1);
  };
#ifdef TORCHBRIDGE_DEPTHWISE_X86
  const bool has_bias = bias && bias->defined();
  if (!rowwise_kernels_available() || input.dim() != 4 || weight.dim() != 4 || stride.size() != 2 ||
      padding.size() != 2 || !plain_float(input) || !plain_float(weight) || !plain_float(packed) ||
      !input.is_contiguous(at::MemoryFormat::ChannelsLast) || !weight.is_contiguous() || !packed.is_contiguous())
    return aten();
  const int64_t c = input.size(1);
  Geometry g{input.size(2), input.size(3), c, 0, 0, weight.size(2), weight.size(3), stride[0], stride[1],
             padding[0], padding[1]};
  if (c % 8 != 0 || weight.size(0) != c || weight.size(1) != 1 || packed.sizes() != at::IntArrayRef{g.kh, g.kw, c} ||
      g.sh < 1 || g.sw < 1 || g.ph < 0 || g.pw < 0 || g.ph >= g.kh || g.pw >= g.kw ||
      (has_bias && (!plain_float(*bias) || !bias->is_contiguous() || bias->dim() != 1 || bias->size(0) != c)))
    return aten();
  g.avx512 = avx512_kernels_available();
  g.out_h = (g.h + 2 * g.ph - g.kh) / g.sh + 1;
  g.out_w = (g.w + 2 * g.pw - g.kw) / g.sw + 1;
  if (g.h + 2 * g.ph < g.kh || g.w + 2 * g.pw < g.kw || input.size(0) < 1) return aten();
  const int64_t n = input.size(0);
  at::Tensor out = at::empty({n, g.out_h, g.out_w, c}, input.options());
  const float* in_data = input.const_data_ptr<float>();
  const float* packed_data = packed.const_data_ptr<float>();
  const float* bias_data = has_bias ? bias->const_data_ptr<float>() : nullptr;
  float* out_data = out.mutable_data_ptr<float>();
  if (runs_padded(g)) {
    const int64_t block = g.avx512 ? 16 : 8, blocks = (c + block - 1) / block;
    const int64_t block_work = g.out_h * g.out_w * block * g.kh * g.kw;  // multiply-adds per block
    at::parallel_for(0, n * blocks, std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, block_work)),
                     [&](int64_t first, int64_t last) {
                       alignas(64) float buf[kPaddedMaxPixels * 16];
                       std::fill_n(buf, (g.h + 2 * g.ph) * (g.w + 2 * g.pw) * block, 0.0f);
                       for (int64_t task = first; task < last; ++task) {
                         const int64_t b = task / blocks, c0 = task % blocks * block;
                         const float* image = in_data + b * g.h * g.w * c;
                         float* out_image = out_data + b * g.out_h * g.out_w * c;
                         if (g.avx512) padded_block_avx512(image, packed_data, bias_data, out_image, g, c0, buf);
                         else padded_block_avx2(image, packed_data, bias_data, out_image, g, c0, buf);
                       }
                     });
    return out.permute({0, 3, 1, 2});
  }
  const int64_t row_work = g.out_w * c * g.kh * g.kw;  // multiply-adds per output row
  const bool prefetch = input.numel() * static_cast<int64_t>(sizeof(float)) > kPrefetchInputBytes;
  at::parallel_for(0, n * g.out_h, std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, row_work)),
                   [&](int64_t first, int64_t last) {
                     for (int64_t r = first; r < last; ++r) {
                       const int64_t b = r / g.out_h, oh = r % g.out_h;
                       const float* image = in_data + b * g.h * g.w * c;
                       float* out_row = out_data + r * g.out_w * c;
                       row_avx2(image, packed_data, bias_data, out_row, g, oh, prefetch);
                     }
                   });
  return out.permute({0, 3, 1, 2});
#else
  return aten();
#endif
}

}  // namespace torchbridge

TORCH_LIBRARY_FRAGMENT(torchbridge, m) {
  m.def("pack_depthwise_weight(Tensor weight) -> Tensor");
  m.def(
      "depthwise_conv(Tensor input, Tensor weight, Tensor packed, Tensor? bias, int[] stride, int[] padding) "
      "-> Tensor");
}

TORCH_LIBRARY_IMPL(torchbridge, CPU, m) {
  m.impl("pack_depthwise_weight", torchbridge::pack_depthwise_weight);
  m.impl("depthwise_conv", torchbridge::depthwise_conv);
}
