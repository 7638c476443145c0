// y[n, out] = x[n, in] @ w[out, in]^T (* scale) (+ bias) for a few rows (n <= 16): speculative
// verification's projections. Each weight row is read once for all n rows (bfloat16, int8 or int4 weights
// are widened to float32 in registers; int8 rows carry a float32 scale, int4 groups of 32 one each), so
// checking n tokens costs about one read of the weights, like decoding one token.
// Row r's result is computed in the same order whatever n is: verifying n tokens gives bit-identical
// projections to decoding them one at a time.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <cstdint>

namespace {

#if defined(__AVX512F__)
constexpr int W = 16;
using vec = __m512;
inline vec vzero() { return _mm512_setzero_ps(); }
inline vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline vec vload(const uint16_t* p) {  // 16 bfloat16 -> 16 float32
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
inline vec vload(const int8_t* p) {  // 16 int8 -> 16 float32
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
}
inline vec vfma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
inline float vsum(vec a) { return _mm512_reduce_add_ps(a); }
#else  // AVX2 + FMA
constexpr int W = 8;
using vec = __m256;
inline vec vzero() { return _mm256_setzero_ps(); }
inline vec vload(const float* p) { return _mm256_loadu_ps(p); }
inline vec vload(const uint16_t* p) {  // 8 bfloat16 -> 8 float32
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
inline vec vload(const int8_t* p) {  // 8 int8 -> 8 float32
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
}
inline vec vfma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
inline float vsum(vec a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}
#endif

inline float scalar(float v) { return v; }
inline float scalar(int8_t v) { return float(v); }
inline float scalar(uint16_t v) {
  uint32_t bits = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Dense weights [out, in] of T.
template <typename T>
struct Dense {
  const T* w;
  int64_t in;
  vec load(int64_t o, int64_t i) const { return vload(w + o * in + i); }
  float at(int64_t o, int64_t i) const { return scalar(w[o * in + i]); }
};

// 4-bit weights: value = (nibble - 8) * scale of its group of 32 along `in`. Each 16 values of a row take
// 8 bytes: byte k holds value k in its low nibble and value k + 8 in its high one. `in` is a multiple of 32.
constexpr int64_t INT4_GROUP = 32;
struct Int4 {
  const uint8_t* q;      // [out, in / 2]
  const float* scales;   // [out, in / 32]
  int64_t in;
  float group_scale(int64_t o, int64_t i) const { return scales[o * (in / INT4_GROUP) + i / INT4_GROUP]; }
  vec load(int64_t o, int64_t i) const {  // i: a multiple of W
    const __m128i bytes = _mm_loadl_epi64((const __m128i*)(q + o * (in / 2) + i / 16 * 8));
    const __m128i low = _mm_and_si128(bytes, _mm_set1_epi8(0x0F));
    const __m128i high = _mm_and_si128(_mm_srli_epi16(bytes, 4), _mm_set1_epi8(0x0F));
#if defined(__AVX512F__)
    const __m512i v = _mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm_unpacklo_epi64(low, high)), _mm512_set1_epi32(8));
    return _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_set1_ps(group_scale(o, i)));
#else
    const __m256i v = _mm256_sub_epi32(_mm256_cvtepu8_epi32(i % 16 ? high : low), _mm256_set1_epi32(8));
    return _mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_set1_ps(group_scale(o, i)));
#endif
  }
  float at(int64_t o, int64_t i) const {
    const uint8_t byte = q[o * (in / 2) + i / 16 * 8 + i % 8];
    return float(int((i % 16 < 8 ? byte : byte >> 4) & 0x0F) - 8) * group_scale(o, i);
  }
};

#if defined(__AVX512F__)
constexpr int REGISTERS = 32;
#else
constexpr int REGISTERS = 16;
#endif

// Outputs o..o+R-1 for all N rows. R weight rows share each load of x: R*N accumulators in registers.
// Each (output, row) pair sums over `in` in the same order for any N and R.
template <int N, int R, typename Weights>
inline void block(const float* x, const Weights& w, const float* scale, const float* bias, float* y, int64_t in,
                  int64_t out, int64_t o) {
  const int64_t body = in / W * W;
  vec acc[R][N];
  for (int j = 0; j < R; ++j)
    for (int r = 0; r < N; ++r) acc[j][r] = vzero();
  for (int64_t i = 0; i < body; i += W) {
    vec wv[R];
#pragma GCC unroll 8
    for (int j = 0; j < R; ++j) wv[j] = w.load(o + j, i);
#pragma GCC unroll 16
    for (int r = 0; r < N; ++r) {
      const vec xv = vload(x + r * in + i);
#pragma GCC unroll 8
      for (int j = 0; j < R; ++j) acc[j][r] = vfma(xv, wv[j], acc[j][r]);
    }
  }
  for (int j = 0; j < R; ++j) {
    for (int r = 0; r < N; ++r) {
      float s = vsum(acc[j][r]);
      for (int64_t i = body; i < in; ++i) s += x[r * in + i] * w.at(o + j, i);
      y[r * out + o + j] = (scale ? s * scale[o + j] : s) + (bias ? bias[o + j] : 0.0f);
    }
  }
}

