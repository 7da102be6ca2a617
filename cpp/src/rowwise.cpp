// torchbridge::rowwise_linear and torchbridge::rowwise_lstm: aten::linear and aten::lstm for inputs
// of a few rows (batch 1 of an MLP, a classifier head, an LSTM); torchbridge::layer_norm, gelu and
// attention: aten's operators for the small inputs of a small transformer; and the graph pass
// behind the runtime's "rowwise" variant, which puts them all in a frozen graph.
//
// With one row, a linear layer is a matrix-vector product: its time is the time to stream the weight
// from memory once. MKL's and oneDNN's kernels do not reach the memory bandwidth on every CPU (on AMD
// EPYC Zen 4 they stream a 4 MiB weight at about two thirds of the rate of a plain sum over it), so
// this kernel reads four weight rows at a time against each input row, which keeps the bandwidth.
// An LSTM on a few sequences is such a product per step (the recurrent weight times the hidden
// state) plus the cell's pointwise update, both here; its input projection for every step at once
// is a GEMM large enough for at::linear. Larger inputs, other dtypes and CPUs without AVX2+FMA (or
// ATen capped below AVX2) go to the aten operator. Export times the variant against the others; the
// runtime checks it at every shape like them.
//
// The variant's graph pass runs each linear layer of a constant weight through
// torchbridge::packed_linear, on the weight packed once by the pass (packed_gemm.cpp), at any number
// of rows up to kPackedMaxRows: with the weight in the caches the row kernel and the packed GEMM's
// one-row tile run level, and with it in memory (a classifier head after a CNN's other layers) the
// packed panels, read as one sequential run, stream 20-30 % faster. The row kernel stays for the
// unpacked weight: rowwise_linear, and an LSTM's recurrent product on up to kRowwiseMaxRows sequences.
//
// On small inputs ATen's layer norm, GELU and scaled dot-product attention cost several times their
// arithmetic in fixed work per call; these kernels do the arithmetic with little else, and give
// larger or other inputs to ATen. torchbridge::silu (and silu_) takes any size: ATen's SiLU costs
// about twice its time per value, which a depthwise CNN pays on every activation, so the
// "channels_last" variant runs it, with its 1x1 convolutions through the packed GEMM
// (torchbridge::pointwise_conv), its depthwise ones through torchbridge::depthwise_conv
// (depthwise.cpp) and its first, of an image's few channels, through torchbridge::stem_conv
// (stem_conv.cpp; rewrite_channels_last).
#include "rowwise.hpp"

#include "avx2_math.hpp"
#include "depthwise.hpp"
#include "packed_gemm.hpp"
#include "stem_conv.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/runtime/graph_iterator.h>
#include <torch/library.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define TORCHBRIDGE_ROWWISE_X86 1
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <tuple>
#include <vector>
#include <string>

namespace torchbridge {

namespace {

#ifdef TORCHBRIDGE_ROWWISE_X86
// Weight rows up to this long are read with the next block of rows prefetched (rows_avx2).
constexpr int64_t kPrefetchMaxK = 512;

__attribute__((target("avx2,fma"))) inline float horizontal_sum(__m256 v) {
  __m128 low = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  low = _mm_add_ps(low, _mm_movehl_ps(low, low));
  low = _mm_add_ss(low, _mm_movehdup_ps(low));
  return _mm_cvtss_f32(low);
}

// out[m, n] = bias[n] + sum_k weight[n, k] * in[m, k] for the weight rows [begin, end). Each output
// is summed the same way whatever the split into row ranges, so the result does not depend on the
// number of threads.
// With `addend`, out[m, n] also adds addend[m * addend_stride + n] (an LSTM's input projection).
// While it reads a block of four weight rows of up to kPrefetchMaxK values, it asks for the next
// block: on such short rows read side by side (an LSTM's recurrent weight, read once per step) the
// core's own prefetcher falls behind and each block waits on the cache; on longer rows it keeps up,
// and the extra instructions only cost.
__attribute__((target("avx2,fma"))) void rows_avx2(const float* in, const float* weight, const float* bias,
                                                   const float* addend, int64_t addend_stride, float* out,
                                                   int64_t rows, int64_t n_out, int64_t k_in, int64_t begin,
                                                   int64_t end) {
  const int64_t k_vec = k_in - k_in % 16;
  int64_t n = begin;
  for (; n + 4 <= end; n += 4) {
    const float* w0 = weight + n * k_in;
    const float* w1 = w0 + k_in;
    const float* w2 = w1 + k_in;
    const float* w3 = w2 + k_in;
    // The next block, four rows after this one in memory; asked for during the first input row.
    const float* next = k_in <= kPrefetchMaxK && n + 8 <= end ? w0 + 4 * k_in : nullptr;
    for (int64_t m = 0; m < rows; ++m) {
      const float* x = in + m * k_in;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
      for (int64_t k = 0; k < k_vec; k += 16) {
        if (next) {  // 16 values of each of four rows read here: four cache lines of the next block
          _mm_prefetch(reinterpret_cast<const char*>(next + 4 * k), _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(next + 4 * k + 16), _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(next + 4 * k + 32), _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(next + 4 * k + 48), _MM_HINT_T0);
        }
        const __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + k), x0, a0);
        b0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + k + 8), x1, b0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + k), x0, a1);
        b1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + k + 8), x1, b1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + k), x0, a2);
        b2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + k + 8), x1, b2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + k), x0, a3);
        b3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + k + 8), x1, b3);
      }
      float s0 = horizontal_sum(_mm256_add_ps(a0, b0)), s1 = horizontal_sum(_mm256_add_ps(a1, b1));
      float s2 = horizontal_sum(_mm256_add_ps(a2, b2)), s3 = horizontal_sum(_mm256_add_ps(a3, b3));
      for (int64_t k = k_vec; k < k_in; ++k) {
        s0 += w0[k] * x[k];
        s1 += w1[k] * x[k];
        s2 += w2[k] * x[k];
        s3 += w3[k] * x[k];
      }
      if (bias) {
        s0 += bias[n];
        s1 += bias[n + 1];
        s2 += bias[n + 2];
        s3 += bias[n + 3];
      }
      if (addend) {
        const float* a = addend + m * addend_stride + n;
        s0 += a[0];
        s1 += a[1];
        s2 += a[2];
        s3 += a[3];
      }
      float* y = out + m * n_out + n;
      y[0] = s0;
      y[1] = s1;
      y[2] = s2;
      y[3] = s3;
      next = nullptr;
    }
  }
  for (; n < end; ++n) {
    const float* w0 = weight + n * k_in;
    for (int64_t m = 0; m < rows; ++m) {
      const float* x = in + m * k_in;
      __m256 a0 = _mm256_setzero_ps(), b0 = a0;
      for (int64_t k = 0; k < k_vec; k += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + k), _mm256_loadu_ps(x + k), a0);
        b0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + k + 8), _mm256_loadu_ps(x + k + 8), b0);
      }
      float s0 = horizontal_sum(_mm256_add_ps(a0, b0));
      for (int64_t k = k_vec; k < k_in; ++k) s0 += w0[k] * x[k];
      if (bias) s0 += bias[n];
      if (addend) s0 += addend[m * addend_stride + n];
      out[m * n_out + n] = s0;
    }
  }
}

// rows_avx2 over all weight rows, the rows split among ATen's threads: at least 256 KiB of weight
// each, in blocks of four rows.
void rows_parallel(const float* in, const float* weight, const float* bias, const float* addend,
                   int64_t addend_stride, float* out, int64_t rows, int64_t n_out, int64_t k_in) {
  const int64_t blocks_per_task = std::max<int64_t>(1, ((int64_t{1} << 16) / k_in + 3) / 4);
  at::parallel_for(0, (n_out + 3) / 4, blocks_per_task, [&](int64_t first, int64_t last) {
    rows_avx2(in, weight, bias, addend, addend_stride, out, rows, n_out, k_in, first * 4, std::min(last * 4, n_out));
  });
}

