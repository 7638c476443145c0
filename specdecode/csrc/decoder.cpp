// A Llama-family decoder (Llama, Qwen2, Mistral: RMSNorm, rotary positions, grouped-query attention, SiLU-gated
// MLP) run from C++ in float32 activations (rounded to bfloat16 only as a projection's input, where the CPU has
// the bfloat16 dot product), for a draft model: a PyTorch forward pass spends about a millisecond a layer
// launching its small operations, as much as a small draft's int8 weights take to read.
// Projections go through small_rows_linear, attention through attend_rows; the KV cache is the decoder's own.
#include "decoder.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels.h"
#include "simd.h"

namespace specdecode {
namespace {

constexpr int PROJECTIONS_PER_LAYER = 7;

// x[n, size] -> weight * x * rsqrt(mean(x^2) + eps), row by row.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, float eps) {
  const int64_t n = x.size(0), size = x.size(1);
  auto y = at::empty_like(x);
  const float *xp = x.data_ptr<float>(), *w = weight.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for (int64_t r = 0; r < n; ++r) {
    const float* row = xp + r * size;
    double squares = 0.0;
    for (int64_t k = 0; k < size; ++k) squares += double(row[k]) * row[k];
    const float inv = 1.0f / std::sqrt(float(squares / size) + eps);
    for (int64_t k = 0; k < size; ++k) yp[r * size + k] = w[k] * (row[k] * inv);
  }
  return y;
}

// Rotates each head's halves (x1, x2) of rows x[n, heads * d] by the angles of the row's position.
void rotate(float* x, int64_t n, int64_t heads, int64_t d, const float* cos, const float* sin) {
  const int64_t half = d / 2;
  for (int64_t r = 0; r < n; ++r)
    for (int64_t h = 0; h < heads; ++h) {
      float* v = x + (r * heads + h) * d;
      const float *c = cos + r * half, *s = sin + r * half;
      for (int64_t j = 0; j < half; ++j) {
        const float a = v[j], b = v[j + half];
        v[j] = a * c[j] - b * s[j];
        v[j + half] = b * c[j] + a * s[j];
      }
    }
}

// gate <- silu(gate) * up, elementwise.
void silu_mul(float* gate, const float* up, int64_t size) {
  const int64_t body = size / W * W;
  for (int64_t k = 0; k < body; k += W) {
    const vec g = vload(gate + k);
    vstore(gate + k, vmul(vdiv(g, vadd(vset(1.0f), vexp(vsub(vzero(), g)))), vload(up + k)));
  }
  for (int64_t k = body; k < size; ++k) gate[k] = gate[k] / (1.0f + vfirst(vexp(vset(-gate[k])))) * up[k];
}

void add_into(at::Tensor& h, const at::Tensor& x) {
  float* hp = h.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  for (int64_t k = 0; k < h.numel(); ++k) hp[k] += xp[k];
}

}  // namespace

Decoder::Decoder(at::Tensor embed, at::Tensor final_norm, at::Tensor inv_freq, double rotary_scale, int64_t heads,
                 int64_t kv_heads, int64_t head_dim, double scaling, double eps)
    : embed_(embed),
      final_norm_(final_norm.to(at::kFloat).contiguous()),
      inv_freq_(inv_freq.to(at::kFloat).contiguous()),
      rotary_scale_(float(rotary_scale)),
      heads_(heads),
      kv_heads_(kv_heads),
      head_dim_(head_dim),
      scaling_(float(scaling)),
      eps_(float(eps)) {
  TORCH_CHECK(heads % kv_heads == 0 && head_dim % 2 == 0 && inv_freq_.numel() == head_dim / 2,
              "unsupported attention shape");
}

void Decoder::add_projection(at::Tensor weight, c10::optional<at::Tensor> bias, c10::optional<at::Tensor> scale,
                             int64_t out) {
  projections_.push_back({weight, bias, scale, out});
  bfloat16_rows_ = bfloat16_rows_ && (weight.scalar_type() == at::kBFloat16 || weight.scalar_type() == at::kChar);
}

void Decoder::add_block_projection(const BlockWeights& weights, c10::optional<at::Tensor> bias) {
  projections_.push_back({at::Tensor(), bias, c10::nullopt, weights.out, weights});
  bfloat16_rows_ = bfloat16_rows_ && block_rows() == BlockRows::BFloat16;
}

