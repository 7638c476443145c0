// y[n, out] = x[n, in] @ w[out, in]^T (* scale) (+ bias) for a few rows: speculative verification's
// projections. The weights are packed in panels of PW outputs, [panels, in, PW] (zero-padded past `out`),
// so that for each input i one contiguous load gives PW weights, widened to float32 in registers
// (bfloat16, int8; int4 with a float32 scale per group of 32 inputs), and every row's x[r, i] is broadcast
// against them: each weight is read once for all rows, and the inputs stay in L1, so checking n tokens
// costs about one read of the weights, like decoding one token.
// Output o of row r is sum_i x[r, i] * w[o, i], accumulated in i order by one fused multiply-add per i
// (bfloat16 rows against bfloat16 or int8 weights on a CPU with AVX512_BF16: one dot-product instruction
// per pair of inputs, int8 weights widened exactly to bfloat16), whatever n and whatever the blocking:
// verifying n tokens gives bit-identical projections to decoding them one at a time. The pair instruction
// halves the arithmetic of many-row passes (prompt passes gain most; one row is bound by reading the
// weights and gains nothing).
// A tile streams NP panels at once (NP separate runs of memory): with 512-bit vectors a panel is one vector
// wide, so that even 8 rows' tile (24 accumulators) reads 3 streams, which the hardware prefetchers follow
// better than one panel three vectors wide.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels.h"
#include "simd.h"

