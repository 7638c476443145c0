// y[n, out] = x[n, in] @ W^T (+ bias) for weights kept as llama.cpp's quantized blocks (GGUF files: Q4_0,
// Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K), repacked without changing a single weight:
//   W[o, i] = d[o, i / SB] * scale[o, i / G] * code[o, i] + dmin[o, i / SB] * min[o, i / G]
// with integer codes (4, 5 or 6 bits unsigned, or 8 bits signed), integer group scales and minimums every G
// inputs (absent, that is 1, when SB = G) and float16 factors every SB inputs (BlockWeights in kernels.h;
// specdecode/gguf_blocks.py makes them from a file's blocks). Output o of row r is computed as
//   sum over groups g of  s[o, g] * (sum_{i in g} x[r, i] * code[o, i])  +  m[o, g] * (sum_{i in g} x[r, i])
// with s = d * scale and m = dmin * min: the codes meet the inputs as small integers and each group's factors
// come in once. Weights are in panels of 16 outputs as in small_rows_linear.cpp, each weight read once for all
// rows, and every row is computed by the same operations in the same order whatever the number of rows:
// verifying n tokens gives each the bits of decoding it alone.
// Three ways to multiply, one chosen per process (block_rows()):
// - int8 rows (AVX512_VNNI; the default where it is built): each row is quantized to int8 every 32 inputs
//   (scale = max |x| / 127, as llama.cpp quantizes activations for these formats), and each group's sum of
//   code x row products is an exact integer, four products a lane an instruction (signed 8-bit codes enter
//   as code + 128, the 128 taken back through the group's input sum);
// - bfloat16 rows (AVX512_BF16): the codes become bfloat16 exactly: an unsigned code c < 128 is the bfloat16
//   whose bits are 0x4300 | c, that is 128 + c (the 128 is taken back through the group's input sum); a code's
//   bits past the fourth are added from bit planes through a lane mask; a signed 8-bit code goes through
//   float32. One dot-product instruction takes two inputs a step;
// - float32 rows (elsewhere): the codes are decoded to float32 vectors, one
//   fused multiply-add an input.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <cpuid.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels.h"
#include "simd.h"

