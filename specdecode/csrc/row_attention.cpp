// Attention that computes each query on its own, against exactly the keys it may see (see
// specdecode/row_attention.py for why): query (b, i), head h sees the keys j (in increasing order) that
// `see[b, i, j]` marks, or, without a mask, the first S - n + i + 1 (causal, the n queries being the last n of
// S positions). Its result depends on its query, those keys and their values only, computed in one fixed order
// of operations, so a prompt pass, a verify pass, a tree pass and a one-token step give the same bits.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <vector>

#include "simd.h"

using namespace specdecode;

namespace {

// Dot product over d in a fixed order: W lanes, the lanes' sum, then the tail past the last whole vector.
inline float dot(const float* a, const float* b, int64_t d) {
  const int64_t body = d / W * W;
  vec acc = vzero();
  for (int64_t k = 0; k < body; k += W) acc = vfma(vload(a + k), vload(b + k), acc);
  float sum = vsum(acc);
  for (int64_t k = body; k < d; ++k) sum += a[k] * b[k];
  return sum;
}

// The query heads of one (row b, query i, kv head): scores, softmax, weighted sum of values.
void attend(const float* q, const float* keys, const float* values, const std::vector<int64_t>& seen, int64_t heads,
            int64_t d, float scaling, float* out, std::vector<float>& p) {
  const int64_t count = int64_t(seen.size());
  p.resize(count);
  for (int64_t h = 0; h < heads; ++h) {
    const float* qh = q + h * d;
    float top = -INFINITY;
    for (int64_t j = 0; j < count; ++j) {
      p[j] = dot(qh, keys + seen[j] * d, d) * scaling;
      top = std::max(top, p[j]);
    }
    float total = 0.0f;
    for (int64_t j = 0; j < count; ++j) total += (p[j] = std::exp(p[j] - top));
    for (int64_t j = 0; j < count; ++j) p[j] /= total;
    const int64_t body = d / W * W;
    for (int64_t c = 0; c < body; c += W) {
      vec acc = vzero();
      for (int64_t j = 0; j < count; ++j) acc = vfma(vset(p[j]), vload(values + seen[j] * d + c), acc);
      vstore(out + h * d + c, acc);
    }
    for (int64_t c = body; c < d; ++c) {
      float acc = 0.0f;
      for (int64_t j = 0; j < count; ++j) acc += p[j] * values[seen[j] * d + c];
      out[h * d + c] = acc;
    }
  }
}

}  // namespace

// query [B, n, H, d], key/value [B, Hkv, S, d] (float32, contiguous);
// see: [B, n, S] bool or None (causal). Returns [B, n, H, d] float32.
at::Tensor row_attention(at::Tensor query, at::Tensor key, at::Tensor value, c10::optional<at::Tensor> see,
                            double scaling) {
  TORCH_CHECK(query.scalar_type() == at::kFloat && key.scalar_type() == at::kFloat &&
                  value.scalar_type() == at::kFloat, "row_attention takes float32");
  TORCH_CHECK(query.is_contiguous() && key.is_contiguous() && value.is_contiguous(), "inputs must be contiguous");
  const int64_t batch = query.size(0), n = query.size(1), heads = query.size(2), d = query.size(3);
  const int64_t kv_heads = key.size(1), keys = key.size(2), group = heads / kv_heads;
  TORCH_CHECK(key.sizes() == value.sizes() && key.size(0) == batch && key.size(3) == d && heads % kv_heads == 0,
              "shapes do not match");
  at::Tensor mask;
  if (see.has_value()) {
    mask = see->to(at::kBool).contiguous();
    TORCH_CHECK(mask.dim() == 3 && mask.size(0) == batch && mask.size(1) == n && mask.size(2) == keys,
                "mask must be [B, n, S]");
  }
  const bool* m = see.has_value() ? mask.data_ptr<bool>() : nullptr;
  auto out = at::empty_like(query);
  const float *qp = query.data_ptr<float>(), *kp = key.data_ptr<float>(), *vp = value.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, batch * n * kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> seen;
    std::vector<float> p;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (n * kv_heads), i = task / kv_heads % n, g = task % kv_heads;
      seen.clear();
      if (m) {
        const bool* row = m + (b * n + i) * keys;
        for (int64_t j = 0; j < keys; ++j)
          if (row[j]) seen.push_back(j);
      } else {
        for (int64_t j = 0; j < keys - n + i + 1; ++j) seen.push_back(j);
      }
      const int64_t head0 = (b * n + i) * heads + g * group;
      const int64_t cache = (b * kv_heads + g) * keys * d;
      attend(qp + head0 * d, kp + cache, vp + cache, seen, group, d, float(scaling), op + head0 * d, p);
    }
  });
  return out;
}
