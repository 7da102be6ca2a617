// See packed_gemm.hpp. The loops, outermost first: blocks of kBlockRows input rows (kept in the
// cache while every panel passes), panels, slices of kDepth along K (a panel's
// slice stays in L1 while the block's rows run over it), and tiles of six rows, whose twelve
// accumulators start from the bias and are stored straight into the output.
#include "packed_gemm.hpp"

#include <ATen/Parallel.h>

#include <algorithm>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define TORCHBRIDGE_PACKED_X86 1
#endif

namespace torchbridge {

namespace {

constexpr int64_t kTileRows = 6;
constexpr int64_t kDepth = 256;
constexpr int64_t kBlockRows = 96;

#ifdef TORCHBRIDGE_PACKED_X86
// c[r * ldc + 0..16) = (init ? init[0..16) : c[r * ldc + 0..16)) + sum over k < depth of
// a[r * lda + k] * b[k][0..16), for R rows; twelve accumulators for six rows. `next`, where not
// null, is the same slice of the next panel, asked into L2 a line per k (see packed_gemm).
template <int R>
__attribute__((target("avx2,fma"))) void tile_avx2(const float* a, int64_t lda, const float* b, int64_t depth,
                                                   const float* init, float* c, int64_t ldc, const float* next) {
  const float* from = init ? init : c;  // every row starts from init, or from what c holds
  const int64_t step = init ? 0 : ldc;
  __m256 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
  c00 = _mm256_loadu_ps(from);
  c01 = _mm256_loadu_ps(from + 8);
  if constexpr (R > 1) c10 = _mm256_loadu_ps(from + step), c11 = _mm256_loadu_ps(from + step + 8);
  if constexpr (R > 2) c20 = _mm256_loadu_ps(from + 2 * step), c21 = _mm256_loadu_ps(from + 2 * step + 8);
  if constexpr (R > 3) c30 = _mm256_loadu_ps(from + 3 * step), c31 = _mm256_loadu_ps(from + 3 * step + 8);
  if constexpr (R > 4) c40 = _mm256_loadu_ps(from + 4 * step), c41 = _mm256_loadu_ps(from + 4 * step + 8);
  if constexpr (R > 5) c50 = _mm256_loadu_ps(from + 5 * step), c51 = _mm256_loadu_ps(from + 5 * step + 8);
  const float* a0 = a;
  const float* a1 = a + lda;
  const float* a2 = a + 2 * lda;
  const float* a3 = a + 3 * lda;
  const float* a4 = a + 4 * lda;
  const float* a5 = a + 5 * lda;
  for (int64_t k = 0; k < depth; ++k) {
    if (next) _mm_prefetch(reinterpret_cast<const char*>(next + k * kPackedPanel), _MM_HINT_T1);
    const __m256 b0 = _mm256_loadu_ps(b + k * kPackedPanel), b1 = _mm256_loadu_ps(b + k * kPackedPanel + 8);
    __m256 v = _mm256_broadcast_ss(a0 + k);
    c00 = _mm256_fmadd_ps(v, b0, c00);
    c01 = _mm256_fmadd_ps(v, b1, c01);
    if constexpr (R > 1) {
      v = _mm256_broadcast_ss(a1 + k);
      c10 = _mm256_fmadd_ps(v, b0, c10);
      c11 = _mm256_fmadd_ps(v, b1, c11);
    }
    if constexpr (R > 2) {
      v = _mm256_broadcast_ss(a2 + k);
      c20 = _mm256_fmadd_ps(v, b0, c20);
      c21 = _mm256_fmadd_ps(v, b1, c21);
    }
    if constexpr (R > 3) {
      v = _mm256_broadcast_ss(a3 + k);
      c30 = _mm256_fmadd_ps(v, b0, c30);
      c31 = _mm256_fmadd_ps(v, b1, c31);
    }
    if constexpr (R > 4) {
      v = _mm256_broadcast_ss(a4 + k);
      c40 = _mm256_fmadd_ps(v, b0, c40);
      c41 = _mm256_fmadd_ps(v, b1, c41);
    }
    if constexpr (R > 5) {
      v = _mm256_broadcast_ss(a5 + k);
      c50 = _mm256_fmadd_ps(v, b0, c50);
      c51 = _mm256_fmadd_ps(v, b1, c51);
    }
  }
  _mm256_storeu_ps(c, c00);
  _mm256_storeu_ps(c + 8, c01);
  if constexpr (R > 1) _mm256_storeu_ps(c + ldc, c10), _mm256_storeu_ps(c + ldc + 8, c11);
  if constexpr (R > 2) _mm256_storeu_ps(c + 2 * ldc, c20), _mm256_storeu_ps(c + 2 * ldc + 8, c21);
  if constexpr (R > 3) _mm256_storeu_ps(c + 3 * ldc, c30), _mm256_storeu_ps(c + 3 * ldc + 8, c31);
  if constexpr (R > 4) _mm256_storeu_ps(c + 4 * ldc, c40), _mm256_storeu_ps(c + 4 * ldc + 8, c41);
  if constexpr (R > 5) _mm256_storeu_ps(c + 5 * ldc, c50), _mm256_storeu_ps(c + 5 * ldc + 8, c51);
}

// One row: a single pair of accumulators would wait on the FMA latency at every k and stream the
// panel at a fraction of the memory's rate (a matrix-vector product is bound by that rate), so four
// k phases sum apart and meet at the end.
template <>
__attribute__((target("avx2,fma"))) void tile_avx2<1>(const float* a, int64_t, const float* b, int64_t depth,
                                                      const float* init, float* c, int64_t, const float*) {
  __m256 c0 = _mm256_loadu_ps(init ? init : c);
  __m256 c1 = _mm256_loadu_ps((init ? init : c) + 8);
  __m256 d0 = _mm256_setzero_ps(), d1 = d0, e0 = d0, e1 = d0, f0 = d0, f1 = d0;
  int64_t k = 0;
  for (; k + 4 <= depth; k += 4) {
    const float* bk = b + k * kPackedPanel;
    c0 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + k), _mm256_loadu_ps(bk), c0);
    c1 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + k), _mm256_loadu_ps(bk + 8), c1);
    d0 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + k + 1), _mm256_loadu_ps(bk + 16), d0);
    d1 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + k + 1), _mm256_loadu_ps(bk + 24), d1);
    e0 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + k + 2), _mm256_loadu_ps(bk + 32), e0);
    e1 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + k + 2), _mm256_loadu_ps(bk + 40), e1);
    f0 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + k + 3), _mm256_loadu_ps(bk + 48), f0);
    f1 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + k + 3), _mm256_loadu_ps(bk + 56), f1);
  }
  for (; k < depth; ++k) {
    c0 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + k), _mm256_loadu_ps(b + k * kPackedPanel), c0);
    c1 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + k), _mm256_loadu_ps(b + k * kPackedPanel + 8), c1);
  }
  _mm256_storeu_ps(c, _mm256_add_ps(_mm256_add_ps(c0, d0), _mm256_add_ps(e0, f0)));
  _mm256_storeu_ps(c + 8, _mm256_add_ps(_mm256_add_ps(c1, d1), _mm256_add_ps(e1, f1)));
}

