// The MPI backend of Communicator: one MPI communicator per group.
#pragma once

#include <mpi.h>

#include <memory>
#include <string>

#include "flashcomm/comm.hpp"

namespace flashcomm {

class MpiCommunicator final : public Communicator {
 public:
  // Takes ownership of `comm` (freed in the destructor) unless it is
  // MPI_COMM_WORLD or MPI_COMM_SELF. Sets MPI_ERRORS_RETURN on it.
  MpiCommunicator(MPI_Comm comm, std::string group, CommStats* stats);
  ~MpiCommunicator() override;

  // Splits `parent`: ranks passing the same color form one group, ordered by key.
  static std::unique_ptr<MpiCommunicator> split(MPI_Comm parent, int color, int key,
                                                std::string group, CommStats* stats);

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  MPI_Comm handle() const { return comm_; }

 protected:
  void do_all_reduce(void* buf, std::size_t count, Elem elem) override;
  void do_reduce_scatter(const void* in, void* out, std::size_t count, Elem elem) override;
  void do_all_gather(const void* in, void* out, std::size_t count, Elem elem) override;
  void do_all_to_all(const void* in, void* out, std::size_t count, Elem elem) override;
  std::unique_ptr<PendingCollective> do_start(CommOp op, const void* in, void* out,
                                              std::size_t count, Elem elem,
                                              std::int64_t bytes) override;
  int do_max_int(int value) override;

 private:
  // MPI_SUM, or for bf16 the user-defined sum (created on first use).
  MPI_Op sum_op(Elem elem);

  MPI_Comm comm_;
  MPI_Op bf16_sum_ = MPI_OP_NULL;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace flashcomm
