// The Python module of specdecode's CPU kernels (built by specdecode.fastlinear.extension).
#include <torch/extension.h>

#include "decoder.h"
#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("small_rows_linear", &small_rows_linear, "few-row projection through panel-packed weights");
  m.def("panel_width", &panel_width, "outputs per weight panel");
  m.def("vector_width", &vector_width, "floats per vector register");
  m.def("row_attention", &row_attention, "attention, each query against its visible keys only");
  using specdecode::Decoder;
  pybind11::class_<Decoder>(m, "Decoder", "a Llama-family decoder with its own KV cache")
      .def(pybind11::init<at::Tensor, at::Tensor, at::Tensor, double, int64_t, int64_t, int64_t, double>())
      .def("add_projection", &Decoder::add_projection)
      .def("add_layer", &Decoder::add_layer)
      .def("forward", &Decoder::forward)
      .def("crop", &Decoder::crop)
      .def("keep", &Decoder::keep)
      .def("__len__", &Decoder::length);
}
