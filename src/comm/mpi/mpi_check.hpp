// FC_CHECK_MPI(call): runs an MPI call and throws CommError with the call's
// text, file:line and MPI's own error string when it does not succeed.
// Communicators must use MPI_ERRORS_RETURN for errors to reach this check.
#pragma once

#include <mpi.h>

#include <string>

#include "flashcomm/error.hpp"

namespace flashcomm::detail {
[[noreturn]] void mpi_failed(int code, const char* call, const char* file, int line);
}  // namespace flashcomm::detail

#define FC_CHECK_MPI(call)                                                      \
  do {                                                                          \
    const int fc_mpi_code_ = (call);                                            \
    if (fc_mpi_code_ != MPI_SUCCESS) {                                          \
      ::flashcomm::detail::mpi_failed(fc_mpi_code_, #call, __FILE__, __LINE__); \
    }                                                                           \
  } while (false)
