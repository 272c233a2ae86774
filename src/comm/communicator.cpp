// Byte accounting and timing shared by every communicator backend.
#include "flashcomm/comm.hpp"

#include <chrono>

#include "flashcomm/error.hpp"

namespace flashcomm {

const char* to_string(CommOp op) {
  switch (op) {
    case CommOp::all_reduce:
      return "all_reduce";
    case CommOp::reduce_scatter:
      return "reduce_scatter";
    case CommOp::all_gather:
      return "all_gather";
    case CommOp::all_to_all:
      return "all_to_all";
  }
  return "unknown";
}

const char* to_string(Pass pass) {
  return pass == Pass::prefill ? "prefill" : "decode";
}

std::int64_t bytes_sent(CommOp op, int n_ranks, std::int64_t buffer_bytes) {
  FC_ASSERT(n_ranks > 0, "n_ranks {}", n_ranks);
  const std::int64_t n = n_ranks;
  // Divide last, rounding to nearest: exact whenever the buffer splits into n
  // equal blocks, which holds for every collective but a decode AllReduce.
  const std::int64_t factor = op == CommOp::all_reduce ? 2 : 1;
  return (factor * (n - 1) * buffer_bytes + n / 2) / n;
}

void CommStats::add(CommOp op, const std::string& group, std::int64_t bytes, double seconds) {
  CommRecord& r = totals_[{pass_, op, group}];
  r.pass = pass_;
  r.op = op;
  r.group = group;
  r.calls += 1;
  r.bytes_sent += bytes;
  r.seconds += seconds;
}

std::vector<CommRecord> CommStats::records(Pass pass) const {
  std::vector<CommRecord> out;
  for (const auto& [key, record] : totals_) {
    if (std::get<0>(key) == pass) {
      out.push_back(record);
    }
  }
  return out;
}

std::int64_t CommStats::bytes(Pass pass, CommOp op, const std::string& group) const {
  const auto it = totals_.find({pass, op, group});
  return it == totals_.end() ? 0 : it->second.bytes_sent;
}

std::size_t elem_bytes(Elem elem) {
  switch (elem) {
    case Elem::f32:
      return 4;
    case Elem::bf16:
      return 2;
    case Elem::byte:
      return 1;
  }
  return 1;
}

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// S of the table in comm.hpp for a collective on `count` elements per block.
std::int64_t payload_bytes(CommOp op, int n_ranks, std::size_t count, Elem elem) {
  const std::size_t blocks = op == CommOp::all_reduce ? 1 : static_cast<std::size_t>(n_ranks);
  return static_cast<std::int64_t>(count * blocks * elem_bytes(elem));
}

// Runs one collective and records it.
template <typename Fn>
void timed(CommStats* stats, CommOp op, const std::string& group, int n_ranks, std::size_t count,
           Elem elem, Fn&& fn) {
  const auto start = std::chrono::steady_clock::now();
  fn();
  const double seconds = seconds_since(start);
  if (stats != nullptr) {
    stats->add(op, group, bytes_sent(op, n_ranks, payload_bytes(op, n_ranks, count, elem)),
               seconds);
  }
}

void check_reducible(Elem elem) {
  FC_ASSERT(elem != Elem::byte, "byte payloads cannot be reduced");
}

}  // namespace

void PendingCollective::wait() {
  FC_ASSERT(!done_, "a collective of group {} waited twice", group_);
  const auto start = std::chrono::steady_clock::now();
  do_wait();
  done_ = true;
  seconds_ += seconds_since(start);
  if (stats_ != nullptr) {
    stats_->add(op_, group_, bytes_, seconds_);
  }
}

void Communicator::all_reduce(float* buf, std::size_t count) {
  all_reduce(buf, count, Elem::f32);
}

void Communicator::reduce_scatter(const float* in, float* out, std::size_t count) {
  reduce_scatter(in, out, count, Elem::f32);
}

void Communicator::all_gather(const float* in, float* out, std::size_t count) {
  all_gather(in, out, count, Elem::f32);
}

void Communicator::all_to_all(const float* in, float* out, std::size_t count) {
  all_to_all(in, out, count, Elem::f32);
}

void Communicator::all_reduce(void* buf, std::size_t count, Elem elem) {
  check_reducible(elem);
  timed(stats_, CommOp::all_reduce, group_, size(), count, elem,
        [&] { do_all_reduce(buf, count, elem); });
}

void Communicator::reduce_scatter(const void* in, void* out, std::size_t count, Elem elem) {
  check_reducible(elem);
  timed(stats_, CommOp::reduce_scatter, group_, size(), count, elem,
        [&] { do_reduce_scatter(in, out, count, elem); });
}

void Communicator::all_gather(const void* in, void* out, std::size_t count, Elem elem) {
  timed(stats_, CommOp::all_gather, group_, size(), count, elem,
        [&] { do_all_gather(in, out, count, elem); });
}

void Communicator::all_to_all(const void* in, void* out, std::size_t count, Elem elem) {
  timed(stats_, CommOp::all_to_all, group_, size(), count, elem,
        [&] { do_all_to_all(in, out, count, elem); });
}

std::unique_ptr<PendingCollective> Communicator::start(CommOp op, const void* in, void* out,
                                                       std::size_t count, Elem elem) {
  const auto start = std::chrono::steady_clock::now();
  const std::int64_t bytes = bytes_sent(op, size(), payload_bytes(op, size(), count, elem));
  std::unique_ptr<PendingCollective> pending = do_start(op, in, out, count, elem, bytes);
  pending->seconds_ += seconds_since(start);
  return pending;
}

std::unique_ptr<PendingCollective> Communicator::start_all_gather(const void* in, void* out,
                                                                  std::size_t count, Elem elem) {
  return start(CommOp::all_gather, in, out, count, elem);
}

std::unique_ptr<PendingCollective> Communicator::start_all_to_all(const void* in, void* out,
                                                                  std::size_t count, Elem elem) {
  return start(CommOp::all_to_all, in, out, count, elem);
}

int Communicator::max_int(int value) {
  return do_max_int(value);
}

}  // namespace flashcomm