__attribute__((target("avx2,fma"))) inline __m256 sigmoid_avx2(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  return _mm256_div_ps(one, _mm256_add_ps(one, exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

__attribute__((target("avx2,fma"))) inline __m256 tanh_avx2(__m256 x) {  // 2 sigmoid(2x) - 1
  const __m256 two = _mm256_set1_ps(2.0f);
  return _mm256_fmsub_ps(two, sigmoid_avx2(_mm256_mul_ps(two, x)), _mm256_set1_ps(1.0f));
}

inline float sigmoid_scalar(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// One LSTM step's cell update for `rows` rows of `gates` (rows x 4H: input, forget, cell, output
// gates, PyTorch's order): c = f * c + i * g, h = o * tanh(c); h is written to `h_out` (row stride
// h_stride) too. Only hidden units [j_begin, j_end) (j_end < 0: to the last), j_begin a multiple
// of 8, when no `addend` is given; each value comes out the same whatever the range.
__attribute__((target("avx2,fma"))) void lstm_cell_avx2(float* gates, float* c, float* h, float* h_out,
                                                        int64_t h_stride, int64_t rows, int64_t hidden,
                                                        const float* addend = nullptr, int64_t addend_stride = 0,
                                                        int64_t j_begin = 0, int64_t j_end = -1) {
  if (j_end < 0) j_end = hidden;
  const int64_t vec = j_begin + (j_end - j_begin) - (j_end - j_begin) % 8;
  for (int64_t m = 0; m < rows; ++m) {
    float* g = gates + m * 4 * hidden;
    if (addend) {  // the gates so far plus this row of the addend, in place
      const float* a = addend + m * addend_stride;
      int64_t j = 0;
      for (; j + 8 <= 4 * hidden; j += 8)
        _mm256_storeu_ps(g + j, _mm256_add_ps(_mm256_loadu_ps(g + j), _mm256_loadu_ps(a + j)));
      for (; j < 4 * hidden; ++j) g[j] += a[j];
    }
    float* cm = c + m * hidden;
    float* hm = h + m * hidden;
    float* om = h_out + m * h_stride;
    for (int64_t j = j_begin; j < vec; j += 8) {
      const __m256 i = sigmoid_avx2(_mm256_loadu_ps(g + j));
      const __m256 f = sigmoid_avx2(_mm256_loadu_ps(g + hidden + j));
      const __m256 z = tanh_avx2(_mm256_loadu_ps(g + 2 * hidden + j));
      const __m256 o = sigmoid_avx2(_mm256_loadu_ps(g + 3 * hidden + j));
      const __m256 cell = _mm256_fmadd_ps(f, _mm256_loadu_ps(cm + j), _mm256_mul_ps(i, z));
      const __m256 out = _mm256_mul_ps(o, tanh_avx2(cell));
      _mm256_storeu_ps(cm + j, cell);
      _mm256_storeu_ps(hm + j, out);
      _mm256_storeu_ps(om + j, out);
    }
    for (int64_t j = vec; j < j_end; ++j) {
      const float i = sigmoid_scalar(g[j]), f = sigmoid_scalar(g[hidden + j]);
      const float z = std::tanh(g[2 * hidden + j]), o = sigmoid_scalar(g[3 * hidden + j]);
      cm[j] = f * cm[j] + i * z;
      hm[j] = om[j] = o * std::tanh(cm[j]);
    }
  }
}

// y = (x - mean) / sqrt(var + eps) * weight + bias over each row of `width` (var: the population
// variance, two passes over the row as ATen's kernel does it); weight and bias may be null.
__attribute__((target("avx2,fma"))) void layer_norm_avx2(const float* x, const float* weight, const float* bias,
                                                         float* y, int64_t rows, int64_t width, float eps) {
  const int64_t vec = width - width % 8;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * width;
    float* yr = y + r * width;
    __m256 sum8 = _mm256_setzero_ps();
    for (int64_t i = 0; i < vec; i += 8) sum8 = _mm256_add_ps(sum8, _mm256_loadu_ps(xr + i));
    float sum = horizontal_sum(sum8);
    for (int64_t i = vec; i < width; ++i) sum += xr[i];
    const float mean = sum / static_cast<float>(width);
    const __m256 mean8 = _mm256_set1_ps(mean);
    __m256 squares8 = _mm256_setzero_ps();
    for (int64_t i = 0; i < vec; i += 8) {
      const __m256 centred = _mm256_sub_ps(_mm256_loadu_ps(xr + i), mean8);
      squares8 = _mm256_fmadd_ps(centred, centred, squares8);
    }
    float squares = horizontal_sum(squares8);
    for (int64_t i = vec; i < width; ++i) squares += (xr[i] - mean) * (xr[i] - mean);
    const float rstd = 1.0f / std::sqrt(squares / static_cast<float>(width) + eps);
    const __m256 rstd8 = _mm256_set1_ps(rstd);
    for (int64_t i = 0; i < vec; i += 8) {
      __m256 value = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(xr + i), mean8), rstd8);
      if (weight) value = _mm256_mul_ps(value, _mm256_loadu_ps(weight + i));
      if (bias) value = _mm256_add_ps(value, _mm256_loadu_ps(bias + i));
      _mm256_storeu_ps(yr + i, value);
    }
    for (int64_t i = vec; i < width; ++i) {
      float value = (xr[i] - mean) * rstd;
      if (weight) value *= weight[i];
      if (bias) value += bias[i];
      yr[i] = value;
    }
  }
}

// erf(x) by Abramowitz and Stegun 7.1.26, the formula ATen's vectorized erf uses (|error| < 1.5e-7).
__attribute__((target("avx2,fma"))) inline __m256 erf_avx2(__m256 x) {
  const __m256 sign = _mm256_and_ps(x, _mm256_set1_ps(-0.0f));
  const __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), a, one));
  __m256 p = _mm256_set1_ps(1.061405429f);
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453152027f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421413741f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284496736f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254829592f));
  const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(a, a)));
  return _mm256_or_ps(_mm256_fnmadd_ps(_mm256_mul_ps(p, t), e, one), sign);
}

// GELU(x) = x / 2 * (1 + erf(x / sqrt(2))) for finite x. Returns false where some x is infinite:
// what ATen gives there differs with its CPU capability (+inf or NaN for +inf), so the caller
// leaves the whole call to ATen.
__attribute__((target("avx2,fma"))) bool gelu_avx2(const float* x, float* y, int64_t n) {
  const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
  const __m256 inv_sqrt2 = _mm256_set1_ps(0.70710678118654752f), inf = _mm256_set1_ps(INFINITY);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 infinite = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, erf_avx2(_mm256_mul_ps(v, inv_sqrt2)))));
    infinite = _mm256_or_ps(infinite, _mm256_cmp_ps(_mm256_and_ps(v, abs_mask), inf, _CMP_EQ_OQ));
  }
  bool finite = _mm256_movemask_ps(infinite) == 0;
  for (; i < n; ++i) {
    finite = finite && !std::isinf(x[i]);
    y[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * 0.70710678118654752f));
  }
  return finite;
}

// SiLU over n values, 8 at a time (silu8): the last 1-7 go through the same vector code from a
// padded copy, so each value is computed alike wherever a thread's range starts.
__attribute__((target("avx2,fma"))) void silu_avx2(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256 a = silu8(_mm256_loadu_ps(x + i)), b = silu8(_mm256_loadu_ps(x + i + 8));
    const __m256 c = silu8(_mm256_loadu_ps(x + i + 16)), d = silu8(_mm256_loadu_ps(x + i + 24));
    _mm256_storeu_ps(y + i, a);
    _mm256_storeu_ps(y + i + 8, b);
    _mm256_storeu_ps(y + i + 16, c);
    _mm256_storeu_ps(y + i + 24, d);
  }
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, silu8(_mm256_loadu_ps(x + i)));
  if (i < n) {
    const int64_t left = n - i;
    float tail[8] = {};
    for (int64_t j = 0; j < left; ++j) tail[j] = x[i + j];
    _mm256_storeu_ps(tail, silu8(_mm256_loadu_ps(tail)));
    for (int64_t j = 0; j < left; ++j) y[i + j] = tail[j];
  }
}

// out[0:32] = factor * sum over n < count of weights[n] * rows[n * row_stride + 0:32]: four
// independent sums, so the FMAs do not wait on each other.
__attribute__((target("avx2,fma"))) inline void sum_of_rows32(const float* weights, const float* rows,
                                                             int64_t row_stride, int64_t count, __m256 factor,
                                                             float* out) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t n = 0; n < count; ++n) {
    const __m256 w = _mm256_set1_ps(weights[n]);
    const float* row = rows + n * row_stride;
    a0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(row), a0);
    a1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(row + 8), a1);
    a2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(row + 16), a2);
    a3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(row + 24), a3);
  }
  _mm256_storeu_ps(out, _mm256_mul_ps(a0, factor));
  _mm256_storeu_ps(out + 8, _mm256_mul_ps(a1, factor));
  _mm256_storeu_ps(out + 16, _mm256_mul_ps(a2, factor));
  _mm256_storeu_ps(out + 24, _mm256_mul_ps(a3, factor));
}