void Decoder::set_block_embedding(const BlockWeights& weights) { block_embed_ = weights; }

void Decoder::add_layer(at::Tensor input_norm, at::Tensor post_norm) {
  input_norms_.push_back(input_norm.to(at::kFloat).contiguous());
  post_norms_.push_back(post_norm.to(at::kFloat).contiguous());
  keys_.emplace_back();
  values_.emplace_back();
}

at::Tensor Decoder::rows(const at::Tensor& x) const { return bfloat16_rows_ ? x.to(at::kBFloat16) : x; }

at::Tensor Decoder::project(const Projection& p, const at::Tensor& x) const {
  if (p.blocks.has_value()) return block_linear(x, *p.blocks, p.bias, true);
  return small_rows_linear(x, p.weight, p.out, p.bias, p.scale, true);
}

void Decoder::reserve(int64_t total) {
  if (total <= capacity_) return;
  const int64_t capacity = std::max<int64_t>(total, 2 * capacity_ + 64);
  for (auto* cache : {&keys_, &values_})
    for (auto& layer : *cache) {
      auto grown = at::empty({kv_heads_, capacity, head_dim_}, at::kFloat);
      if (length_) grown.narrow(1, 0, length_).copy_(layer.narrow(1, 0, length_));
      layer = grown;
    }
  capacity_ = capacity;
}

at::Tensor Decoder::forward(at::Tensor ids, at::Tensor positions, c10::optional<at::Tensor> see, int64_t num_logits) {
  return forward_batch({this}, {ids}, {positions}, {see}, {num_logits})[0];
}

