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
int64_t panel_width();
int64_t vector_width();
std::string instruction_set();  // the vector instructions it was built for
bool bfloat16_pairs();  // whether bfloat16 rows (against bfloat16 or int8 weights) take the bfloat16 dot product
