// One error type for the whole engine. Messages name the operation in
// brackets, then the fact: "[rms_norm] weight must have 1 dimension but has 2".
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace mf {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Concatenates its arguments with operator<< into one message.
template <typename... Args>
std::string str_cat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

template <typename... Args>
[[noreturn]] void fail(Args&&... args) {
  throw Error(str_cat(std::forward<Args>(args)...));
}

}  // namespace mf

// Checks an input condition at an API's front door; the message parts are
// only formatted when the check fails.
#define MF_CHECK(cond, ...)            \
  do {                                 \
    if (!(cond)) ::mf::fail(__VA_ARGS__); \
  } while (0)