// Scaled dot-product attention of one (batch, head): out_i = softmax(q_i . k_j * scale + mask_ij) . v
// for `queries` query rows against `keys` keys. The key block is transposed into `kt` (head x
// keys padded to a multiple of 32) so that 32 scores come from one pass over the query row; `scores`
// holds the padded keys. Returns false where some query sees no key (every score -inf or NaN): the caller
// leaves the whole call to ATen, whose result that is.
__attribute__((target("avx2,fma"))) bool attention_head_avx2(
    const float* q, int64_t q_stride, const float* k, int64_t k_stride, const float* v, int64_t v_stride,
    int64_t queries, int64_t keys, int64_t head, int64_t v_head, float scale, const float* float_mask,
    const bool* bool_mask, int64_t mask_row_stride, int64_t mask_stride, bool causal, float* kt, float* scores,
    float* out, int64_t out_stride) {
  const int64_t padded = (keys + 31) / 32 * 32;
  for (int64_t e = 0; e < head; ++e) {
    float* row = kt + e * padded;
    for (int64_t j = 0; j < keys; ++j) row[j] = k[j * k_stride + e];
    for (int64_t j = keys; j < padded; ++j) row[j] = 0.0f;
  }
  const __m256 scale8 = _mm256_set1_ps(scale), minus_inf = _mm256_set1_ps(-INFINITY);
  const int64_t v_vec = v_head - v_head % 8;
  for (int64_t i = 0; i < queries; ++i) {
    const float* qi = q + i * q_stride;
    int64_t j = 0;
    for (; j < padded; j += 32) sum_of_rows32(qi, kt + j, padded, head, scale8, scores + j);
    const int64_t seen = causal ? std::min(keys, i + 1) : keys;  // keys j > i are masked out when causal
    float max_score = -INFINITY;
    for (j = 0; j < padded; ++j) {
      float score = scores[j];
      if (j >= seen) score = -INFINITY;
      else if (bool_mask && !bool_mask[i * mask_row_stride + j * mask_stride]) score = -INFINITY;
      else if (float_mask) score += float_mask[i * mask_row_stride + j * mask_stride];
      scores[j] = score;
      if (score > max_score) max_score = score;  // NaN compares false
    }
    if (max_score == -INFINITY) return false;
    const __m256 max8 = _mm256_set1_ps(max_score);
    __m256 total8 = _mm256_setzero_ps();
    for (j = 0; j < padded; j += 8) {
      const __m256 score = _mm256_loadu_ps(scores + j);
      // exp_avx2 clamps, so a masked key (-inf) would come out as a tiny positive weight: zero it.
      const __m256 weight =
          _mm256_andnot_ps(_mm256_cmp_ps(score, minus_inf, _CMP_EQ_OQ), exp_avx2(_mm256_sub_ps(score, max8)));
      _mm256_storeu_ps(scores + j, weight);
      total8 = _mm256_add_ps(total8, weight);
    }
    const __m256 inverse = _mm256_set1_ps(1.0f / horizontal_sum(total8));
    float* oi = out + i * out_stride;
    int64_t e = 0;
    for (; e + 32 <= v_vec; e += 32) sum_of_rows32(scores, v + e, v_stride, keys, inverse, oi + e);
    for (; e < v_vec; e += 8) {
      __m256 acc = _mm256_setzero_ps();
      for (int64_t jj = 0; jj < keys; ++jj)
        acc = _mm256_fmadd_ps(_mm256_set1_ps(scores[jj]), _mm256_loadu_ps(v + jj * v_stride + e), acc);
      _mm256_storeu_ps(oi + e, _mm256_mul_ps(acc, inverse));
    }
    for (e = v_vec; e < v_head; ++e) {
      float acc = 0.0f;
      for (int64_t jj = 0; jj < keys; ++jj) acc += scores[jj] * v[jj * v_stride + e];
      oi[e] = acc * _mm256_cvtss_f32(inverse);
    }
  }
  return true;
}

bool cpu_has_kernel() {
  // ATen's own choice, so ATEN_CPU_CAPABILITY=default caps this kernel as it caps ATen's.
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          at::get_cpu_capability() != "DEFAULT";
  return has;
}
#else
bool cpu_has_kernel() { return false; }
#endif

}  // namespace

bool plain_float(const at::Tensor& t) {
  return t.device().is_cpu() && t.scalar_type() == at::kFloat && t.layout() == at::kStrided && !t.is_mkldnn() &&
         !t.requires_grad();
}

namespace {

bool takes(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  if (!cpu_has_kernel()) return false;
  const auto fits = [](const at::Tensor& t) { return plain_float(t) && t.is_contiguous(); };
  if (!fits(input) || !fits(weight) || weight.dim() != 2 || input.dim() < 1) return false;
  if (input.size(-1) != weight.size(1) || weight.size(1) == 0) return false;
  if (bias && bias->defined() && (!fits(*bias) || bias->dim() != 1 || bias->size(0) != weight.size(0))) return false;
  const int64_t rows = input.numel() / weight.size(1);
  return rows >= 1 && rows <= kRowwiseMaxRows;
}

at::Tensor rowwise_linear(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  if (!takes(input, weight, bias)) return at::linear(input, weight, bias);
#ifdef TORCHBRIDGE_ROWWISE_X86
  const int64_t n_out = weight.size(0), k_in = weight.size(1), rows = input.numel() / k_in;
  std::vector<int64_t> sizes(input.sizes().begin(), input.sizes().end());
  sizes.back() = n_out;
  at::Tensor out = at::empty(sizes, input.options());
  const float* in_data = input.const_data_ptr<float>();
  const float* weight_data = weight.const_data_ptr<float>();
  const float* bias_data = bias && bias->defined() ? bias->const_data_ptr<float>() : nullptr;
  rows_parallel(in_data, weight_data, bias_data, nullptr, 0, out.mutable_data_ptr<float>(), rows, n_out, k_in);
  return out;
#else
  return at::linear(input, weight, bias);
#endif
}

// Whether `packed` is pack_linear_weight's form of a (n_out, k_in) weight.
bool packed_for(const at::Tensor& packed, int64_t n_out, int64_t k_in) {
  return plain_float(packed) && packed.is_contiguous() &&
         packed.sizes() == at::IntArrayRef{(n_out + kPackedPanel - 1) / kPackedPanel, k_in, kPackedPanel};
}

}  // namespace

// aten::linear(input, weight, bias), given also the weight in pack_linear_weight's form (the
// "rowwise" variant's rewrite packs each constant weight once): up to kPackedMaxRows rows
// torchbridge's GEMM on the packed weight, and at::linear for anything else (other dtypes, more
// rows, shapes that do not fit, which raise there as they would have, a CPU without the kernels).
// On a few rows it runs the packed GEMM rather than the row kernel on the weight: a weight the
// layers before it pushed out of the caches (a CNN's classifier head) streams from memory 20-30 %
// faster as the packed panels, one sequential run, than as rows read four at a time.
at::Tensor packed_linear(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& packed,
                         const std::optional<at::Tensor>& bias) {
  const bool has_bias = bias && bias->defined();
  const bool fits = cpu_has_kernel() && plain_float(input) && plain_float(weight) && weight.dim() == 2 &&
                    weight.size(0) > 0 && weight.size(1) > 0 && input.dim() >= 1 && input.size(-1) == weight.size(1) &&
                    packed_for(packed, weight.size(0), weight.size(1)) &&
                    (!has_bias || (plain_float(*bias) && bias->is_contiguous() && bias->dim() == 1 &&
                                   bias->size(0) == weight.size(0)));
  const int64_t rows = fits ? input.numel() / weight.size(1) : 0;
  if (!fits || rows < 1 || rows > kPackedMaxRows) return at::linear(input, weight, bias);
  const at::Tensor x = input.contiguous();
  std::vector<int64_t> sizes(input.sizes().begin(), input.sizes().end());
  sizes.back() = weight.size(0);
  at::Tensor out = at::empty(sizes, input.options());
  const float* bias_data = has_bias ? bias->const_data_ptr<float>() : nullptr;
  packed_gemm(x.const_data_ptr<float>(), packed.const_data_ptr<float>(), bias_data, out.mutable_data_ptr<float>(),
              rows, weight.size(0), weight.size(1));
  return out;
}

