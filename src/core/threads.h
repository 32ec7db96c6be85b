// Thread count for the whole engine (our OpenMP regions and OpenBLAS's, which
// share one OpenMP runtime). Taken from --threads, else MODFORMER_THREADS,
// else the number of cores.
#pragma once

namespace mf {

// Sets the thread count used by every parallel kernel (n >= 1).
void set_num_threads(int n);
int num_threads();
// Applies MODFORMER_THREADS if set (called once by the CLI and the tests).
// Throws mf::Error naming the variable when its value is not a positive integer.
void init_threads_from_env();

}  // namespace mf
