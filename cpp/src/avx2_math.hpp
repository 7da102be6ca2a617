// AVX2 math shared by torchbridge's kernels (rowwise.cpp, packed_gemm.cpp, depthwise.cpp): exp and
// SiLU of eight floats. Functions carry their own target attribute, so callers need not be built
// for AVX2; call them only where rowwise_kernels_available().
#pragma once

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <cmath>

namespace torchbridge {

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

// SiLU of 8 values, x * logistic(x), the logistic function as a rational function of x clamped to
// [-18, 18] (an odd numerator of degree 9 over an even denominator of degree 10, plus 1/2: the
// approximation Eigen uses, and onnxruntime's MLAS after it). It costs about three quarters of
// x / (1 + exp(-x)) through exp_avx2 (no range reduction, no integer steps). The logistic comes
// within about 1.5e-7 of its value, so SiLU within 1-2 ulp where x > -1 and within 2.5e-6 in
// absolute terms below (where SiLU is under 0.28 in magnitude); below -18, where SiLU is under 3e-7
// in magnitude, it is 0. NaN passes through (min and max return their second operand when either
// is NaN); x = -inf, whose SiLU is -inf / inf = NaN in ATen, is set apart.
__attribute__((target("avx2,fma"))) inline __m256 silu8(__m256 v) {
  const __m256 x = _mm256_max_ps(_mm256_set1_ps(-18.0f), _mm256_min_ps(_mm256_set1_ps(18.0f), v));
  const __m256 x2 = _mm256_mul_ps(x, x);
  __m256 p = _mm256_fmadd_ps(x2, _mm256_set1_ps(4.37031012579801e-11f), _mm256_set1_ps(1.15627324459942e-07f));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(6.08574864600143e-05f));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(8.51377133304701e-03f));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(2.48287947061529e-01f));
  p = _mm256_mul_ps(p, x);
  __m256 q = _mm256_fmadd_ps(x2, _mm256_set1_ps(6.10247389755681e-13f), _mm256_set1_ps(5.76102136993427e-09f));
  q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(6.29106785017040e-06f));
  q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(1.70198817374094e-03f));
  q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(1.16817656904453e-01f));
  q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(9.93151921023180e-01f));
  __m256 y = _mm256_mul_ps(v, _mm256_add_ps(_mm256_div_ps(p, q), _mm256_set1_ps(0.5f)));
  y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(v, _mm256_set1_ps(-18.0f), _CMP_LT_OQ));
  return _mm256_blendv_ps(y, _mm256_set1_ps(NAN), _mm256_cmp_ps(v, _mm256_set1_ps(-INFINITY), _CMP_EQ_OQ));
}

}  // namespace torchbridge

#endif
