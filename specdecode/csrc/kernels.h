// The kernels' entry points shared between translation units (bindings, decoder).
#pragma once
#include <ATen/ATen.h>

#include <string>

at::Tensor small_rows_linear(at::Tensor x, at::Tensor weight, int64_t out, c10::optional<at::Tensor> bias,
                             c10::optional<at::Tensor> scale);
at::Tensor small_rows_linear(at::Tensor x, at::Tensor weight, int64_t out, c10::optional<at::Tensor> bias,
                             c10::optional<at::Tensor> scale, bool float_result);
at::Tensor row_attention(at::Tensor query, at::Tensor key, at::Tensor value, c10::optional<at::Tensor> see,
                         double scaling);
void attend_rows(const float* query, const float* key, const float* value, int64_t kv_stride, int64_t batch,
                 int64_t n, int64_t heads, int64_t kv_heads, int64_t d, int64_t keys, const bool* see, float scaling,
                 float* out);
namespace specdecode {

constexpr int BLOCK_PANEL = 16;  // outputs a panel of BlockWeights, whatever the vector width

// A weight matrix [out, in] kept as quantized blocks (block_linear.cpp): W[o, i] = d[o, i / SB] *
// scales[o, i / G] * code[o, i] + dmin[o, i / SB] * mins[o, i / G], in panels of 16 outputs.
// codes: uint8 [panels, in / S, B], one step of S inputs x 16 outputs, lane j = 2k + t for output k:
//   4-6 bits (unsigned): S = 4, B = 32 + 8 * (bits - 4): byte j holds input t's low 4 bits in its low nibble
//     and input t + 2's in its high one; then per bit past the fourth a plane of two 32-bit masks (bit j of
//     the first: input t, of the second: input t + 2);
//   8 bits (signed): S = 2, B = 32: byte j holds input t.
// scales, mins: int8 [panels, in / G, 16], empty when SB = G (all 1); d, dmin: float16 [panels, in / SB, 16].
struct BlockWeights {
  BlockWeights(at::Tensor codes, at::Tensor scales, at::Tensor mins, at::Tensor d, at::Tensor dmin, int64_t out,
               int64_t in, int64_t bits, int64_t group, int64_t superblock);
  void row(int64_t o, float* values) const;  // W[o, :] as float32
  at::Tensor rows(at::Tensor ids) const;      // W[ids, :]: [len(ids), in] float32 (an embedding lookup)

  at::Tensor codes, scales, mins, d, dmin;
  int64_t out, in, bits, group, superblock;
};

// How block_linear multiplies, fixed for the process: rows quantized to int8 every 32 inputs against the codes
// through integer dot products (AVX512_VNNI, as llama.cpp does), bfloat16 rows through the
// bfloat16 dot product, or float32 rows; SPECDECODE_BLOCK_ROWS=int8|bfloat16|float32 chooses.
enum class BlockRows { Float32, BFloat16, Int8 };
BlockRows block_rows();
std::string block_rows_name();

// x [n, in] @ W^T (+ bias) -> [n, out] in x's dtype, or float32 if float_result.
at::Tensor block_linear(at::Tensor x, const BlockWeights& w, c10::optional<at::Tensor> bias, bool float_result);

}  // namespace specdecode

int64_t panel_width();
int64_t vector_width();
std::string instruction_set();  // the vector instructions it was built for
bool bfloat16_pairs();  // whether bfloat16 rows (against bfloat16 or int8 weights) take the bfloat16 dot product