namespace {

// A 1x1 convolution (stride 1, no padding, one group) of a channels-last input is a linear layer on
// its pixels: the (N x H x W, C) rows of the input times the weight as a (C_out, C) matrix, whose
// output rows are the channels-last output. Up to pointwise_max_pixels() pixels it runs the packed
// GEMM on the tensors' memory directly, without the views a
// linear layer would take (a CNN at batch 1 has dozens of these layers, each a few microseconds of
// views); more pixels, other layouts, dtypes and shapes are at::conv2d's.
at::Tensor pointwise_conv(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& packed,
                          const std::optional<at::Tensor>& bias) {
  const bool has_bias = bias && bias->defined();
  if (cpu_has_kernel() && input.dim() == 4 && weight.dim() == 4 && plain_float(input) && plain_float(weight) &&
      weight.size(0) > 0 && weight.size(1) > 0 && weight.size(2) == 1 && weight.size(3) == 1 &&
      input.size(1) == weight.size(1) && input.is_contiguous(at::MemoryFormat::ChannelsLast) &&
      weight.is_contiguous() && packed_for(packed, weight.size(0), weight.size(1)) &&
      (!has_bias ||
       (plain_float(*bias) && bias->is_contiguous() && bias->dim() == 1 && bias->size(0) == weight.size(0)))) {
    const int64_t n = input.size(0), h = input.size(2), w = input.size(3), n_out = weight.size(0);
    const int64_t k_in = weight.size(1), pixels = n * h * w;
    if (pixels >= 1 && pixels <= pointwise_max_pixels()) {
      at::Tensor out = at::empty({n, n_out, h, w}, input.options().memory_format(at::MemoryFormat::ChannelsLast));
      const float* in_data = input.const_data_ptr<float>();
      const float* bias_data = has_bias ? bias->const_data_ptr<float>() : nullptr;
      float* out_data = out.mutable_data_ptr<float>();
      packed_gemm(in_data, packed.const_data_ptr<float>(), bias_data, out_data, pixels, n_out, k_in);
      return out;
    }
  }
  return at::conv2d(input, weight, bias);
}

bool lstm_takes(const at::Tensor& input, at::TensorList hx, at::TensorList params, bool has_biases, int64_t num_layers,
                bool train, bool bidirectional, bool batch_first) {
  if (!cpu_has_kernel() || train || input.dim() != 3 || hx.size() != 2 || num_layers < 1) return false;
  const int64_t directions = bidirectional ? 2 : 1, per_layer = has_biases ? 4 : 2;
  if (static_cast<int64_t>(params.size()) != num_layers * directions * per_layer) return false;  // proj_size: 5 or 3
  const auto fits = [](const at::Tensor& t) { return plain_float(t) && t.is_contiguous(); };
  if (!fits(input) || !fits(hx[0]) || !fits(hx[1])) return false;
  const int64_t batch = input.size(batch_first ? 0 : 1), hidden = hx[0].size(-1);
  if (batch < 1 || batch > kPackedMaxRows || input.size(batch_first ? 1 : 0) < 1 || hidden < 1) return false;
  for (const at::Tensor& h : hx)
    if (h.dim() != 3 || h.size(0) != num_layers * directions || h.size(1) != batch || h.size(2) != hidden) return false;
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    const int64_t in_features = layer == 0 ? input.size(2) : directions * hidden;
    for (int64_t d = 0; d < directions; ++d) {
      const at::Tensor* p = &params[(layer * directions + d) * per_layer];
      if (!fits(p[0]) || !fits(p[1]) || p[0].sizes() != at::IntArrayRef{4 * hidden, in_features} ||
          p[1].sizes() != at::IntArrayRef{4 * hidden, hidden})
        return false;
      if (has_biases && (!fits(p[2]) || !fits(p[3]) || p[2].sizes() != at::IntArrayRef{4 * hidden} ||
                         p[3].sizes() != at::IntArrayRef{4 * hidden}))
        return false;
    }
  }
  return true;
}

// Threads for lstm_steps_in_team: ATen's, where this build has OpenMP and no parallel region is
// running, at most one per 8 hidden units; 1 means the steps run as a loop of parallel calls.
int64_t lstm_team_threads(int64_t hidden) {
#ifdef _OPENMP
  if (omp_in_parallel()) return 1;
  return std::min<int64_t>(at::get_num_threads(), hidden / 8);
#else
  (void)hidden;
  return 1;
#endif
}

// One direction of one layer on up to kRowwiseMaxRows sequences, each step's recurrent product and
// cell update split among a team of threads kept for the whole sequence: each thread owns a slice
// of the hidden units (a multiple of 8), computes the four gates' rows of the product for it and
// then its cell update, which needs no other thread's gates; the hidden state alternates between
// `h` and `h_spare` (read one, write the other), so the threads meet once per step, at a barrier,
// where a parallel call per step (rows_parallel, then the cell update) starts and joins its
// threads. The final hidden state ends up in `h`.
void lstm_steps_in_team(at::Tensor& h, at::Tensor& h_spare, float* c_data, float* gates_data, const float* w_hh,
                        const float* b_hh, const float* projection_data, float* out_data, int64_t batch, int64_t steps,
                        int64_t hidden, int64_t directions, int64_t d, bool batch_first) {
#ifdef _OPENMP
  float* buffers[2] = {h.mutable_data_ptr<float>(), h_spare.mutable_data_ptr<float>()};
  const int64_t stride = batch_first ? steps : 1;
  const int threads = static_cast<int>(lstm_team_threads(hidden));
#pragma omp parallel num_threads(threads)
  {
    const int64_t team = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t per = (hidden / 8 + team - 1) / team * 8;  // whole vectors per thread, the tail to the last
    const int64_t j_begin = std::min(hidden, t * per);
    const int64_t j_end = t == team - 1 ? hidden : std::min(hidden, j_begin + per);
    for (int64_t s = 0; s < steps; ++s) {
      const int64_t step = d == 0 ? s : steps - 1 - s;
      const int64_t row0 = batch_first ? step : step * batch;  // row (0, step)
      const float* h_read = buffers[s % 2];
      float* h_write = buffers[(s + 1) % 2];
      if (j_begin < j_end) {
        for (int64_t gate = 0; gate < 4; ++gate)
          rows_avx2(h_read, w_hh, b_hh, projection_data + row0 * 4 * hidden, stride * 4 * hidden, gates_data, batch,
                    4 * hidden, hidden, gate * hidden + j_begin, gate * hidden + j_end);
        lstm_cell_avx2(gates_data, c_data, h_write, out_data + row0 * directions * hidden + d * hidden,
                       stride * directions * hidden, batch, hidden, nullptr, 0, j_begin, j_end);
      }
#pragma omp barrier
    }
  }
  if (steps % 2 == 1) h.copy_(h_spare);
#else
  (void)h, (void)h_spare, (void)c_data, (void)gates_data, (void)w_hh, (void)b_hh, (void)projection_data;
  (void)out_data, (void)batch, (void)steps, (void)hidden, (void)directions, (void)d, (void)batch_first;
  TORCH_CHECK(false, "lstm_steps_in_team: this build has no OpenMP");
#endif
}

