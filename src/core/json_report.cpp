// Report helpers: environment facts for benchmark records; atomic JSON writes.
#include "core/json_report.h"

#include <cstdlib>
#include <ctime>

#include "core/atomic_file.h"
#include "core/cpu_features.h"
#include "core/threads.h"

namespace mf {

nlohmann::json run_environment_json() {
  const char* env = std::getenv("OPENBLAS_CORETYPE");
  char when[32] = "";
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  if (gmtime_r(&t, &tm) != nullptr) std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return {{"cpu", cpu_features().model_name},
          {"threads", num_threads()},
          {"openblas_core", blas_core_name()},
          {"openblas_coretype_env", env ? env : ""},
          {"modformer_version", MODFORMER_VERSION},
          {"build_type", MODFORMER_BUILD_TYPE},
          {"time_utc", when}};
}

void write_json_file(const std::string& path, const nlohmann::json& value) {
  write_file_atomic(path, value.dump(2) + "\n");
}

}  // namespace mf