namespace specdecode {
namespace {

constexpr int PW = PANEL_VECTORS * W;  // outputs a panel (16)
static_assert(PW == BLOCK_PANEL, "the block layout is made for panels of 16 outputs");
constexpr int64_t CHUNK_BYTES = 24 << 10;    // codes of one chunk of superblocks kept in L1 (n > GROUP)
constexpr int64_t PREFETCH_BYTES = 1024;     // how far ahead in a panel's codes to prefetch

// Code layouts (the step: what one load of a panel's codes covers).
enum class Codes { Nibbles, Signed8 };

// A panel-major view of BlockWeights' tensors.
struct Blocks {
  const uint8_t* codes;         // [panels, in / step, step_bytes]
  const int8_t *scales, *mins;  // [panels, in / G, PW] or null (SB = G: every scale and minimum 1)
  const uint16_t *d, *dmin;     // float16 [panels, in / SB, PW]
  int64_t in, group, superblock, planes, step, step_bytes;
  int64_t groups() const { return in / group; }
  const uint8_t* at(int64_t p, int64_t i) const { return codes + (p * (in / step) + i / step) * step_bytes; }
  // The group's factors for W outputs from output v * W of panel p: s = d * scale, m = dmin * min - offset * s.
  void factors(int64_t p, int64_t g, int v, vec offset, vec& s, vec& m) const {
    const int64_t sb = (p * (in / superblock) + g * group / superblock) * PW + v * W;
    s = vload_half(d + sb);
    m = vload_half(dmin + sb);
    if (scales) {
      const int64_t k = (p * groups() + g) * PW + v * W;
      s = vmul(s, vload(scales + k));
      m = vmul(m, vload(mins + k));
    }
    m = vsub(m, vmul(offset, s));
  }
  // Codes of one step as float32: values[t][k] = code of input i + t, output k.
  void decode(int64_t p, int64_t i, float values[4][PW]) const {
    const uint8_t* b = at(p, i);
    for (int k = 0; k < PW; ++k)
      for (int t = 0; t < 2; ++t) {
        const int j = 2 * k + t;
        if (step == 2) {
          values[t][k] = float(int8_t(b[j]));
          continue;
        }
        int low = b[j] & 0x0F, high = b[j] >> 4;
        for (int64_t bit = 0; bit < planes; ++bit) {
          const uint8_t* plane = b + 32 + 8 * bit;
          low |= ((plane[j / 8] >> (j % 8)) & 1) << (4 + bit);
          high |= ((plane[4 + j / 8] >> (j % 8)) & 1) << (4 + bit);
        }
        values[t][k] = float(low);
        values[t + 2][k] = float(high);
      }
  }
};

// Panels a tile of N rows holds: float and bfloat16 rows keep N * NP accumulators twice (the group's and the
// total), NP factor pairs and operand pairs in registers; int8 rows keep only the group's integer sums there
// (the totals, touched once a group, stay in memory), so that up to 8 rows still share 2 panels' codes.
template <int N, typename X>
constexpr int block_panels_per_tile() {
  const int np = std::is_same_v<X, int8_t> ? (REGISTERS - 1) / (N + 3) : (REGISTERS - 4) / (2 * N + 4);
  return np < 1 ? 1 : (np > 4 ? 4 : np);
}

#ifdef SPECDECODE_BF16_PAIRS
// Codes of one step as bfloat16 pairs: op[0] for inputs (i, i + 1), op[1] for (i + 2, i + 3) (nibbles only).
template <Codes C, int PLANES>
inline void decode_pairs(const uint8_t* b, pairs op[2]) {
  if constexpr (C == Codes::Nibbles) {
    const __m512i bias = _mm512_set1_epi16(0x4300);  // 128 + c as bfloat16 bits
    const __m512i words = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)b));
    __m512i lo = _mm512_ternarylogic_epi32(words, _mm512_set1_epi16(0x000F), bias, 0xEA);  // (a & b) | c
    __m512i hi = _mm512_or_si512(_mm512_srli_epi16(words, 4), bias);
    for (int bit = 0; bit < PLANES; ++bit) {  // bit 4 + bit of each code, one mask bit a lane
      const __m512i add = _mm512_set1_epi16(int16_t(16 << bit));
      lo = _mm512_mask_add_epi16(lo, _load_mask32((__mmask32*)(b + 32 + 8 * bit)), lo, add);
      hi = _mm512_mask_add_epi16(hi, _load_mask32((__mmask32*)(b + 36 + 8 * bit)), hi, add);
    }
    op[0] = (pairs)lo;
    op[1] = (pairs)hi;
  } else {
    const vec lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)b)));
    const vec hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(b + 16))));
    op[0] = _mm512_cvtne2ps_pbh(hi, lo);
  }
}

// Superblocks [sb0, sb1) of panels p..p+NP-1 for bfloat16 rows x[0..N) into acc [NP, N, PW].
template <int N, int NP, Codes C, int PLANES>
void pairs_tile(const Blocks& w, const uint16_t* x, const float* xsum, int64_t p, int64_t sb0, int64_t sb1,
                float* acc_buf, bool first) {
  constexpr int STEP = C == Codes::Nibbles ? 4 : 2, OPS = STEP / 2;
  const vec offset = vset(C == Codes::Nibbles ? 128.0f : 0.0f);
  const int64_t groups = w.groups(), in = w.in;
  vec acc[N][NP];
  for (int r = 0; r < N; ++r)
    for (int q = 0; q < NP; ++q) acc[r][q] = first ? vzero() : vload(acc_buf + (q * N + r) * PW);
  for (int64_t g = sb0 * w.superblock / w.group; g < sb1 * w.superblock / w.group; ++g) {
    vec s[NP], m[NP], gacc[N][NP];
    for (int q = 0; q < NP; ++q) w.factors(p + q, g, 0, offset, s[q], m[q]);
    for (int r = 0; r < N; ++r)
      for (int q = 0; q < NP; ++q) gacc[r][q] = vzero();
    for (int64_t i = g * w.group; i < (g + 1) * w.group; i += STEP) {
      pairs op[NP][2];
#pragma GCC unroll 4
      for (int q = 0; q < NP; ++q) {
        const uint8_t* b = w.at(p + q, i);
        _mm_prefetch((const char*)b + PREFETCH_BYTES, _MM_HINT_T0);
        decode_pairs<C, PLANES>(b, op[q]);
      }
#pragma GCC unroll 8
      for (int r = 0; r < N; ++r)
#pragma GCC unroll 2
        for (int o = 0; o < OPS; ++o) {
          const pairs xb = vset_pair(x + r * in + i + 2 * o);
#pragma GCC unroll 4
          for (int q = 0; q < NP; ++q) gacc[r][q] = vdot(xb, op[q][o], gacc[r][q]);
        }
    }
    for (int r = 0; r < N; ++r) {
      const vec total = vset(xsum[r * groups + g]);
      for (int q = 0; q < NP; ++q) acc[r][q] = vfma(m[q], total, vfma(s[q], gacc[r][q], acc[r][q]));
    }
  }
  for (int r = 0; r < N; ++r)
    for (int q = 0; q < NP; ++q) vstore(acc_buf + (q * N + r) * PW, acc[r][q]);
}
#endif

