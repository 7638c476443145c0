// The Python module of specdecode's CPU kernels (built by specdecode.fastlinear.extension).
#include <torch/extension.h>

int64_t panel_width();
int64_t vector_width();
torch::Tensor small_rows_linear(torch::Tensor x, torch::Tensor weight, int64_t out, c10::optional<torch::Tensor> bias,
                                c10::optional<torch::Tensor> scale);
torch::Tensor row_attention(torch::Tensor query, torch::Tensor key, torch::Tensor value, c10::optional<torch::Tensor> see,
                            double scaling);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("small_rows_linear", &small_rows_linear, "few-row projection through panel-packed weights");
  m.def("panel_width", &panel_width, "outputs per weight panel");
  m.def("vector_width", &vector_width, "floats per vector register");
  m.def("row_attention", &row_attention, "attention, each query against its visible keys only");
}
