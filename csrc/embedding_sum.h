// The embedding sum: out[t] = word[ids[t]] + type[type_ids[t]] + position[position_ids[t]],
// summed in fp32 and rounded once. The CUDA launchers take raw pointers and a stream so that
// the .cu needs no Torch headers (the CPU Torch wheel lacks the generated c10/cuda ones).
#pragma once
#include <cstdint>

namespace bertfast {

enum class DType : int { Float32 = 0, Float16 = 1, BFloat16 = 2 };

#ifdef BERTFAST_WITH_CUDA
// Returns a CUDA error string, or nullptr on success.
const char* embedding_sum_forward_cuda(DType dtype, const int64_t* ids, const int64_t* type_ids,
                                       const int64_t* position_ids, const void* word, const void* type,
                                       const void* position, void* out, int64_t tokens, int64_t hidden,
                                       int device, void* stream);

// grad_table (fp32, [rows, hidden], zeroed by the caller) += per-row sums of grad over the tokens with that id.
// With `order` (a permutation sorting ids), each row is summed by one block in a fixed order: deterministic.
// Without it, runs of equal consecutive ids are summed in registers and flushed with atomicAdd.
const char* embedding_table_backward_cuda(DType dtype, const void* grad, const int64_t* ids, const int64_t* order,
                                          float* grad_table, int64_t tokens, int64_t hidden, int64_t padding_idx,
                                          int device, void* stream);
#endif

}  // namespace bertfast
