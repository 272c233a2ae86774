// Communicator over MPI: each collective is the matching MPI call on float32.
#include "flashcomm/mpi_comm.hpp"

#include <climits>

#include "comm/mpi/mpi_check.hpp"

namespace flashcomm {

namespace detail {

void mpi_failed(int code, const char* call, const char* file, int line) {
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) {
    length = 0;
  }
  throw CommError(fmt::format("{} failed at {}:{}: {} (MPI error {})", call, file, line,
                              std::string(text, static_cast<std::size_t>(length)), code));
}

}  // namespace detail

namespace {

// MPI counts are int; a buffer beyond that is a configuration we do not split.
int mpi_count(std::size_t count) {
  if (count > static_cast<std::size_t>(INT_MAX)) {
    throw CommError(
        fmt::format("collective of {} floats exceeds MPI's int count limit {}", count, INT_MAX));
  }
  return static_cast<int>(count);
}

}  // namespace

MpiCommunicator::MpiCommunicator(MPI_Comm comm, std::string group, CommStats* stats)
    : Communicator(std::move(group), stats), comm_(comm) {
  FC_ASSERT(comm_ != MPI_COMM_NULL, "group {}", this->group());
  FC_CHECK_MPI(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  FC_CHECK_MPI(MPI_Comm_rank(comm_, &rank_));
  FC_CHECK_MPI(MPI_Comm_size(comm_, &size_));
}

MpiCommunicator::~MpiCommunicator() {
  if (comm_ != MPI_COMM_WORLD && comm_ != MPI_COMM_SELF && comm_ != MPI_COMM_NULL) {
    // A destructor must not throw; a failed free only leaks a handle.
    MPI_Comm_free(&comm_);
  }
}

std::unique_ptr<MpiCommunicator> MpiCommunicator::split(MPI_Comm parent, int color, int key,
                                                        std::string group, CommStats* stats) {
  MPI_Comm child = MPI_COMM_NULL;
  FC_CHECK_MPI(MPI_Comm_split(parent, color, key, &child));
  return std::make_unique<MpiCommunicator>(child, std::move(group), stats);
}

// buf[count] summed in place over the group.
void MpiCommunicator::do_all_reduce(float* buf, std::size_t count) {
  FC_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, buf, mpi_count(count), MPI_FLOAT, MPI_SUM, comm_));
}

// in[size*count] -> out[count], block rank() reduced.
void MpiCommunicator::do_reduce_scatter(const float* in, float* out, std::size_t count) {
  FC_CHECK_MPI(MPI_Reduce_scatter_block(in, out, mpi_count(count), MPI_FLOAT, MPI_SUM, comm_));
}

// in[count] -> out[size*count].
void MpiCommunicator::do_all_gather(const float* in, float* out, std::size_t count) {
  const int n = mpi_count(count);
  FC_CHECK_MPI(MPI_Allgather(in, n, MPI_FLOAT, out, n, MPI_FLOAT, comm_));
}

// in[size*count] -> out[size*count], block r exchanged with rank r.
void MpiCommunicator::do_all_to_all(const float* in, float* out, std::size_t count) {
  const int n = mpi_count(count);
  FC_CHECK_MPI(MPI_Alltoall(in, n, MPI_FLOAT, out, n, MPI_FLOAT, comm_));
}

int MpiCommunicator::do_max_int(int value) {
  int result = value;
  FC_CHECK_MPI(MPI_Allreduce(&value, &result, 1, MPI_INT, MPI_MAX, comm_));
  return result;
}

}  // namespace flashcomm
