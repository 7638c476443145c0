// Attention that computes each query on its own, against exactly the keys it may see (see
// specdecode/row_attention.py for why): query (b, i), head h sees the keys j (in increasing order) that
// `see[b, i, j]` marks, or, without a mask, the first S - n + i + 1 (causal, the n queries being the last n of
// S positions). Its result depends on its query, those keys and their values only, computed in one fixed order
// of operations, so a prompt pass, a verify pass, a tree pass and a one-token step give the same bits.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <vector>

#include "simd.h"

using namespace specdecode;

namespace {

constexpr int HEADS_AT_ONCE = 4;                    // query heads sharing one pass over their keys/values
constexpr int VALUE_VECTORS = REGISTERS / 2 / HEADS_AT_ONCE;  // output vectors a head accumulates at once

// Scores s[h][j] = (q_h . k_seen[j]) * scaling for H query heads of one kv head, each key read once for all H.
// Each dot product has one fixed order: W lanes, the lanes' sum, then the tail past the last whole vector.
template <int H>
void scores(const float* q, const float* keys, const std::vector<int64_t>& seen, int64_t d, float scaling, float* s) {
  const int64_t count = int64_t(seen.size()), body = d / W * W;
  for (int64_t j = 0; j < count; ++j) {
    const float* k = keys + seen[j] * d;
    vec acc[H];
    for (int h = 0; h < H; ++h) acc[h] = vzero();
    for (int64_t c = 0; c < body; c += W) {
      const vec kv = vload(k + c);
      for (int h = 0; h < H; ++h) acc[h] = vfma(vload(q + h * d + c), kv, acc[h]);
    }
    for (int h = 0; h < H; ++h) {
      float sum = vsum(acc[h]);
      for (int64_t c = body; c < d; ++c) sum += q[h * d + c] * k[c];
      s[h * count + j] = sum * scaling;
    }
  }
}

// p[0..count) <- softmax(p), each term by one fixed sequence of operations (vector lanes and the scalar tail
// compute e^x alike), the sum in a fixed order for a given count.
void softmax(float* p, int64_t count) {
  const int64_t body = count / W * W;
  vec top_v = vset(-INFINITY);
  for (int64_t j = 0; j < body; j += W) top_v = vmax(top_v, vload(p + j));
  float top = vmaximum(top_v);
  for (int64_t j = body; j < count; ++j) top = std::max(top, p[j]);
  const vec top_b = vset(top);
  vec total_v = vzero();
  for (int64_t j = 0; j < body; j += W) {
    const vec e = vexp(vsub(vload(p + j), top_b));
    vstore(p + j, e);
    total_v = vadd(total_v, e);
  }
  float total = vsum(total_v);
  for (int64_t j = body; j < count; ++j) total += (p[j] = vfirst(vexp(vset(p[j] - top))));
  const vec total_b = vset(total);
  for (int64_t j = 0; j < body; j += W) vstore(p + j, vdiv(vload(p + j), total_b));
  for (int64_t j = body; j < count; ++j) p[j] /= total;
}

// out_h[c0 .. c0 + V*W) = sum_j p[h][j] * values[seen[j], c0 ..] for H heads, over j in order.
template <int H, int V>
void weighted_sums(const float* p, const float* values, const std::vector<int64_t>& seen, int64_t d, int64_t c0,
                   float* out) {
  const int64_t count = int64_t(seen.size());
  vec acc[H][V];
  for (int h = 0; h < H; ++h)
    for (int v = 0; v < V; ++v) acc[h][v] = vzero();
  for (int64_t j = 0; j < count; ++j) {
    vec row[V];
    for (int v = 0; v < V; ++v) row[v] = vload(values + seen[j] * d + c0 + v * W);
    for (int h = 0; h < H; ++h) {
      const vec ph = vset(p[h * count + j]);
      for (int v = 0; v < V; ++v) acc[h][v] = vfma(ph, row[v], acc[h][v]);
    }
  }
  for (int h = 0; h < H; ++h)
    for (int v = 0; v < V; ++v) vstore(out + h * d + c0 + v * W, acc[h][v]);
}

// H query heads of one (row b, query i, kv head): scores, softmax, weighted sum of values.
template <int H>
void attend_heads(const float* q, const float* keys, const float* values, const std::vector<int64_t>& seen,
                  int64_t d, float scaling, float* out, std::vector<float>& p) {
  const int64_t count = int64_t(seen.size()), body = d / W * W;
  p.resize(H * count);
  scores<H>(q, keys, seen, d, scaling, p.data());
  for (int h = 0; h < H; ++h) softmax(p.data() + h * count, count);
  int64_t c = 0;
  for (; c + VALUE_VECTORS * W <= body; c += VALUE_VECTORS * W)
    weighted_sums<H, VALUE_VECTORS>(p.data(), values, seen, d, c, out);
  for (; c < body; c += W) weighted_sums<H, 1>(p.data(), values, seen, d, c, out);
  for (int h = 0; h < H; ++h)
    for (int64_t cc = body; cc < d; ++cc) {
      float acc = 0.0f;
      for (int64_t j = 0; j < count; ++j) acc += p[h * count + j] * values[seen[j] * d + cc];
      out[h * d + cc] = acc;
    }
}

// The query heads of one (row b, query i, kv head), HEADS_AT_ONCE at a time.
void attend(const float* q, const float* keys, const float* values, const std::vector<int64_t>& seen, int64_t heads,
            int64_t d, float scaling, float* out, std::vector<float>& p) {
  for (int64_t h = 0; h < heads; h += HEADS_AT_ONCE) {
    const float *qh = q + h * d;
    float* oh = out + h * d;
    switch (std::min<int64_t>(HEADS_AT_ONCE, heads - h)) {
      case 1: attend_heads<1>(qh, keys, values, seen, d, scaling, oh, p); break;
      case 2: attend_heads<2>(qh, keys, values, seen, d, scaling, oh, p); break;
      case 3: attend_heads<3>(qh, keys, values, seen, d, scaling, oh, p); break;
      default: attend_heads<4>(qh, keys, values, seen, d, scaling, oh, p); break;
    }
  }
}

}  // namespace

