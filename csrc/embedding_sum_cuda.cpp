// CUDA dispatch of the embedding sum's forward: unpacks tensors and calls the raw-pointer launcher of
// embedding_sum_cuda.cu on the stream the Python caller passed in. (The backward on the GPU is Triton.)
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
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
  check_cuda(embedding_sum_forward_cuda(to_dtype(word), ids.data_ptr<int64_t>(), ids.numel(),
                                        type_ids.data_ptr<int64_t>(), type_ids.numel(), pos_ids.data_ptr<int64_t>(),
                                        pos_ids.numel(), word.data_ptr(), type.data_ptr(), pos.data_ptr(),
                                        out.data_ptr(), tokens, hidden, word.get_device(),
                                        reinterpret_cast<void*>(stream)),
             "embedding_sum_forward");
  return out;
}

TORCH_LIBRARY_IMPL(bertfast_C, CUDA, m) {
  m.impl("embedding_sum_forward", &embedding_sum_forward_cuda_impl);
}

}  // namespace bertfast
