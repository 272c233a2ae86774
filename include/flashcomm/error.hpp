// Error policy of the library.
//
// The library reports every failure by throwing one of the typed exceptions
// below; only the command-line front end (src/cli) turns them into a message
// and an exit code. Invariants use FC_ASSERT, which stays on in release builds
// and prints the failed expression with the values the caller passes.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace flashcomm {

// Base of every exception the library throws on purpose.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The user asked for something that cannot work: an option, a parallel
// layout that does not fit the model, a prompt longer than the context.
class ConfigError : public Error {
 public:
  using Error::Error;
};

// A file does not hold what it claims: truncated, corrupt, wrong sizes.
class FormatError : public Error {
 public:
  using Error::Error;
};

// A call into a communication or math library failed.
class CommError : public Error {
 public:
  using Error::Error;
};

// A broken invariant inside the library: a bug, never bad input.
class InternalError : public Error {
 public:
  using Error::Error;
};

namespace detail {
[[noreturn]] void assert_failed(const char* expr, const char* file, int line,
                                const std::string& detail);
}  // namespace detail

}  // namespace flashcomm

// FC_ASSERT(cond, "fmt {}", args...): throws InternalError naming the
// expression, file:line and the formatted values when cond is false.
#define FC_ASSERT(cond, ...)                                                                   \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      ::flashcomm::detail::assert_failed(#cond, __FILE__, __LINE__, fmt::format(__VA_ARGS__)); \
    }                                                                                          \
  } while (false)
