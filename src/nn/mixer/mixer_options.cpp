// Strict parsing of a mixer's options object against its schema.
#include "nn/mixer/mixer_options.h"

#include <cmath>

#include "core/error.h"

namespace mf {

namespace {

std::string kind_name(OptionSpec::Kind k) {
  switch (k) {
    case OptionSpec::Kind::Int: return "an integer";
    case OptionSpec::Kind::Number: return "a number";
    case OptionSpec::Kind::Bool: return "true or false";
    case OptionSpec::Kind::String: return "a string";
  }
  return "?";
}

std::string format_bound(double x) {
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  if (x == std::floor(x) && std::fabs(x) < 9.0e15) return std::to_string(static_cast<std::int64_t>(x));
  return str_cat(x);
}

std::string choices_text(const std::vector<std::string>& c) {
  std::string s;
  for (const auto& x : c) s += (s.empty() ? "\"" : ", \"") + x + "\"";
  return s;
}

}  // namespace

OptionSpec int_option(std::string name, std::int64_t def, std::int64_t min, std::int64_t max, std::string help) {
  return {std::move(name), OptionSpec::Kind::Int, def, {}, static_cast<double>(min), static_cast<double>(max),
          std::move(help)};
}
OptionSpec number_option(std::string name, double def, double min, double max, std::string help) {
  return {std::move(name), OptionSpec::Kind::Number, def, {}, min, max, std::move(help)};
}
OptionSpec bool_option(std::string name, bool def, std::string help) {
  return {std::move(name), OptionSpec::Kind::Bool, def, {}, 0, 1, std::move(help)};
}
OptionSpec choice_option(std::string name, std::string def, std::vector<std::string> choices, std::string help) {
  return {std::move(name), OptionSpec::Kind::String, std::move(def), std::move(choices), 0, 0, std::move(help)};
}

nlohmann::json parse_options(const std::vector<OptionSpec>& schema, const nlohmann::json& given,
                             const std::string& prefix, const std::string& path) {
  if (!given.is_null() && !given.is_object())
    fail(prefix, "field '", path, "': must be an object of options but is ", given.type_name(), " (", given.dump(),
         ")");
  nlohmann::json out = nlohmann::json::object();
  if (given.is_object()) {
    for (auto it = given.begin(); it != given.end(); ++it) {
      const OptionSpec* spec = nullptr;
      for (const auto& s : schema)
        if (s.name == it.key()) spec = &s;
      if (spec == nullptr) {
        std::string known;
        for (const auto& s : schema) known += (known.empty() ? "" : ", ") + s.name;
        fail(prefix, "field '", path, ".", it.key(), "': unknown option (",
             known.empty() ? std::string("this mixer has no options") : "known: " + known, ")");
      }
      const nlohmann::json& v = it.value();
      auto bad = [&](const std::string& what) { fail(prefix, "field '", path, ".", it.key(), "': ", what); };
      switch (spec->kind) {
        case OptionSpec::Kind::Int: {
          if (!v.is_number_integer()) bad(str_cat("must be an integer but is ", v.type_name(), " (", v.dump(), ")"));
          const double x = v.is_number_unsigned() ? static_cast<double>(v.get<std::uint64_t>())
                                                  : static_cast<double>(v.get<std::int64_t>());
          if (x < spec->min || x > spec->max)
            bad(str_cat("must be in [", format_bound(spec->min), ", ", format_bound(spec->max), "] but is ", v.dump()));
          break;
        }
        case OptionSpec::Kind::Number: {
          if (!v.is_number()) bad(str_cat("must be a number but is ", v.type_name(), " (", v.dump(), ")"));
          const double x = v.get<double>();
          if (!std::isfinite(x) || x < spec->min || x > spec->max)
            bad(str_cat("must be in [", format_bound(spec->min), ", ", format_bound(spec->max), "] but is ", v.dump()));
          break;
        }
        case OptionSpec::Kind::Bool:
          if (!v.is_boolean()) bad(str_cat("must be true or false but is ", v.type_name(), " (", v.dump(), ")"));
          break;
        case OptionSpec::Kind::String: {
          if (!v.is_string()) bad(str_cat("must be a string but is ", v.type_name(), " (", v.dump(), ")"));
          const auto s = v.get<std::string>();
          bool ok = spec->choices.empty();
          for (const auto& c : spec->choices) ok = ok || c == s;
          if (!ok) bad(str_cat("unknown value \"", s, "\" (expected one of ", choices_text(spec->choices), ")"));
          break;
        }
      }
      out[it.key()] = v;
    }
  }
  for (const auto& s : schema) {
    if (out.contains(s.name)) continue;
    if (s.default_value.is_null()) fail(prefix, "field '", path, ".", s.name, "': missing (required: ", s.help, ")");
    out[s.name] = s.default_value;
  }
  return out;
}

std::string describe_option(const OptionSpec& o) {
  std::string s = kind_name(o.kind);
  if (o.kind == OptionSpec::Kind::Int || o.kind == OptionSpec::Kind::Number)
    s += str_cat(" in [", format_bound(o.min), ", ", format_bound(o.max), "]");
  if (o.kind == OptionSpec::Kind::String && !o.choices.empty()) s += " (" + choices_text(o.choices) + ")";
  s += o.default_value.is_null() ? ", required" : ", default " + o.default_value.dump();
  return s;
}

}  // namespace mf
