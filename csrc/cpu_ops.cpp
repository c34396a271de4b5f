// The torch ops of the CPU inference kernels (schemas in bindings.cpp, fakes in bertfast/ops/cpu.py): the
// checks, the fp32 parameters, the output, and the kernel copy for this CPU's capability (cpu_kernels.h).
// The Python callers (bertfast/ops) check their arguments with clear messages first; these checks are the
// last line (a direct torch.ops call), so nothing reaches a kernel that would read out of bounds.
#include <ATen/Version.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <tuple>

#include "cpu_kernels.h"

namespace bertfast::cpu {
namespace {

const Kernels& kernels() {
  static const Kernels& chosen = [] () -> const Kernels& {
    const std::string name = capability();
    if (name == "AVX512") return kernels_AVX512();
    if (name == "AVX2") return kernels_AVX2();
    return kernels_DEFAULT();
  }();
  return chosen;
}

bool kernel_dtype(c10::ScalarType t) {
  return t == c10::ScalarType::Float || t == c10::ScalarType::BFloat16 || t == c10::ScalarType::Half;
}

void check_rows(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got one on ", t.device());
  TORCH_CHECK(kernel_dtype(t.scalar_type()), name, " must be float32, bfloat16 or float16, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 2 && t.is_contiguous(), name, " must be a contiguous 2-D [rows, n] tensor, got shape ",
              t.sizes(), t.is_contiguous() ? "" : " (not contiguous)");
}

at::Tensor fp32_vector(const std::optional<at::Tensor>& t, const char* name, int64_t n, float fill) {
  if (!t.has_value()) return fill == 0.f ? at::zeros({n}, at::kFloat) : at::ones({n}, at::kFloat);
  TORCH_CHECK(t->device().is_cpu(), name, " must be a CPU tensor, got one on ", t->device());
  TORCH_CHECK(kernel_dtype(t->scalar_type()), name, " must be float32, bfloat16 or float16, got ", t->scalar_type());
  TORCH_CHECK(t->dim() == 1 && t->size(0) == n, name, " must have shape [", n, "], got ", t->sizes());
  return t->to(at::kFloat).contiguous();
}

}  // namespace

const char* capability() {
  // at::get_cpu_capability() follows ATEN_CPU_CAPABILITY, as ATen's own kernels do.
  static const std::string name = at::get_cpu_capability();
  return name == "AVX512" ? "AVX512" : name == "AVX2" ? "AVX2" : "DEFAULT";
}

at::Tensor bias_gelu_cpu(const at::Tensor& x, const at::Tensor& bias, c10::string_view approximate) {
  check_rows(x, "x");
  TORCH_CHECK(approximate == "none" || approximate == "tanh", "approximate must be 'none' or 'tanh', got '",
              std::string(approximate), "'");
  const int64_t rows = x.size(0), n = x.size(1);
  const at::Tensor b = fp32_vector(bias, "bias", n, 0.f);
  at::Tensor out = at::empty_like(x);
  if (x.numel() > 0) {
    kernels().bias_gelu(x.scalar_type(), x.data_ptr(), b.data_ptr<float>(), out.data_ptr(), rows, n,
                        approximate == "tanh");
  }
  return out;
}

at::Tensor residual_layer_norm_cpu(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                                   const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                                   double eps) {
  check_rows(x, "x");
  const int64_t rows = x.size(0), n = x.size(1);
  TORCH_CHECK(eps > 0, "eps must be > 0, got ", eps);
  c10::ScalarType out_type = x.scalar_type();
  if (residual.has_value()) {
    check_rows(*residual, "residual");
    TORCH_CHECK(residual->sizes() == x.sizes(), "residual has shape ", residual->sizes(), " but x has ", x.sizes());
    out_type = c10::promoteTypes(x.scalar_type(), residual->scalar_type());
  }
  const at::Tensor w = fp32_vector(weight, "weight", n, 1.f), b = fp32_vector(bias, "bias", n, 0.f);
  at::Tensor out = at::empty({rows, n}, x.options().dtype(out_type));
  if (x.numel() > 0) {
    kernels().residual_layer_norm(x.scalar_type(), x.data_ptr(),
                                  residual.has_value() ? residual->scalar_type() : x.scalar_type(),
                                  residual.has_value() ? residual->data_ptr() : nullptr, w.data_ptr<float>(),
                                  b.data_ptr<float>(), out_type, out.data_ptr(), rows, n, static_cast<float>(eps));
  }
  return out;
}

at::Tensor varlen_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const at::Tensor& cu_seqlens, double scale) {
  for (const auto& [t, name] : {std::pair{&q, "q"}, {&k, "k"}, {&v, "v"}}) {
    TORCH_CHECK(t->device().is_cpu(), name, " must be a CPU tensor, got one on ", t->device());
    TORCH_CHECK(t->scalar_type() == q.scalar_type() && kernel_dtype(t->scalar_type()), name,
                " must be float32, bfloat16 or float16 like q, got ", t->scalar_type());
    TORCH_CHECK(t->dim() == 3 && t->sizes() == q.sizes(), name, " must be [total, heads, dim] like q ", q.sizes(),
                ", got ", t->sizes());
    TORCH_CHECK(t->size(2) <= 1 || t->stride(2) == 1, name, "'s last dimension must be contiguous");
  }
  TORCH_CHECK(cu_seqlens.device().is_cpu() && cu_seqlens.dim() == 1 && cu_seqlens.numel() >= 1,
              "cu_seqlens must be a 1-D CPU tensor of batch + 1 offsets, got shape ", cu_seqlens.sizes());
  const at::Tensor cu = cu_seqlens.to(at::kLong).contiguous();
  const int64_t* offsets = cu.data_ptr<int64_t>();
  const int64_t batch = cu.numel() - 1, total = q.size(0), heads = q.size(1), dim = q.size(2);
  TORCH_CHECK(offsets[0] == 0 && offsets[batch] == total, "cu_seqlens must run from 0 to the ", total,
              " packed rows, got ", offsets[0], " .. ", offsets[batch]);
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(offsets[b + 1] >= offsets[b], "cu_seqlens must not decrease, got ", offsets[b], " then ",
                offsets[b + 1]);
  }
  at::Tensor out = at::empty({total, heads, dim}, q.options());
  if (out.numel() > 0) {
    const int64_t strides[6] = {q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1)};
    kernels().varlen_attention(q.scalar_type(), q.data_ptr(), k.data_ptr(), v.data_ptr(), strides, offsets, batch,
                               heads, dim, static_cast<float>(scale), out.scalar_type(), out.data_ptr());
  }
  return out;
}

