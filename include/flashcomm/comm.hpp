// The communicator interface: one group of ranks and the four collectives the
// parallel schemes use, with byte accounting.
//
// Payloads are float32, bfloat16 (reductions sum in bf16) or raw bytes (the
// int8 rows with their scales that wire.hpp encodes). AllGather and AlltoAll
// also come non-blocking, for overlap with computation.
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

// Element types of a payload. bf16 reductions add in float and round each
// partial sum to bf16, as a bf16 link would; byte payloads cannot be reduced.
enum class Elem : std::uint8_t { f32, bf16, byte };
std::size_t elem_bytes(Elem elem);

// Bytes one rank sends for a collective on `buffer_bytes` over `n_ranks`
// (S_in for reduce_scatter, S_out for all_gather), per the table above.
std::int64_t bytes_sent(CommOp op, int n_ranks, std::int64_t buffer_bytes);

// A non-blocking collective in flight. Its buffers must stay untouched and
// alive until wait() returns; wait() must be called exactly once (the job is
// aborted on any error, so an abandoned request never outlives it).
class PendingCollective {
 public:
  virtual ~PendingCollective() = default;
  PendingCollective(const PendingCollective&) = delete;
  PendingCollective& operator=(const PendingCollective&) = delete;

  // Blocks until the collective is done; counts it.
  void wait();

 protected:
  PendingCollective(CommStats* stats, CommOp op, std::string group, std::int64_t bytes)
      : stats_(stats), op_(op), group_(std::move(group)), bytes_(bytes) {}
  virtual void do_wait() = 0;

 private:
  friend class Communicator;  // adds the time spent posting

  CommStats* stats_;
  CommOp op_;
  std::string group_;
  std::int64_t bytes_;
  double seconds_ = 0.0;  // time spent posting, then waiting
  bool done_ = false;
};

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

  // The same four on `count` elements of `elem` (byte: not for reductions).
  void all_reduce(void* buf, std::size_t count, Elem elem);
  void reduce_scatter(const void* in, void* out, std::size_t count, Elem elem);
  void all_gather(const void* in, void* out, std::size_t count, Elem elem);
  void all_to_all(const void* in, void* out, std::size_t count, Elem elem);

  // Non-blocking AllGather and AlltoAll, same shapes; see PendingCollective.
  std::unique_ptr<PendingCollective> start_all_gather(const void* in, void* out, std::size_t count,
                                                      Elem elem);
  std::unique_ptr<PendingCollective> start_all_to_all(const void* in, void* out, std::size_t count,
                                                      Elem elem);

  // Integers over the group (setup and agreement only; not counted).
  int max_int(int value);

 protected:
  virtual void do_all_reduce(void* buf, std::size_t count, Elem elem) = 0;
  virtual void do_reduce_scatter(const void* in, void* out, std::size_t count, Elem elem) = 0;
  virtual void do_all_gather(const void* in, void* out, std::size_t count, Elem elem) = 0;
  virtual void do_all_to_all(const void* in, void* out, std::size_t count, Elem elem) = 0;
  // Posts an AllGather or AlltoAll; `bytes` (what it sends) goes to the
  // PendingCollective constructor.
  virtual std::unique_ptr<PendingCollective> do_start(CommOp op, const void* in, void* out,
                                                      std::size_t count, Elem elem,
                                                      std::int64_t bytes) = 0;
  virtual int do_max_int(int value) = 0;

  CommStats* stats() const { return stats_; }

 private:
  std::unique_ptr<PendingCollective> start(CommOp op, const void* in, void* out, std::size_t count,
                                           Elem elem);

  std::string group_;
  CommStats* stats_;
};

}  // namespace flashcomm