// Codes of one step as float32 vectors: values[t][v] = the codes of input i + t for outputs v * W.., through
// the vector unit where the layout allows it (AVX-512), else one code at a time.
template <Codes C, int PLANES>
inline void decode_floats(const Blocks& w, int64_t p, int64_t i, vec values[4][PANEL_VECTORS]) {
#if defined(__AVX512F__) && defined(__BMI2__)
  const uint8_t* b = w.at(p, i);
  const __m512i lanes = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)b));  // b[2k] | b[2k + 1] << 8
  if constexpr (C == Codes::Nibbles) {
    const __m512i low = _mm512_set1_epi32(0x0F);
    __m512i in[4] = {_mm512_and_si512(lanes, low), _mm512_and_si512(_mm512_srli_epi32(lanes, 8), low),
                     _mm512_and_si512(_mm512_srli_epi32(lanes, 4), low),
                     _mm512_and_si512(_mm512_srli_epi32(lanes, 12), low)};
    for (int bit = 0; bit < PLANES; ++bit) {  // mask bit 2k + t of plane half h is input 2h + t, output k
      const __m512i add = _mm512_set1_epi32(16 << bit);
      for (int h = 0; h < 2; ++h) {
        uint32_t mask;
        std::memcpy(&mask, b + 32 + 8 * bit + 4 * h, 4);
        in[2 * h] = _mm512_mask_add_epi32(in[2 * h], __mmask16(_pext_u32(mask, 0x55555555u)), in[2 * h], add);
        in[2 * h + 1] =
            _mm512_mask_add_epi32(in[2 * h + 1], __mmask16(_pext_u32(mask, 0xAAAAAAAAu)), in[2 * h + 1], add);
      }
    }
    for (int t = 0; t < 4; ++t) values[t][0] = _mm512_cvtepi32_ps(in[t]);
  } else {
    values[0][0] = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(lanes, 24), 24));
    values[1][0] = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(lanes, 16), 24));
  }
#else
  alignas(64) float codes[4][PW];
  w.decode(p, i, codes);
  for (int t = 0; t < 4; ++t)
    for (int v = 0; v < PANEL_VECTORS; ++v) values[t][v] = vload(codes[t] + v * W);
#endif
}

