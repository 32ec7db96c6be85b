// The report of `modformer compare`, made from results.json alone (so it can
// be rebuilt from a finished run): results.md with a speed/memory-vs-length
// table, a quality-vs-efficiency table and one table per task, every cell
// listed (unsupported and failed ones with their reason), and SVG plots:
// quality_vs_speed.svg, mqar.svg, induction_heads.svg, extrapolation.svg,
// speed.svg, memory.svg (each only when its task ran).
#pragma once
#include <string>

#include <nlohmann/json.hpp>

namespace mf {

// The Markdown text of results.md.
std::string compare_report_markdown(const nlohmann::json& results);
// Writes OUT/results.md and the plots.
void write_compare_report(const nlohmann::json& results, const std::string& out_dir);

}  // namespace mf
