// Communicator over MPI: each collective is the matching MPI call; bf16
// payloads travel as MPI_UINT16_T and are summed by a user-defined operation.
#include "flashcomm/mpi_comm.hpp"

#include <climits>

#include "comm/mpi/mpi_check.hpp"
#include "flashcomm/safetensors.hpp"

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
        fmt::format("collective of {} elements exceeds MPI's int count limit {}", count, INT_MAX));
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
  if (bf16_sum_ != MPI_OP_NULL) {
    MPI_Op_free(&bf16_sum_);
  }
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

namespace {

MPI_Datatype mpi_type(Elem elem) {
  switch (elem) {
    case Elem::f32:
      return MPI_FLOAT;
    case Elem::bf16:
      return MPI_UINT16_T;
    case Elem::byte:
      return MPI_BYTE;
  }
  return MPI_BYTE;
}

// bf16 sum for MPI's reductions: inout[i] = bf16(float(in[i]) + float(inout[i])).
void bf16_sum(void* in, void* inout, int* len, MPI_Datatype* /*type*/) {
  const auto* a = static_cast<const std::uint16_t*>(in);
  auto* b = static_cast<std::uint16_t*>(inout);
  for (int i = 0; i < *len; ++i) {
    b[i] = f32_to_bf16(bf16_to_f32(a[i]) + bf16_to_f32(b[i]));
  }
}

class MpiPending final : public PendingCollective {
 public:
  MpiPending(CommStats* stats, CommOp op, std::string group, std::int64_t bytes)
      : PendingCollective(stats, op, std::move(group), bytes) {}
  MPI_Request* request() { return &request_; }

 protected:
  void do_wait() override { FC_CHECK_MPI(MPI_Wait(&request_, MPI_STATUS_IGNORE)); }

 private:
  MPI_Request request_ = MPI_REQUEST_NULL;
};

}  // namespace

MPI_Op MpiCommunicator::sum_op(Elem elem) {
  if (elem != Elem::bf16) {
    return MPI_SUM;
  }
  if (bf16_sum_ == MPI_OP_NULL) {
    FC_CHECK_MPI(MPI_Op_create(&bf16_sum, /*commute=*/1, &bf16_sum_));
  }
  return bf16_sum_;
}

// buf[count] summed in place over the group.
void MpiCommunicator::do_all_reduce(void* buf, std::size_t count, Elem elem) {
  FC_CHECK_MPI(
      MPI_Allreduce(MPI_IN_PLACE, buf, mpi_count(count), mpi_type(elem), sum_op(elem), comm_));
}

// in[size*count] -> out[count], block rank() reduced.
void MpiCommunicator::do_reduce_scatter(const void* in, void* out, std::size_t count, Elem elem) {
  FC_CHECK_MPI(
      MPI_Reduce_scatter_block(in, out, mpi_count(count), mpi_type(elem), sum_op(elem), comm_));
}

// in[count] -> out[size*count].
void MpiCommunicator::do_all_gather(const void* in, void* out, std::size_t count, Elem elem) {
  const int n = mpi_count(count);
  FC_CHECK_MPI(MPI_Allgather(in, n, mpi_type(elem), out, n, mpi_type(elem), comm_));
}

// in[size*count] -> out[size*count], block r exchanged with rank r.
void MpiCommunicator::do_all_to_all(const void* in, void* out, std::size_t count, Elem elem) {
  const int n = mpi_count(count);
  FC_CHECK_MPI(MPI_Alltoall(in, n, mpi_type(elem), out, n, mpi_type(elem), comm_));
}

// The same shapes as do_all_gather / do_all_to_all, posted.
std::unique_ptr<PendingCollective> MpiCommunicator::do_start(CommOp op, const void* in, void* out,
                                                             std::size_t count, Elem elem,
                                                             std::int64_t bytes) {
  const int n = mpi_count(count);
  auto pending = std::make_unique<MpiPending>(stats(), op, group(), bytes);
  if (op == CommOp::all_gather) {
    FC_CHECK_MPI(
        MPI_Iallgather(in, n, mpi_type(elem), out, n, mpi_type(elem), comm_, pending->request()));
  } else {
    FC_ASSERT(op == CommOp::all_to_all, "no non-blocking {}", to_string(op));
    FC_CHECK_MPI(
        MPI_Ialltoall(in, n, mpi_type(elem), out, n, mpi_type(elem), comm_, pending->request()));
  }
  return pending;
}

int MpiCommunicator::do_max_int(int value) {
  int result = value;
  FC_CHECK_MPI(MPI_Allreduce(&value, &result, 1, MPI_INT, MPI_MAX, comm_));
  return result;
}

}  // namespace flashcomm
