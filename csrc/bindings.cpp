// The op schemas of bertfast._C. Implementations: embedding_sum_cpu.cpp (CPU) and
// embedding_sum_cuda.cpp (CUDA); fake implementations are registered in Python
// (bertfast/ops/embedding_sum.py). `stream` is the caller's cudaStream_t as an integer
// (ignored on CPU), because the CUDA side is built without Torch's CUDA headers.
#include <pybind11/pybind11.h>
#include <torch/library.h>

TORCH_LIBRARY(bertfast_C, m) {
  m.def(
      "embedding_sum_forward(Tensor input_ids, Tensor token_type_ids, Tensor position_ids, Tensor word_weight, "
      "Tensor type_weight, Tensor position_weight, int stream) -> Tensor");
  m.def(
      "embedding_table_backward(Tensor grad, Tensor ids, Tensor? order, int num_rows, int padding_idx, "
      "int stream) -> Tensor");
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
}
