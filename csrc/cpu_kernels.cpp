// The CPU inference kernels (cpu_kernels.h), compiled once per CPU capability: CMake defines CPU_CAPABILITY
// (DEFAULT, AVX2 or AVX512: the namespace at::vec puts its implementation in, and ours) with the matching
// CPU_CAPABILITY_<name> macro and compiler flags. Rows are converted to fp32 once, computed on in fp32
// vectors (at::vec::Vectorized<float>, whose tails load and store `count` elements) and rounded once.
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu_kernels.h"

#ifndef CPU_CAPABILITY
#error "cpu_kernels.cpp is compiled with CPU_CAPABILITY defined (CMakeLists.txt)"
#endif
#define BERTFAST_CAT2(a, b) a##b
#define BERTFAST_CAT(a, b) BERTFAST_CAT2(a, b)

namespace bertfast::cpu {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;
using fVec = Vectorized<float>;
constexpr int64_t kW = fVec::size();

// Rows in and out of fp32 ---------------------------------------------------------------------------------
template <typename T>
void load_row(const T* src, float* dst, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(dst, src, n * sizeof(float));
  } else {
    using bVec = Vectorized<T>;
    int64_t i = 0;
    for (; i + bVec::size() <= n; i += bVec::size()) {
      auto [lo, hi] = at::vec::convert_to_float<T>(bVec::loadu(src + i));
      lo.store(dst + i);
      hi.store(dst + i + kW);
    }
    for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
  }
}

template <typename T>
void store_row(const float* src, T* dst, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(dst, src, n * sizeof(float));
  } else {
    using bVec = Vectorized<T>;
    int64_t i = 0;
    for (; i + bVec::size() <= n; i += bVec::size()) {
      at::vec::convert_from_float<T>(fVec::loadu(src + i), fVec::loadu(src + i + kW)).store(dst + i);
    }
    for (; i < n; ++i) dst[i] = static_cast<T>(src[i]);  // round to nearest even, as the vector path
  }
}

// Element `offset` of a row of `type`, `n` of them, into / out of fp32.
void load_any(c10::ScalarType type, const void* base, int64_t offset, float* dst, int64_t n) {
  switch (type) {
    case c10::ScalarType::Float: return load_row(static_cast<const float*>(base) + offset, dst, n);
    case c10::ScalarType::BFloat16: return load_row(static_cast<const c10::BFloat16*>(base) + offset, dst, n);
    default: return load_row(static_cast<const c10::Half*>(base) + offset, dst, n);
  }
}

void store_any(c10::ScalarType type, const float* src, void* base, int64_t offset, int64_t n) {
  switch (type) {
    case c10::ScalarType::Float: return store_row(src, static_cast<float*>(base) + offset, n);
    case c10::ScalarType::BFloat16: return store_row(src, static_cast<c10::BFloat16*>(base) + offset, n);
    default: return store_row(src, static_cast<c10::Half*>(base) + offset, n);
  }
}

float reduce_sum(const fVec& v) {
  alignas(64) float lanes[kW];
  v.store(lanes);
  float s = 0.f;
  for (int64_t i = 0; i < kW; ++i) s += lanes[i];
  return s;
}

float reduce_max(const fVec& v) {
  alignas(64) float lanes[kW];
  v.store(lanes);
  float m = lanes[0];
  for (int64_t i = 1; i < kW; ++i) m = std::max(m, lanes[i]);
  return m;
}

// Rows a task: about 16k elements, so that short rows do not cost a task each.
int64_t grain(int64_t n) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(n, 1)); }

// bias + GELU -----------------------------------------------------------------------------------------------
// 1 / x: on AVX-512 the 14-bit estimate and one Newton step (relative error ~1e-8, a quarter of vdivps' time);
// elsewhere a division.
inline fVec reciprocal(const fVec& x) {
#if defined(CPU_CAPABILITY_AVX512)
  const __m512 r = _mm512_rcp14_ps(x);
  return fVec(_mm512_mul_ps(r, _mm512_fnmadd_ps(x, r, _mm512_set1_ps(2.0f))));
#else
  return fVec(1.0f) / x;
#endif
}

