// A scale-model cluster on one machine.
//
// On one machine's shared memory, communication is nearly free next to a
// CPU's slow arithmetic: the opposite balance of the GPU and NPU clusters the
// schemes are for. The testbed slows the link down to a cluster's balance:
// the ranks run inside a network namespace of their own, whose loopback (its
// only interface) is shaped by a tc token bucket (tbf; netem adds a delay),
// and OpenMPI talks over TCP on that loopback only.
//
// The token bucket is one per loopback, so its rate is the bandwidth of all
// ranks together, not of each: when every rank of a TP group sends at once,
// each gets rate / tp_size. match_link_rate() accounts for that.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <string>
#include <vector>

#include "flashcomm/calibrate.hpp"
#include "flashcomm/cost_model.hpp"

namespace flashcomm::testbed {

// The slowest and fastest rates the testbed shapes, in bits per second: below
// 1 Mbit/s a layer's collectives take minutes; above 100 Gbit/s the loopback
// itself is slower than the bucket.
inline constexpr double kMinRateBps = 1e6;
inline constexpr double kMaxRateBps = 100e9;
// The longest delay per packet, in seconds.
inline constexpr double kMaxDelayS = 1.0;

// "800mbit", "1gbit", "1.5gbit", "100000kbit", "2000000bit": a decimal number
// and one of tc's bit units (bit, kbit, mbit, gbit, tbit; k = 1000), case
// insensitive. Returns bits per second. ConfigError naming the text (and
// `flag`) when it is not such a rate or lies outside kMinRateBps..kMaxRateBps.
double parse_link_rate(const std::string& text, const std::string& flag = "--link-rate");

// "2ms", "500us", "0.5s", "0" (none): a decimal number and a unit (us, ms, s;
// a bare 0 needs none). Returns seconds, 0..kMaxDelayS; ConfigError otherwise.
double parse_link_delay(const std::string& text, const std::string& flag = "--link-delay");

// tc's spelling, always in its smallest unit, so no rounding hides in a
// unit: "800000000bit", "2000us".
std::string tc_rate(double bits_per_s);
std::string tc_time(double seconds);
// For people: "800 Mbit/s", "1.5 Gbit/s".
std::string human_rate(double bits_per_s);

// How the rate of the link is chosen so that the testbed keeps a cluster's
// balance of arithmetic and communication (see match_link_rate).
struct RateMatch {
  std::string profile;  // the target's name
  int tp_size = 0;
  double profile_gemm_flops = 0.0;  // F_P
  double profile_link_Bps = 0.0;  // B_P: the target's AllReduce bus bandwidth at tp_size
  double profile_latency_s = 0.0;  // the same fit's latency (not matched)
  int profile_element_bytes = 2;  // what the target sends per element (bf16)
  int machine_element_bytes = 4;  // what the engine sends (fp32)
  double machine_gemm_flops = 0.0;  // F_M: one rank's, with tp_size ranks running at once
  double per_rank_Bps = 0.0;  // B_M
  double rate_Bps = 0.0;  // the bucket: B_M * tp_size
  double rate_bps = 0.0;  // the same in bits per second, rounded to whole kbit