std::vector<at::Tensor> Decoder::forward_batch(const std::vector<Decoder*>& seqs, const std::vector<at::Tensor>& ids,
                                               const std::vector<at::Tensor>& positions,
                                               const std::vector<c10::optional<at::Tensor>>& see,
                                               const std::vector<int64_t>& num_logits) {
  const int64_t count = int64_t(seqs.size());
  TORCH_CHECK(count >= 1 && int64_t(ids.size()) == count && int64_t(positions.size()) == count &&
                  int64_t(see.size()) == count && int64_t(num_logits.size()) == count,
              "one ids, positions, see and num_logits per sequence");
  const Decoder& w = *seqs[0];  // the weights (every sequence's decoder shares them)
  const int64_t layers = int64_t(w.input_norms_.size()), d = w.head_dim_, half = d / 2;
  TORCH_CHECK(int64_t(w.projections_.size()) == PROJECTIONS_PER_LAYER * layers + 1, "decoder is incomplete");
  std::vector<int64_t> first(count + 1, 0);  // sequence s has rows [first[s], first[s + 1])
  std::vector<at::Tensor> masks(count);
  for (int64_t s = 0; s < count; ++s) {
    Decoder& seq = *seqs[s];
    const int64_t n = ids[s].size(0);
    TORCH_CHECK(n >= 1 && positions[s].size(0) == n && num_logits[s] >= 1 && num_logits[s] <= n, "bad token count");
    TORCH_CHECK(int64_t(seq.input_norms_.size()) == layers && seq.head_dim_ == d && seq.kv_heads_ == w.kv_heads_,
                "sequences of one batch need decoders of one model");
    if (see[s].has_value()) {
      masks[s] = see[s]->to(at::kBool).contiguous();
      TORCH_CHECK(masks[s].dim() == 2 && masks[s].size(0) == n && masks[s].size(1) == seq.length_ + n,
                  "mask must be [n, length + n]");
    }
    seq.reserve(seq.length_ + n);
    first[s + 1] = first[s] + n;
  }
  const int64_t rows = first[count];
  // rotary angles [rows, d / 2]
  std::vector<float> cos(rows * half), sin(rows * half);
  const auto pos = at::cat(positions).to(at::kLong).contiguous();
  const int64_t* pp = pos.data_ptr<int64_t>();
  const float* freq = w.inv_freq_.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < half; ++j) {
      const float angle = float(pp[r]) * freq[j];
      cos[r * half + j] = std::cos(angle) * w.rotary_scale_;
      sin[r * half + j] = std::sin(angle) * w.rotary_scale_;
    }
  const at::Tensor all_ids = at::cat(ids).to(at::kLong);
  at::Tensor h = w.block_embed_.has_value() ? w.block_embed_->rows(all_ids)
                                            : w.embed_.index_select(0, all_ids).to(at::kFloat).contiguous();
  auto attention = at::empty({rows, w.heads_ * d}, at::kFloat);
  for (int64_t l = 0; l < layers; ++l) {
    const Projection* p = w.projections_.data() + PROJECTIONS_PER_LAYER * l;
    at::Tensor x = w.rows(rms_norm(h, w.input_norms_[l], w.eps_));
    at::Tensor q = w.project(p[0], x), k = w.project(p[1], x), v = w.project(p[2], x);
    rotate(q.data_ptr<float>(), rows, w.heads_, d, cos.data(), sin.data());
    rotate(k.data_ptr<float>(), rows, w.kv_heads_, d, cos.data(), sin.data());
    for (int64_t s = 0; s < count; ++s) {
      Decoder& seq = *seqs[s];
      const int64_t n = first[s + 1] - first[s], capacity = seq.capacity_;
      float *kc = seq.keys_[l].data_ptr<float>(), *vc = seq.values_[l].data_ptr<float>();
      const float *kn = k.data_ptr<float>() + first[s] * w.kv_heads_ * d,
                  *vn = v.data_ptr<float>() + first[s] * w.kv_heads_ * d;
      for (int64_t r = 0; r < n; ++r)
        for (int64_t g = 0; g < w.kv_heads_; ++g) {
          const int64_t to = (g * capacity + seq.length_ + r) * d, from = (r * w.kv_heads_ + g) * d;
          std::memcpy(kc + to, kn + from, d * sizeof(float));
          std::memcpy(vc + to, vn + from, d * sizeof(float));
        }
      attend_rows(q.data_ptr<float>() + first[s] * w.heads_ * d, kc, vc, capacity * d, 1, n, w.heads_, w.kv_heads_,
                  d, seq.length_ + n, see[s].has_value() ? masks[s].data_ptr<bool>() : nullptr, w.scaling_,
                  attention.data_ptr<float>() + first[s] * w.heads_ * d);
    }
    add_into(h, w.project(p[3], w.rows(attention)));
    x = w.rows(rms_norm(h, w.post_norms_[l], w.eps_));
    at::Tensor gate = w.project(p[4], x), up = w.project(p[5], x);
    silu_mul(gate.data_ptr<float>(), up.data_ptr<float>(), gate.numel());
    add_into(h, w.project(p[6], w.rows(gate)));
  }
  std::vector<at::Tensor> wanted;  // the rows that get logits, sequence by sequence
  for (int64_t s = 0; s < count; ++s) {
    seqs[s]->length_ += first[s + 1] - first[s];
    wanted.push_back(h.narrow(0, first[s + 1] - num_logits[s], num_logits[s]));
  }
  at::Tensor last = rms_norm(at::cat(wanted).contiguous(), w.final_norm_, w.eps_);
  return w.project(w.projections_.back(), w.rows(last)).split_with_sizes(num_logits);
}

void Decoder::crop(int64_t length) { length_ = std::max<int64_t>(0, std::min(length_, length)); }

void Decoder::keep(int64_t start, at::Tensor positions) {
  const auto pos = positions.to(at::kLong).contiguous();
  const int64_t count = pos.numel(), d = head_dim_;
  const int64_t* pp = pos.data_ptr<int64_t>();
  for (int64_t t = 0; t < count; ++t)
    TORCH_CHECK(pp[t] >= start + t && pp[t] < length_ && (t == 0 || pp[t] > pp[t - 1]), "bad positions to keep");
  for (auto* cache : {&keys_, &values_})
    for (auto& layer : *cache)
      for (int64_t g = 0; g < kv_heads_; ++g) {
        float* base = layer.data_ptr<float>() + g * capacity_ * d;
        for (int64_t t = 0; t < count; ++t)
          std::memmove(base + (start + t) * d, base + pp[t] * d, d * sizeof(float));
      }
  length_ = start + count;
}

}  // namespace specdecode