// 1 + erf(x) by Abramowitz and Stegun 7.1.26 (erf's absolute error below 1.5e-7, as at::vec's erf) on
// exp_u20, the fast exp of ATen's own CPU flash attention (at::vec's erf calls Sleef's exp, which costs more
// than the rest). For x < 0 it is erfc(|x|) = poly(t) exp(-x^2) itself, not 1 - (1 - ...): no cancellation
// in GELU's left tail, where 1 + erf is tiny.
inline fVec one_plus_erf(const fVec& x) {
  const fVec one(1.0f), two(2.0f), p(0.3275911f), a1(0.254829592f), a2(-0.284496736f), a3(1.421413741f);
  const fVec a4(-1.453152027f), a5(1.061405429f);
  const fVec ax = x.abs();
  const fVec t = reciprocal(at::vec::fmadd(p, ax, one));
  fVec poly = at::vec::fmadd(a5, t, a4);
  poly = at::vec::fmadd(poly, t, a3);
  poly = at::vec::fmadd(poly, t, a2);
  poly = at::vec::fmadd(poly, t, a1) * t;
  const fVec erfc = poly * (fVec(0.f) - ax * ax).exp_u20();  // erfc(|x|)
  return fVec::blendv(two - erfc, erfc, x < fVec(0.f));
}

// 1 + tanh(u) = 2 e / (e + 1) with e = exp(2u), on exp_u20: no cancellation where tanh is close to -1 (2u
// capped at 40, where 2 e / (e + 1) is 2 in fp32; e is 0 below -87, past ln(FLT_MIN)).
inline fVec one_plus_tanh(const fVec& u) {
  const fVec two(2.0f);
  const fVec twice = two * u;
  // (exactly 0 below -87 in every copy: the DEFAULT copy's exp is std::exp, which gives subnormals there)
  const fVec e = fVec::blendv(at::vec::minimum(twice, fVec(40.f)).exp_u20(), fVec(0.f), twice < fVec(-87.f));
  return two * e * reciprocal(e + fVec(1.0f));
}

template <bool kTanh>
inline fVec gelu(const fVec& v) {
  const fVec half(0.5f);
  if constexpr (kTanh) {
    const fVec beta(static_cast<float>(M_SQRT2 * M_2_SQRTPI * 0.5)), kappa(0.044715f);
    return half * v * one_plus_tanh(beta * at::vec::fmadd(kappa * v, v * v, v));
  } else {
    return half * v * one_plus_erf(v * fVec(static_cast<float>(M_SQRT1_2)));
  }
}

// Two fp32 vectors of a row at a time (one 16-bit vector), straight from and to the row's own type.
template <typename T, bool kTanh>
void bias_gelu_rows(const T* x, const float* bias, T* out, int64_t r0, int64_t r1, int64_t n) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x + r * n;
    T* o = out + r * n;
    int64_t i = 0;
    if constexpr (std::is_same_v<T, float>) {
      for (; i < n; i += kW) {
        const int64_t count = std::min(kW, n - i);
        gelu<kTanh>(fVec::loadu(xr + i, count) + fVec::loadu(bias + i, count)).store(o + i, count);
      }
    } else {
      using bVec = Vectorized<T>;
      for (; i + bVec::size() <= n; i += bVec::size()) {
        auto [lo, hi] = at::vec::convert_to_float<T>(bVec::loadu(xr + i));
        lo = gelu<kTanh>(lo + fVec::loadu(bias + i));
        hi = gelu<kTanh>(hi + fVec::loadu(bias + i + kW));
        at::vec::convert_from_float<T>(lo, hi).store(o + i);
      }
      if (i < n) {  // the tail through fp32 buffers
        float buf[2 * kW];
        load_row(xr + i, buf, n - i);
        for (int64_t j = 0; j < n - i; j += kW) {
          const int64_t count = std::min(kW, n - i - j);
          gelu<kTanh>(fVec::loadu(buf + j, count) + fVec::loadu(bias + i + j, count)).store(buf + j, count);
        }
        store_row(buf, o + i, n - i);
      }
    }
  }
}

