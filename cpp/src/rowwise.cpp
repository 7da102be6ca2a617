// torchbridge::rowwise_linear and torchbridge::rowwise_lstm: aten::linear and aten::lstm for inputs
// of a few rows (batch 1 of an MLP, a classifier head, an LSTM), and the graph pass behind the
// runtime's "rowwise" variant.
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
#include "rowwise.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/library.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define TORCHBRIDGE_ROWWISE_X86 1
#endif

#include <cstdlib>
#include <string>

namespace torchbridge {

namespace {

#ifdef TORCHBRIDGE_ROWWISE_X86
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
    for (int64_t m = 0; m < rows; ++m) {
      const float* x = in + m * k_in;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
      for (int64_t k = 0; k < k_vec; k += 16) {
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

// exp(x) for float32, to about 2 ulp (Cephes' polynomial, as in avx_mathfun); inputs clamped to
// +-88.38 so that it neither overflows nor gives denormals.
__attribute__((target("avx2,fma"))) inline __m256 exp_avx2(__m256 x) {
  // Constant first: with a NaN operand min and max return the second, so NaN goes through.
  x = _mm256_max_ps(_mm256_set1_ps(-88.3762626647949f), _mm256_min_ps(_mm256_set1_ps(88.3762626647949f), x));
  const __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i power = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(power));
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
// h_stride) too.
__attribute__((target("avx2,fma"))) void lstm_cell_avx2(const float* gates, float* c, float* h, float* h_out,
                                                        int64_t h_stride, int64_t rows, int64_t hidden) {
  const int64_t vec = hidden - hidden % 8;
  for (int64_t m = 0; m < rows; ++m) {
    const float* g = gates + m * 4 * hidden;
    float* cm = c + m * hidden;
    float* hm = h + m * hidden;
    float* om = h_out + m * h_stride;
    for (int64_t j = 0; j < vec; j += 8) {
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
    for (int64_t j = vec; j < hidden; ++j) {
      const float i = sigmoid_scalar(g[j]), f = sigmoid_scalar(g[hidden + j]);
      const float z = std::tanh(g[2 * hidden + j]), o = sigmoid_scalar(g[3 * hidden + j]);
      cm[j] = f * cm[j] + i * z;
      hm[j] = om[j] = o * std::tanh(cm[j]);
    }
  }
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

bool takes(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  if (!cpu_has_kernel()) return false;
  const auto fits = [](const at::Tensor& t) {
    return t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() && t.layout() == at::kStrided &&
           !t.is_mkldnn() && !t.requires_grad();
  };
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

bool lstm_takes(const at::Tensor& input, at::TensorList hx, at::TensorList params, bool has_biases, int64_t num_layers,
                bool train, bool bidirectional, bool batch_first) {
  if (!cpu_has_kernel() || train || input.dim() != 3 || hx.size() != 2 || num_layers < 1) return false;
  const int64_t directions = bidirectional ? 2 : 1, per_layer = has_biases ? 4 : 2;
  if (static_cast<int64_t>(params.size()) != num_layers * directions * per_layer) return false;  // proj_size: 5 or 3
  const auto fits = [](const at::Tensor& t) {
    return t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() && t.layout() == at::kStrided &&
           !t.is_mkldnn() && !t.requires_grad();
  };
  if (!fits(input) || !fits(hx[0]) || !fits(hx[1])) return false;
  const int64_t batch = input.size(batch_first ? 0 : 1), hidden = hx[0].size(-1);
  if (batch < 1 || batch > kRowwiseMaxRows || input.size(batch_first ? 1 : 0) < 1 || hidden < 1) return false;
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

// aten::lstm.input for a batch of up to kRowwiseMaxRows sequences: each layer's input
// projection for every step at once (at::linear), then per step the recurrent product through the
// row-wise kernel (input projection and recurrent bias added there) and the cell update; the
// layer's output feeds the next. Anything else (training, proj_size, other dtypes, larger batches,
// no kernel on this CPU) is at::lstm.
std::tuple<at::Tensor, at::Tensor, at::Tensor> rowwise_lstm(const at::Tensor& input, at::TensorList hx,
                                                           at::TensorList params, bool has_biases, int64_t num_layers,
                                                           double dropout, bool train, bool bidirectional,
                                                           bool batch_first) {
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
  float* gates_data = gates.mutable_data_ptr<float>();
  float* h_data = h.mutable_data_ptr<float>();
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    output = batch_first ? at::empty({batch, steps, directions * hidden}, input.options())
                         : at::empty({steps, batch, directions * hidden}, input.options());
    float* out_data = output.mutable_data_ptr<float>();
    for (int64_t d = 0; d < directions; ++d) {
      const int64_t index = layer * directions + d;
      const at::Tensor* p = &params[index * per_layer];
      const at::Tensor projection =
          (has_biases ? at::linear(layer_input, p[0], p[2]) : at::linear(layer_input, p[0])).contiguous();
      const float* projection_data = projection.const_data_ptr<float>();
      const float* w_hh = p[1].const_data_ptr<float>();
      const float* b_hh = has_biases ? p[3].const_data_ptr<float>() : nullptr;
      h.copy_(hx[0][index]);
      at::Tensor c = c_n[index];
      c.copy_(hx[1][index]);
      float* c_data = c.mutable_data_ptr<float>();
      for (int64_t s = 0; s < steps; ++s) {
        const int64_t t = d == 0 ? s : steps - 1 - s;
        // The rows of one step are evenly spaced in both layouts: row(b, t) = row(0, t) + b * stride.
        const int64_t stride = batch_first ? steps : 1;
        rows_parallel(h_data, w_hh, b_hh, projection_data + row(0, t) * 4 * hidden, stride * 4 * hidden, gates_data,
                      batch, 4 * hidden, hidden);
        lstm_cell_avx2(gates_data, c_data, h_data, out_data + row(0, t) * directions * hidden + d * hidden,
                       stride * directions * hidden, batch, hidden);
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

bool rowwise_kernels_available() { return cpu_has_kernel(); }

int rewrite_rowwise(torch::jit::Graph& graph) {
  static const c10::Symbol linear = c10::Symbol::fromQualString("aten::linear");
  static const c10::Symbol rowwise = c10::Symbol::fromQualString("torchbridge::rowwise_linear");
  static const c10::Symbol lstm = c10::Symbol::fromQualString("aten::lstm");
  static const c10::Symbol rowwise_lstm_op = c10::Symbol::fromQualString("torchbridge::rowwise_lstm");
  const auto constant_float = [](torch::jit::Value* value, int64_t dim) {
    if (value->node()->kind() != c10::prim::Constant) return false;
    const std::optional<c10::IValue> constant = torch::jit::toIValue(value);
    if (!constant || !constant->isTensor()) return false;
    const at::Tensor& tensor = constant->toTensor();
    return tensor.device().is_cpu() && tensor.scalar_type() == at::kFloat && tensor.dim() == dim &&
           tensor.is_contiguous() && tensor.layout() == at::kStrided;
  };
  std::vector<std::pair<torch::jit::Node*, c10::Symbol>> found;
  for (torch::jit::Node* node : graph.nodes()) {  // frozen and inlined: these calls are top level
    if (node->kind() == linear && node->inputs().size() == 3) {
      torch::jit::Value* bias = node->input(2);
      const bool no_bias =
          bias->node()->kind() == c10::prim::Constant && bias->type()->kind() == c10::TypeKind::NoneType;
      if (constant_float(node->input(1), 2) && (no_bias || constant_float(bias, 1))) found.emplace_back(node, rowwise);
    } else if (node->kind() == lstm && node->inputs().size() == 9 && node->outputs().size() == 3 &&
               node->input(1)->type()->kind() == c10::TypeKind::ListType &&  // lstm.input, not lstm.data
               node->input(2)->node()->kind() == c10::prim::Constant) {
      found.emplace_back(node, rowwise_lstm_op);
    }
  }
  for (const auto& [node, kind] : found) {
    torch::jit::Node* replacement = graph.create(kind, node->inputs(), node->outputs().size());
    replacement->insertBefore(node);
    for (size_t i = 0; i < node->outputs().size(); ++i) {
      replacement->output(i)->setType(node->output(i)->type());
      node->output(i)->replaceAllUsesWith(replacement->output(i));
    }
    node->destroy();
  }
  return static_cast<int>(found.size());
}

}  // namespace torchbridge

TORCH_LIBRARY(torchbridge, m) {
  m.def("rowwise_linear(Tensor input, Tensor weight, Tensor? bias) -> Tensor");
  m.def(
      "rowwise_lstm(Tensor input, Tensor[] hx, Tensor[] params, bool has_biases, int num_layers, float dropout, "
      "bool train, bool bidirectional, bool batch_first) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(torchbridge, CPU, m) {
  m.impl("rowwise_linear", torchbridge::rowwise_linear);
  m.impl("rowwise_lstm", torchbridge::rowwise_lstm);
}