// aten::lstm.input for a batch of up to kPackedMaxRows sequences: each layer's input projection
// for every step at once, then per step the recurrent product and the cell update; the layer's
// output feeds the next. Up to kRowwiseMaxRows sequences the product runs the row-wise kernel
// (input projection and recurrent bias added there); past that the packed GEMM on the recurrent
// weight (the recurrent bias folded into the projection, added in the cell update), the cell update
// split among ATen's threads by sequence. `packed`: each layer's and direction's input and recurrent
// weights as pack_linear_weight makes them, put in the graph once by the pass; with them the
// projection runs the packed GEMM (up to kPackedMaxRows rows of it, at::linear past that), and the
// packed steps use the packed recurrent weight; without them (an empty list, or tensors of other
// shapes) the projection is at::linear and the recurrent weight is packed once a call. Anything
// else (training, proj_size, other dtypes, larger batches, no kernel on this CPU) is at::lstm.
std::tuple<at::Tensor, at::Tensor, at::Tensor> rowwise_lstm(const at::Tensor& input, at::TensorList hx,
                                                           at::TensorList params, bool has_biases, int64_t num_layers,
                                                           double dropout, bool train, bool bidirectional,
                                                           bool batch_first, at::TensorList packed) {
  if (!lstm_takes(input, hx, params, has_biases, num_layers, train, bidirectional, batch_first))
    return at::lstm(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first);
#ifdef TORCHBRIDGE_ROWWISE_X86
  const int64_t directions = bidirectional ? 2 : 1, per_layer = has_biases ? 4 : 2;
  const int64_t batch = input.size(batch_first ? 0 : 1), steps = input.size(batch_first ? 1 : 0);
  const int64_t hidden = hx[0].size(2);
  // Row (batch b, step t) of a (batch, steps, F) or (steps, batch, F) tensor, in units of F.
  const auto row = [&](int64_t b, int64_t t) { return batch_first ? b * steps + t : t * batch + b; };
  at::Tensor h_n = at::empty_like(hx[0]), c_n = at::empty_like(hx[1]);
  at::Tensor layer_input = input, output;
  at::Tensor gates = at::empty({batch, 4 * hidden}, input.options());
  at::Tensor h = at::empty({batch, hidden}, input.options());
  at::Tensor h_spare = at::empty({batch, hidden}, input.options());
  float* gates_data = gates.mutable_data_ptr<float>();
  float* h_data = h.mutable_data_ptr<float>();
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    output = batch_first ? at::empty({batch, steps, directions * hidden}, input.options())
                         : at::empty({steps, batch, directions * hidden}, input.options());
    float* out_data = output.mutable_data_ptr<float>();
    for (int64_t d = 0; d < directions; ++d) {
      const int64_t index = layer * directions + d;
      const at::Tensor* p = &params[index * per_layer];
      const bool packed_steps = batch > kRowwiseMaxRows;
      // The pass's packed weights, where they are what this layer's weights pack to.
      const int64_t in_features = layer_input.size(2);
      const bool prepacked = static_cast<int64_t>(packed.size()) == 2 * num_layers * directions &&
                             packed_for(packed[2 * index], 4 * hidden, in_features) &&
                             packed_for(packed[2 * index + 1], 4 * hidden, hidden);
      at::Tensor projection;
      if (prepacked && batch * steps <= kPackedMaxRows) {  // past that MKL's GEMM, which blocks, is as fast
        const at::Tensor x = layer_input.contiguous();
        projection = at::empty({batch * steps, 4 * hidden}, input.options());
        packed_gemm(x.const_data_ptr<float>(), packed[2 * index].const_data_ptr<float>(),
                    has_biases ? p[2].const_data_ptr<float>() : nullptr, projection.mutable_data_ptr<float>(),
                    batch * steps, 4 * hidden, in_features);
      } else {
        projection = (has_biases ? at::linear(layer_input, p[0], p[2]) : at::linear(layer_input, p[0])).contiguous();
      }
      if (packed_steps && has_biases) projection.add_(p[3]);
      const at::Tensor packed_w_hh =
          packed_steps ? (prepacked ? packed[2 * index + 1] : pack_linear_weight(p[1])) : at::Tensor();
      const float* projection_data = projection.const_data_ptr<float>();
      const float* w_hh = p[1].const_data_ptr<float>();
      const float* b_hh = has_biases ? p[3].const_data_ptr<float>() : nullptr;
      h.copy_(hx[0][index]);
      at::Tensor c = c_n[index];
      c.copy_(hx[1][index]);
      float* c_data = c.mutable_data_ptr<float>();
      // The row kernel's steps on several threads: one team for the whole sequence (see
      // lstm_steps_in_team), not a fork and join per step.
      if (!packed_steps && lstm_team_threads(hidden) > 1) {
        lstm_steps_in_team(h, h_spare, c_data, gates_data, w_hh, b_hh, projection_data, out_data, batch, steps, hidden,
                           directions, d, batch_first);
        h_n[index].copy_(h);
        continue;
      }
      for (int64_t s = 0; s < steps; ++s) {
        const int64_t t = d == 0 ? s : steps - 1 - s;
        // The rows of one step are evenly spaced in both layouts: row(b, t) = row(0, t) + b * stride.
        const int64_t stride = batch_first ? steps : 1;
        float* step_out = out_data + row(0, t) * directions * hidden + d * hidden;
        const float* step_projection = projection_data + row(0, t) * 4 * hidden;
        if (!packed_steps) {
          rows_parallel(h_data, w_hh, b_hh, step_projection, stride * 4 * hidden, gates_data, batch, 4 * hidden,
                        hidden);
          lstm_cell_avx2(gates_data, c_data, h_data, step_out, stride * directions * hidden, batch, hidden);
          continue;
        }
        packed_gemm(h_data, packed_w_hh.const_data_ptr<float>(), nullptr, gates_data, batch, 4 * hidden, hidden,
                    /*recurrent=*/true);
        at::parallel_for(0, batch, std::max<int64_t>(1, 2048 / hidden), [&](int64_t first, int64_t last) {
          lstm_cell_avx2(gates_data + first * 4 * hidden, c_data + first * hidden, h_data + first * hidden,
                         step_out + first * stride * directions * hidden, stride * directions * hidden, last - first,
                         hidden, step_projection + first * stride * 4 * hidden, stride * 4 * hidden);
        });
      }
      h_n[index].copy_(h);
    }
    layer_input = output;
  }
  return {output, h_n, c_n};
#else
  return at::lstm(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first);
#endif
}

}  // namespace

// aten::layer_norm over the last dimension of a contiguous float input (any number of rows, split
// among ATen's threads); anything else is at::layer_norm.
at::Tensor small_layer_norm(const at::Tensor& input, at::IntArrayRef normalized_shape,
                            const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps,
                            bool cudnn_enable) {
  const auto fits = [&](const std::optional<at::Tensor>& t) {
    return !t || !t->defined() ||
           (plain_float(*t) && t->is_contiguous() && t->dim() == 1 && t->size(0) == input.size(-1));
  };
  if (!cpu_has_kernel() || !plain_float(input) || !input.is_contiguous() || input.dim() < 1 ||
      normalized_shape.size() != 1 || normalized_shape[0] != input.size(-1) || input.size(-1) < 1 || !fits(weight) ||
      !fits(bias))
    return at::layer_norm(input, normalized_shape, weight, bias, eps, cudnn_enable);
#ifdef TORCHBRIDGE_ROWWISE_X86
  at::Tensor out = at::empty_like(input);
  const int64_t width = input.size(-1), rows = input.numel() / width;
  const float* x = input.const_data_ptr<float>();
  const float* w = weight && weight->defined() ? weight->const_data_ptr<float>() : nullptr;
  const float* b = bias && bias->defined() ? bias->const_data_ptr<float>() : nullptr;
  float* y = out.mutable_data_ptr<float>();
  at::parallel_for(0, rows, std::max<int64_t>(1, (int64_t{1} << 15) / width), [&](int64_t begin, int64_t end) {
    layer_norm_avx2(x + begin * width, w, b, y + begin * width, end - begin, width, static_cast<float>(eps));
  });
  return out;
#else
  return at::layer_norm(input, normalized_shape, weight, bias, eps, cudnn_enable);
#endif
}

// aten::gelu (approximate="none") on a contiguous float input of up to kSmallGeluElements values;
// larger inputs, inputs with an infinity, the tanh approximation and anything else are at::gelu.
at::Tensor small_gelu(const at::Tensor& input, c10::string_view approximate) {
  if (!cpu_has_kernel() || approximate != "none" || !plain_float(input) || !input.is_contiguous() ||
      input.numel() > kSmallGeluElements)
    return at::gelu(input, approximate);
#ifdef TORCHBRIDGE_ROWWISE_X86
  at::Tensor out = at::empty_like(input);
  if (!gelu_avx2(input.const_data_ptr<float>(), out.mutable_data_ptr<float>(), input.numel()))
    return at::gelu(input, approximate);
  return out;
#else
  return at::gelu(input, approximate);
#endif
}

namespace {

// aten::silu and aten::silu_ on a float input whose elements are dense in memory in any order
// (contiguous or channels-last), split among ATen's threads; anything else is ATen's.
bool silu_takes(const at::Tensor& input) {
  return cpu_has_kernel() && plain_float(input) && input.is_non_overlapping_and_dense();
}

void silu_into(const at::Tensor& input, const at::Tensor& out) {
#ifdef TORCHBRIDGE_ROWWISE_X86
  const float* x = input.const_data_ptr<float>();
  float* y = out.mutable_data_ptr<float>();
  at::parallel_for(0, input.numel(), int64_t{1} << 14, [&](int64_t begin, int64_t end) {
    silu_avx2(x + begin, y + begin, end - begin);
  });
#endif
}

at::Tensor silu(const at::Tensor& input) {
  if (!silu_takes(input)) return at::silu(input);
  at::Tensor out = at::empty_like(input);  // the same strides: element i of one is element i of the other
  silu_into(input, out);
  return out;
}

at::Tensor& silu_(at::Tensor& input) {
  if (!silu_takes(input)) return at::silu_(input);
  silu_into(input, input);
  return input;
}

}  // namespace

// aten::scaled_dot_product_attention for 4-d float query, key and value of the same batch and
// heads, at most kSmallAttentionKeys keys and kSmallAttentionHead values per head, no dropout, a bool
// or float mask or causal masking. Anything else, and a call where some query sees no key at all,
// is ATen's.
at::Tensor small_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                           const std::optional<at::Tensor>& attn_mask, double dropout_p, bool is_causal,
                           std::optional<double> scale, bool enable_gqa) {
  const auto aten = [&] {
    return at::scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa);
  };
  const bool has_mask = attn_mask && attn_mask->defined();
  if (!cpu_has_kernel() || dropout_p != 0.0 || enable_gqa || (is_causal && has_mask)) return aten();
  for (const at::Tensor* t : {&query, &key, &value})
    if (!plain_float(*t) || t->dim() != 4 || t->stride(3) != 1 || t->size(3) < 1) return aten();
  const int64_t batch = query.size(0), heads = query.size(1), queries = query.size(2), keys = key.size(2);
  const int64_t head = query.size(3), v_head = value.size(3);
  if (key.size(0) != batch || value.size(0) != batch || key.size(1) != heads || value.size(1) != heads ||
      value.size(2) != keys || key.size(3) != head || keys < 1 || queries < 1 || keys > kSmallAttentionKeys ||
      head > kSmallAttentionHead || v_head > kSmallAttentionHead)
    return aten();
  at::Tensor mask;
  if (has_mask) {
    const at::ScalarType type = attn_mask->scalar_type();
    if (!attn_mask->device().is_cpu() || (type != at::kFloat && type != at::kBool) || attn_mask->dim() > 4 ||
        attn_mask->requires_grad())
      return aten();
    try {
      mask = attn_mask->expand({batch, heads, queries, keys});
    } catch (const c10::Error&) {
      return aten();
    }
    if (mask.stride(3) != 1 && mask.size(3) > 1) mask = mask.contiguous();
  }