// The same for float32 rows, one input a step, codes decoded to float32 (no offset).
template <int N, int NP, Codes C, int PLANES>
void float_tile(const Blocks& w, const float* x, const float* xsum, int64_t p, int64_t sb0, int64_t sb1,
                float* acc_buf, bool first) {
  constexpr int PV = PANEL_VECTORS, STEP = C == Codes::Nibbles ? 4 : 2;
  const int64_t groups = w.groups(), in = w.in;
  vec acc[N][NP][PV];
  for (int r = 0; r < N; ++r)
    for (int q = 0; q < NP; ++q)
      for (int v = 0; v < PV; ++v) acc[r][q][v] = first ? vzero() : vload(acc_buf + (q * N + r) * PW + v * W);
  for (int64_t g = sb0 * w.superblock / w.group; g < sb1 * w.superblock / w.group; ++g) {
    vec s[NP][PV], m[NP][PV], gacc[N][NP][PV];
    for (int q = 0; q < NP; ++q)
      for (int v = 0; v < PV; ++v) w.factors(p + q, g, v, vzero(), s[q][v], m[q][v]);
    for (int r = 0; r < N; ++r)
      for (int q = 0; q < NP; ++q)
        for (int v = 0; v < PV; ++v) gacc[r][q][v] = vzero();
    for (int64_t i = g * w.group; i < (g + 1) * w.group; i += STEP) {
#pragma GCC unroll 4
      for (int q = 0; q < NP; ++q) {
        vec values[4][PV];
        _mm_prefetch((const char*)w.at(p + q, i) + PREFETCH_BYTES, _MM_HINT_T0);
        decode_floats<C, PLANES>(w, p + q, i, values);
#pragma GCC unroll 4
        for (int t = 0; t < STEP; ++t)
#pragma GCC unroll 8
          for (int r = 0; r < N; ++r) {
            const vec xb = vset(x[r * in + i + t]);
            for (int v = 0; v < PV; ++v) gacc[r][q][v] = vfma(xb, values[t][v], gacc[r][q][v]);
          }
      }
    }
    for (int r = 0; r < N; ++r) {
      const vec total = vset(xsum[r * groups + g]);
      for (int q = 0; q < NP; ++q)
        for (int v = 0; v < PV; ++v) acc[r][q][v] = vfma(m[q][v], total, vfma(s[q][v], gacc[r][q][v], acc[r][q][v]));
    }
  }
  for (int r = 0; r < N; ++r)
    for (int q = 0; q < NP; ++q)
      for (int v = 0; v < PV; ++v) vstore(acc_buf + (q * N + r) * PW + v * W, acc[r][q][v]);
}

#ifdef SPECDECODE_INT8_ROWS
// Codes of one step (4 inputs) as bytes for the integer dot product: lane k holds codes (i, i+1, i+2, i+3) of
// output k; a code's bits past the fourth come from the bit planes through a byte mask.
template <int PLANES>
inline __m512i decode_bytes(const uint8_t* b) {
  const __m512i lanes = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)b));  // b[2k] | b[2k + 1] << 8
  // (c0 | c2 << 4) | (c1 | c3 << 4) << 8  ->  bytes c0, c1, c2, c3
  __m512i codes = _mm512_ternarylogic_epi32(lanes, _mm512_slli_epi32(lanes, 12), _mm512_set1_epi32(0x0F0F0F0F), 0xA8);  // (a | b) & c
  for (int bit = 0; bit < PLANES; ++bit) {  // plane halves: bit 2k + t is input t (first), input t + 2 (second)
    uint32_t first, second;
    std::memcpy(&first, b + 32 + 8 * bit, 4);
    std::memcpy(&second, b + 36 + 8 * bit, 4);
    const __mmask64 mask = _pdep_u64(first, 0x3333333333333333ull) | _pdep_u64(second, 0xCCCCCCCCCCCCCCCCull);
    codes = _mm512_mask_add_epi8(codes, mask, codes, _mm512_set1_epi8(char(16 << bit)));
  }
  return codes;
}

// Signed 8-bit codes of two steps (inputs i, i+1 then i+2, i+3) as unsigned bytes code + 128, lane k holding
// inputs i..i+3 of output k (the 128 is taken back through the group's input sum).
inline __m512i decode_signed_bytes(const uint8_t* b) {
  const __m512i first = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)b));
  const __m512i second = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(b + 32))), 16);
  return _mm512_ternarylogic_epi32(first, second, _mm512_set1_epi32(int(0x80808080u)), 0x56);  // (a | b) ^ c
}

