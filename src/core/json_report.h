// Small helpers for machine-readable reports: the facts every benchmark
// record should carry (machine, threads, BLAS core, build), and an atomic
// JSON file writer.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace mf {

// {"cpu", "threads", "openblas_core", "openblas_coretype_env", "modformer_version", "build_type", "time_utc"}
nlohmann::json run_environment_json();
// Pretty-printed (2 spaces) with a trailing newline, via write_file_atomic.
void write_json_file(const std::string& path, const nlohmann::json& value);

}  // namespace mf
