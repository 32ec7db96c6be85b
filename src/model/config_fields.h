// Typed reads of config.json fields whose errors name the file and the
// field ("[config] FILE: field 'F': must be ..."), shared by every config
// parser (src/model/config.cpp, src/model/mamba_config.cpp).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace mf {

[[noreturn]] void field_error(const std::string& source, const std::string& field, const std::string& what);
std::string type_of(const nlohmann::json& v);
std::int64_t get_int(const nlohmann::json& v, const std::string& source, const std::string& field, std::int64_t lo,
                     std::int64_t hi);
double get_double(const nlohmann::json& v, const std::string& source, const std::string& field);  // finite
bool get_bool(const nlohmann::json& v, const std::string& source, const std::string& field);
std::string get_string(const nlohmann::json& v, const std::string& source, const std::string& field);

}  // namespace mf