template <typename T>
void bias_gelu_typed(const void* x, const float* bias, void* out, int64_t rows, int64_t n, bool tanh_form) {
  at::parallel_for(0, rows, grain(n), [&](int64_t r0, int64_t r1) {
    const T* xs = static_cast<const T*>(x);
    T* os = static_cast<T*>(out);
    if (tanh_form) {
      bias_gelu_rows<T, true>(xs, bias, os, r0, r1, n);
    } else {
      bias_gelu_rows<T, false>(xs, bias, os, r0, r1, n);
    }
  });
}

void bias_gelu(c10::ScalarType type, const void* x, const float* bias, void* out, int64_t rows, int64_t n,
               bool tanh_form) {
  switch (type) {
    case c10::ScalarType::Float: return bias_gelu_typed<float>(x, bias, out, rows, n, tanh_form);
    case c10::ScalarType::BFloat16: return bias_gelu_typed<c10::BFloat16>(x, bias, out, rows, n, tanh_form);
    default: return bias_gelu_typed<c10::Half>(x, bias, out, rows, n, tanh_form);
  }
}

// residual + LayerNorm --------------------------------------------------------------------------------------
// h (a row of n, in fp32) <- LayerNorm(h) * weight + bias: two-pass statistics in fp32.
void layer_norm_row(float* h, const float* weight, const float* bias, int64_t n, float eps) {
  fVec acc(0.f);
  for (int64_t i = 0; i < n; i += kW) acc = acc + fVec::loadu(h + i, std::min(kW, n - i));  // tails: zeros
  const float mean = reduce_sum(acc) / static_cast<float>(n);
  const fVec m(mean), zero(0.f);
  acc = zero;
  for (int64_t i = 0; i < n; i += kW) {
    const int64_t count = std::min(kW, n - i);
    const fVec d = fVec::set(zero, fVec::loadu(h + i, count) - m, count);  // lanes past the row: 0
    acc = at::vec::fmadd(d, d, acc);
  }
  const fVec rstd(1.0f / std::sqrt(reduce_sum(acc) / static_cast<float>(n) + eps));
  for (int64_t i = 0; i < n; i += kW) {
    const int64_t count = std::min(kW, n - i);
    const fVec y = at::vec::fmadd((fVec::loadu(h + i, count) - m) * rstd, fVec::loadu(weight + i, count),
                                  fVec::loadu(bias + i, count));
    y.store(h + i, count);
  }
}

// h[0, n) += r[0, n)
inline void add_row(float* h, const float* r, int64_t n) {
  for (int64_t i = 0; i < n; i += kW) {
    const int64_t count = std::min(kW, n - i);
    (fVec::loadu(h + i, count) + fVec::loadu(r + i, count)).store(h + i, count);
  }
}

void residual_layer_norm(c10::ScalarType x_type, const void* x, c10::ScalarType r_type, const void* residual,
                         const float* weight, const float* bias, c10::ScalarType out_type, void* out, int64_t rows,
                         int64_t n, float eps) {
  at::parallel_for(0, rows, grain(n), [&](int64_t r0, int64_t r1) {
    std::vector<float> h(n), r(residual != nullptr ? n : 0);
    for (int64_t row = r0; row < r1; ++row) {
      load_any(x_type, x, row * n, h.data(), n);
      if (residual != nullptr) {
        load_any(r_type, residual, row * n, r.data(), n);
        add_row(h.data(), r.data(), n);
      }
      layer_norm_row(h.data(), weight, bias, n, eps);
      store_any(out_type, h.data(), out, row * n, n);
    }
  });
}

// Embedding sum + LayerNorm ---------------------------------------------------------------------------------
void embedding_layer_norm(c10::ScalarType table_type, const void* word, const void* type, const void* pos,
                          const int64_t* const ids[3], const int64_t periods[3], const float* weight, const float* bias,
                          void* out, int64_t rows, int64_t n, float eps) {
  at::parallel_for(0, rows, grain(n), [&](int64_t r0, int64_t r1) {
    std::vector<float> h(n), r(n);
    for (int64_t row = r0; row < r1; ++row) {
      load_any(table_type, word, ids[0][row % periods[0]] * n, h.data(), n);
      load_any(table_type, type, ids[1][row % periods[1]] * n, r.data(), n);
      add_row(h.data(), r.data(), n);
      load_any(table_type, pos, ids[2][row % periods[2]] * n, r.data(), n);
      add_row(h.data(), r.data(), n);
      layer_norm_row(h.data(), weight, bias, n, eps);
      store_any(table_type, h.data(), out, row * n, n);
    }
  });
}

