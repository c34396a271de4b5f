// bertfast's CPU inference kernels: bias+GELU, residual+LayerNorm, embedding sum+LayerNorm, padding-free
// (varlen) attention and the int8 layers' (de)quantisation, each
// reading 32-, 16- (bf16) or fp16-bit rows and computing in fp32 (one rounding, at the store).
//
// cpu_kernels.cpp is compiled once per CPU capability (DEFAULT, AVX2, AVX512: CMakeLists.txt), each copy in
// its own namespace with at::vec's matching implementation; cpu_ops.cpp (the torch ops) picks the copy for
// the CPU it runs on, as ATen's own kernels do (at::get_cpu_capability(), which ATEN_CPU_CAPABILITY
// overrides). Pointers are to contiguous rows unless a stride says otherwise; the types are at::ScalarType
// values (Float, BFloat16, Half).
#pragma once
#include <c10/core/ScalarType.h>

#include <cstdint>

namespace bertfast::cpu {

struct Kernels {
  // out[r, :] = gelu(x[r, :] + bias), erf GELU or (tanh_form) the tanh approximation; out has x's type.
  void (*bias_gelu)(c10::ScalarType type, const void* x, const float* bias, void* out, int64_t rows, int64_t n,
                    bool tanh_form);
  // out[r, :] = LayerNorm(x[r, :] + residual[r, :]) * weight + bias, statistics in fp32 (two passes over the
  // row held in fp32); residual may be null (then r_type is ignored); weight and bias are fp32, never null.
  void (*residual_layer_norm)(c10::ScalarType x_type, const void* x, c10::ScalarType r_type, const void* residual,
                              const float* weight, const float* bias, c10::ScalarType out_type, void* out,
                              int64_t rows, int64_t n, float eps);
  // Packed (varlen) attention without a mask: sequence b is rows cu[b] .. cu[b + 1] of q, k, v
  // ([total, heads, dim] with the given row and head strides, elements contiguous); out is contiguous
  // [total, heads, dim] of out_type. softmax(q k^T * scale) v per sequence and head, in fp32.
  void (*varlen_attention)(c10::ScalarType type, const void* q, const void* k, const void* v, const int64_t* strides,
                           const int64_t* cu, int64_t batch, int64_t heads, int64_t dim, float scale,
                           c10::ScalarType out_type, void* out);
  // int8 linear layers: per-row (per-token) symmetric quantisation, q[r, :] = round(x[r, :] / scale[r])
  // in [-127, 127] with scale[r] = max |x[r, :]| / 127 (1 for a zero row) ...
  void (*quantize_rows)(c10::ScalarType type, const void* x, int8_t* q, float* scale, int64_t rows, int64_t n);
  // ... and the int32 product's dequantisation, fused with the bias and the activation (0 none, 1 erf
  // GELU, 2 tanh GELU): out[r, c] = act(acc[r, c] * row_scale[r] * col_scale[c] + bias[c]).
  void (*dequantize)(const int32_t* acc, const float* row_scale, const float* col_scale, const float* bias,
                     int activation, c10::ScalarType out_type, void* out, int64_t rows, int64_t n);
  // out[r, :] = LayerNorm(word[ids[0][r % periods[0]]] + type[ids[1][..]] + pos[ids[2][..]]) * weight + bias:
  // the sum and the statistics in fp32, rounded once to the tables' type (out's); each id tensor repeats
  // with its own period (one id, one a position, one a token: embedding_sum.h); ids are in range.
  void (*embedding_layer_norm)(c10::ScalarType table_type, const void* word, const void* type, const void* pos,
                               const int64_t* const ids[3], const int64_t periods[3], const float* weight,
                               const float* bias, void* out, int64_t rows, int64_t n, float eps);
};

// The copy cpu_ops.cpp runs: "DEFAULT", "AVX2" or "AVX512".
const char* capability();

const Kernels& kernels_DEFAULT();
const Kernels& kernels_AVX2();
const Kernels& kernels_AVX512();

}  // namespace bertfast::cpu
