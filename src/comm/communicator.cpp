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
  return 0;
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

namespace {

// Runs one collective and records it; `buffer_bytes` is S of the table.
template <typename Fn>
void timed(CommStats* stats, CommOp op, const std::string& group, int n_ranks,
           std::size_t buffer_floats, Fn&& fn) {
  const auto start = std::chrono::steady_clock::now();
  fn();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (stats != nullptr) {
    const auto buffer_bytes = static_cast<std::int64_t>(buffer_floats * sizeof(float));
    stats->add(op, group, bytes_sent(op, n_ranks, buffer_bytes), seconds);
  }
}

}  // namespace

void Communicator::all_reduce(float* buf, std::size_t count) {
  timed(stats_, CommOp::all_reduce, group_, size(), count, [&] { do_all_reduce(buf, count); });
}

void Communicator::reduce_scatter(const float* in, float* out, std::size_t count) {
  const std::size_t in_floats = count * static_cast<std::size_t>(size());
  timed(stats_, CommOp::reduce_scatter, group_, size(), in_floats,
        [&] { do_reduce_scatter(in, out, count); });
}

void Communicator::all_gather(const float* in, float* out, std::size_t count) {
  const std::size_t out_floats = count * static_cast<std::size_t>(size());
  timed(stats_, CommOp::all_gather, group_, size(), out_floats,
        [&] { do_all_gather(in, out, count); });
}

void Communicator::all_to_all(const float* in, float* out, std::size_t count) {
  const std::size_t floats = count * static_cast<std::size_t>(size());
  timed(stats_, CommOp::all_to_all, group_, size(), floats, [&] { do_all_to_all(in, out, count); });
}

int Communicator::max_int(int value) {
  return do_max_int(value);
}

}  // namespace flashcomm
