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
  void do_all_reduce(float* buf, std::size_t count) override;
  void do_reduce_scatter(const float* in, float* out, std::size_t count) override;
  void do_all_gather(const float* in, float* out, std::size_t count) override;
  void do_all_to_all(const float* in, float* out, std::size_t count) override;
  int do_max_int(int value) override;

 private:
  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace flashcomm
