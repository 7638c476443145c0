// The Python module of specdecode's CPU kernels (built by specdecode.kernels.extension).
#include <torch/extension.h>

#include "decoder.h"
#include "kernels.h"

// The kernels run without the GIL (they touch no Python object), so a server's other threads keep
// answering while a model computes.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using release = pybind11::call_guard<pybind11::gil_scoped_release>;
  m.def("small_rows_linear",
        pybind11::overload_cast<at::Tensor, at::Tensor, int64_t, c10::optional<at::Tensor>, c10::optional<at::Tensor>>(
            &small_rows_linear),
        "few-row projection through panel-packed weights", release());
  m.def("panel_width", &panel_width, "outputs per weight panel");
  m.def("vector_width", &vector_width, "floats per vector register");
  m.def("instruction_set", &instruction_set, "the vector instructions the kernels use");
  m.def("bfloat16_pairs", &bfloat16_pairs, "whether bfloat16 rows take the CPU's bfloat16 dot product");
  m.def("row_attention", &row_attention, "attention, each query against its visible keys only", release());
  using specdecode::Decoder;
  pybind11::class_<Decoder>(m, "Decoder", "a Llama-family decoder with its own KV cache")
      .def(pybind11::init<at::Tensor, at::Tensor, at::Tensor, double, int64_t, int64_t, int64_t, double, double>())
      .def("add_projection", &Decoder::add_projection)
      .def("add_layer", &Decoder::add_layer)
      .def("forward", &Decoder::forward, release())
      .def("crop", &Decoder::crop)
      .def("keep", &Decoder::keep)
      .def("__len__", &Decoder::length);
}
