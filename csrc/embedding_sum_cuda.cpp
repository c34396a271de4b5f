// CUDA dispatch of the embedding sum: unpacks tensors and calls the raw-pointer launchers of
// embedding_sum_cuda.cu on the stream the Python caller passed in.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "embedding_sum.h"

namespace bertfast {
namespace {

DType to_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::Float32;
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    default: TORCH_CHECK(false, "bertfast: unsupported dtype ", t.scalar_type(), " (expected float32, float16 or bfloat16)");
  }
}

void check_cuda(const char* error, const char* what) {
  TORCH_CHECK(error == nullptr, "bertfast: CUDA error in ", what, ": ", error);
}

}  // namespace

at::Tensor embedding_sum_forward_cuda_impl(const at::Tensor& ids, const at::Tensor& type_ids, const at::Tensor& pos_ids,
                                           const at::Tensor& word, const at::Tensor& type, const at::Tensor& pos,
                                           int64_t stream) {
  TORCH_CHECK(ids.is_contiguous() && type_ids.is_contiguous() && pos_ids.is_contiguous(), "ids must be contiguous");
  TORCH_CHECK(word.is_contiguous() && type.is_contiguous() && pos.is_contiguous(), "tables must be contiguous");
  const int64_t tokens = ids.numel(), hidden = word.size(1);
  at::Tensor out = at::empty({tokens, hidden}, word.options());
  check_cuda(embedding_sum_forward_cuda(to_dtype(word), ids.data_ptr<int64_t>(), type_ids.data_ptr<int64_t>(),
                                        pos_ids.data_ptr<int64_t>(), word.data_ptr(), type.data_ptr(), pos.data_ptr(),
                                        out.data_ptr(), tokens, hidden, word.get_device(),
                                        reinterpret_cast<void*>(stream)),
             "embedding_sum_forward");
  return out;
}

at::Tensor embedding_table_backward_cuda_impl(const at::Tensor& grad, const at::Tensor& ids,
                                              const std::optional<at::Tensor>& order, int64_t num_rows,
                                              int64_t padding_idx, int64_t stream) {
  TORCH_CHECK(grad.dim() == 2 && grad.is_contiguous() && grad.size(0) == ids.numel(),
              "grad must be a contiguous [tokens, hidden] tensor");
  const int64_t tokens = ids.numel(), hidden = grad.size(1);
  // zeros() runs on Torch's current stream; the launch below uses the same stream (the caller's current one).
  at::Tensor table = at::zeros({num_rows, hidden}, grad.options().dtype(at::kFloat));
  const int64_t* order_ptr = order.has_value() ? order->data_ptr<int64_t>() : nullptr;
  check_cuda(embedding_table_backward_cuda(to_dtype(grad), grad.data_ptr(), ids.data_ptr<int64_t>(), order_ptr,
                                           table.data_ptr<float>(), tokens, hidden, padding_idx, grad.get_device(),
                                           reinterpret_cast<void*>(stream)),
             "embedding_table_backward");
  return table;
}

TORCH_LIBRARY_IMPL(bertfast_C, CUDA, m) {
  m.impl("embedding_sum_forward", &embedding_sum_forward_cuda_impl);
  m.impl("embedding_table_backward", &embedding_table_backward_cuda_impl);
}

}  // namespace bertfast