// Superblocks [sb0, sb1) of panels p..p+NP-1 for int8 rows x[0..N) (each 32 inputs scaled by xscale) into acc.
// Each group's sum of code x row products is an exact integer; the group's factors and the row's scale
// come in once.
template <int N, int NP, Codes C, int PLANES>
void int8_tile(const Blocks& w, const int8_t* x, const float* xsum, const float* xscale, int64_t p, int64_t sb0,
               int64_t sb1, float* acc_buf, bool first) {
  const int64_t groups = w.groups(), in = w.in;
  const vec offset = vset(C == Codes::Signed8 ? 128.0f : 0.0f);
  if (first)
    for (int k = 0; k < N * NP * PW; k += W) vstore(acc_buf + k, vzero());
  for (int64_t g = sb0 * w.superblock / w.group; g < sb1 * w.superblock / w.group; ++g) {
    vec s[NP], m[NP];
    __m512i dots[N][NP];
    for (int q = 0; q < NP; ++q) w.factors(p + q, g, 0, offset, s[q], m[q]);
    for (int r = 0; r < N; ++r)
      for (int q = 0; q < NP; ++q) dots[r][q] = _mm512_setzero_si512();
    for (int64_t i = g * w.group; i < (g + 1) * w.group; i += 4) {
      __m512i codes[NP];
#pragma GCC unroll 4
      for (int q = 0; q < NP; ++q) {
        const uint8_t* b = w.at(p + q, i);
        _mm_prefetch((const char*)b + PREFETCH_BYTES, _MM_HINT_T0);
        if constexpr (C == Codes::Signed8) {
          _mm_prefetch((const char*)b + PREFETCH_BYTES + 64, _MM_HINT_T0);
          codes[q] = decode_signed_bytes(b);
        } else {
          codes[q] = decode_bytes<PLANES>(b);
        }
      }
#pragma GCC unroll 8
      for (int r = 0; r < N; ++r) {
        int32_t four;
        std::memcpy(&four, x + r * in + i, 4);
        const __m512i xb = _mm512_set1_epi32(four);
#pragma GCC unroll 4
        for (int q = 0; q < NP; ++q) dots[r][q] = _mm512_dpbusd_epi32(dots[r][q], codes[q], xb);
      }
    }
    for (int r = 0; r < N; ++r) {
      const vec scale = vset(xscale[r * groups + g]), total = vset(xsum[r * groups + g]);
      for (int q = 0; q < NP; ++q) {
        float* a = acc_buf + (q * N + r) * PW;
        vstore(a, vfma(m[q], total, vfma(vmul(s[q], scale), _mm512_cvtepi32_ps(dots[r][q]), vload(a))));
      }
    }
  }
}
#endif

// A tile of N rows and P panels, by the row type's path and the codes' layout.
template <int N, int P, typename X>
void tile(const Blocks& w, const X* x, const float* xsum, const float* xscale, int64_t p, int64_t sb0, int64_t sb1,
          float* acc, bool first) {
  auto run = [&](auto codes, auto planes) {
    constexpr Codes C = decltype(codes)::value;
    constexpr int PLANES = decltype(planes)::value;
#ifdef SPECDECODE_BF16_PAIRS
    if constexpr (std::is_same_v<X, uint16_t>) return pairs_tile<N, P, C, PLANES>(w, x, xsum, p, sb0, sb1, acc, first);
#endif
#ifdef SPECDECODE_INT8_ROWS
    if constexpr (std::is_same_v<X, int8_t>) return int8_tile<N, P, C, PLANES>(w, x, xsum, xscale, p, sb0, sb1, acc, first);
#endif
    if constexpr (std::is_same_v<X, float>) float_tile<N, P, C, PLANES>(w, x, xsum, p, sb0, sb1, acc, first);
  };
  using Nib = std::integral_constant<Codes, Codes::Nibbles>;
  if (w.step == 2) return run(std::integral_constant<Codes, Codes::Signed8>{}, std::integral_constant<int, 0>{});
  if (w.planes == 0) return run(Nib{}, std::integral_constant<int, 0>{});
  if (w.planes == 1) return run(Nib{}, std::integral_constant<int, 1>{});
  run(Nib{}, std::integral_constant<int, 2>{});
}

// One group of `rows` rows (1..GROUP) over `np` panels (np is 1 or the tile's panel count).
template <typename X>
void block_group(int rows, const Blocks& w, const X* x, const float* xsum, const float* xscale, int64_t p, int np,
                 int64_t sb0, int64_t sb1, float* acc, bool first) {
  auto run = [&](auto n_rows) {
    constexpr int N = decltype(n_rows)::value, NP = block_panels_per_tile<N, X>();
    if (np == NP) return tile<N, NP>(w, x, xsum, xscale, p, sb0, sb1, acc, first);
    for (int q = 0; q < np; ++q) tile<N, 1>(w, x, xsum, xscale, p + q, sb0, sb1, acc + q * N * PW, first);
  };
  switch (rows) {
#define CASE(k) \
  case k:        \
    if constexpr (k <= GROUP) return run(std::integral_constant<int, k>{}); \
    break;
    CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
#undef CASE
  }
}