// Padding-free attention ------------------------------------------------------------------------------------
// One task per (sequence, group of heads). The task reads its rows once, in order (each row's heads of the
// group are one contiguous run when the heads are: the hardware prefetcher sees a stream, not one short
// strided read per head), into fp32 buffers: queries (scaled) and values [row][head][dim], keys transposed
// [head][dim][keys rounded up to a micro-tile]. Then per head, blocks of kQ query rows against micro-tiles
// of kKV vectors: the scores (each key vector loaded once for the kQ rows), a max-subtracted exp in fp32, the
// weighted sum of values (each value vector loaded once for the kQ rows), one division, one rounding. The
// kQ x kKV accumulators stay in registers (16 of AVX-512's 32; 8 of AVX2's 16): rows past the sequence are
// zero queries and columns past dim read the buffers' zeroed tails, computed on and never stored, so no
// loop bound depends on a tail.
constexpr int64_t kQ = kW >= 16 ? 8 : 4;
constexpr int64_t kKV = 2;
constexpr int64_t kTile = kKV * kW;
// A task's buffers: at most about this many floats (256 KiB of a core's L2), fewer heads a task if more.
constexpr int64_t kTaskFloats = 64 * 1024;

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// The register tile of both products: for r < kQ, x < kKV, acc[r][x] = the sum over t < steps of
// a[r * a_row + t] times the kW floats at b + t * b_row + x * kW (each of a's values broadcast, each
// vector of b loaded once for the kQ rows).
inline void micro_tile(const float* a, int64_t a_row, const float* b, int64_t b_row, int64_t steps,
                       fVec (&acc)[kQ][kKV]) {
  for (int64_t r = 0; r < kQ; ++r)
    for (int64_t x = 0; x < kKV; ++x) acc[r][x] = fVec(0.f);
  for (int64_t t = 0; t < steps; ++t) {
    fVec bv[kKV];
    for (int64_t x = 0; x < kKV; ++x) bv[x] = fVec::loadu(b + t * b_row + x * kW);
    for (int64_t r = 0; r < kQ; ++r) {
      const fVec av(a[r * a_row + t]);
      for (int64_t x = 0; x < kKV; ++x) acc[r][x] = at::vec::fmadd(av, bv[x], acc[r][x]);
    }
  }
}

// Row j's `count` heads from head h0 of x (row and head strides in elements, heads of `dim` contiguous
// elements) into dst, [head][dim] contiguous.
inline void load_heads(c10::ScalarType type, const void* x, int64_t row_stride, int64_t head_stride, int64_t row,
                       int64_t h0, int64_t count, int64_t dim, float* dst) {
  const int64_t base = row * row_stride + h0 * head_stride;
  if (head_stride == dim) {
    load_any(type, x, base, dst, count * dim);
  } else {
    for (int64_t h = 0; h < count; ++h) load_any(type, x, base + h * head_stride, dst + h * dim, dim);
  }
}