namespace {
using namespace specdecode;

constexpr int PW = PANEL_VECTORS * W;  // outputs a panel
constexpr int64_t INT4_GROUP = 32;
constexpr int64_t PREFETCH_INPUTS = 64;  // how far ahead (in inputs) to prefetch a panel's weights
constexpr int64_t CHUNK_BYTES = 24 << 10;  // a block's weights for one chunk of inputs, kept in L1 (n > GROUP)

// One input a step: the rows' inputs as float32, each broadcast and multiplied in by a fused multiply-add.
struct OneInput {
  using input = float;    // the rows' element type
  using operand = vec;    // one step's weights (and broadcast input) in registers
  static constexpr int STEP = 1;
  static vec broadcast(const float* x) { return vset(*x); }
  static vec madd(vec x, vec w, vec acc) { return vfma(x, w, acc); }
};

// Dense panels [panels, in, PW] of T, taken Step's way.
template <typename T, typename Step = OneInput>
struct Dense : Step {
  const T* w;
  int64_t in;
  static constexpr double BYTES_PER_WEIGHT = sizeof(T);
  const char* address(int64_t p, int64_t i) const { return reinterpret_cast<const char*>(w + (p * in + i) * PW); }
  vec load(int64_t p, int64_t i, int v) const { return vload(w + (p * in + i) * PW + v * W); }
};

// 4-bit panels [panels, in, PW / 2]: per vector of W outputs, W / 2 bytes, byte k holding output k in its
// low nibble and output k + W / 2 in its high one, as value + 8; scales [panels, in / 32, PW].
struct Int4 : OneInput {
  const uint8_t* q;
  const float* scales;
  int64_t in;
  static constexpr double BYTES_PER_WEIGHT = 0.5;
  const char* address(int64_t p, int64_t i) const { return reinterpret_cast<const char*>(q + (p * in + i) * PW / 2); }
  vec load(int64_t p, int64_t i, int v) const {
    const float* s = scales + (p * (in / INT4_GROUP) + i / INT4_GROUP) * PW + v * W;
    return vmul(nibbles(q + (p * in + i) * PW / 2 + v * W / 2), vload(s));
  }
};

#ifdef SPECDECODE_BF16_PAIRS
// Two inputs a step by the CPU's bfloat16 dot product, against bfloat16 rows: each output adds
// x[i] w[i] + x[i+1] w[i+1] (exact products) in one instruction, pair after pair, the same for every row.
struct TwoInputs {
  using input = uint16_t;
  using operand = pairs;
  static constexpr int STEP = 2;
  static_assert(PANEL_VECTORS == 1, "a panel's inputs i and i + 1 must be adjacent vectors");
  static operand broadcast(const uint16_t* x) { return vset_pair(x); }
  static vec madd(operand x, operand w, vec acc) { return vdot(x, w, acc); }
};

// bfloat16 panels, the two inputs' weights interleaved by one permute.
struct Bf16Pairs : Dense<uint16_t, TwoInputs> {
  operand load(int64_t p, int64_t i, int) const { return vload_pairs(w + (p * in + i) * PW); }
};

// int8 panels, widened and rounded to bfloat16 pairs (int8 values are exact in bfloat16).
struct Int8Pairs : Dense<int8_t, TwoInputs> {
  operand load(int64_t p, int64_t i, int) const {
    const int8_t* at = w + (p * in + i) * PW;
    return vpair(vload(at), vload(at + PW));
  }
};

// The pair kernel for dense panels of T.
template <typename T>
struct PairsOf;
template <>
struct PairsOf<uint16_t> {
  using type = Bf16Pairs;
};
template <>
struct PairsOf<int8_t> {
  using type = Int8Pairs;
};
#endif

template <typename Weights>
using Input = typename Weights::input;

// Panels a register tile holds for a group of N rows: N * NP * PV accumulators, NP * PV weights, a broadcast;
// at most 4 (more streams made one-row passes slower).
template <int N>
constexpr int panels_per_tile() {
  const int np = (REGISTERS - 1) / (PANEL_VECTORS * (N + 1));
  return np < 1 ? 1 : (np > 4 ? 4 : np);
}

// Accumulates inputs [i0, i1) of panels p..p+NP-1 for rows x[0..N) into acc [NP, N, PW] (from zeros if `first`),
// Weights::STEP inputs a step.
template <int N, int NP, typename Weights>
inline void tile(const Input<Weights>* x, int64_t in, const Weights& w, int64_t p, int64_t i0, int64_t i1,
                 float* acc_buf, bool first) {
  constexpr int PV = PANEL_VECTORS;
  constexpr int64_t bytes_per_input = int64_t(PW * Weights::BYTES_PER_WEIGHT);
  constexpr int64_t inputs_per_line = bytes_per_input >= 64 ? 1 : 64 / bytes_per_input;  // one prefetch a line
  vec acc[N][NP][PV];
  for (int r = 0; r < N; ++r)
    for (int q = 0; q < NP; ++q)
      for (int v = 0; v < PV; ++v) acc[r][q][v] = first ? vzero() : vload(acc_buf + (q * N + r) * PW + v * W);
  for (int64_t i = i0; i < i1; i += Weights::STEP) {
    typename Weights::operand wv[NP][PV];
#pragma GCC unroll 4
    for (int q = 0; q < NP; ++q) {
      const char* ahead = w.address(p + q, i + PREFETCH_INPUTS);
      if (bytes_per_input >= 64 || i % inputs_per_line < Weights::STEP)
        for (int64_t b = 0; b < bytes_per_input; b += 64) _mm_prefetch(ahead + b, _MM_HINT_T0);
#pragma GCC unroll 4
      for (int v = 0; v < PV; ++v) wv[q][v] = w.load(p + q, i, v);
    }
#pragma GCC unroll 16
    for (int r = 0; r < N; ++r) {
      const auto xb = Weights::broadcast(x + r * in + i);
#pragma GCC unroll 4
      for (int q = 0; q < NP; ++q)
#pragma GCC unroll 4
        for (int v = 0; v < PV; ++v) acc[r][q][v] = Weights::madd(xb, wv[q][v], acc[r][q][v]);
    }
  }
  for (int r = 0; r < N; ++r)
    for (int q = 0; q < NP; ++q)
      for (int v = 0; v < PV; ++v) vstore(acc_buf + (q * N + r) * PW + v * W, acc[r][q][v]);
}

// One group of N rows over a block of `np` panels (np is 1 or panels_per_tile<N>()).
template <int N, typename Weights>
inline void group(const Input<Weights>* x, int64_t in, const Weights& w, int64_t p, int np, int64_t i0, int64_t i1,
                  float* acc, bool first) {
  constexpr int NP = panels_per_tile<N>();
  if (np == NP) return tile<N, NP>(x, in, w, p, i0, i1, acc, first);
  for (int q = 0; q < np; ++q) tile<N, 1>(x, in, w, p + q, i0, i1, acc + q * N * PW, first);
}

// rows: 1..GROUP (no tile is built past GROUP: its accumulators would not fit the registers).
template <typename Weights>
void run_group(int rows, const Input<Weights>* x, int64_t in, const Weights& w, int64_t p, int np, int64_t i0,
               int64_t i1, float* acc, bool first) {
  switch (rows) {
#define CASE(k) \
  case k:        \
    if constexpr (k <= GROUP) return group<k>(x, in, w, p, np, i0, i1, acc, first); \
    break;
    CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
#undef CASE
  }
}

constexpr int TILE_PANELS[] = {0, panels_per_tile<1>(), panels_per_tile<2>(), panels_per_tile<3>(),
                               panels_per_tile<4>(), panels_per_tile<5>(), panels_per_tile<6>(),
                               panels_per_tile<7>(), panels_per_tile<8>()};

template <typename Weights, typename Y>
void panels_kernel(int64_t n, const Input<Weights>* x, const Weights& w, const float* scale, const float* bias, Y* y,
                   int64_t in, int64_t out) {
  const int64_t panels = (out + PW - 1) / PW;
  const int np = TILE_PANELS[std::min<int64_t>(n, GROUP)];  // panels a parallel block (and a tile of GROUP rows)
  const int64_t chunk =
      n <= GROUP ? in : int64_t(CHUNK_BYTES / (np * PW * Weights::BYTES_PER_WEIGHT)) / Weights::STEP * Weights::STEP;
  at::parallel_for(0, (panels + np - 1) / np, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(n * np * PW);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t p = b * np;
      const int block = int(std::min<int64_t>(np, panels - p));
      for (int64_t i0 = 0; i0 < in; i0 += chunk) {
        const int64_t i1 = std::min(in, i0 + chunk);
        for (int64_t r0 = 0; r0 < n; r0 += GROUP) {
          const int rows = int(std::min<int64_t>(GROUP, n - r0));
          run_group(rows, x + r0 * in, in, w, p, block, i0, i1, acc.data() + r0 * block * PW, i0 == 0);
        }
      }
      for (int64_t r0 = 0; r0 < n; r0 += GROUP) {  // a group's accumulators: [block, rows, PW]
        const int rows = int(std::min<int64_t>(GROUP, n - r0));
        const float* a = acc.data() + r0 * block * PW;
        for (int q = 0; q < block; ++q)
          for (int v = 0; v < PANEL_VECTORS; ++v) {  // W outputs from o on, fewer at the end of `out`
            const int64_t o = (p + q) * PW + v * W, count = std::min<int64_t>(W, out - o);
            if (count <= 0) break;
            const vec s = scale ? vload_first(scale + o, count) : vzero();
            const vec c = bias ? vload_first(bias + o, count) : vzero();
            for (int r = 0; r < rows; ++r) {
              const vec sum = vload(a + (q * rows + r) * PW + v * W);
              vstore_first(y + (r0 + r) * out + o, vadd(scale ? vmul(sum, s) : sum, c), count);
            }
          }
      }
    }
  });
}

}  // namespace