template <typename X, int... N>
constexpr int tile_panels(int n, std::integer_sequence<int, N...>) {
  int np = 1;
  ((np = n == N ? block_panels_per_tile<N, X>() : np), ...);
  return np;
}

template <typename X, typename Y>
void block_kernel(int64_t n, const X* x, const float* xsum, const float* xscale, const Blocks& w, const float* bias,
                  Y* y, int64_t out) {
  const int64_t panels = (out + PW - 1) / PW, superblocks = w.in / w.superblock;
  const int np = tile_panels<X>(int(std::min<int64_t>(n, GROUP)), std::make_integer_sequence<int, 9>{});
  const int64_t sb_bytes = w.superblock / w.step * w.step_bytes;
  const int64_t chunk = n <= GROUP ? superblocks : std::max<int64_t>(1, CHUNK_BYTES / (np * sb_bytes));
  at::parallel_for(0, (panels + np - 1) / np, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(n * np * PW);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t p = b * np;
      const int block = int(std::min<int64_t>(np, panels - p));
      for (int64_t s0 = 0; s0 < superblocks; s0 += chunk) {
        const int64_t s1 = std::min(superblocks, s0 + chunk);
        for (int64_t r0 = 0; r0 < n; r0 += GROUP) {
          const int rows = int(std::min<int64_t>(GROUP, n - r0));
          block_group(rows, w, x + r0 * w.in, xsum + r0 * w.groups(), xscale ? xscale + r0 * w.groups() : nullptr, p,
                      block, s0, s1, acc.data() + r0 * block * PW, s0 == 0);
        }
      }
      for (int64_t r0 = 0; r0 < n; r0 += GROUP) {  // a group's accumulators: [block, rows, PW]
        const int rows = int(std::min<int64_t>(GROUP, n - r0));
        const float* a = acc.data() + r0 * block * PW;
        for (int q = 0; q < block; ++q)
          for (int v = 0; v < PANEL_VECTORS; ++v) {
            const int64_t o = (p + q) * PW + v * W, count = std::min<int64_t>(W, out - o);
            if (count <= 0) break;
            const vec c = bias ? vload_first(bias + o, count) : vzero();
            for (int r = 0; r < rows; ++r)
              vstore_first(y + (r0 + r) * out + o, vadd(vload(a + (q * rows + r) * PW + v * W), c), count);
          }
      }
    }
  });
}

Blocks view(const BlockWeights& w) {
  const bool grouped = w.scales.numel() > 0;
  const int64_t step = w.bits == 8 ? 2 : 4;
  return {w.codes.data_ptr<uint8_t>(),
          grouped ? w.scales.data_ptr<int8_t>() : nullptr,
          grouped ? w.mins.data_ptr<int8_t>() : nullptr,
          reinterpret_cast<const uint16_t*>(w.d.data_ptr<at::Half>()),
          reinterpret_cast<const uint16_t*>(w.dmin.data_ptr<at::Half>()),
          w.in,
          w.group,
          w.superblock,
          w.bits == 8 ? 0 : w.bits - 4,
          step,
          w.bits == 8 ? 32 : 32 + 8 * (w.bits - 4)};
}

// Rows x [n, in] as int8 q [n, in] every 32 inputs times scale = max |x| / 127 (q = x * (127 / max |x|)
// rounded to nearest even); per group of `group` inputs (16 or 32): the scale of its 32 and the sum of its
// q times that scale.
void quantize_rows(const float* x, int64_t n, int64_t in, int64_t group, int8_t* q, float* sums, float* scales) {
  const int64_t groups = in / group, per_block = 32 / group;
  for (int64_t r = 0; r < n; ++r)
    for (int64_t k = 0; k < in / 32; ++k) {
      const float* v = x + r * in + k * 32;
      int8_t* out = q + r * in + k * 32;
      int32_t count[2] = {0, 0};
      float amax = 0.0f;
#ifdef SPECDECODE_INT8_ROWS
      const __m512 a = _mm512_loadu_ps(v), b = _mm512_loadu_ps(v + 16);
      amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
      const __m512 inverse = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
      const __m512i qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, inverse)), qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, inverse));
      _mm_storeu_si128((__m128i*)out, _mm512_cvtsepi32_epi8(qa));
      _mm_storeu_si128((__m128i*)(out + 16), _mm512_cvtsepi32_epi8(qb));
      count[0] = _mm512_reduce_add_epi32(qa);
      count[1] = _mm512_reduce_add_epi32(qb);