// One input row against two panels (32 output columns; Two false: `b0` alone), over the whole of
// K: each input value broadcast once for both panels, the panels read as two sequential runs. Each
// panel's sums in two k phases that meet at the end, the same for a panel alone, so an output does
// not depend on which panel it was paired with.
template <bool Two>
__attribute__((target("avx2,fma"))) void gemv_pair_avx2(const float* a, const float* b0, const float* b1,
                                                        int64_t depth, const float* init0, const float* init1,
                                                        float* c0, float* c1) {
  __m256 p00 = _mm256_loadu_ps(init0), p01 = _mm256_loadu_ps(init0 + 8);
  __m256 q00 = _mm256_setzero_ps(), q01 = q00, p10 = q00, p11 = q00, q10 = q00, q11 = q00;
  if constexpr (Two) p10 = _mm256_loadu_ps(init1), p11 = _mm256_loadu_ps(init1 + 8);
  int64_t k = 0;
  for (; k + 2 <= depth; k += 2) {
    const float* x0 = b0 + k * kPackedPanel;
    const __m256 v = _mm256_broadcast_ss(a + k), w = _mm256_broadcast_ss(a + k + 1);
    p00 = _mm256_fmadd_ps(v, _mm256_loadu_ps(x0), p00);
    p01 = _mm256_fmadd_ps(v, _mm256_loadu_ps(x0 + 8), p01);
    q00 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x0 + 16), q00);
    q01 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x0 + 24), q01);
    if constexpr (Two) {
      const float* x1 = b1 + k * kPackedPanel;
      p10 = _mm256_fmadd_ps(v, _mm256_loadu_ps(x1), p10);
      p11 = _mm256_fmadd_ps(v, _mm256_loadu_ps(x1 + 8), p11);
      q10 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x1 + 16), q10);
      q11 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x1 + 24), q11);
    }
  }
  if (k < depth) {
    const __m256 v = _mm256_broadcast_ss(a + k);
    p00 = _mm256_fmadd_ps(v, _mm256_loadu_ps(b0 + k * kPackedPanel), p00);
    p01 = _mm256_fmadd_ps(v, _mm256_loadu_ps(b0 + k * kPackedPanel + 8), p01);
    if constexpr (Two) {
      p10 = _mm256_fmadd_ps(v, _mm256_loadu_ps(b1 + k * kPackedPanel), p10);
      p11 = _mm256_fmadd_ps(v, _mm256_loadu_ps(b1 + k * kPackedPanel + 8), p11);
    }
  }
  _mm256_storeu_ps(c0, _mm256_add_ps(p00, q00));
  _mm256_storeu_ps(c0 + 8, _mm256_add_ps(p01, q01));
  if constexpr (Two) {
    _mm256_storeu_ps(c1, _mm256_add_ps(p10, q10));
    _mm256_storeu_ps(c1 + 8, _mm256_add_ps(p11, q11));
  }
}

