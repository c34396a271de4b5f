// The op schemas of bertfast._C. Implementations: embedding_sum_cpu.cpp (CPU; forward and backward) and
// embedding_sum_cuda.cpp (CUDA; forward); fake implementations are registered in Python
// (bertfast/ops/embedding_sum.py). `stream` is the caller's cudaStream_t as an integer
// (ignored on CPU), because the CUDA side is built without Torch's CUDA headers.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/library.h>

#include "cpu_kernels.h"
#include "embedding_sum.h"

TORCH_LIBRARY(bertfast_C, m) {
  m.def(
      "embedding_sum_forward(Tensor input_ids, Tensor token_type_ids, Tensor position_ids, Tensor word_weight, "
      "Tensor type_weight, Tensor position_weight, int stream) -> Tensor");
  m.def(
      "embedding_table_backward(Tensor grad, Tensor ids, Tensor? order, int num_rows, int padding_idx, "
      "int stream) -> Tensor");
  // CPU inference kernels (cpu_kernels.h, cpu_ops.cpp): no autograd; Python routes to them without gradients.
  m.def("bias_gelu_cpu(Tensor x, Tensor bias, str approximate) -> Tensor");
  m.def("residual_layer_norm_cpu(Tensor x, Tensor? residual, Tensor? weight, Tensor? bias, float eps) -> Tensor");
  m.def("varlen_attention_cpu(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens, float scale) -> Tensor");
  m.def("embedding_layer_norm_cpu(Tensor input_ids, Tensor token_type_ids, Tensor position_ids, Tensor word, "
        "Tensor type, Tensor pos, Tensor? weight, Tensor? bias, float eps) -> Tensor");
  m.def("quantize_rows_cpu(Tensor x) -> (Tensor, Tensor)");
  m.def("dequantize_cpu(Tensor acc, Tensor row_scale, Tensor col_scale, Tensor? bias, str activation, "
        "ScalarType out_dtype) -> Tensor");
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "bertfast compiled ops, registered in the dispatcher as torch.ops.bertfast_C";
  m.def("has_cuda", [] {
#ifdef BERTFAST_WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "Whether the CUDA sources were compiled into this build.");
  m.def("cpu_kernels_capability", [] { return std::string(bertfast::cpu::capability()); },
        "Which compiled copy of the CPU kernels runs here: DEFAULT, AVX2 or AVX512 (ATEN_CPU_CAPABILITY caps it).");
  m.def("embedding_forward_launch", [](int64_t tokens, int64_t hidden, int elem_size, bool aligned) {
    const bertfast::ForwardLaunch cfg = bertfast::embedding_forward_launch(tokens, hidden, elem_size, aligned);
    return std::make_tuple(cfg.vec, cfg.threads_x, cfg.threads_y, cfg.blocks);
  }, "(vec, threads_x, threads_y, blocks) of the CUDA embedding forward, as its launcher computes them.");
#ifdef BERTFAST_WITH_CUDA
  m.def("leave_pending_launch_error", [] { bertfast::leave_pending_launch_error(); },
        "For tests: make a launch fail without reading its error, which the runtime then holds pending.");
  m.def("take_last_error", [] {
    const char* error = bertfast::take_last_error();
    return std::string(error == nullptr ? "" : error);
  }, "For tests: the CUDA runtime's pending error ('' when none), cleared.");
#endif
}