// Attention of `batch` sequences of n queries [batch, n, H, d] against `keys` cached keys/values each: row b's
// kv head g's key j at key + (b * kv_heads + g) * kv_stride + j * d (float32). Query (b, i) sees the keys that
// see[(b * n + i) * keys + j] marks, or without a mask the first keys - n + i + 1. Writes out [batch, n, H, d].
void attend_rows(const float* query, const float* key, const float* value, int64_t kv_stride, int64_t batch,
                 int64_t n, int64_t heads, int64_t kv_heads, int64_t d, int64_t keys, const bool* see, float scaling,
                 float* out) {
  const int64_t group = heads / kv_heads;
  at::parallel_for(0, batch * n * kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> seen;
    std::vector<float> p;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task / kv_heads, g = task % kv_heads, i = row % n;  // row = b * n + i
      seen.clear();
      if (see) {
        const bool* visible = see + row * keys;
        for (int64_t j = 0; j < keys; ++j)
          if (visible[j]) seen.push_back(j);
      } else {
        for (int64_t j = 0; j < keys - n + i + 1; ++j) seen.push_back(j);
      }
      const int64_t head0 = row * heads + g * group, cache = (row / n * kv_heads + g) * kv_stride;
      attend(query + head0 * d, key + cache, value + cache, seen, group, d, scaling, out + head0 * d, p);
    }
  });
}

// query [B, n, H, d], key/value [B, Hkv, S, d] (float32, contiguous);
// see: [B, n, S] bool or None (causal). Returns [B, n, H, d] float32.
at::Tensor row_attention(at::Tensor query, at::Tensor key, at::Tensor value, c10::optional<at::Tensor> see,
                            double scaling) {
  TORCH_CHECK(query.scalar_type() == at::kFloat && key.scalar_type() == at::kFloat &&
                  value.scalar_type() == at::kFloat, "row_attention takes float32");
  TORCH_CHECK(query.is_contiguous() && key.is_contiguous() && value.is_contiguous(), "inputs must be contiguous");
  const int64_t batch = query.size(0), n = query.size(1), heads = query.size(2), d = query.size(3);
  const int64_t kv_heads = key.size(1), keys = key.size(2);
  TORCH_CHECK(key.sizes() == value.sizes() && key.size(0) == batch && key.size(3) == d && heads % kv_heads == 0,
              "shapes do not match");
  at::Tensor mask;
  if (see.has_value()) {
    mask = see->to(at::kBool).contiguous();
    TORCH_CHECK(mask.dim() == 3 && mask.size(0) == batch && mask.size(1) == n && mask.size(2) == keys,
                "mask must be [B, n, S]");
  }
  auto out = at::empty_like(query);
  attend_rows(query.data_ptr<float>(), key.data_ptr<float>(), value.data_ptr<float>(), keys * d, batch, n, heads,
              kv_heads, d, keys, see.has_value() ? mask.data_ptr<bool>() : nullptr, float(scaling),
              out.data_ptr<float>());
  return out;
}
