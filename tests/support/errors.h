// The message of the mf::Error that f throws, for tests that check what an
// error says; "(no error)" when f returns normally, which no expected message
// contains, so the check fails.
#pragma once
#include <functional>
#include <string>

#include "core/error.h"

namespace mf::testing {

inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace mf::testing
