// What every fuzz target treats as a pass or a failure.
//
// A parser answers bad input by throwing a flashcomm::Error (ConfigError,
// FormatError, ...): that is the expected outcome and the input passes. An
// InternalError is a broken invariant, so it fails like any other exception, a
// sanitizer report, a crash, a hang or an allocation above libFuzzer's limits:
// each aborts, and libFuzzer writes the input out as a reproducer.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "flashcomm/error.hpp"

namespace flashcomm::fuzz {

[[noreturn]] inline void fail(const char* what, const char* message) {
  std::fprintf(stderr, "fuzz: %s: %s\n", what, message);
  std::abort();
}

// Runs `parse` and returns the message of the flashcomm::Error it threw, or
// an empty string when it returned (every message names its source, so none
// is empty). Any other exception fails the run.
template <typename Parse>
std::string error_of(Parse&& parse) {
  try {
    parse();
    return {};
  } catch (const InternalError& e) {
    fail("InternalError (a broken invariant, not bad input)", e.what());
  } catch (const Error& e) {
    const std::string message = e.what();
    if (message.empty()) {
      fail("a flashcomm::Error", "with an empty message");
    }
    return message;
  } catch (const std::exception& e) {
    fail("an exception other than flashcomm::Error", e.what());
  } catch (...) {
    fail("an exception other than flashcomm::Error", "not a std::exception");
  }
}

// Fails the run with `message` unless `condition` holds.
inline void check(bool condition, const char* message) {
  if (!condition) {
    fail("a property of a successful parse does not hold", message);
  }
}

}  // namespace flashcomm::fuzz