int64_t panel_width() { return PW; }
int64_t vector_width() { return W; }
std::string instruction_set() {
  if (bfloat16_pairs()) return "AVX-512 with bfloat16 dot products";
  return W == 16 ? "AVX-512" : "AVX2";
}
bool bfloat16_pairs() {
#ifdef SPECDECODE_BF16_PAIRS
  return true;
#else
  return false;
#endif
}

// x: [n, in] (any float dtype); weight: panels as `panels_kernel` reads them: [panels, in, PW] float32,
// bfloat16 or int8, or [panels, in, PW / 2] uint8 (int4); scale: float32 [panels * PW] for int8,
// [panels, in / 32, PW] for int4; bias: [out] or None. Returns [n, out] in x's dtype.
at::Tensor small_rows_linear(at::Tensor x, at::Tensor weight, int64_t out, c10::optional<at::Tensor> bias,
                             c10::optional<at::Tensor> scale) {
  return small_rows_linear(x, weight, out, bias, scale, false);
}

// The same, the result in float32 if `float_result`.
at::Tensor small_rows_linear(at::Tensor x, at::Tensor weight, int64_t out, c10::optional<at::Tensor> bias,
                             c10::optional<at::Tensor> scale, bool float_result) {
  const bool int4 = weight.scalar_type() == at::kByte;
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 3 && x.size(1) == weight.size(1), "shapes do not match");
  TORCH_CHECK(weight.size(2) * (int4 ? 2 : 1) == PW && weight.size(0) * PW >= out, "weight is not packed in panels of ",
              PW);
  TORCH_CHECK(weight.is_contiguous(), "weight must be contiguous");
  const int64_t n = x.size(0), in = x.size(1);
  at::Tensor bf, sf;
  if (bias.has_value()) bf = bias->to(at::kFloat).contiguous();  // SmallRowsLinear keeps it float32: no copy
  if (scale.has_value()) sf = scale->to(at::kFloat).contiguous();
  const float* b = bias.has_value() ? bf.data_ptr<float>() : nullptr;
  const float* s = scale.has_value() ? sf.data_ptr<float>() : nullptr;
  // the result in x's dtype straight from the kernel when it is bfloat16 (rounded as Tensor.to rounds)
  const bool bf16_result = x.scalar_type() == at::kBFloat16 && !float_result;
  auto y = at::empty({n, out}, x.options().dtype(bf16_result ? at::kBFloat16 : at::kFloat));
  const bool pairs = bfloat16_pairs() && (weight.scalar_type() == at::kBFloat16 || weight.scalar_type() == at::kChar) &&
                     x.scalar_type() == at::kBFloat16 && in % 2 == 0;
  const auto rows = pairs ? x.contiguous() : x.to(at::kFloat).contiguous();  // pairs: bfloat16 rows as they are
  const float* xp = pairs ? nullptr : rows.data_ptr<float>();
  auto run = [&](auto* yp) {
    // dense panels of T: two inputs a step against bfloat16 rows where `pairs`, else one against float32 rows
    auto dense = [&](const auto* w) {
      using T = std::remove_const_t<std::remove_pointer_t<decltype(w)>>;
#ifdef SPECDECODE_BF16_PAIRS
      if constexpr (!std::is_same_v<T, float>)
        if (pairs)
          return panels_kernel(n, reinterpret_cast<const uint16_t*>(rows.data_ptr<at::BFloat16>()),
                               typename PairsOf<T>::type{{{}, w, in}}, s, b, yp, in, out);
#endif
      panels_kernel(n, xp, Dense<T>{{}, w, in}, s, b, yp, in, out);
    };
    switch (weight.scalar_type()) {
      case at::kBFloat16:
        dense(reinterpret_cast<const uint16_t*>(weight.data_ptr<at::BFloat16>()));
        break;
      case at::kFloat:
        dense(weight.data_ptr<float>());
        break;
      case at::kChar:
        TORCH_CHECK(s != nullptr && sf.numel() == weight.size(0) * PW, "int8 weights need a scale per output");
        dense(weight.data_ptr<int8_t>());
        break;
      case at::kByte:
        TORCH_CHECK(in % INT4_GROUP == 0, "int4 weights need in_features divisible by ", INT4_GROUP);
        TORCH_CHECK(s != nullptr && sf.numel() == weight.size(0) * PW * (in / INT4_GROUP),
                    "int4 weights need a scale per group");
        panels_kernel(n, xp, Int4{{}, weight.data_ptr<uint8_t>(), s, in}, nullptr, b, yp, in, out);
        break;
      default:
        TORCH_CHECK(false, "weight must be float32, bfloat16, int8 or packed int4 (uint8)");
    }
  };
  if (y.scalar_type() == at::kBFloat16) {
    run(reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>()));
  } else {
    run(y.data_ptr<float>());
  }
  return float_result ? y : y.to(x.scalar_type());
}