#ifdef TORCHBRIDGE_ROWWISE_X86
  // The layout ATen gives this output, so that later views work alike: its flash kernel's (batch,
  // queries, heads, v_head) in memory where the head sizes agree, else its math path's contiguous one.
  at::Tensor out = v_head == head ? at::empty({batch, queries, heads, v_head}, query.options()).transpose(1, 2)
                                  : at::empty({batch, heads, queries, v_head}, query.options());
  const float softmax_scale = scale ? static_cast<float>(*scale) : 1.0f / std::sqrt(static_cast<float>(head));
  const float* q = query.const_data_ptr<float>();
  const float* k = key.const_data_ptr<float>();
  const float* v = value.const_data_ptr<float>();
  float* o = out.mutable_data_ptr<float>();
  const float* float_mask = has_mask && mask.scalar_type() == at::kFloat ? mask.const_data_ptr<float>() : nullptr;
  const bool* bool_mask = has_mask && mask.scalar_type() == at::kBool ? mask.const_data_ptr<bool>() : nullptr;
  const int64_t mask_stride = has_mask ? mask.stride(3) : 0;
  const int64_t mask_row_stride = has_mask ? mask.stride(2) : 0;
  const int64_t padded = (keys + 31) / 32 * 32;  // as attention_head_avx2 pads them
  std::atomic<bool> unseen{false};
  at::parallel_for(0, batch * heads, std::max<int64_t>(1, (int64_t{1} << 15) / (queries * keys * (head + v_head))),
                   [&](int64_t begin, int64_t end) {
    std::vector<float> buffer(static_cast<size_t>(padded * (head + 1)));
    for (int64_t r = begin; r < end && !unseen; ++r) {
      const int64_t b = r / heads, h = r % heads;
      const int64_t mask_offset = has_mask ? b * mask.stride(0) + h * mask.stride(1) : 0;
      if (!attention_head_avx2(q + b * query.stride(0) + h * query.stride(1), query.stride(2),
                               k + b * key.stride(0) + h * key.stride(1), key.stride(2),
                               v + b * value.stride(0) + h * value.stride(1), value.stride(2), queries, keys, head,
                               v_head, softmax_scale, float_mask ? float_mask + mask_offset : nullptr,
                               bool_mask ? bool_mask + mask_offset : nullptr, mask_row_stride, mask_stride, is_causal,
                               buffer.data(), buffer.data() + padded * head,
                               o + b * out.stride(0) + h * out.stride(1), out.stride(2)))
        unseen = true;
    }
  });
  if (unseen) return aten();
  return out;
#else
  return aten();
#endif
}

bool rowwise_kernels_available() { return cpu_has_kernel(); }

bool avx512_kernels_available() {
#if defined(__x86_64__) || defined(_M_X64)
  static const bool has =
      cpu_has_kernel() && __builtin_cpu_supports("avx512f") && at::get_cpu_capability() == "AVX512";
  return has;
#else
  return false;
#endif
}

int64_t pointwise_max_pixels() { return kPointwiseMaxPixels; }