template <int N, typename Weights>
void rows_kernel(const float* x, const Weights& w, const float* scale, const float* bias, float* y, int64_t in,
                 int64_t out) {
  constexpr int R0 = (REGISTERS - 2) / (N + 1);
  constexpr int R = R0 < 1 ? 1 : (R0 > 8 ? 8 : R0);
  at::parallel_for(0, (out + R - 1) / R, 4, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t o = b * R;
      if (o + R <= out) {
        block<N, R>(x, w, scale, bias, y, in, out, o);
      } else {
        for (int64_t k = o; k < out; ++k) block<N, 1>(x, w, scale, bias, y, in, out, k);
      }
    }
  });
}

template <typename Weights>
void dispatch(int64_t n, const float* x, const Weights& w, const float* scale, const float* b, float* y, int64_t in,
              int64_t out) {
  switch (n) {
#define CASE(k) case k: return rows_kernel<k>(x, w, scale, b, y, in, out);
    CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
    CASE(9) CASE(10) CASE(11) CASE(12) CASE(13) CASE(14) CASE(15) CASE(16)
#undef CASE
  }
  TORCH_CHECK(false, "small_rows_linear takes 1 to 16 rows, got ", n);
}

}  // namespace

// x: [n, in] (any float dtype); weight: [out, in] float32, bfloat16 or int8, or [out, in / 2] uint8 (int4,
// packed as `Int4` says), contiguous; scale: float32, [out] for int8 weights, [out, in / 32] for int4;
// bias: [out] or None. Returns [n, out] in x's dtype.
torch::Tensor small_rows_linear(torch::Tensor x, torch::Tensor weight, c10::optional<torch::Tensor> bias,
                                c10::optional<torch::Tensor> scale) {
  const bool int4 = weight.scalar_type() == torch::kByte;
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1) * (int4 ? 2 : 1),
              "shapes do not match");
  TORCH_CHECK(weight.is_contiguous(), "weight must be contiguous");
  const int64_t n = x.size(0), in = x.size(1), out = weight.size(0);
  auto xf = x.to(torch::kFloat32).contiguous();
  torch::Tensor bf, sf;
  if (bias.has_value()) bf = bias->to(torch::kFloat32).contiguous();
  if (scale.has_value()) sf = scale->to(torch::kFloat32).contiguous();
  const float* b = bias.has_value() ? bf.data_ptr<float>() : nullptr;
  const float* s = scale.has_value() ? sf.data_ptr<float>() : nullptr;
  auto y = torch::empty({n, out}, xf.options());
  const float* xp = xf.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  switch (weight.scalar_type()) {
    case torch::kBFloat16:
      dispatch(n, xp, Dense<uint16_t>{reinterpret_cast<const uint16_t*>(weight.data_ptr<at::BFloat16>()), in}, s,
               b, yp, in, out);
      break;
    case torch::kFloat32:
      dispatch(n, xp, Dense<float>{weight.data_ptr<float>(), in}, s, b, yp, in, out);
      break;
    case torch::kChar:
      TORCH_CHECK(s != nullptr && sf.numel() == out, "int8 weights need a scale per output");
      dispatch(n, xp, Dense<int8_t>{weight.data_ptr<int8_t>(), in}, s, b, yp, in, out);
      break;
    case torch::kByte:
      TORCH_CHECK(in % INT4_GROUP == 0, "int4 weights need in_features divisible by ", INT4_GROUP);
      TORCH_CHECK(s != nullptr && sf.numel() == out * (in / INT4_GROUP), "int4 weights need a scale per group");
      dispatch(n, xp, Int4{weight.data_ptr<uint8_t>(), s, in}, nullptr, b, yp, in, out);
      break;
    default:
      TORCH_CHECK(false, "weight must be float32, bfloat16, int8 or packed int4 (uint8)");
  }
  return y.to(x.scalar_type());
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("small_rows_linear", &small_rows_linear); }