#else
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::abs(v[j]));
      const float inverse = amax > 0.0f ? 127.0f / amax : 0.0f;
      for (int j = 0; j < 32; ++j) {
        out[j] = int8_t(std::nearbyint(v[j] * inverse));
        count[j / 16] += out[j];
      }
#endif
      const float scale = amax / 127.0f;
      for (int64_t h = 0; h < per_block; ++h) {
        const int64_t g = r * groups + k * per_block + h;
        sums[g] = scale * float(per_block == 1 ? count[0] + count[1] : count[h]);
        scales[g] = scale;
      }
    }
}

bool intel_cpu() {
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx)) return false;
  char vendor[13] = {};
  std::memcpy(vendor, &ebx, 4);
  std::memcpy(vendor + 4, &edx, 4);
  std::memcpy(vendor + 8, &ecx, 4);
  return std::strcmp(vendor, "GenuineIntel") == 0;
}

}  // namespace

BlockRows block_rows() {
  // Integer dot products (AVX512_VNNI) take 64 products an instruction against 16 for float32 fused
  // multiply-adds and 32 for the bfloat16 dot product, which on Intel (Sapphire Rapids) retires at half the
  // rate of the others; measured on one core here: 270, 100 and 50 G products/s.
  static const BlockRows choice = [] {
    const char* forced = std::getenv("SPECDECODE_BLOCK_ROWS");
    const std::string want = forced ? forced : "";
#ifdef SPECDECODE_INT8_ROWS
    if (want.empty() || want == "int8") return BlockRows::Int8;
#endif
    if (bfloat16_pairs() && (want == "bfloat16" || (want.empty() && !intel_cpu()))) return BlockRows::BFloat16;
    return BlockRows::Float32;
  }();
  return choice;
}

std::string block_rows_name() {
  switch (block_rows()) {
    case BlockRows::Int8:
      return "int8";
    case BlockRows::BFloat16:
      return "bfloat16";
    default:
      return "float32";
  }
}

BlockWeights::BlockWeights(at::Tensor codes_, at::Tensor scales_, at::Tensor mins_, at::Tensor d_, at::Tensor dmin_,
                           int64_t out_, int64_t in_, int64_t bits_, int64_t group_, int64_t superblock_)
    : codes(codes_.contiguous()),
      scales(scales_.contiguous()),
      mins(mins_.contiguous()),
      d(d_.contiguous()),
      dmin(dmin_.contiguous()),
      out(out_),
      in(in_),
      bits(bits_),
      group(group_),
      superblock(superblock_) {
  const int64_t panels = (out + PW - 1) / PW, groups = in / group, blocks = in / superblock;
  const int64_t step_bytes = bits == 8 ? 32 : 32 + 8 * (bits - 4), step = bits == 8 ? 2 : 4;
  TORCH_CHECK(bits >= 4 && bits <= 6 || bits == 8, "codes must be 4, 5 or 6 bits unsigned, or 8 bits signed");
  TORCH_CHECK(group % 16 == 0 && superblock % group == 0 && in % superblock == 0, "bad block sizes");
  TORCH_CHECK(codes.scalar_type() == at::kByte && codes.numel() == panels * (in / step) * step_bytes, "bad codes");
  const bool grouped = superblock > group;
  TORCH_CHECK(scales.scalar_type() == at::kChar && scales.numel() == (grouped ? panels * groups * PW : 0),
              "bad scales");
  TORCH_CHECK(mins.scalar_type() == at::kChar && mins.numel() == scales.numel(), "bad mins");
  TORCH_CHECK(d.scalar_type() == at::kHalf && d.numel() == panels * blocks * PW, "bad d");
  TORCH_CHECK(dmin.scalar_type() == at::kHalf && dmin.numel() == panels * blocks * PW, "bad dmin");
}