  // The arithmetic, in a few lines for a person.
  std::string explain() const;
};

// The rate at which one element sent costs the same number of FLOPs here as
// on `target`:
//   F_M / (B_M / machine_element_bytes) = F_P / (B_P / profile_element_bytes)
//   B_M = F_M * B_P / F_P * machine_element_bytes / profile_element_bytes
// per rank, and the bucket passes tp_size ranks' traffic at once:
//   rate = B_M * tp_size.
// The target's latency is not scaled: scaled alike, 15 us would become
// hundreds of milliseconds. ConfigError when the target has no AllReduce fit
// or the rate falls outside kMinRateBps..kMaxRateBps.
RateMatch match_link_rate(const HardwareProfile& target, int tp_size, double machine_gemm_flops);

// One rank's sgemm rate (256 x 1024 x 1024, as calibrate measures
// gemm_flops) while `processes` processes run it at once, each with
// cores / processes BLAS threads (at least 1), as the ranks of a job share
// the cores: the median of theirs. Forks; call before MPI is initialised.
double measure_concurrent_gemm_flops(int processes);

// ---- The namespace ----------------------------------------------------

// The iproute2 programs, by absolute path.
struct Tools {
  std::string ip;
  std::string tc;
};

// ConfigError naming what is missing (and how to get it) when `ip` or `tc`
// is not on PATH.
Tools find_tools();

// ConfigError unless this process runs as root (creating a namespace and
// shaping its link needs CAP_SYS_ADMIN and CAP_NET_ADMIN).
void require_root();

// The shaping of the loopback.
struct LinkShape {
  double rate_bps = 0.0;  // tbf rate: all ranks together
  double delay_s = 0.0;  // netem delay of every packet (so 2x per round trip); 0: none
};

// The namespace's loopback carries packets of at most a jumbo Ethernet
// frame, as a cluster's links do, rather than the loopback's usual 64 KiB:
// the bucket can then be shallow, and a small message is shaped too.
inline constexpr int kLinkMtuBytes = 9000;

// The bucket's depth: what may pass at once; 1 ms at the rate, and at least
// four packets.
std::int64_t tbf_burst_bytes(double rate_bps);

// The qdisc's counters (tc -s): what the shaped link carried.
struct LinkStats {
  std::int64_t bytes = 0;
  std::int64_t packets = 0;
  std::int64_t dropped = 0;
  std::int64_t overlimits = 0;  // packets that had to wait for tokens
};

// A network namespace whose loopback is up and shaped; removed (with
// everything in it) when the object goes away, on every path out.
class ShapedNamespace {
 public:
  // Creates namespace `name` and shapes its loopback; ConfigError with the
  // tool's own message when a step fails (the namespace is removed first).
  ShapedNamespace(std::string name, const LinkShape& shape, Tools tools);
  ~ShapedNamespace();
  ShapedNamespace(const ShapedNamespace&) = delete;
  ShapedNamespace& operator=(const ShapedNamespace&) = delete;

  const std::string& name() const { return name_; }
  // The command line that runs a program inside it: {ip, netns, exec, name}.
  std::vector<std::string> exec_prefix() const;
  // The tbf's counters now; zeros when they cannot be read.
  LinkStats stats() const;
  // Removes the namespace now; false (after a warning naming the command to
  // run by hand) when `ip netns delete` failed. Idempotent.
  bool remove();

 private:
  std::string name_;
  Tools tools_;
  bool exists_ = false;
};

// The namespaces `ip netns list` shows.
std::vector<std::string> list_namespaces(const Tools& tools);

// The name a run with process id `pid` uses: "flashcomm-<pid>".
std::string namespace_name(int pid);

// Removes namespaces named flashcomm-<pid> that an earlier run left (it was
// killed with SIGKILL, say): their process is gone and no process runs inside
// them. Returns the names removed.
std::vector<std::string> remove_stale_namespaces(const Tools& tools);

// ---- Collectives over the shaped link ----------------------------------

// The collectives of the shaped link, fitted as calibrate() fits them, for
// groups of every size in options.group_sizes (each dividing `ranks`) on the
// first `ranks` ranks of `world`, with all of them busy: for a group size g,
// ranks / g groups of g consecutive ranks run each collective at once, after
// a barrier over all of them, and a sample lasts until the slowest rank of
// any group is done. On one shaped loopback g ranks timed alone would each
// get rate / g, while in the benchmark, whose groups of a size all run at
// once, each gets rate / ranks. The other ranks wait. Only the collectives
// and activation_bytes (4) are set; collective over `world`.
HardwareProfile calibrate_busy_link(MPI_Comm world, int ranks, const CalibrateOptions& options);

}  // namespace flashcomm::testbed
