#include "flashcomm/error.hpp"

namespace flashcomm::detail {

void assert_failed(const char* expr, const char* file, int line, const std::string& detail) {
  throw InternalError(fmt::format("assertion `{}` failed at {}:{}{}{}", expr, file, line,
                                  detail.empty() ? "" : ": ", detail));
}

}  // namespace flashcomm::detail