void varlen_attention(c10::ScalarType type, const void* q, const void* k, const void* v, const int64_t* strides,
                      const int64_t* cu, int64_t batch, int64_t heads, int64_t dim, float scale,
                      c10::ScalarType out_type, void* out) {
  const int64_t q_row = strides[0], q_head = strides[1], k_row = strides[2], k_head = strides[3];
  const int64_t v_row = strides[4], v_head = strides[5];
  int64_t longest = 0;
  for (int64_t b = 0; b < batch; ++b) longest = std::max(longest, cu[b + 1] - cu[b]);
  // Heads a task: as many as fit the budget at the longest sequence, then fewer while there are under four
  // tasks a thread (a batch of one long sequence still spreads over the cores).
  int64_t group = std::clamp<int64_t>(kTaskFloats / std::max<int64_t>(1, 3 * dim * round_up(longest, kTile)), 1, heads);
  const int64_t threads = at::get_num_threads();
  while (group > 1 && batch * ((heads + group - 1) / group) < 4 * threads) group = (group + 1) / 2;
  const int64_t groups = (heads + group - 1) / group;
  const int64_t dim_tiles = round_up(dim, kTile);  // an output row's columns, rounded up to the micro-tile
  at::parallel_for(0, batch * groups, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> kt, qs, vals, scores, obuf(kQ * dim_tiles), row(group * dim);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t b = task / groups, h0 = task % groups * group, hn = std::min(group, heads - h0);
      const int64_t start = cu[b], n = cu[b + 1] - cu[b];
      if (n <= 0) continue;
      const int64_t keys = round_up(n, kTile), rows = round_up(n, kQ), width = hn * dim;  // width: a buffer row
      kt.assign(hn * dim * keys, 0.f);
      qs.assign(rows * width + kTile, 0.f);  // rows past the sequence and a tail past the last head: zeros
      vals.assign(n * width + kTile, 0.f);
      scores.resize(kQ * keys);
      for (int64_t j = 0; j < n; ++j) {
        load_heads(type, k, k_row, k_head, start + j, h0, hn, dim, row.data());
        for (int64_t h = 0; h < hn; ++h) {
          float* kh = kt.data() + h * dim * keys + j;
          for (int64_t d = 0; d < dim; ++d) kh[d * keys] = row[h * dim + d];
        }
        load_heads(type, v, v_row, v_head, start + j, h0, hn, dim, vals.data() + j * width);
        load_heads(type, q, q_row, q_head, start + j, h0, hn, dim, qs.data() + j * width);
      }
      for (int64_t i = 0; i < n * width; i += kW) {
        (fVec::loadu(qs.data() + i) * fVec(scale)).store(qs.data() + i);  // (the tail past n * width: zeros)
      }
      const fVec lowest(-std::numeric_limits<float>::infinity()), zero(0.f);
      for (int64_t h = 0; h < hn; ++h) {
        const float* kth = kt.data() + h * dim * keys;
        for (int64_t i0 = 0; i0 < n; i0 += kQ) {
          const float* qb = qs.data() + i0 * width + h * dim;  // query row r, element d: qb[r * width + d]
          for (int64_t j = 0; j < keys; j += kTile) {
            fVec acc[kQ][kKV];
            micro_tile(qb, width, kth + j, keys, dim, acc);  // scores: q . k over the dim
            for (int64_t r = 0; r < kQ; ++r)
              for (int64_t x = 0; x < kKV; ++x) acc[r][x].store(scores.data() + r * keys + j + x * kW);
          }
          float inv[kQ];
          for (int64_t r = 0; r < kQ; ++r) {
            float* s = scores.data() + r * keys;
            fVec vmax = lowest;
            for (int64_t j = 0; j < keys; j += kW) {
              const fVec x = fVec::set(lowest, fVec::loadu(s + j), std::clamp<int64_t>(n - j, 0, kW));  // past it: -inf
              x.store(s + j);
              vmax = at::vec::maximum(vmax, x);
            }
            const fVec m(reduce_max(vmax));
            fVec vsum = zero;
            for (int64_t j = 0; j < keys; j += kW) {
              // keys past the sequence: 0 (not exp_u20(-inf), which the fast exp does not promise)
              const fVec p = fVec::set(zero, (fVec::loadu(s + j) - m).exp_u20(), std::clamp<int64_t>(n - j, 0, kW));
              p.store(s + j);
              vsum = vsum + p;
            }
            inv[r] = 1.0f / reduce_sum(vsum);
          }
          const float* vh = vals.data() + h * dim;  // key j, element c: vh[j * width + c]
          for (int64_t c = 0; c < dim; c += kTile) {
            fVec acc[kQ][kKV];
            micro_tile(scores.data(), keys, vh + c, width, n, acc);  // the weighted sum of values over the keys
            for (int64_t r = 0; r < kQ; ++r)
              for (int64_t x = 0; x < kKV; ++x) (acc[r][x] * fVec(inv[r])).store(obuf.data() + r * dim_tiles + c + x * kW);
          }
          for (int64_t r = 0; r < std::min(kQ, n - i0); ++r) {
            store_any(out_type, obuf.data() + r * dim_tiles, out, ((start + i0 + r) * heads + h0 + h) * dim, dim);
          }
        }
      }
    }
  });
}

