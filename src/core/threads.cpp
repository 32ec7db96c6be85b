#include "core/threads.h"

#include <omp.h>

#include <cstdlib>
#include <string>

#include "core/error.h"

extern "C" void openblas_set_num_threads(int);

namespace mf {

void set_num_threads(int n) {
  MF_CHECK(n >= 1 && n <= 1024, "[threads] thread count must be in [1, 1024], got ", n);
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int num_threads() { return omp_get_max_threads(); }

void init_threads_from_env() {
  const char* v = std::getenv("MODFORMER_THREADS");
  if (v == nullptr || *v == '\0') return;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  MF_CHECK(end != v && *end == '\0' && n >= 1 && n <= 1024,
           "[threads] MODFORMER_THREADS must be an integer in [1, 1024], got '", v, "'");
  set_num_threads(static_cast<int>(n));
}

}  // namespace mf