at::Tensor embedding_layer_norm_cpu(const at::Tensor& input_ids, const at::Tensor& token_type_ids,
                                    const at::Tensor& position_ids, const at::Tensor& word, const at::Tensor& type,
                                    const at::Tensor& pos, const std::optional<at::Tensor>& weight,
                                    const std::optional<at::Tensor>& bias, double eps) {
  for (const auto& [t, name] : {std::pair{&word, "word_weight"}, {&type, "type_weight"}, {&pos, "position_weight"}}) {
    check_rows(*t, name);
    TORCH_CHECK(t->scalar_type() == word.scalar_type() && t->size(1) == word.size(1), name, " is ",
                t->scalar_type(), " [", t->size(0), ", ", t->size(1), "] but word_weight is ", word.scalar_type(),
                " [.., ", word.size(1), "]: the tables must share dtype and hidden size");
  }
  TORCH_CHECK(eps > 0, "eps must be > 0, got ", eps);
  const int64_t rows = input_ids.numel(), n = word.size(1);
  const int64_t* ids[3];
  int64_t periods[3];
  int i = 0;
  for (const auto& [t, name, table] : {std::tuple{&input_ids, "input_ids", &word}, {&token_type_ids, "token_type_ids", &type},
                                       {&position_ids, "position_ids", &pos}}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kLong && t->dim() == 1 && t->is_contiguous(), name,
                " must be a contiguous 1-D int64 CPU tensor, got ", t->scalar_type(), " of shape ", t->sizes());
    TORCH_CHECK(t->numel() > 0 ? rows % t->numel() == 0 : rows == 0, name, " has ", t->numel(),
                " ids, which do not repeat evenly over ", rows, " tokens");
    const int64_t* data = t->data_ptr<int64_t>();
    const int64_t limit = table->size(0);
    for (int64_t j = 0; j < t->numel(); ++j) {
      TORCH_CHECK(data[j] >= 0 && data[j] < limit, name, " must be in [0, ", limit, "), got ", data[j], " at ", j);
    }
    ids[i] = data;
    periods[i++] = std::max<int64_t>(t->numel(), 1);
  }
  const at::Tensor w = fp32_vector(weight, "weight", n, 1.f), b = fp32_vector(bias, "bias", n, 0.f);
  at::Tensor out = at::empty({rows, n}, word.options());
  if (out.numel() > 0) {
    kernels().embedding_layer_norm(word.scalar_type(), word.data_ptr(), type.data_ptr(), pos.data_ptr(), ids, periods,
                                   w.data_ptr<float>(), b.data_ptr<float>(), out.data_ptr(), rows, n,
                                   static_cast<float>(eps));
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor> quantize_rows_cpu(const at::Tensor& x) {
  check_rows(x, "x");
  const int64_t rows = x.size(0), n = x.size(1);
  at::Tensor q = at::empty({rows, n}, x.options().dtype(at::kChar));
  at::Tensor scale = at::empty({rows}, x.options().dtype(at::kFloat));
  if (x.numel() > 0) {
    kernels().quantize_rows(x.scalar_type(), x.data_ptr(), q.data_ptr<int8_t>(), scale.data_ptr<float>(), rows, n);
  } else if (rows > 0) {
    scale.fill_(1.0);
  }
  return {q, scale};
}

at::Tensor dequantize_cpu(const at::Tensor& acc, const at::Tensor& row_scale, const at::Tensor& col_scale,
                          const std::optional<at::Tensor>& bias, c10::string_view activation, at::ScalarType out_dtype) {
  TORCH_CHECK(acc.device().is_cpu() && acc.scalar_type() == at::kInt && acc.dim() == 2 && acc.is_contiguous(),
              "acc must be a contiguous 2-D int32 CPU tensor, got ", acc.scalar_type(), " of shape ", acc.sizes());
  const int64_t rows = acc.size(0), n = acc.size(1);
  for (const auto& [t, name, size] : {std::tuple{&row_scale, "row_scale", rows}, {&col_scale, "col_scale", n}}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->dim() == 1 && t->size(0) == size &&
                    t->is_contiguous(), name, " must be a contiguous float32 CPU tensor of shape [", size, "], got ",
                t->scalar_type(), " of shape ", t->sizes());
  }
  TORCH_CHECK(activation == "none" || activation == "gelu" || activation == "gelu_tanh",
              "activation must be 'none', 'gelu' or 'gelu_tanh', got '", std::string(activation), "'");
  TORCH_CHECK(kernel_dtype(out_dtype), "out_dtype must be float32, bfloat16 or float16, got ", out_dtype);
  const at::Tensor b = fp32_vector(bias, "bias", n, 0.f);
  at::Tensor out = at::empty({rows, n}, acc.options().dtype(out_dtype));
  if (acc.numel() > 0) {
    const int act = activation == "gelu" ? 1 : activation == "gelu_tanh" ? 2 : 0;
    kernels().dequantize(acc.data_ptr<int32_t>(), row_scale.data_ptr<float>(), col_scale.data_ptr<float>(),
                         b.data_ptr<float>(), act, out_dtype, out.data_ptr(), rows, n);
  }
  return out;
}

TORCH_LIBRARY_IMPL(bertfast_C, CPU, m) {
  m.impl("quantize_rows_cpu", &quantize_rows_cpu);
  m.impl("dequantize_cpu", &dequantize_cpu);
  m.impl("bias_gelu_cpu", &bias_gelu_cpu);
  m.impl("residual_layer_norm_cpu", &residual_layer_norm_cpu);
  m.impl("varlen_attention_cpu", &varlen_attention_cpu);
  m.impl("embedding_layer_norm_cpu", &embedding_layer_norm_cpu);
}

}  // namespace bertfast::cpu
