// The strict schema of a mixer's own options object (e.g. "linformer": {"k":
// 128, "sharing": "kv"}): each option's name, type, default, range or
// choices and a one-line help. One parser for every mixer: unknown fields,
// wrong types, values out of range and unknown choices are errors naming the
// field; absent options take their defaults. `modformer mixers` prints the
// same schema.
#pragma once
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace mf {

struct OptionSpec {
  enum class Kind { Int, Number, Bool, String };
  std::string name;
  Kind kind = Kind::Int;
  nlohmann::json default_value;       // null: required
  std::vector<std::string> choices;   // String: the allowed values (empty: any string)
  double min = -std::numeric_limits<double>::infinity();  // Int/Number: inclusive range
  double max = std::numeric_limits<double>::infinity();
  std::string help;
};

// Helpers to write schemas as tables.
OptionSpec int_option(std::string name, std::int64_t def, std::int64_t min, std::int64_t max, std::string help);
OptionSpec number_option(std::string name, double def, double min, double max, std::string help);
OptionSpec bool_option(std::string name, bool def, std::string help);
OptionSpec choice_option(std::string name, std::string def, std::vector<std::string> choices, std::string help);

// Validates `given` (an object, or null for "all defaults") against `schema`
// and returns the complete object (every option present). Errors read
// "<error_prefix>field '<object_path>.<option>': <problem>".
nlohmann::json parse_options(const std::vector<OptionSpec>& schema, const nlohmann::json& given,
                             const std::string& error_prefix, const std::string& object_path);

// "int in [1, 65536], default 128" and the like, for listings.
std::string describe_option(const OptionSpec& o);

}  // namespace mf
