// The communicator interface: one group of ranks and the four collectives the
// parallel schemes use, with byte accounting.
//
// Every collective is counted by the base class, so each backend (MPI today,
// NCCL later) only moves the data. The bytes counted are the payload one rank
// must send, whatever algorithm the library picks (n ranks, S bytes of buffer):
//   all_reduce      2(n-1)/n * S
//   reduce_scatter   (n-1)/n * S_in
//   all_gather       (n-1)/n * S_out
//   all_to_all       (n-1)/n * S
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

namespace flashcomm {

enum class CommOp { all_reduce, reduce_scatter, all_gather, all_to_all };
const char* to_string(CommOp op);

// Which kind of forward pass the collectives belong to.
enum class Pass { prefill, decode };
const char* to_string(Pass pass);

struct CommRecord {
  Pass pass = Pass::prefill;
  CommOp op = CommOp::all_reduce;
  std::string group;  // "tp", "otp", "odp", "dp"
  std::int64_t calls = 0;
  std::int64_t bytes_sent = 0;
  double seconds = 0.0;
};

// Totals per (pass, op, group), shared by all communicators of one rank.
class CommStats {
 public:
  void set_pass(Pass pass) { pass_ = pass; }
  Pass pass() const { return pass_; }
  void add(CommOp op, const std::string& group, std::int64_t bytes, double seconds);
  void clear() { totals_.clear(); }

  // Records of one pass in a fixed order: by op, then group.
  std::vector<CommRecord> records(Pass pass) const;
  std::int64_t bytes(Pass pass, CommOp op, const std::string& group) const;

 private:
  Pass pass_ = Pass::prefill;
  std::map<std::tuple<Pass, CommOp, std::string>, CommRecord> totals_;
};

// Bytes one rank sends for a collective on `buffer_bytes` over `n_ranks`
// (S_in for reduce_scatter, S_out for all_gather), per the table above.
std::int64_t bytes_sent(CommOp op, int n_ranks, std::int64_t buffer_bytes);

class Communicator {
 public:
  Communicator(std::string group, CommStats* stats) : group_(std::move(group)), stats_(stats) {}
  virtual ~Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  const std::string& group() const { return group_; }

  // buf[count] <- sum over ranks of buf[count]
  void all_reduce(float* buf, std::size_t count);
  // in[size*count] -> out[count]: out = sum over ranks of block rank() of in
  void reduce_scatter(const float* in, float* out, std::size_t count);
  // in[count] -> out[size*count]: block r of out is in of rank r
  void all_gather(const float* in, float* out, std::size_t count);
  // in[size*count] -> out[size*count]: block r of in goes to rank r, block r
  // of out came from rank r
  void all_to_all(const float* in, float* out, std::size_t count);

  // Integers over the group (setup and agreement only; not counted).
  int max_int(int value);

 protected:
  virtual void do_all_reduce(float* buf, std::size_t count) = 0;
  virtual void do_reduce_scatter(const float* in, float* out, std::size_t count) = 0;
  virtual void do_all_gather(const float* in, float* out, std::size_t count) = 0;
  virtual void do_all_to_all(const float* in, float* out, std::size_t count) = 0;
  virtual int do_max_int(int value) = 0;

 private:
  std::string group_;
  CommStats* stats_;
};

}  // namespace flashcomm