namespace {
// Operators the "channels_last" variant replaces whatever their operands (activations, global
// average pooling): same schema, the kernel where it applies.
const std::vector<std::tuple<c10::Symbol, size_t, c10::Symbol>>& channels_last_same_schema() {
  static const std::vector<std::tuple<c10::Symbol, size_t, c10::Symbol>> table = {
      {c10::Symbol::fromQualString("aten::silu"), 1, c10::Symbol::fromQualString("torchbridge::silu")},
      {c10::Symbol::fromQualString("aten::silu_"), 1, c10::Symbol::fromQualString("torchbridge::silu_")},
      {c10::Symbol::fromQualString("aten::adaptive_avg_pool2d"), 2,
       c10::Symbol::fromQualString("torchbridge::adaptive_avg_pool2d")},
  };
  return table;
}

// Replaces `node` by a node of `kind` on the same inputs, its outputs taking the old one's uses.
void replace_node(torch::jit::Graph& graph, torch::jit::Node* node, c10::Symbol kind) {
  torch::jit::Node* replacement = graph.create(kind, node->inputs(), node->outputs().size());
  replacement->insertBefore(node);
  for (size_t i = 0; i < node->outputs().size(); ++i) {
    replacement->output(i)->setType(node->output(i)->type());
    node->output(i)->replaceAllUsesWith(replacement->output(i));
  }
  node->destroy();
}

// Whether `value` is a constant float CPU tensor of `dim` dimensions, contiguous.
bool constant_float(torch::jit::Value* value, int64_t dim) {
  if (value->node()->kind() != c10::prim::Constant) return false;
  const std::optional<c10::IValue> constant = torch::jit::toIValue(value);
  if (!constant || !constant->isTensor()) return false;
  const at::Tensor& tensor = constant->toTensor();
  return tensor.device().is_cpu() && tensor.scalar_type() == at::kFloat && tensor.dim() == dim &&
         tensor.is_contiguous() && tensor.layout() == at::kStrided;
}

bool constant_none(torch::jit::Value* value) {
  return value->node()->kind() == c10::prim::Constant && value->type()->kind() == c10::TypeKind::NoneType;
}

// Replaces `node` (input, weight, bias, ...) by `kind`(input, weight, packed, bias), `packed` a new
// constant: the constant weight as a (rows, columns) matrix (a 1x1 convolution's too), packed once.
void replace_with_packed(torch::jit::Graph& graph, torch::jit::Node* node, c10::Symbol kind) {
  torch::jit::WithInsertPoint guard(node);
  const at::Tensor weight = torch::jit::toIValue(node->input(1))->toTensor();
  torch::jit::Value* packed =
      graph.insertConstant(pack_linear_weight(weight.reshape({weight.size(0), weight.size(1)}).contiguous()));
  torch::jit::Node* replacement = graph.create(kind, {node->input(0), node->input(1), packed, node->input(2)}, 1);
  replacement->insertBefore(node);
  replacement->output()->setType(node->output()->type());
  node->output()->replaceAllUsesWith(replacement->output());
  node->destroy();
}

// An aten::conv2d node's stride, padding and dilation (pairs) and groups, where all four are
// constants of those types; nullopt otherwise.
struct ConvConstants {
  std::vector<int64_t> stride, padding, dilation;
  int64_t groups;
};
std::optional<ConvConstants> conv_constants(torch::jit::Node* node) {
  std::optional<c10::IValue> values[4];
  for (int i = 0; i < 4; ++i) {
    if (node->input(3 + i)->node()->kind() != c10::prim::Constant) return std::nullopt;
    values[i] = torch::jit::toIValue(node->input(3 + i));
  }
  for (int i = 0; i < 3; ++i)
    if (!values[i] || !values[i]->isIntList() || values[i]->toIntVector().size() != 2) return std::nullopt;
  if (!values[3] || !values[3]->isInt()) return std::nullopt;
  return ConvConstants{values[0]->toIntVector(), values[1]->toIntVector(), values[2]->toIntVector(),
                       values[3]->toInt()};
}

// Whether an aten::conv2d node (7 inputs) is what torchbridge::depthwise_conv takes: a depthwise
// convolution (groups = channels, one filter each, a multiple of 8) of a constant float weight of
// finite values (the kernel may add a tap in the padding as zero times the weight) and bias (or
// none), constant stride and padding, no dilation.
bool depthwise_conv_takes(torch::jit::Node* node) {
  torch::jit::Value* weight = node->input(1);
  if (!constant_float(weight, 4) || !(constant_float(node->input(2), 1) || constant_none(node->input(2)))) return false;
  const at::Tensor tensor = torch::jit::toIValue(weight)->toTensor();
  const std::optional<ConvConstants> conv = conv_constants(node);
  return conv && tensor.size(1) == 1 && tensor.size(0) % 8 == 0 && conv->dilation == std::vector<int64_t>{1, 1} &&
         conv->groups == tensor.size(0) && at::isfinite(tensor).all().item<bool>();
}

// Whether an aten::conv2d node (7 inputs) is what the channels-last pass gives torchbridge::stem_conv:
// a convolution (groups 1) of up to kStemMaxChannels input channels and kStemMaxTaps taps, of a
// constant float weight (in any layout) and bias (or none), constant stride and padding, no
// dilation.
bool stem_conv_takes(torch::jit::Node* node) {
  // The weight in any layout (the variant made it channels-last): the pass packs a copy.
  torch::jit::Value* weight = node->input(1);
  if (weight->node()->kind() != c10::prim::Constant || !torch::jit::toIValue(weight)->isTensor() ||
      !(constant_float(node->input(2), 1) || constant_none(node->input(2))))
    return false;
  const at::Tensor tensor = torch::jit::toIValue(weight)->toTensor();
  if (!tensor.device().is_cpu() || tensor.scalar_type() != at::kFloat || tensor.dim() != 4 ||
      tensor.layout() != at::kStrided)
    return false;
  const std::optional<ConvConstants> conv = conv_constants(node);
  return conv && tensor.size(1) <= kStemMaxChannels &&
         tensor.size(1) * tensor.size(2) * tensor.size(3) <= kStemMaxTaps &&
         conv->dilation == std::vector<int64_t>{1, 1} && conv->groups == 1;
}

// Whether an aten::linear node is what torchbridge::packed_linear takes with its weight packed once:
// a float constant weight, and a float constant bias or none.
bool packed_linear_takes(torch::jit::Node* node) {
  static const c10::Symbol linear = c10::Symbol::fromQualString("aten::linear");
  return node->kind() == linear && node->inputs().size() == 3 && node->outputs().size() == 1 &&
         constant_float(node->input(1), 2) && (constant_none(node->input(2)) || constant_float(node->input(2), 1));
}

// For an aten::lstm node (lstm.input) of constant parameters: each layer's and direction's input and
// recurrent weights, packed (pack_linear_weight), in that order; empty where the parameters are not
// float matrices in the layout lstm_takes accepts (proj_size, other dtypes: the kernel gives those
// to at::lstm anyway).
c10::List<at::Tensor> packed_lstm_weights(torch::jit::Node* node) {
  c10::List<at::Tensor> packed;
  const std::optional<c10::IValue> params = torch::jit::toIValue(node->input(2));
  const std::optional<c10::IValue> has_biases = torch::jit::toIValue(node->input(3));
  if (!params || !params->isTensorList() || !has_biases || !has_biases->isBool()) return packed;
  const c10::List<at::Tensor> tensors = params->toTensorList();
  const size_t per_layer = has_biases->toBool() ? 4 : 2;
  if (tensors.size() % per_layer != 0) return packed;
  for (size_t i = 0; i < tensors.size(); i += per_layer) {
    const at::Tensor w_ih = tensors[i], w_hh = tensors[i + 1];
    if (!plain_float(w_ih) || !plain_float(w_hh) || w_ih.dim() != 2 || w_hh.dim() != 2 ||
        w_ih.size(0) != w_hh.size(0) || w_hh.size(0) != 4 * w_hh.size(1))
      return c10::List<at::Tensor>();
    packed.push_back(pack_linear_weight(w_ih.contiguous()));
    packed.push_back(pack_linear_weight(w_hh.contiguous()));
  }
  return packed;
}

// ATen's fused operators for a whole transformer layer or attention block (nn.TransformerEncoderLayer's
// and nn.MultiheadAttention's inference fast paths) and torchbridge's (encoder_layer.hpp), which take
// the same operands and the weights packed.
struct FusedLayer {
  c10::Symbol aten, replacement;
  size_t inputs, outputs;
  std::vector<size_t> weights;  // the linear layers' weights, by operand
  size_t first_tensor, end_tensor;  // the operands that are the module's tensors: [first, end)
};

const std::vector<FusedLayer>& fused_layers() {
  static const std::vector<FusedLayer> table = {
      {c10::Symbol::fromQualString("aten::_transformer_encoder_layer_fwd"),
       c10::Symbol::fromQualString("torchbridge::encoder_layer"), 20, 1, {3, 5, 14, 16}, 3, 18},
      {c10::Symbol::fromQualString("aten::_native_multi_head_attention"),
       c10::Symbol::fromQualString("torchbridge::multi_head_attention"), 13, 2, {5, 7}, 5, 9},
  };
  return table;
}

// The fused operator a node is, where torchbridge's takes it with its weights packed once: the
// weights float constants. (A mask, which a scripted model computes, goes to ATen's operator at
// run time.)
const FusedLayer* fused_layer_takes(torch::jit::Node* node) {
  for (const FusedLayer& fused : fused_layers()) {
    if (node->kind() != fused.aten || node->inputs().size() != fused.inputs || node->outputs().size() != fused.outputs)
      continue;
    for (const size_t weight : fused.weights)
      if (!constant_float(node->input(weight), 2)) return nullptr;
    return &fused;
  }
  return nullptr;
}

// Replaces such a node by torchbridge's operator of the same operands and its weights packed, a new
// constant list.
void replace_fused_layer(torch::jit::Graph& graph, torch::jit::Node* node, const FusedLayer& fused) {
  torch::jit::WithInsertPoint guard(node);
  c10::List<at::Tensor> packed;
  for (const size_t weight : fused.weights)
    packed.push_back(pack_linear_weight(torch::jit::toIValue(node->input(weight))->toTensor()));
  std::vector<torch::jit::Value*> inputs(node->inputs().begin(), node->inputs().end());
  inputs.push_back(graph.insertConstant(packed));
  torch::jit::Node* replacement = graph.create(fused.replacement, inputs, fused.outputs);
  replacement->insertBefore(node);
  for (size_t i = 0; i < fused.outputs; ++i) {
    replacement->output(i)->setType(node->output(i)->type());
    node->output(i)->replaceAllUsesWith(replacement->output(i));
  }
  node->destroy();
}

// Every node of a graph, those in the blocks of control flow too (a scripted model keeps
// nn.TransformerEncoderLayer's fast path, and others' layers, inside the branches of its checks):
// the passes collect them first and then replace them, each in its own block.
std::vector<torch::jit::Node*> all_nodes(torch::jit::Graph& graph) {
  std::vector<torch::jit::Node*> nodes;
  std::shared_ptr<torch::jit::Graph> shared = graph.shared_from_this();
  torch::jit::DepthFirstGraphNodeIterator it(shared);
  for (torch::jit::Node* node = it.next(); node != nullptr; node = it.next()) nodes.push_back(node);
  return nodes;
}

std::optional<c10::Symbol> channels_last_same_schema_for(const torch::jit::Node* node) {
  for (const auto& [kind, inputs, replacement] : channels_last_same_schema())
    if (node->kind() == kind && node->inputs().size() == inputs && node->outputs().size() == 1) return replacement;
  return std::nullopt;
}
}  // namespace

int fold_fused_layer_weights(torch::jit::Module& module) {
  const std::shared_ptr<torch::jit::Graph> graph = module.get_method("forward").graph();
  torch::jit::Value* self = graph->inputs().empty() ? nullptr : graph->inputs()[0];
  // The attribute a chain of prim::GetAttr from `self` names, where it is one.
  const auto resolve = [&](torch::jit::Value* value) -> std::optional<c10::IValue> {
    std::vector<std::string> names;
    while (value != self && value->node()->kind() == c10::prim::GetAttr && value->node()->inputs().size() == 1) {
      names.push_back(value->node()->s(c10::attr::name));
      value = value->node()->input(0);
    }
    if (value != self || names.empty()) return std::nullopt;
    c10::IValue current = module._ivalue();
    for (auto name = names.rbegin(); name != names.rend(); ++name) {
      if (!current.isObject() || !current.toObjectRef().type()->hasAttribute(*name)) return std::nullopt;
      current = current.toObjectRef().getAttr(*name);
    }
    return current;
  };
  int folded = 0;
  for (torch::jit::Node* node : all_nodes(*graph)) {
    const auto fused = std::find_if(fused_layers().begin(), fused_layers().end(), [&](const FusedLayer& layer) {
      return node->kind() == layer.aten && node->inputs().size() == layer.inputs;
    });
    if (fused == fused_layers().end()) continue;
    for (size_t i = fused->first_tensor; i < fused->end_tensor; ++i) {
      if (node->input(i)->node()->kind() != c10::prim::GetAttr) continue;
      const std::optional<c10::IValue> attribute = resolve(node->input(i));
      if (!attribute || !attribute->isTensor()) continue;
      torch::jit::WithInsertPoint guard(node);
      node->replaceInput(i, graph->insertConstant(attribute->toTensor().detach()));  // as freezing folds one
      ++folded;
    }
  }
  return folded;
}

