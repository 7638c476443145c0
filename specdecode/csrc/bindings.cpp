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
  using specdecode::BlockWeights;
  pybind11::class_<BlockWeights>(m, "BlockWeights", "a weight matrix kept as quantized blocks")
      .def(pybind11::init<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, int64_t, int64_t, int64_t,
                          int64_t, int64_t>())
      .def("rows", &BlockWeights::rows, "rows of the matrix as float32 (an embedding lookup)", release())
      .def_readonly("out_features", &BlockWeights::out)
      .def_readonly("in_features", &BlockWeights::in)
      .def_readonly("bits", &BlockWeights::bits)
      .def_readonly("group", &BlockWeights::group)
      .def_readonly("superblock", &BlockWeights::superblock)
      .def_readonly("codes", &BlockWeights::codes)
      .def_readonly("scales", &BlockWeights::scales)
      .def_readonly("mins", &BlockWeights::mins)
      .def_readonly("d", &BlockWeights::d)
      .def_readonly("dmin", &BlockWeights::dmin);
  m.def("block_linear", &specdecode::block_linear, "projection through quantized blocks", pybind11::arg("x"),
        pybind11::arg("weights"), pybind11::arg("bias") = pybind11::none(), pybind11::arg("float_result") = false,
        release());
  m.def("block_rows", &specdecode::block_rows_name, "how block weights meet their rows: int8, bfloat16 or float32");
  using specdecode::Decoder;
  pybind11::class_<Decoder>(m, "Decoder", "a Llama-family decoder with its own KV cache")
      .def(pybind11::init<at::Tensor, at::Tensor, at::Tensor, double, int64_t, int64_t, int64_t, double, double>())
      .def("add_projection", &Decoder::add_projection)
      .def("add_block_projection", &Decoder::add_block_projection)
      .def("set_block_embedding", &Decoder::set_block_embedding)
      .def("add_layer", &Decoder::add_layer)
      .def("forward", &Decoder::forward, release())
      .def_static("forward_batch", &Decoder::forward_batch, "one pass for several sequences", release())
      .def("crop", &Decoder::crop)
      .def("keep", &Decoder::keep)
      .def("__len__", &Decoder::length);
}
