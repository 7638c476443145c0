// Vector helpers for the CPU kernels: one 512-bit (AVX-512) or 256-bit (AVX2 + FMA) float vector type and
// the loads that widen bfloat16, float16, int8 and packed int4 weights to it.
#pragma once
#include <immintrin.h>
#include <cstdint>
#include <algorithm>
#include <cstring>

namespace specdecode {

#if defined(__AVX512F__)
constexpr int W = 16;                  // floats a vector
constexpr int REGISTERS = 32;
constexpr int PANEL_VECTORS = 1;       // PW = 16 outputs a panel
constexpr int GROUP = 8;               // rows a register tile
using vec = __m512;
inline vec vzero() { return _mm512_setzero_ps(); }
inline vec vset(float v) { return _mm512_set1_ps(v); }
inline vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, vec v) { _mm512_storeu_ps(p, v); }
inline vec vload(const uint16_t* p) {  // 16 bfloat16 -> 16 float32
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
inline vec vload(const int8_t* p) {  // 16 int8 -> 16 float32
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
}
inline vec vload_half(const uint16_t* p) {  // 16 float16 -> 16 float32
  return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p));
}
inline void vstore(uint16_t* p, vec v) {  // 16 float32 -> 16 bfloat16, rounded as torch rounds: to nearest,
  // ties to even, any NaN -> 0x7FC0
  const __m512i bits = _mm512_castps_si512(v), one = _mm512_set1_epi32(1);
  const __m512i bias = _mm512_add_epi32(_mm512_and_si512(_mm512_srli_epi32(bits, 16), one), _mm512_set1_epi32(0x7FFF));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, bias), 16);
  const __m512i bf16 = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), rounded, _mm512_set1_epi32(0x7FC0));
  _mm256_storeu_si256((__m256i*)p, _mm512_cvtepi32_epi16(bf16));
}
inline vec vfma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
inline vec vmul(vec a, vec b) { return _mm512_mul_ps(a, b); }
inline vec vadd(vec a, vec b) { return _mm512_add_ps(a, b); }
inline vec vsub(vec a, vec b) { return _mm512_sub_ps(a, b); }
inline vec vdiv(vec a, vec b) { return _mm512_div_ps(a, b); }
inline vec vmax(vec a, vec b) { return _mm512_max_ps(a, b); }
inline vec vmin(vec a, vec b) { return _mm512_min_ps(a, b); }
inline vec vround(vec a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline vec vpow2(vec n) { return _mm512_scalef_ps(vset(1.0f), n); }  // 2^n for integral n
inline float vsum(vec a) { return _mm512_reduce_add_ps(a); }
inline float vmaximum(vec a) { return _mm512_reduce_max_ps(a); }
inline float vfirst(vec a) { return _mm512_cvtss_f32(a); }
inline vec nibbles(const uint8_t* p) {  // 8 bytes -> lanes 0..7 low nibbles, 8..15 high, minus 8
  const __m128i bytes = _mm_loadl_epi64((const __m128i*)p);
  const __m128i low = _mm_and_si128(bytes, _mm_set1_epi8(0x0F));
  const __m128i high = _mm_and_si128(_mm_srli_epi16(bytes, 4), _mm_set1_epi8(0x0F));
  const __m512i v = _mm512_cvtepu8_epi32(_mm_unpacklo_epi64(low, high));
  return _mm512_cvtepi32_ps(_mm512_sub_epi32(v, _mm512_set1_epi32(8)));
}
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__BMI2__)
#define SPECDECODE_INT8_ROWS 1  // integer dot products for block weights against int8 rows
#endif
#if defined(__AVX512BF16__)
#define SPECDECODE_BF16_PAIRS 1  // the CPU's bfloat16 dot product: two inputs a step for bfloat16 rows
using pairs = __m512bh;          // W pairs of bfloat16
inline pairs interleave(__m512i halves) {  // [2][W] 16-bit values -> lane k: (halves[0][k], halves[1][k])
  const __m512i lanes = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                         21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return (pairs)_mm512_permutexvar_epi16(lanes, halves);
}
inline pairs vload_pairs(const uint16_t* p) {  // [2][W] bfloat16 (inputs i, i + 1) -> lane k: (w[i][k], w[i+1][k])
  return interleave(_mm512_loadu_si512(p));
}
inline pairs vset_pair(const uint16_t* p) {  // (p[0], p[1]) in every lane
  int32_t both;
  std::memcpy(&both, p, 4);
  return (pairs)_mm512_set1_epi32(both);
}
inline pairs vpair(vec a, vec b) {  // lane k: (a[k], b[k]) rounded to bfloat16 (exact for small integers)
  return interleave((__m512i)_mm512_cvtne2ps_pbh(b, a));
}
inline vec vdot(pairs a, pairs b, vec acc) { return _mm512_dpbf16_ps(acc, a, b); }  // acc + a.lo b.lo + a.hi b.hi
#endif
#else  // AVX2 + FMA
constexpr int W = 8;
constexpr int REGISTERS = 16;
constexpr int PANEL_VECTORS = 2;       // PW = 16
constexpr int GROUP = 6;
using vec = __m256;
inline vec vzero() { return _mm256_setzero_ps(); }
inline vec vset(float v) { return _mm256_set1_ps(v); }
inline vec vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, vec v) { _mm256_storeu_ps(p, v); }
inline vec vload(const uint16_t* p) {  // 8 bfloat16 -> 8 float32
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
inline vec vload(const int8_t* p) {  // 8 int8 -> 8 float32
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
}
inline vec vload_half(const uint16_t* p) {  // 8 float16 -> 8 float32
  return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p));
}
inline void vstore(uint16_t* p, vec v) {  // 8 float32 -> 8 bfloat16, rounded as torch rounds: to nearest,
  // ties to even, any NaN -> 0x7FC0
  const __m256i bits = _mm256_castps_si256(v), one = _mm256_set1_epi32(1);
  const __m256i bias = _mm256_add_epi32(_mm256_and_si256(_mm256_srli_epi32(bits, 16), one), _mm256_set1_epi32(0x7FFF));
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, bias), 16);
  const __m256i bf16 = _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC0),
                                          _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
  _mm_storeu_si128((__m128i*)p, _mm_packus_epi32(_mm256_castsi256_si128(bf16), _mm256_extracti128_si256(bf16, 1)));
}
inline vec vfma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
inline vec vmul(vec a, vec b) { return _mm256_mul_ps(a, b); }
inline vec vadd(vec a, vec b) { return _mm256_add_ps(a, b); }
inline vec vsub(vec a, vec b) { return _mm256_sub_ps(a, b); }
inline vec vdiv(vec a, vec b) { return _mm256_div_ps(a, b); }
inline vec vmax(vec a, vec b) { return _mm256_max_ps(a, b); }
inline vec vmin(vec a, vec b) { return _mm256_min_ps(a, b); }
inline vec vround(vec a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline vec vpow2(vec n) {  // 2^n for integral n in [-126, 127]
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
}
inline float vfirst(vec a) { return _mm256_cvtss_f32(a); }
inline float vmaximum(vec a) {  // max is exact: any order gives the same
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
}
inline float vsum(vec a) {  // lanes summed in a fixed order
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}
inline vec nibbles(const uint8_t* p) {  // 4 bytes -> lanes 0..3 low nibbles, 4..7 high, minus 8
  int32_t word;
  std::memcpy(&word, p, 4);
  const __m128i bytes = _mm_cvtsi32_si128(word);
  const __m128i low = _mm_and_si128(bytes, _mm_set1_epi8(0x0F));
  const __m128i high = _mm_and_si128(_mm_srli_epi16(bytes, 4), _mm_set1_epi8(0x0F));
  const __m256i v = _mm256_cvtepu8_epi32(_mm_unpacklo_epi32(low, high));
  return _mm256_cvtepi32_ps(_mm256_sub_epi32(v, _mm256_set1_epi32(8)));
}
#endif

// Lanes [0, count) from p, zeros past them (0 < count <= W).
inline vec vload_first(const float* p, int64_t count) {
  if (count == W) return vload(p);
  float lanes[W] = {};
  std::copy(p, p + count, lanes);
  return vload(lanes);
}

// Lanes [0, count) of v to p (0 < count <= W); T float or uint16_t (bfloat16 bits).
template <typename T>
inline void vstore_first(T* p, vec v, int64_t count) {
  if (count == W) return vstore(p, v);
  T lanes[W];
  vstore(lanes, v);
  std::copy(lanes, lanes + count, p);
}

// e^x lane by lane, x clamped to [-87, 88] (no subnormals, no overflow past float's range):
// 2^k * e^r with k = round(x / ln 2), |r| <= ln 2 / 2, e^r by a degree-6 polynomial (about 1 ulp).
inline vec vexp(vec x) {
  x = vmin(vmax(x, vset(-87.0f)), vset(88.0f));
  const vec k = vround(vmul(x, vset(1.44269504f)));
  vec r = vfma(k, vset(-0.693359375f), x);
  r = vfma(k, vset(2.12194440e-4f), r);
  vec p = vset(1.9875691500e-4f);
  p = vfma(p, r, vset(1.3981999507e-3f));
  p = vfma(p, r, vset(8.3334519073e-3f));
  p = vfma(p, r, vset(4.1665795894e-2f));
  p = vfma(p, r, vset(1.6666665459e-1f));
  p = vfma(p, r, vset(5.0000001201e-1f));
  p = vfma(p, vmul(r, r), vadd(r, vset(1.0f)));
  return vmul(p, vpow2(k));
}

}  // namespace specdecode
