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

// Makes `device` current for the launch and gives the caller's device back afterwards, as
// c10::cuda::CUDAGuard does (its header needs the CUDA build of Torch; this file needs only the runtime).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    error_ = cudaGetDevice(&previous_);
    if (error_ == cudaSuccess && previous_ != device) {
      error_ = cudaSetDevice(device);
      restore_ = error_ == cudaSuccess;
    }
  }
  ~DeviceGuard() {
    if (restore_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  cudaError_t error() const { return error_; }

 private:
  int previous_ = 0;
  bool restore_ = false;
  cudaError_t error_ = cudaSuccess;
};

// Launches through cudaLaunchKernelEx, whose return value is this launch's own status (a bad
// configuration, no kernel image for the device); cudaGetLastError after a <<<>>> launch can instead
// report an earlier, unrelated error left pending by someone else's launch.
template <typename... Params, typename... Args>
cudaError_t launch(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream, Args... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = 0;
  config.stream = stream;
  return cudaLaunchKernelEx(&config, kernel, args...);
}

// VEC elements of T moved as one aligned load/store (16 bytes when VEC * sizeof(T) == 16).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Vec {
  T v[VEC];
};

// One block row of threads per token; each thread handles VEC consecutive columns per step. Ids repeat
// with their own period (see embedding_sum.h); the period's remainder in 32 bits (tokens < 2**31).
__device__ __forceinline__ int64_t periodic(int64_t t, int64_t len, int64_t tokens) {
  return len == tokens ? t : static_cast<int64_t>(static_cast<uint32_t>(t) % static_cast<uint32_t>(len));
}

template <typename T, int VEC>
__global__ void forward_kernel(const int64_t* __restrict__ ids, int64_t ids_len, const int64_t* __restrict__ type_ids,
                               int64_t type_len, const int64_t* __restrict__ pos_ids, int64_t pos_len,
                               const T* __restrict__ word, const T* __restrict__ type, const T* __restrict__ pos,
                               T* __restrict__ out, int64_t tokens, int64_t hidden) {
  const int64_t t = blockIdx.x * (int64_t)blockDim.y + threadIdx.y;
  if (t >= tokens) return;
  const int64_t id = ids[periodic(t, ids_len, tokens)];
  const int64_t type_id = type_ids[periodic(t, type_len, tokens)];
  const int64_t pos_id = pos_ids[periodic(t, pos_len, tokens)];
  const Vec<T, VEC>* w = reinterpret_cast<const Vec<T, VEC>*>(word + id * hidden);
  const Vec<T, VEC>* y = reinterpret_cast<const Vec<T, VEC>*>(type + type_id * hidden);
  const Vec<T, VEC>* p = reinterpret_cast<const Vec<T, VEC>*>(pos + pos_id * hidden);
  Vec<T, VEC>* o = reinterpret_cast<Vec<T, VEC>*>(out + t * hidden);
  for (int64_t i = threadIdx.x; i < hidden / VEC; i += blockDim.x) {
    Vec<T, VEC> a = w[i], b = y[i], c = p[i], r;
#pragma unroll
    for (int k = 0; k < VEC; ++k) r.v[k] = from_float<T>(to_float(a.v[k]) + to_float(b.v[k]) + to_float(c.v[k]));
    o[i] = r;
  }
}

template <typename T>
const char* launch_forward(const int64_t* ids, int64_t ids_len, const int64_t* type_ids, int64_t type_len,
                           const int64_t* pos_ids, int64_t pos_len, const void* word, const void* type,
                           const void* pos, void* out, int64_t tokens, int64_t hidden, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const T* w = static_cast<const T*>(word);
  const T* y = static_cast<const T*>(type);
  const T* p = static_cast<const T*>(pos);
  T* o = static_cast<T*>(out);
  const bool aligned = ((uintptr_t)w | (uintptr_t)y | (uintptr_t)p | (uintptr_t)o) % 16 == 0;
  const ForwardLaunch cfg = embedding_forward_launch(tokens, hidden, sizeof(T), aligned);
  dim3 block(cfg.threads_x, cfg.threads_y);
  dim3 grid((unsigned)cfg.blocks);
  const cudaError_t err =
      cfg.vec == kVec ? launch(forward_kernel<T, kVec>, grid, block, stream, ids, ids_len, type_ids, type_len, pos_ids,
                               pos_len, w, y, p, o, tokens, hidden)
                      : launch(forward_kernel<T, 1>, grid, block, stream, ids, ids_len, type_ids, type_len, pos_ids,
                               pos_len, w, y, p, o, tokens, hidden);
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

__global__ void empty_kernel() {}

}  // namespace

const char* leave_pending_launch_error() {
  empty_kernel<<<1, 4096>>>();  // more threads a block than any GPU takes: the launch fails, nobody reads it
  return nullptr;
}

const char* take_last_error() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

const char* embedding_sum_forward_cuda(DType dtype, const int64_t* ids, int64_t ids_len, const int64_t* type_ids,
                                       int64_t type_len, const int64_t* position_ids, int64_t pos_len,
                                       const void* word, const void* type, const void* position, void* out,
                                       int64_t tokens, int64_t hidden, int device, void* stream_ptr) {
  if (tokens == 0) return nullptr;
  DeviceGuard guard(device);  // the tensors' device, the caller's current one restored on return
  if (guard.error() != cudaSuccess) return cudaGetErrorString(guard.error());
  auto stream = static_cast<cudaStream_t>(stream_ptr);
#define BERTFAST_FORWARD(T) \
  launch_forward<T>(ids, ids_len, type_ids, type_len, position_ids, pos_len, word, type, position, out, tokens, hidden, stream)
  switch (dtype) {
    case DType::Float32: return BERTFAST_FORWARD(float);
    case DType::Float16: return BERTFAST_FORWARD(__half);
    case DType::BFloat16: return BERTFAST_FORWARD(__nv_bfloat16);
  }
#undef BERTFAST_FORWARD
  return "unsupported dtype";
}

}  // namespace bertfast
