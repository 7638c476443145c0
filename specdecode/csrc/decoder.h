// A Llama-family decoder run from C++ (see decoder.cpp).
#pragma once
#include <ATen/ATen.h>
#include <vector>

#include "kernels.h"

namespace specdecode {

// One projection as specdecode.small_rows.SmallRowsLinear holds it (panel-packed weight, float32 bias and scale),
// or as specdecode.gguf_blocks.BlockLinear does (quantized blocks, float32 bias).
struct Projection {
  at::Tensor weight;
  c10::optional<at::Tensor> bias, scale;
  int64_t out;
  c10::optional<BlockWeights> blocks;
};

// Decoder layers of RMSNorm, rotary positions, grouped-query attention and a SiLU-gated MLP, with their
// own float32 KV cache [kv_heads, capacity, head_dim] per layer. Weights are the Python modules' tensors.
class Decoder {
 public:
  // rotary_scale multiplies cos and sin (the rotary type's attention factor); scaling multiplies the scores.
  Decoder(at::Tensor embed, at::Tensor final_norm, at::Tensor inv_freq, double rotary_scale, int64_t heads,
          int64_t kv_heads, int64_t head_dim, double scaling, double eps);
  // Per layer, in order: q, k, v, o, gate, up, down; then the output head.
  void add_projection(at::Tensor weight, c10::optional<at::Tensor> bias, c10::optional<at::Tensor> scale,
                      int64_t out);
  void add_block_projection(const BlockWeights& weights, c10::optional<at::Tensor> bias);
  void set_block_embedding(const BlockWeights& weights);  // token rows from quantized blocks, not `embed`
  void add_layer(at::Tensor input_norm, at::Tensor post_norm);
  // ids, positions: [n] int64; see: [n, length() + n] bool (which cached or new positions each token sees)
  // or None (causal). Appends the n tokens to the cache; returns logits [num_logits, V] of the last ones.
  at::Tensor forward(at::Tensor ids, at::Tensor positions, c10::optional<at::Tensor> see, int64_t num_logits);
  // One pass for several sequences, each with its own decoder (cache) and the same weights as `seqs[0]`:
  // sequence s appends ids[s] (as `forward` would) and gets logits [num_logits[s], V]. The projections
  // run over all the sequences' rows at once (each row's bits as in a pass of its own), attention per
  // sequence against its own cache.
  static std::vector<at::Tensor> forward_batch(const std::vector<Decoder*>& seqs, const std::vector<at::Tensor>& ids,
                                               const std::vector<at::Tensor>& positions,
                                               const std::vector<c10::optional<at::Tensor>>& see,
                                               const std::vector<int64_t>& num_logits);
  void crop(int64_t length);                        // forget cached positions from `length` on
  void keep(int64_t start, at::Tensor positions);   // cache <- [0, start) then `positions` (increasing, >= start)
  int64_t length() const { return length_; }

 private:
  at::Tensor rows(const at::Tensor& x) const;  // a projection's input: bfloat16 where bfloat16_rows_
  at::Tensor project(const Projection& p, const at::Tensor& x) const;  // float32 result
  void reserve(int64_t total);

  at::Tensor embed_, final_norm_, inv_freq_;
  c10::optional<BlockWeights> block_embed_;
  float rotary_scale_;
  int64_t heads_, kv_heads_, head_dim_;
  float scaling_, eps_;
  std::vector<Projection> projections_;
  std::vector<at::Tensor> input_norms_, post_norms_, keys_, values_;
  int64_t length_ = 0, capacity_ = 0;
  // Where the CPU has the bfloat16 dot product and every projection holds bfloat16, int8 or block weights,
  // the projections take their rows in bfloat16 (a prompt pass much faster, one token as fast); the other
  // activations stay float32.
  bool bfloat16_rows_ = bfloat16_pairs();
};

}  // namespace specdecode
