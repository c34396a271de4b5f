// CUDA kernels of the embedding sum. Raw pointers and the CUDA runtime only (no Torch headers).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "embedding_sum.h"

namespace bertfast {
namespace {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// VEC elements of T moved as one aligned load/store (16 bytes when VEC * sizeof(T) == 16).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Vec {
  T v[VEC];
};

// One block row of threads per token; each thread handles VEC consecutive columns per step.
template <typename T, int VEC>
__global__ void forward_kernel(const int64_t* __restrict__ ids, const int64_t* __restrict__ type_ids,
                               const int64_t* __restrict__ pos_ids, const T* __restrict__ word,
                               const T* __restrict__ type, const T* __restrict__ pos, T* __restrict__ out,
                               int64_t tokens, int64_t hidden) {
  const int64_t t = blockIdx.x * (int64_t)blockDim.y + threadIdx.y;
  if (t >= tokens) return;
  const Vec<T, VEC>* w = reinterpret_cast<const Vec<T, VEC>*>(word + ids[t] * hidden);
  const Vec<T, VEC>* y = reinterpret_cast<const Vec<T, VEC>*>(type + type_ids[t] * hidden);
  const Vec<T, VEC>* p = reinterpret_cast<const Vec<T, VEC>*>(pos + pos_ids[t] * hidden);
  Vec<T, VEC>* o = reinterpret_cast<Vec<T, VEC>*>(out + t * hidden);
  for (int64_t i = threadIdx.x; i < hidden / VEC; i += blockDim.x) {
    Vec<T, VEC> a = w[i], b = y[i], c = p[i], r;
#pragma unroll
    for (int k = 0; k < VEC; ++k) r.v[k] = from_float<T>(to_float(a.v[k]) + to_float(b.v[k]) + to_float(c.v[k]));
    o[i] = r;
  }
}

// Non-deterministic backward: each block walks kChunk consecutive tokens, summing runs of equal ids in
// registers and flushing a run with atomicAdd (few atomics for the token-type table, whose ids repeat).
constexpr int kChunk = 16;

template <typename T>
__global__ void backward_atomic_kernel(const T* __restrict__ grad, const int64_t* __restrict__ ids,
                                       float* __restrict__ table, int64_t tokens, int64_t hidden,
                                       int64_t padding_idx) {
  const int64_t h = blockIdx.y * (int64_t)blockDim.x + threadIdx.x;
  if (h >= hidden) return;
  const int64_t t0 = blockIdx.x * (int64_t)kChunk;
  const int64_t t1 = min(tokens, t0 + kChunk);
  int64_t row = ids[t0];
  float acc = 0.f;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t id = ids[t];
    if (id != row) {
      if (row != padding_idx) atomicAdd(table + row * hidden + h, acc);
      row = id;
      acc = 0.f;
    }
    acc += to_float(grad[t * hidden + h]);
  }
  if (row != padding_idx) atomicAdd(table + row * hidden + h, acc);
}

// Deterministic backward: order sorts the ids; the block at the start of each run of equal ids sums the
// whole run in a fixed order and writes the row. Blocks not at a run start exit at once.
template <typename T>
__global__ void backward_sorted_kernel(const T* __restrict__ grad, const int64_t* __restrict__ ids,
                                       const int64_t* __restrict__ order, float* __restrict__ table,
                                       int64_t tokens, int64_t hidden, int64_t padding_idx) {
  const int64_t s = blockIdx.x;
  const int64_t row = ids[order[s]];
  if (row == padding_idx || (s > 0 && ids[order[s - 1]] == row)) return;
  const int64_t h = blockIdx.y * (int64_t)blockDim.x + threadIdx.x;
  if (h >= hidden) return;
  float acc = 0.f;
  for (int64_t j = s; j < tokens && ids[order[j]] == row; ++j) acc += to_float(grad[order[j] * hidden + h]);
  table[row * hidden + h] = acc;
}

template <typename T>
const char* launch_forward(const int64_t* ids, const int64_t* type_ids, const int64_t* pos_ids, const void* word,
                           const void* type, const void* pos, void* out, int64_t tokens, int64_t hidden,
                           cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const T* w = static_cast<const T*>(word);
  const T* y = static_cast<const T*>(type);
  const T* p = static_cast<const T*>(pos);
  T* o = static_cast<T*>(out);
  const bool aligned = hidden % kVec == 0 && ((uintptr_t)w | (uintptr_t)y | (uintptr_t)p | (uintptr_t)o) % 16 == 0;
  const int vec = aligned ? kVec : 1;
  int threads_x = 32;
  while (threads_x < hidden / vec && threads_x < 256) threads_x *= 2;
  const int threads_y = 256 / threads_x;
  dim3 block(threads_x, threads_y);
  dim3 grid((unsigned)((tokens + threads_y - 1) / threads_y));
  if (aligned)
    forward_kernel<T, kVec><<<grid, block, 0, stream>>>(ids, type_ids, pos_ids, w, y, p, o, tokens, hidden);
  else
    forward_kernel<T, 1><<<grid, block, 0, stream>>>(ids, type_ids, pos_ids, w, y, p, o, tokens, hidden);
  cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

template <typename T>
const char* launch_backward(const void* grad, const int64_t* ids, const int64_t* order, float* table, int64_t tokens,
                            int64_t hidden, int64_t padding_idx, cudaStream_t stream) {
  const T* g = static_cast<const T*>(grad);
  const int threads = 128;
  const unsigned hblocks = (unsigned)((hidden + threads - 1) / threads);
  if (order != nullptr) {
    dim3 grid((unsigned)tokens, hblocks);
    backward_sorted_kernel<T><<<grid, threads, 0, stream>>>(g, ids, order, table, tokens, hidden, padding_idx);
  } else {
    dim3 grid((unsigned)((tokens + kChunk - 1) / kChunk), hblocks);
    backward_atomic_kernel<T><<<grid, threads, 0, stream>>>(g, ids, table, tokens, hidden, padding_idx);
  }
  cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace

const char* embedding_sum_forward_cuda(DType dtype, const int64_t* ids, const int64_t* type_ids,
                                       const int64_t* position_ids, const void* word, const void* type,
                                       const void* position, void* out, int64_t tokens, int64_t hidden, int device,
                                       void* stream_ptr) {
  cudaError_t err = cudaSetDevice(device);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  if (tokens == 0) return nullptr;
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  switch (dtype) {
    case DType::Float32: return launch_forward<float>(ids, type_ids, position_ids, word, type, position, out, tokens, hidden, stream);
    case DType::Float16: return launch_forward<__half>(ids, type_ids, position_ids, word, type, position, out, tokens, hidden, stream);
    case DType::BFloat16: return launch_forward<__nv_bfloat16>(ids, type_ids, position_ids, word, type, position, out, tokens, hidden, stream);
  }
  return "unsupported dtype";
}

const char* embedding_table_backward_cuda(DType dtype, const void* grad, const int64_t* ids, const int64_t* order,
                                          float* table, int64_t tokens, int64_t hidden, int64_t padding_idx,
                                          int device, void* stream_ptr) {
  cudaError_t err = cudaSetDevice(device);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  if (tokens == 0) return nullptr;
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  switch (dtype) {
    case DType::Float32: return launch_backward<float>(grad, ids, order, table, tokens, hidden, padding_idx, stream);
    case DType::Float16: return launch_backward<__half>(grad, ids, order, table, tokens, hidden, padding_idx, stream);
    case DType::BFloat16: return launch_backward<__nv_bfloat16>(grad, ids, order, table, tokens, hidden, padding_idx, stream);
  }
  return "unsupported dtype";
}

}  // namespace bertfast
