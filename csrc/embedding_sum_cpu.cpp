// CPU implementation of the embedding sum: parallel over tokens forward, over hidden columns backward
// (each column block owned by one thread, tokens summed in order: deterministic, no locks).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include "embedding_sum.h"

namespace bertfast {
namespace {

// Ids repeat with their own period (embedding_sum.h): token t's id is ids[t % len].
struct Ids {
  const int64_t* data;
  int64_t len;
  int64_t operator[](int64_t t) const { return data[t % len]; }
};

Ids ids_of(const at::Tensor& t) { return {t.data_ptr<int64_t>(), t.numel()}; }

template <typename T>
void forward_kernel(Ids ids, Ids type_ids, Ids pos_ids, const T* word, const T* type, const T* pos, T* out,
                    int64_t tokens, int64_t hidden) {
  at::parallel_for(0, tokens, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const T* w = word + ids[t] * hidden;
      const T* y = type + type_ids[t] * hidden;
      const T* p = pos + pos_ids[t] * hidden;
      T* o = out + t * hidden;
      for (int64_t h = 0; h < hidden; ++h) {
        o[h] = static_cast<T>(static_cast<float>(w[h]) + static_cast<float>(y[h]) + static_cast<float>(p[h]));
      }
    }
  });
}

template <typename T>
void backward_kernel(const T* grad, Ids ids, float* grad_table, int64_t tokens, int64_t hidden, int64_t padding_idx) {
  constexpr int64_t kColumns = 64;
  const int64_t blocks = (hidden + kColumns - 1) / kColumns;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t h0 = b * kColumns;
      const int64_t h1 = std::min(hidden, h0 + kColumns);
      for (int64_t t = 0; t < tokens; ++t) {
        const int64_t row = ids[t];
        if (row == padding_idx) continue;
        const T* g = grad + t * hidden;
        float* dst = grad_table + row * hidden;
        for (int64_t h = h0; h < h1; ++h) dst[h] += static_cast<float>(g[h]);
      }
    }
  });
}

void check_ids(const at::Tensor& t, const char* name, int64_t tokens) {
  TORCH_CHECK(t.scalar_type() == at::kLong && t.dim() == 1 && t.is_contiguous(), name,
              " must be a contiguous 1-D int64 tensor");
  TORCH_CHECK(t.numel() > 0 ? tokens % t.numel() == 0 : tokens == 0, name, " has ", t.numel(),
              " ids, which do not repeat evenly over ", tokens, " tokens");
}

}  // namespace

at::Tensor embedding_sum_forward_cpu(const at::Tensor& ids, const at::Tensor& type_ids, const at::Tensor& pos_ids,
                                     const at::Tensor& word, const at::Tensor& type, const at::Tensor& pos,
                                     int64_t stream) {
  const int64_t tokens = ids.numel(), hidden = word.size(1);
  check_ids(ids, "input_ids", tokens);
  check_ids(type_ids, "token_type_ids", tokens);
  check_ids(pos_ids, "position_ids", tokens);
  TORCH_CHECK(word.is_contiguous() && type.is_contiguous() && pos.is_contiguous(), "tables must be contiguous");
  at::Tensor out = at::empty({tokens, hidden}, word.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, word.scalar_type(), "embedding_sum_forward_cpu", [&] {
    forward_kernel<scalar_t>(ids_of(ids), ids_of(type_ids), ids_of(pos_ids), word.data_ptr<scalar_t>(),
                             type.data_ptr<scalar_t>(), pos.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), tokens,
                             hidden);
  });
  return out;
}

at::Tensor embedding_table_backward_cpu(const at::Tensor& grad, const at::Tensor& ids,
                                        const std::optional<at::Tensor>& order, int64_t num_rows,
                                        int64_t padding_idx, int64_t stream) {
  TORCH_CHECK(grad.dim() == 2 && grad.is_contiguous(), "grad must be a contiguous [tokens, hidden] tensor");
  const int64_t tokens = grad.size(0), hidden = grad.size(1);
  check_ids(ids, "ids", tokens);
  at::Tensor grad_table = at::zeros({num_rows, hidden}, grad.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "embedding_table_backward_cpu", [&] {
    backward_kernel<scalar_t>(grad.data_ptr<scalar_t>(), ids_of(ids), grad_table.data_ptr<float>(), tokens, hidden,
                              padding_idx);
  });
  return grad_table;
}

TORCH_LIBRARY_IMPL(bertfast_C, CPU, m) {
  m.impl("embedding_sum_forward", &embedding_sum_forward_cpu);
  m.impl("embedding_table_backward", &embedding_table_backward_cpu);
}

}  // namespace bertfast
