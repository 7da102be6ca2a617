// torchbridge::rowwise_linear: aten::linear for an input of a few rows (batch 1 of an MLP or a
// classifier head), and the graph pass behind the runtime's "rowwise_linear" variant.
//
// With one row, a linear layer is a matrix-vector product: its time is the time to stream the weight
// from memory once. MKL's and oneDNN's kernels do not reach the memory bandwidth on every CPU (on AMD
// EPYC Zen 4 they stream a 4 MiB weight at about two thirds of the rate of a plain sum over it), so
// this kernel reads four weight rows at a time against each input row, which keeps the bandwidth.
// Larger inputs, other dtypes and CPUs without AVX2+FMA (or ATen capped below AVX2) go to at::linear.
// Export times the variant against the others; the runtime checks it at every shape like them.
#include "rowwise_linear.hpp"

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
__attribute__((target("avx2,fma"))) void rows_avx2(const float* in, const float* weight, const float* bias,
                                                   float* out, int64_t rows, int64_t n_out, int64_t k_in,
                                                   int64_t begin, int64_t end) {
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
      float* y = out + m * n_out + n;
      y[0] = s0 + (bias ? bias[n] : 0.0f);
      y[1] = s1 + (bias ? bias[n + 1] : 0.0f);
      y[2] = s2 + (bias ? bias[n + 2] : 0.0f);
      y[3] = s3 + (bias ? bias[n + 3] : 0.0f);
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
      out[m * n_out + n] = s0 + (bias ? bias[n] : 0.0f);
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
  return rows >= 1 && rows <= kRowwiseLinearMaxRows;
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
  float* out_data = out.mutable_data_ptr<float>();
  // A thread's share: at least 256 KiB of weight, in blocks of four rows.
  const int64_t grain = std::max<int64_t>(4, ((int64_t{1} << 16) / k_in + 3) / 4 * 4);
  at::parallel_for(0, (n_out + 3) / 4, std::max<int64_t>(1, grain / 4), [&](int64_t first, int64_t last) {
    rows_avx2(in_data, weight_data, bias_data, out_data, rows, n_out, k_in, first * 4, std::min(last * 4, n_out));
  });
  return out;
#else
  return at::linear(input, weight, bias);
#endif
}

}  // namespace

bool rowwise_linear_kernel_available() { return cpu_has_kernel(); }

int rewrite_rowwise_linear(torch::jit::Graph& graph) {
  static const c10::Symbol linear = c10::Symbol::fromQualString("aten::linear");
  static const c10::Symbol rowwise = c10::Symbol::fromQualString("torchbridge::rowwise_linear");
  const auto constant_float = [](torch::jit::Value* value, int64_t dim) {
    if (value->node()->kind() != c10::prim::Constant) return false;
    const std::optional<c10::IValue> constant = torch::jit::toIValue(value);
    if (!constant || !constant->isTensor()) return false;
    const at::Tensor& tensor = constant->toTensor();
    return tensor.device().is_cpu() && tensor.scalar_type() == at::kFloat && tensor.dim() == dim &&
           tensor.is_contiguous() && tensor.layout() == at::kStrided;
  };
  std::vector<torch::jit::Node*> found;
  for (torch::jit::Node* node : graph.nodes()) {  // frozen and inlined: linear calls are top level
    if (node->kind() != linear || node->inputs().size() != 3) continue;
    torch::jit::Value* bias = node->input(2);
    const bool no_bias = bias->node()->kind() == c10::prim::Constant && bias->type()->kind() == c10::TypeKind::NoneType;
    if (constant_float(node->input(1), 2) && (no_bias || constant_float(bias, 1))) found.push_back(node);
  }
  for (torch::jit::Node* node : found) {
    torch::jit::Node* replacement = graph.create(rowwise, node->inputs(), 1);
    replacement->insertBefore(node);
    replacement->output()->setType(node->output()->type());
    node->output()->replaceAllUsesWith(replacement->output());
    node->destroy();
  }
  return static_cast<int>(found.size());
}

}  // namespace torchbridge

TORCH_LIBRARY(torchbridge, m) {
  m.def("rowwise_linear(Tensor input, Tensor weight, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(torchbridge, CPU, m) { m.impl("rowwise_linear", torchbridge::rowwise_linear); }
