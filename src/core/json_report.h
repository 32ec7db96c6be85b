// Small helpers for machine-readable reports: the facts every benchmark
// record should carry (machine, threads, BLAS core, build), and an atomic
// JSON file writer.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace mf {

// {"cpu", "online_cpus", "loadavg_1min", "threads", "omp_wait_policy", "openblas_core",
//  "openblas_coretype_env", "modformer_version", "build_type", "time_utc"}
nlohmann::json run_environment_json();
// The 1-minute load average (/proc/loadavg), or -1 when unavailable. A load
// above the core count means other processes compete with the measurement.
double load_average_1min();
// Pretty-printed (2 spaces) with a trailing newline, via write_file_atomic.
void write_json_file(const std::string& path, const nlohmann::json& value);

}  // namespace mf
