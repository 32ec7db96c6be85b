// Report helpers: environment facts for benchmark records; atomic JSON writes.
#include "core/json_report.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <ctime>

#include "core/atomic_file.h"
#include "core/cpu_features.h"
#include "core/isa.h"
#include "core/threads.h"

namespace mf {

double load_average_1min() {
  double v = -1;
  if (std::FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf", &v) != 1) v = -1;
    std::fclose(f);
  }
  return v;
}

nlohmann::json run_environment_json() {
  const char* env = std::getenv("OPENBLAS_CORETYPE");
  const char* wait = std::getenv("OMP_WAIT_POLICY");
  char when[32] = "";
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  if (gmtime_r(&t, &tm) != nullptr) std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return {{"cpu", cpu_features().model_name},
          {"online_cpus", ::sysconf(_SC_NPROCESSORS_ONLN)},
          {"loadavg_1min", load_average_1min()},
          {"threads", num_threads()},
          {"omp_wait_policy", wait ? wait : ""},
          {"openblas_core", blas_core_name()},
          {"openblas_coretype_env", env ? env : ""},
          {"modformer_version", MODFORMER_VERSION},
          {"build_type", MODFORMER_BUILD_TYPE},
          {"build_arch", MODFORMER_ARCH},
          {"isa", isa_name(active_isa())},
          {"isa_detected", isa_name(detected_isa())},
          {"time_utc", when}};
}

void write_json_file(const std::string& path, const nlohmann::json& value) {
  write_file_atomic(path, value.dump(2) + "\n");
}

}  // namespace mf