using TileKernel = void (*)(const float*, int64_t, const float*, int64_t, const float*, float*, int64_t, const float*);
constexpr TileKernel kTiles[kTileRows + 1] = {nullptr,        tile_avx2<1>, tile_avx2<2>, tile_avx2<3>,
                                              tile_avx2<4>, tile_avx2<5>, tile_avx2<6>};
#endif

}  // namespace

at::Tensor pack_linear_weight(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kFloat,
              "pack_linear_weight: expected a 2-d float weight, got ", weight.sizes(), " ", weight.scalar_type());
  const int64_t n_out = weight.size(0), k_in = weight.size(1), panels = (n_out + kPackedPanel - 1) / kPackedPanel;
  at::Tensor padded = at::zeros({panels * kPackedPanel, k_in}, weight.options());
  padded.narrow(0, 0, n_out).copy_(weight);
  return padded.view({panels, kPackedPanel, k_in}).transpose(1, 2).contiguous();
}

void packed_gemm(const float* in, const float* packed, const float* bias, float* out, int64_t rows, int64_t n_out,
                 int64_t k_in, bool recurrent) {
#ifdef TORCHBRIDGE_PACKED_X86
  const int64_t panels = (n_out + kPackedPanel - 1) / kPackedPanel;
  const int64_t blocks = (rows + kBlockRows - 1) / kBlockRows;
  // One panel's outputs for rows [block, block_end), at most kBlockRows of them. A full panel's
  // tiles go straight to the output; the last panel, when narrower, to `spare`. A layer's weight
  // comes from L3 or memory (the layers before push it out of L2), and the core's prefetchers,
  // seeing a panel read in a burst by its first tile and then not at all while the other tiles
  // reuse it, do not run ahead far enough: the first tile on each slice of a panel also asks for
  // the same slice of the next panel.
  const auto run = [&](int64_t block, int64_t block_end, int64_t p, float* spare) {
    alignas(32) float start[kPackedPanel];
    const float* panel = packed + p * k_in * kPackedPanel;
    const int64_t n0 = p * kPackedPanel, columns = std::min(kPackedPanel, n_out - n0);
    for (int64_t j = 0; j < kPackedPanel; ++j) start[j] = bias && j < columns ? bias[n0 + j] : 0.0f;
    const bool full = columns == kPackedPanel;
    float* c = full ? out + block * n_out + n0 : spare;
    const int64_t ldc = full ? n_out : kPackedPanel;
    for (int64_t k0 = 0; k0 < k_in; k0 += kDepth) {
      const int64_t depth = std::min(kDepth, k_in - k0);
      for (int64_t m = block; m < block_end; m += kTileRows) {
        const int64_t r = std::min(kTileRows, block_end - m);
        const float* next = m == block && p + 1 < panels ? panel + (k_in + k0) * kPackedPanel : nullptr;
        kTiles[r](in + m * k_in + k0, k_in, panel + k0 * kPackedPanel, depth, k0 == 0 ? start : nullptr,
                  c + (m - block) * ldc, ldc, next);
      }
    }
    if (!full)
      for (int64_t m = block; m < block_end; ++m)
        std::copy_n(spare + (m - block) * kPackedPanel, columns, out + m * n_out + n0);
  };
  // Each task at least about 2^17 multiply-adds, so a small layer is not split into tasks that cost
  // more to start than to run. With at least two tiles of rows for every thread, threads split the
  // rows, and each runs every panel over its own: the rows' inputs and outputs stay in that core's
  // cache, as do the next layer's where it splits the same rows (in a channels-last CNN the
  // depthwise convolutions and elementwise operators split pixels so), and every thread reads the
  // whole packed weight. With fewer rows and panels enough for every thread, threads split the
  // panels and each runs every block of rows over its own; with few panels too (a narrow layer),
  // they split the (block, panel) pairs. Either way each output is summed the same way: its row's
  // tile starts at a multiple of kTileRows.
  const int64_t threads = at::get_num_threads();
  if (rows == 1 && !recurrent) {  // a matrix-vector product: panels in pairs, the whole of K
    const int64_t pairs = (panels + 1) / 2;
    const int64_t per_pair = std::max<int64_t>(1, 2 * k_in * kPackedPanel);
    at::parallel_for(0, pairs, std::max<int64_t>(1, (int64_t{1} << 17) / per_pair), [&](int64_t first, int64_t last) {
      alignas(32) float start[2][kPackedPanel];
      alignas(32) float spare[2][kPackedPanel];
      for (int64_t q = first; q < last; ++q) {
        float* c[2];
        for (int64_t i = 0; i < 2; ++i) {
          const int64_t p = 2 * q + i, n0 = p * kPackedPanel;
          const int64_t columns = p < panels ? std::min(kPackedPanel, n_out - n0) : 0;
          for (int64_t j = 0; j < kPackedPanel; ++j) start[i][j] = bias && j < columns ? bias[n0 + j] : 0.0f;
          c[i] = columns == kPackedPanel ? out + n0 : spare[i];
        }
        const bool two = 2 * q + 1 < panels;
        const float* b0 = packed + 2 * q * k_in * kPackedPanel;
        if (two)
          gemv_pair_avx2<true>(in, b0, b0 + k_in * kPackedPanel, k_in, start[0], start[1], c[0], c[1]);
        else
          gemv_pair_avx2<false>(in, b0, nullptr, k_in, start[0], nullptr, c[0], nullptr);
        for (int64_t i = 0; i < (two ? 2 : 1); ++i) {
          const int64_t p = 2 * q + i, n0 = p * kPackedPanel;
          if (c[i] == spare[i]) std::copy_n(spare[i], n_out - n0, out + n0);
        }
      }
    });
    return;
  }
  if (!recurrent && rows >= 2 * kTileRows * threads) {
    const int64_t tiles = (rows + kTileRows - 1) / kTileRows;
    const int64_t per_tile = std::max<int64_t>(1, kTileRows * k_in * n_out);
    at::parallel_for(0, tiles, std::max<int64_t>(1, (int64_t{1} << 17) / per_tile), [&](int64_t first, int64_t last) {
      alignas(32) float spare[kBlockRows * kPackedPanel];
      const int64_t end = std::min(rows, last * kTileRows);
      for (int64_t block = first * kTileRows; block < end; block += kBlockRows)
        for (int64_t p = 0; p < panels; ++p) run(block, std::min(end, block + kBlockRows), p, spare);
    });
    return;
  }
  const int64_t per_panel = std::max<int64_t>(1, rows * k_in * kPackedPanel);
  if (panels >= 4 * threads || blocks == 1) {
    at::parallel_for(0, panels, std::max<int64_t>(1, (int64_t{1} << 17) / per_panel), [&](int64_t first, int64_t last) {
      alignas(32) float spare[kBlockRows * kPackedPanel];
      for (int64_t block = 0; block < rows; block += kBlockRows)
        for (int64_t p = first; p < last; ++p) run(block, std::min(rows, block + kBlockRows), p, spare);
    });
  } else {
    const int64_t per_task = std::max<int64_t>(1, kBlockRows * k_in * kPackedPanel);
    at::parallel_for(0, blocks * panels, std::max<int64_t>(1, (int64_t{1} << 17) / per_task),
                     [&](int64_t first, int64_t last) {
                       alignas(32) float spare[kBlockRows * kPackedPanel];
                       for (int64_t task = first; task < last; ++task) {
                         const int64_t block = task / panels * kBlockRows;
                         run(block, std::min(rows, block + kBlockRows), task % panels, spare);
                       }
                     });
  }
#else
  TORCH_CHECK(false, "packed_gemm: no kernel for this CPU");
#endif
}

}  // namespace torchbridge