void BlockWeights::row(int64_t o, float* values) const {
  const Blocks w = view(*this);
  const int64_t p = o / PW, k = o % PW;
  alignas(64) float codes_[4][PW], s[PW], m[PW];
  for (int64_t g = 0; g < w.groups(); ++g) {
    for (int v = 0; v < PANEL_VECTORS; ++v) {
      vec sv, mv;
      w.factors(p, g, v, vzero(), sv, mv);
      vstore(s + v * W, sv);
      vstore(m + v * W, mv);
    }
    for (int64_t i = g * group; i < (g + 1) * group; i += w.step) {
      w.decode(p, i, codes_);
      for (int64_t t = 0; t < w.step; ++t) values[i + t] = s[k] * codes_[t][k] + m[k];
    }
  }
}

at::Tensor BlockWeights::rows(at::Tensor ids) const {
  const auto index = ids.to(at::kLong).contiguous();
  auto y = at::empty({index.numel(), in}, at::kFloat);
  const int64_t* ip = index.data_ptr<int64_t>();
  for (int64_t r = 0; r < index.numel(); ++r) {
    TORCH_CHECK(ip[r] >= 0 && ip[r] < out, "row ", ip[r], " out of range");
    row(ip[r], y.data_ptr<float>() + r * in);
  }
  return y;
}

at::Tensor block_linear(at::Tensor x, const BlockWeights& w, c10::optional<at::Tensor> bias, bool float_result) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == w.in, "x must be [n, ", w.in, "]");
  const int64_t n = x.size(0), groups = w.in / w.group;
  at::Tensor bf;
  if (bias.has_value()) bf = bias->to(at::kFloat).contiguous();
  const float* b = bias.has_value() ? bf.data_ptr<float>() : nullptr;
  const bool bf16_result = x.scalar_type() == at::kBFloat16 && !float_result;
  auto y = at::empty({n, w.out}, x.options().dtype(bf16_result ? at::kBFloat16 : at::kFloat));
  const BlockRows mode = block_rows();
  const auto rows = (mode == BlockRows::BFloat16 ? x.to(at::kBFloat16) : x.to(at::kFloat)).contiguous();
  const auto widened = rows.to(at::kFloat).contiguous();
  const float* xf = widened.data_ptr<float>();
  // int8 rows: each 32 inputs of a row as int8 times a scale (amax / 127, rounded to nearest even), and per
  // group the sum of the quantized values times their scale; other rows: each group's sum in input order
  auto quantized = at::empty({mode == BlockRows::Int8 ? n * w.in : 0}, at::kChar);
  auto xsum = at::empty({n, groups}, at::kFloat), xscale = at::empty({n, groups}, at::kFloat);
  int8_t* xq = quantized.data_ptr<int8_t>();
  float *xs = xsum.data_ptr<float>(), *xsc = xscale.data_ptr<float>();
  if (mode == BlockRows::Int8)
    quantize_rows(xf, n, w.in, w.group, xq, xs, xsc);
  else
    for (int64_t r = 0; r < n; ++r)
      for (int64_t g = 0; g < groups; ++g) {
        float total = 0.0f;
        for (int64_t i = g * w.group; i < (g + 1) * w.group; ++i) total += xf[r * w.in + i];
        xs[r * groups + g] = total;
      }
  const Blocks blocks = view(w);
  auto run = [&](auto* yp) {
#ifdef SPECDECODE_BF16_PAIRS
    if (mode == BlockRows::BFloat16)
      return block_kernel(n, reinterpret_cast<const uint16_t*>(rows.data_ptr<at::BFloat16>()), xs, nullptr, blocks,
                          b, yp, w.out);
#endif
#ifdef SPECDECODE_INT8_ROWS
    if (mode == BlockRows::Int8) return block_kernel(n, xq, xs, xsc, blocks, b, yp, w.out);
#endif
    block_kernel(n, xf, xs, nullptr, blocks, b, yp, w.out);
  };
  if (bf16_result)
    run(reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>()));
  else
    run(y.data_ptr<float>());
  return float_result ? y : y.to(x.scalar_type());
}

}  // namespace specdecode