// int8 linear layers ----------------------------------------------------------------------------------------
void quantize_rows(c10::ScalarType type, const void* x, int8_t* q, float* scale, int64_t rows, int64_t n) {
  at::parallel_for(0, rows, grain(n), [&](int64_t r0, int64_t r1) {
    std::vector<float> buf(n);
    for (int64_t r = r0; r < r1; ++r) {
      load_any(type, x, r * n, buf.data(), n);
      fVec m(0.f);
      for (int64_t i = 0; i < n; i += kW) m = at::vec::maximum(m, fVec::loadu(buf.data() + i, std::min(kW, n - i)).abs());
      const float absmax = reduce_max(m);
      const float s = absmax > 0.f ? absmax / 127.f : 1.f;
      scale[r] = s;
      const fVec inv(1.f / s);
      int8_t* qr = q + r * n;
      for (int64_t i = 0; i < n; i += kW) {
        const int64_t count = std::min(kW, n - i);
        // clamped to [-127, 127] (|x| / s is 127 up to its rounding), rounded half to even (as torch.round)
        const fVec v = at::vec::clamp(fVec::loadu(buf.data() + i, count) * inv, fVec(-127.f), fVec(127.f));
#if defined(CPU_CAPABILITY_AVX512)
        const __mmask16 mask = count == kW ? __mmask16(0xFFFF) : __mmask16((1u << count) - 1);
        _mm512_mask_cvtsepi32_storeu_epi8(qr + i, mask, _mm512_cvtps_epi32(v));  // (the default mode: to even)
#else
        alignas(64) float rounded[kW];
        v.round().store(rounded, count);
        for (int64_t j = 0; j < count; ++j) qr[i + j] = static_cast<int8_t>(rounded[j]);
#endif
      }
    }
  });
}

void dequantize(const int32_t* acc, const float* row_scale, const float* col_scale, const float* bias, int activation,
                c10::ScalarType out_type, void* out, int64_t rows, int64_t n) {
  at::parallel_for(0, rows, grain(n), [&](int64_t r0, int64_t r1) {
    std::vector<float> buf(n);
    for (int64_t r = r0; r < r1; ++r) {
      const fVec rs(row_scale[r]);
      const int32_t* a = acc + r * n;
#if !defined(CPU_CAPABILITY_AVX512)
      for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<float>(a[i]);
#endif
      for (int64_t i = 0; i < n; i += kW) {
        const int64_t count = std::min(kW, n - i);
#if defined(CPU_CAPABILITY_AVX512)
        const __mmask16 mask = count == kW ? __mmask16(0xFFFF) : __mmask16((1u << count) - 1);
        const fVec product(_mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(mask, a + i)));
#else
        const fVec product = fVec::loadu(buf.data() + i, count);
#endif
        const fVec v = at::vec::fmadd(product * rs, fVec::loadu(col_scale + i, count), fVec::loadu(bias + i, count));
        (activation == 1 ? gelu<false>(v) : activation == 2 ? gelu<true>(v) : v).store(buf.data() + i, count);
      }
      store_any(out_type, buf.data(), out, r * n, n);
    }
  });
}

}  // namespace
}  // namespace CPU_CAPABILITY

const Kernels& BERTFAST_CAT(kernels_, CPU_CAPABILITY)() {
  static const Kernels kernels{&CPU_CAPABILITY::bias_gelu, &CPU_CAPABILITY::residual_layer_norm,
                               &CPU_CAPABILITY::varlen_attention, &CPU_CAPABILITY::quantize_rows,
                               &CPU_CAPABILITY::dequantize, &CPU_CAPABILITY::embedding_layer_norm};
  return kernels;
}

}  // namespace bertfast::cpu
