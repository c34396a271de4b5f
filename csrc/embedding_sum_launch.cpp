// The CUDA forward's launch configuration (see embedding_sum.h). Plain C++, compiled in every build, so
// that the static performance model can ask for it on a machine without CUDA.
#include "embedding_sum.h"

namespace bertfast {

// One warp a token (its lanes stride over the row, 16 bytes a load), eight tokens a block: the per-token
// work (three ids, their addresses) is done once per warp rather than by idle threads of a wider row.
ForwardLaunch embedding_forward_launch(int64_t tokens, int64_t hidden, int elem_size, bool aligned) {
  const int full_vec = 16 / elem_size;
  const int vec = (aligned && hidden % full_vec == 0) ? full_vec : 1;
  const int threads_x = 32, threads_y = 8;
  return {vec, threads_x, threads_y, (tokens + threads_y - 1) / threads_y};
}

}  // namespace bertfast
