// The embedding sum: out[t] = word[ids[t % L]] + type[type_ids[t % Lt]] + position[position_ids[t % Lp]],
// summed in fp32 and rounded once. Each id tensor holds one id per token (L = tokens), one per position of
// a sequence repeated over the batch (L = seq), or one for all (L = 1): broadcast ids need no copy.
// The CUDA launchers take raw pointers and a stream so that the .cu needs no Torch headers (the CPU Torch
// wheel lacks the generated c10/cuda ones). The backward on the GPU is a Triton kernel
// (bertfast/kernels/embedding_sum.py); the CPU one is here.
#pragma once
#include <cstdint>

namespace bertfast {

enum class DType : int { Float32 = 0, Float16 = 1, BFloat16 = 2 };

// How the CUDA forward is launched, for a given size: the launcher uses it, and bertfast._C exposes it so
// that the static performance model (bertfast/kernels/sm90.py) reads the configuration that launches.
struct ForwardLaunch {
  int vec;        // elements a thread moves per load/store (16 bytes when the rows allow it)
  int threads_x;  // threads along the hidden dimension
  int threads_y;  // tokens per block
  int64_t blocks;
};
ForwardLaunch embedding_forward_launch(int64_t tokens, int64_t hidden, int elem_size, bool aligned);

#ifdef BERTFAST_WITH_CUDA
// Returns a CUDA error string, or nullptr on success.
const char* embedding_sum_forward_cuda(DType dtype, const int64_t* ids, int64_t ids_len, const int64_t* type_ids,
                                       int64_t type_len, const int64_t* position_ids, int64_t pos_len,
                                       const void* word, const void* type, const void* position, void* out,
                                       int64_t tokens, int64_t hidden, int device, void* stream);
// For tests: leave a failed launch's error pending in the runtime, as a careless third-party launch would;
// read and clear the runtime's pending error (nullptr when none).
const char* leave_pending_launch_error();
const char* take_last_error();
#endif

}  // namespace bertfast
