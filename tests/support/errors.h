// The message of the mf::Error that f throws, for tests that check what an
// error says; "(no error)" when f returns normally, which no expected message
// contains, so the check fails. EXPECT_ERROR(substring, statement) expects the
// statement to throw an mf::Error whose message contains the substring.
// exception_message_of catches any std::exception (mf::Error is one), for
// exceptions a test throws itself (a simulated kill).
#pragma once
#include <gtest/gtest.h>

#include <exception>
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

inline std::string exception_message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no exception)";
}

}  // namespace mf::testing

// The statement is the variadic part so that it may contain commas.
#define EXPECT_ERROR(substring, ...)                                                                    \
  do {                                                                                                  \
    const std::string mf_error_message_ = ::mf::testing::error_of([&] { __VA_ARGS__; });                \
    EXPECT_NE(mf_error_message_.find(substring), std::string::npos)                                     \
        << "error was: " << mf_error_message_ << "\nexpected it to contain: " << (substring);           \
  } while (0)
