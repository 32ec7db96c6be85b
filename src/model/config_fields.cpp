#include "model/config_fields.h"

#include <cmath>
#include <limits>

#include "core/error.h"

namespace mf {

using json = nlohmann::json;

[[noreturn]] void field_error(const std::string& source, const std::string& field, const std::string& what) {
  fail("[config] ", source, ": field '", field, "': ", what);
}

std::string type_of(const json& v) { return v.type_name(); }

std::int64_t get_int(const json& v, const std::string& source, const std::string& field, std::int64_t lo,
                     std::int64_t hi) {
  if (!v.is_number_integer())
    field_error(source, field, str_cat("must be an integer but is ", type_of(v), " (", v.dump(), ")"));
  std::int64_t x = 0;
  if (v.is_number_unsigned()) {
    const auto u = v.get<std::uint64_t>();
    if (u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
      field_error(source, field, str_cat("must be in [", lo, ", ", hi, "] but is ", v.dump()));
    x = static_cast<std::int64_t>(u);
  } else {
    x = v.get<std::int64_t>();
  }
  if (x < lo || x > hi) field_error(source, field, str_cat("must be in [", lo, ", ", hi, "] but is ", x));
  return x;
}

double get_double(const json& v, const std::string& source, const std::string& field) {
  if (!v.is_number()) field_error(source, field, str_cat("must be a number but is ", type_of(v), " (", v.dump(), ")"));
  const double x = v.get<double>();
  if (!std::isfinite(x)) field_error(source, field, "must be finite");
  return x;
}

bool get_bool(const json& v, const std::string& source, const std::string& field) {
  if (!v.is_boolean()) field_error(source, field, str_cat("must be true or false but is ", type_of(v), " (", v.dump(), ")"));
  return v.get<bool>();
}

std::string get_string(const json& v, const std::string& source, const std::string& field) {
  if (!v.is_string()) field_error(source, field, str_cat("must be a string but is ", type_of(v), " (", v.dump(), ")"));
  return v.get<std::string>();
}

}  // namespace mf