int rewrite_channels_last(torch::jit::Graph& graph) {
  static const c10::Symbol conv2d = c10::Symbol::fromQualString("aten::conv2d");
  static const c10::Symbol pointwise = c10::Symbol::fromQualString("torchbridge::pointwise_conv");
  static const c10::Symbol depthwise = c10::Symbol::fromQualString("torchbridge::depthwise_conv");
  static const c10::Symbol stem = c10::Symbol::fromQualString("torchbridge::stem_conv");
  static const c10::Symbol packed_linear_op = c10::Symbol::fromQualString("torchbridge::packed_linear");
  const auto constant = [](torch::jit::Value* value) -> std::optional<c10::IValue> {
    if (value->node()->kind() != c10::prim::Constant) return std::nullopt;
    return torch::jit::toIValue(value);
  };
  const auto ints_are = [&](torch::jit::Value* value, int64_t expected) {
    const std::optional<c10::IValue> list = constant(value);
    if (!list || !list->isIntList()) return false;
    const std::vector<int64_t> values = list->toIntVector();
    return values.size() == 2 && values[0] == expected && values[1] == expected;
  };
  std::vector<std::pair<torch::jit::Node*, c10::Symbol>> found;
  for (torch::jit::Node* node : all_nodes(graph)) {
    if (const auto replacement = channels_last_same_schema_for(node)) {
      found.emplace_back(node, *replacement);
    } else if (packed_linear_takes(node)) {  // the classifier head; ATen's GEMV does not split it
      found.emplace_back(node, packed_linear_op);
    } else if (const FusedLayer* fused = fused_layer_takes(node)) {
      found.emplace_back(node, fused->replacement);
    } else if (node->kind() == conv2d && node->inputs().size() == 7 && node->outputs().size() == 1) {
      const std::optional<c10::IValue> groups = constant(node->input(6));
      torch::jit::Value* weight = node->input(1);
      if (constant_float(weight, 4) && torch::jit::toIValue(weight)->toTensor().size(2) == 1 &&
          torch::jit::toIValue(weight)->toTensor().size(3) == 1 &&
          (constant_float(node->input(2), 1) || constant_none(node->input(2))) && groups && groups->isInt() &&
          groups->toInt() == 1 && ints_are(node->input(3), 1) && ints_are(node->input(4), 0) &&
          ints_are(node->input(5), 1))
        found.emplace_back(node, pointwise);
      else if (depthwise_conv_takes(node))
        found.emplace_back(node, depthwise);
      else if (stem_conv_takes(node))
        found.emplace_back(node, stem);
    }
  }
  for (const auto& [node, kind] : found) {
    if (kind == pointwise || kind == packed_linear_op) {
      replace_with_packed(graph, node, kind);
    } else if (const FusedLayer* fused = fused_layer_takes(node)) {
      replace_fused_layer(graph, node, *fused);
    } else if (kind == depthwise || kind == stem) {  // (input, weight, packed, bias, stride, padding)
      torch::jit::WithInsertPoint guard(node);
      const at::Tensor weight = torch::jit::toIValue(node->input(1))->toTensor();
      torch::jit::Value* packed =
          graph.insertConstant(kind == depthwise ? pack_depthwise_weight(weight) : pack_stem_weight(weight));
      torch::jit::Node* replacement = graph.create(
          kind, {node->input(0), node->input(1), packed, node->input(2), node->input(3), node->input(4)}, 1);
      replacement->insertBefore(node);
      replacement->output()->setType(node->output()->type());
      node->output()->replaceAllUsesWith(replacement->output());
      node->destroy();
    } else {
      replace_node(graph, node, kind);
    }
  }
  return static_cast<int>(found.size());
}

int rewrite_rowwise(torch::jit::Graph& graph) {
  static const c10::Symbol packed_linear_op = c10::Symbol::fromQualString("torchbridge::packed_linear");
  static const c10::Symbol lstm = c10::Symbol::fromQualString("aten::lstm");
  static const c10::Symbol rowwise_lstm_op = c10::Symbol::fromQualString("torchbridge::rowwise_lstm");
  // Operators replaced whatever their operands: same schema, the kernel where it applies.
  static const std::vector<std::tuple<c10::Symbol, size_t, c10::Symbol>> same_schema = {
      {c10::Symbol::fromQualString("aten::layer_norm"), 6, c10::Symbol::fromQualString("torchbridge::layer_norm")},
      {c10::Symbol::fromQualString("aten::gelu"), 2, c10::Symbol::fromQualString("torchbridge::gelu")},
      {c10::Symbol::fromQualString("aten::scaled_dot_product_attention"), 8,
       c10::Symbol::fromQualString("torchbridge::attention")},
  };
  std::vector<std::pair<torch::jit::Node*, c10::Symbol>> found;
  for (torch::jit::Node* node : all_nodes(graph)) {
    if (packed_linear_takes(node)) {
      found.emplace_back(node, packed_linear_op);  // with the weight packed once, a constant of its own
    } else if (const FusedLayer* fused = fused_layer_takes(node)) {
      found.emplace_back(node, fused->replacement);
    } else if (node->kind() == lstm && node->inputs().size() == 9 && node->outputs().size() == 3 &&
               node->input(1)->type()->kind() == c10::TypeKind::ListType &&  // lstm.input, not lstm.data
               node->input(2)->node()->kind() == c10::prim::Constant) {
      found.emplace_back(node, rowwise_lstm_op);
    } else {
      for (const auto& [kind, inputs, replacement] : same_schema)
        if (node->kind() == kind && node->inputs().size() == inputs && node->outputs().size() == 1)
          found.emplace_back(node, replacement);
    }
  }
  for (const auto& [node, kind] : found) {
    if (kind == packed_linear_op) {
      replace_with_packed(graph, node, kind);
    } else if (const FusedLayer* fused = fused_layer_takes(node)) {
      replace_fused_layer(graph, node, *fused);
    } else if (kind == rowwise_lstm_op) {  // the same operands, and the weights packed
      torch::jit::WithInsertPoint guard(node);
      std::vector<torch::jit::Value*> inputs(node->inputs().begin(), node->inputs().end());
      inputs.push_back(graph.insertConstant(packed_lstm_weights(node)));
      torch::jit::Node* replacement = graph.create(kind, inputs, node->outputs().size());
      replacement->insertBefore(node);
      for (size_t i = 0; i < node->outputs().size(); ++i) {
        replacement->output(i)->setType(node->output(i)->type());
        node->output(i)->replaceAllUsesWith(replacement->output(i));
      }
      node->destroy();
    } else {
      replace_node(graph, node, kind);
    }
  }
  return static_cast<int>(found.size());
}

}  // namespace torchbridge

TORCH_LIBRARY(torchbridge, m) {
  m.def("rowwise_linear(Tensor input, Tensor weight, Tensor? bias) -> Tensor");
  m.def("packed_linear(Tensor input, Tensor weight, Tensor packed, Tensor? bias) -> Tensor");
  m.def("pack_linear_weight(Tensor weight) -> Tensor");
  m.def(
      "rowwise_lstm(Tensor input, Tensor[] hx, Tensor[] params, bool has_biases, int num_layers, float dropout, "
      "bool train, bool bidirectional, bool batch_first, Tensor[] packed) -> (Tensor, Tensor, Tensor)");
  m.def(
      "layer_norm(Tensor input, int[] normalized_shape, Tensor? weight=None, Tensor? bias=None, float eps=1e-05, "
      "bool cudnn_enable=True) -> Tensor");
  m.def("gelu(Tensor self, *, str approximate='none') -> Tensor");
  m.def("silu(Tensor self) -> Tensor");
  m.def("silu_(Tensor(a!) self) -> Tensor(a!)");
  m.def("pointwise_conv(Tensor input, Tensor weight, Tensor packed, Tensor? bias) -> Tensor");
  m.def(
      "attention(Tensor query, Tensor key, Tensor value, Tensor? attn_mask=None, float dropout_p=0.0, "
      "bool is_causal=False, *, float? scale=None, bool enable_gqa=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(torchbridge, CPU, m) {
  m.impl("rowwise_linear", torchbridge::rowwise_linear);
  m.impl("packed_linear", torchbridge::packed_linear);
  m.impl("pack_linear_weight", torchbridge::pack_linear_weight);
  m.impl("rowwise_lstm", torchbridge::rowwise_lstm);
  m.impl("layer_norm", torchbridge::small_layer_norm);
  m.impl("gelu", torchbridge::small_gelu);
  m.impl("silu", torchbridge::silu);
  m.impl("silu_", torchbridge::silu_);
  m.impl("pointwise_conv", torchbridge::pointwise_conv);
  m.impl("attention", torchbridge::small_attention);
}
