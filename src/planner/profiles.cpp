// Hardware profiles: the built-in ones, derived from vendor datasheets, and
// the JSON files a user (or a benchmark) writes.
//
// JSON layout of a profile file (every field required unless marked):
//   {"name": "h100-sxm", "description": "...", "source": "...",
//    "gemm_flops": 6.9e14, "memory_bandwidth_Bps": 2.7e12, "activation_bytes": 2,
//    "collectives": {"all_reduce": [{"group_size": 2, "latency_s": 1.5e-5,
//                                    "bandwidth_Bps": 3.6e11}, ...],
//                    "reduce_scatter": [...], "all_gather": [...], "all_to_all": [...]},
//    "ranks_per_node": 8,                  (optional, default 0: a single node)
//    "cross_node_collectives": {...},      (required when ranks_per_node > 0, else absent)
//    "overlap_efficiency": 1.0,            (optional, 0 to 1, default 0: a transfer
//                                           makes no progress while the rank computes)
//    "calibration": {...}}                 (optional: the measurements flashcomm calibrate
//                                           fitted, with their algorithms; not read here)
// Unknown fields are refused, so that a misspelt one cannot silently fall
// back to nothing.
//
// How the built-in GPU and NPU numbers are derived, for every one alike (the
// CPU profile, cpu-openmpi, is measured instead; see cpu_openmpi()):
//   gemm_flops = 0.7 x peak dense bf16 tensor FLOP/s (datasheet, without
//     sparsity): large cuBLAS / CANN GEMMs reach 70-80% of peak, and the
//     sharded GEMMs of TP prefill are mid-sized, so the low end;
//   memory_bandwidth_Bps = 0.8 x peak memory bandwidth: what streaming
//     kernels reach on HBM;
//   bus bandwidth = 0.8 x the per-direction link bandwidth one rank has to
//     its peers: nccl-tests' busbw on NVLink systems tops out near 80% of it;
//   latency: typical NCCL / HCCL small-message times, 10-30 us, larger over
//     PCIe and across nodes;
//   overlap_efficiency = 1: NCCL and HCCL run a collective on its own stream
//     and copy engines or NICs move the data, so a transfer proceeds while
//     the GEMM runs (their contention for SMs and memory bandwidth is not
//     modelled).
// These are assumptions, not measurements; a measured profile (JSON) should
// replace them when one exists.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <set>
#include <utility>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "flashcomm/cost_model.hpp"
#include "flashcomm/error.hpp"

namespace flashcomm {

namespace {

using nlohmann::json;

constexpr double kGemmFraction = 0.7;
constexpr double kMemoryFraction = 0.8;
constexpr double kLinkFraction = 0.8;
constexpr double kGB = 1e9;
constexpr double kTFLOPS = 1e12;
constexpr double kUs = 1e-6;

constexpr CommOp kOps[] = {CommOp::all_reduce, CommOp::reduce_scatter, CommOp::all_gather,
                           CommOp::all_to_all};

// Latency of one op on the collectives of a single fabric.
struct OpLatencies {
  double all_reduce = 0.0;
  double reduce_scatter = 0.0;
  double all_gather = 0.0;
  double all_to_all = 0.0;

  double of(CommOp op) const {
    switch (op) {
      case CommOp::all_reduce:
        return all_reduce;
      case CommOp::reduce_scatter:
        return reduce_scatter;
      case CommOp::all_gather:
        return all_gather;
      case CommOp::all_to_all:
        return all_to_all;
    }
    return 0.0;
  }
};

// Appends fits for `sizes` to every op: latency per op, bandwidth from
// bandwidth_of(op, group_size).
void add_fits(std::map<CommOp, std::vector<CollectiveFit>>& table, const std::vector<int>& sizes,
              const OpLatencies& latency, const std::function<double(CommOp, int)>& bandwidth_of) {
  for (CommOp op : kOps) {
    for (int n : sizes) {
      table[op].push_back({n, latency.of(op), bandwidth_of(op, n)});
    }
  }
}

// NCCL and HCCL collectives run asynchronously to the compute stream.
constexpr double kAsyncOverlap = 1.0;

// Latencies of NCCL inside one NVLink / NVSwitch node.
constexpr OpLatencies kNvlinkLatency{15 * kUs, 10 * kUs, 10 * kUs, 15 * kUs};

// An NVSwitch node: every group of 2, 4 or 8 GPUs gets the full per-GPU
// NVLink bandwidth, whatever its size.
HardwareProfile nvswitch_node(double peak_tflops, double hbm_GBps, double nvlink_GBps_per_dir) {
  HardwareProfile p;
  p.gemm_flops = kGemmFraction * peak_tflops * kTFLOPS;
  p.memory_bandwidth_Bps = kMemoryFraction * hbm_GBps * kGB;
  p.activation_bytes = 2;
  p.overlap_efficiency = kAsyncOverlap;
  const double bus = kLinkFraction * nvlink_GBps_per_dir * kGB;
  add_fits(p.collectives, {2, 4, 8}, kNvlinkLatency, [bus](CommOp, int) { return bus; });
  return p;
}

const std::string kFractions =
    "gemm_flops = 0.7 x peak dense bf16, memory = 0.8 x peak, bus bandwidth = 0.8 x per-direction "
    "link bandwidth, latencies typical of the collective library (assumed, not measured); "
    "overlap_efficiency 1: the collective library runs on its own stream, so a transfer proceeds "
    "during the GEMMs (contention for SMs and memory not modelled)";

// NVIDIA H100 SXM5 datasheet: 989.4 TFLOPS dense bf16 (1,979 with sparsity),
// 3.35 TB/s HBM3, NVLink 4 900 GB/s per GPU (450 GB/s each way), NVSwitch.
HardwareProfile h100_sxm() {
  HardwareProfile p = nvswitch_node(989.4, 3350.0, 450.0);
  p.name = "h100-sxm";
  p.description = "8x NVIDIA H100 SXM5 80GB, NVLink 4 through NVSwitch, NCCL";
  p.source =
      "NVIDIA H100 Tensor Core GPU datasheet (SXM5): 989.4 TFLOPS dense bf16, 3.35 TB/s "
      "HBM3, NVLink 900 GB/s bidirectional per GPU; " +
      kFractions;
  return p;
}

// NVIDIA H200 SXM datasheet: the H100's compute (989.4 TFLOPS dense bf16)
// with 4.8 TB/s HBM3e; NVLink 4 900 GB/s per GPU.
HardwareProfile h200_sxm() {
  HardwareProfile p = nvswitch_node(989.4, 4800.0, 450.0);
  p.name = "h200-sxm";
  p.description = "8x NVIDIA H200 SXM 141GB, NVLink 4 through NVSwitch, NCCL";
  p.source =
      "NVIDIA H200 Tensor Core GPU datasheet (SXM): 989.4 TFLOPS dense bf16, 4.8 TB/s "
      "HBM3e, NVLink 900 GB/s bidirectional per GPU; " +
      kFractions;
  return p;
}

// NVIDIA A100 SXM4 80GB datasheet: 312 TFLOPS dense bf16 (624 with
// sparsity), 2,039 GB/s HBM2e, NVLink 3 600 GB/s per GPU (300 each way).
HardwareProfile a100_sxm() {
  HardwareProfile p = nvswitch_node(312.0, 2039.0, 300.0);
  p.name = "a100-sxm";
  p.description = "8x NVIDIA A100 SXM4 80GB, NVLink 3 through NVSwitch, NCCL";
  p.source =
      "NVIDIA A100 Tensor Core GPU datasheet (SXM4 80GB): 312 TFLOPS dense bf16, "
      "2,039 GB/s HBM2e, NVLink 600 GB/s bidirectional per GPU; " +
      kFractions;
  return p;
}

// NVIDIA L40 datasheet: 181.05 TFLOPS dense bf16 (362.1 with sparsity),
// 864 GB/s GDDR6, PCIe Gen4 x16 (64 GB/s bidirectional, 32 each way), no
// NVLink. Up to 4 GPUs share one CPU's PCIe tree; a group of 8 spans both
// sockets of a typical server and crosses the inter-socket link, for which
// half the PCIe rate is assumed (0.5 x 32 GB/s).
HardwareProfile l40_pcie() {
  HardwareProfile p;
  p.name = "l40-pcie";
  p.description = "8x NVIDIA L40 48GB on PCIe Gen4 x16, no NVLink, NCCL over PCIe";
  p.source =
      "NVIDIA L40 datasheet: 181.05 TFLOPS dense bf16, 864 GB/s GDDR6, PCIe Gen4 x16 "
      "64 GB/s bidirectional; groups of 8 assumed at 0.5 x 32 GB/s (they cross the CPU "
      "socket link); " +
      kFractions;
  p.gemm_flops = kGemmFraction * 181.05 * kTFLOPS;
  p.memory_bandwidth_Bps = kMemoryFraction * 864.0 * kGB;
  p.activation_bytes = 2;
  p.overlap_efficiency = kAsyncOverlap;
  const OpLatencies pcie{30 * kUs, 25 * kUs, 25 * kUs, 30 * kUs};
  add_fits(p.collectives, {2, 4, 8}, pcie,
           [](CommOp, int n) { return (n <= 4 ? kLinkFraction : 0.5) * 32.0 * kGB; });
  return p;
}

// Huawei Atlas 800T A2 (8x Ascend 910B): HCCS full mesh, 7 links per NPU,
// 392 GB/s per NPU in all (taken as bidirectional: 28 GB/s each way per
// link); Ascend 910B: ~313 TFLOPS dense fp16/bf16 (the 910B3 figure; Huawei
// publishes no single number for every SKU, listings give 280-376), 64 GB
// HBM2e at 1.6 TB/s. In a full mesh a group of n NPUs moves data over its
// n-1 direct links at once, so the bus bandwidth grows with the group:
// 0.8 x (n-1) x 28 GB/s.
HardwareProfile ascend_910b() {
  HardwareProfile p;
  p.name = "ascend-910b";
  p.description = "8x Huawei Ascend 910B (Atlas 800T A2), HCCS full mesh, HCCL";
  p.source =
      "Huawei Atlas 800T A2 datasheet: HCCS 392 GB/s per NPU over 7 links (taken as "
      "bidirectional, 28 GB/s per link each way; a group of n uses n-1 links); Ascend 910B "
      "~313 TFLOPS dense fp16/bf16 (910B3; SKUs vary), 64 GB HBM2e at 1.6 TB/s; " +
      kFractions;
  p.gemm_flops = kGemmFraction * 313.0 * kTFLOPS;
  p.memory_bandwidth_Bps = kMemoryFraction * 1600.0 * kGB;
  p.activation_bytes = 2;
  p.overlap_efficiency = kAsyncOverlap;
  const OpLatencies hccl{25 * kUs, 20 * kUs, 20 * kUs, 25 * kUs};
  add_fits(p.collectives, {2, 4, 8}, hccl,
           [](CommOp, int n) { return kLinkFraction * (n - 1) * 28.0 * kGB; });
  return p;
}

// H100 SXM nodes of 8 GPUs on NVLink 4, one 400 Gb/s InfiniBand NDR NIC per
// GPU (ConnectX-7, 50 GB/s each way, rail-optimised: GPU i of every node on
// rail i). Groups of more than 8 span nodes:
//   AllReduce, ReduceScatter, AllGather run as rings with one channel per
//   rail, so a node's 8 NICs carry the inter-node part side by side: bus
//   bandwidth 8 x 0.8 x 50 = 320 GB/s (below NVLink's 360), with a latency
//   that grows with the number of nodes on the ring;
//   AlltoAll sends each peer its own block, so every rank pushes the share
//   (n-8)/n of its payload through its own NIC: bytes_sent / t =
//   0.8 x 50 GB/s x (n-1)/(n-8), 75 GB/s at 16 ranks, 45 GB/s at 64.
// A group of at most 8 whose members are on different nodes (FlashComm2's
// OTP group at TP 16, K 2 is {i, i+8}) moves everything over the members'
// NICs: 0.8 x 50 = 40 GB/s for every op.
HardwareProfile ib_cluster() {
  HardwareProfile p = nvswitch_node(989.4, 3350.0, 450.0);
  p.name = "ib-cluster";
  p.description =
      "H100 SXM nodes (8 GPUs on NVLink 4) joined by 400 Gb/s InfiniBand NDR, one NIC per GPU";
  p.source =
      "NVIDIA H100 datasheet (as h100-sxm) inside a node; NVIDIA ConnectX-7 400 Gb/s NDR "
      "(50 GB/s each way) per GPU between nodes: rings over 8 rails 8 x 0.8 x 50 GB/s, "
      "AlltoAll 0.8 x 50 GB/s x (n-1)/(n-8), small groups spanning nodes 0.8 x 50 GB/s; " +
      kFractions;
  p.ranks_per_node = 8;
  const double nic = kLinkFraction * 50.0 * kGB;
  const OpLatencies multi_node[] = {{35 * kUs, 25 * kUs, 25 * kUs, 30 * kUs},
                                    {45 * kUs, 30 * kUs, 30 * kUs, 40 * kUs},
                                    {60 * kUs, 40 * kUs, 40 * kUs, 60 * kUs}};
  const int sizes[] = {16, 32, 64};
  for (int s = 0; s < 3; ++s) {
    add_fits(p.collectives, {sizes[s]}, multi_node[s], [nic](CommOp op, int n) {
      return op == CommOp::all_to_all ? nic * (n - 1) / (n - 8) : 8.0 * nic;
    });
  }
  const OpLatencies one_per_node{30 * kUs, 25 * kUs, 25 * kUs, 25 * kUs};
  add_fits(p.cross_node_collectives, {2, 4, 8}, one_per_node, [nic](CommOp, int) { return nic; });
  return p;
}

// CPU ranks running this engine in fp32, one core each, with OpenMPI's
// shared-memory transport on one node: `flashcomm calibrate --ranks 2
// --repeats 11` on a 2-core AMD EPYC virtual machine (OpenMPI 4.1.4), run 16
// times while other work shared the machine. The numbers are those of the
// quietest run (the highest sgemm rate; the others ran up to 4x slower), all
// from that one run so that they belong together, rounded to 3 digits. The
// fits' latencies are their intercepts, 0 where the small messages (about a
// microsecond) vanish in the fit. Only groups of 2 were measured; larger
// groups are timed with the 2-rank fits. OpenMPI without a progress thread
// moves a large message only while a rank is inside an MPI call, so a
// transfer makes no progress during a GEMM: overlap_efficiency 0.
HardwareProfile cpu_openmpi() {
  HardwareProfile p;
  p.name = "cpu-openmpi";
  p.description =
      "CPU ranks on one node (fp32, one core each), OpenMPI over shared memory, no progress "
      "thread";
  p.source =
      "flashcomm calibrate --ranks 2 --repeats 11 on a 2-core AMD EPYC VM with OpenMPI 4.1.4, "
      "the quietest of 16 runs on a shared machine (highest sgemm rate), rounded to 3 digits; "
      "groups above 2 ranks use the 2-rank fits; "
      "overlap_efficiency 0: without a progress thread a message moves only inside MPI calls";
  p.activation_bytes = 4;
  p.overlap_efficiency = 0.0;
  p.gemm_flops = 74.4e9;
  p.memory_bandwidth_Bps = 7.56e9;
  p.exp_per_s = 207e6;
  p.gemm_flops_by_rows = {{4, 16.2e9}, {16, 46.8e9}, {64, 51.7e9}, {256, 54.8e9}};
  p.collectives[CommOp::all_reduce] = {{2, 1.25 * kUs, 3.61 * kGB}};
  p.collectives[CommOp::reduce_scatter] = {{2, 0.56 * kUs, 1.71 * kGB}};
  p.collectives[CommOp::all_gather] = {{2, 0.0, 1.29 * kGB}};
  p.collectives[CommOp::all_to_all] = {{2, 0.0, 1.28 * kGB}};
  return p;
}

using ProfileTable = std::vector<std::pair<std::string, std::function<HardwareProfile()>>>;

const ProfileTable& builtins() {
  static const ProfileTable table = {
      {"ascend-910b", ascend_910b}, {"h100-sxm", h100_sxm}, {"h200-sxm", h200_sxm},
      {"a100-sxm", a100_sxm},       {"l40-pcie", l40_pcie}, {"ib-cluster", ib_cluster},
      {"cpu-openmpi", cpu_openmpi},
  };
  return table;
}

// ---- Validation ---------------------------------------------------------

void check_fits(const std::map<CommOp, std::vector<CollectiveFit>>& table, const std::string& field,
                const std::string& source) {
  for (CommOp op : kOps) {
    const auto it = table.find(op);
    if (it == table.end() || it->second.empty()) {
      throw FormatError(fmt::format("{}: {}.{} is missing, expected a list of fits", source, field,
                                    to_string(op)));
    }
    std::set<int> sizes;
    for (size_t i = 0; i < it->second.size(); ++i) {
      const CollectiveFit& f = it->second[i];
      const std::string at = fmt::format("{}.{}[{}]", field, to_string(op), i);
      if (f.group_size < 2) {
        throw FormatError(
            fmt::format("{}: {}.group_size is {}, expected at least 2", source, at, f.group_size));
      }
      if (!sizes.insert(f.group_size).second) {
        throw FormatError(fmt::format("{}: {}.group_size {} appears twice for {}", source, at,
                                      f.group_size, to_string(op)));
      }
      if (!std::isfinite(f.latency_s) || f.latency_s < 0.0) {
        throw FormatError(fmt::format("{}: {}.latency_s is {}, expected a finite value >= 0",
                                      source, at, f.latency_s));
      }
      if (!std::isfinite(f.bandwidth_Bps) || f.bandwidth_Bps <= 0.0) {
        throw FormatError(fmt::format("{}: {}.bandwidth_Bps is {}, expected a positive value",
                                      source, at, f.bandwidth_Bps));
      }
    }
  }
}

void check_rate(const std::string& source, const char* field, double value) {
  if (!std::isfinite(value) || value <= 0.0) {
    throw FormatError(
        fmt::format("{}: {} is {}, expected a positive finite value", source, field, value));
  }
}

// ---- JSON ---------------------------------------------------------------

// "where.key", or "key" at the top level.
std::string dotted(const std::string& where, const std::string& key) {
  return where.empty() ? key : fmt::format("{}.{}", where, key);
}

// Field access with messages naming the file and the dotted field.
class JsonReader {
 public:
  explicit JsonReader(std::string path) : path_(std::move(path)) {}

  [[noreturn]] void fail(const std::string& field, const std::string& what) const {
    throw FormatError(fmt::format("{}: {} {}", path_, field, what));
  }

  const json& get(const json& obj, const std::string& key, const std::string& where) const {
    const auto it = obj.find(key);
    if (it == obj.end()) {
      fail(dotted(where, key), "is missing");
    }
    return *it;
  }

  void only_keys(const json& obj, const std::set<std::string>& allowed,
                 const std::string& where) const {
    for (const auto& [key, value] : obj.items()) {
      if (allowed.count(key) == 0) {
        fail(dotted(where, key), fmt::format("is not a field of a profile (expected one of {})",
                                             fmt::join(allowed, ", ")));
      }
    }
  }

  double number(const json& obj, const std::string& key, const std::string& where = "") const {
    const json& v = get(obj, key, where);
    if (!v.is_number()) {
      fail(dotted(where, key), fmt::format("is {}, expected a number", v.dump()));
    }
    return v.get<double>();
  }

  int integer(const json& obj, const std::string& key, const std::string& where = "") const {
    const json& v = get(obj, key, where);
    if (!v.is_number_integer() || v.get<std::int64_t>() < std::numeric_limits<int>::min() ||
        v.get<std::int64_t>() > std::numeric_limits<int>::max()) {
      fail(dotted(where, key), fmt::format("is {}, expected an integer", v.dump()));
    }
    return v.get<int>();
  }

  std::string string(const json& obj, const std::string& key) const {
    const json& v = get(obj, key, "");
    if (!v.is_string()) {
      fail(key, fmt::format("is {}, expected a string", v.dump()));
    }
    return v.get<std::string>();
  }

  std::map<CommOp, std::vector<CollectiveFit>> fits(const json& obj, const std::string& key) const {
    const json& table = get(obj, key, "");
    if (!table.is_object()) {
      fail(key, "is not an object of op name -> list of fits");
    }
    std::map<CommOp, std::vector<CollectiveFit>> out;
    for (auto item = table.begin(); item != table.end(); ++item) {
      const std::string& name = item.key();
      const json& list = item.value();
      const CommOp* op = std::find_if(std::begin(kOps), std::end(kOps),
                                      [&](CommOp o) { return name == to_string(o); });
      if (op == std::end(kOps)) {
        fail(dotted(key, name),
             "is not a collective (expected all_reduce, reduce_scatter, all_gather or "
             "all_to_all)");
      }
      if (!list.is_array()) {
        fail(dotted(key, name), "is not a list of fits");
      }
      for (size_t i = 0; i < list.size(); ++i) {
        const std::string at = fmt::format("{}.{}[{}]", key, name, i);
        if (!list[i].is_object()) {
          fail(at, "is not an object {group_size, latency_s, bandwidth_Bps}");
        }
        only_keys(list[i], {"group_size", "latency_s", "bandwidth_Bps"}, at);
        out[*op].push_back({integer(list[i], "group_size", at), number(list[i], "latency_s", at),
                            number(list[i], "bandwidth_Bps", at)});
      }
    }
    return out;
  }

 private:
  std::string path_;
};

json fits_json(const std::map<CommOp, std::vector<CollectiveFit>>& table) {
  json out = json::object();
  for (const auto& [op, fits] : table) {
    json list = json::array();
    for (const CollectiveFit& f : fits) {
      list.push_back({{"group_size", f.group_size},
                      {"latency_s", f.latency_s},
                      {"bandwidth_Bps", f.bandwidth_Bps}});
    }
    out[to_string(op)] = std::move(list);
  }
  return out;
}

void sort_fits(std::map<CommOp, std::vector<CollectiveFit>>& table) {
  for (auto& [op, fits] : table) {
    std::sort(fits.begin(), fits.end(), [](const CollectiveFit& a, const CollectiveFit& b) {
      return a.group_size < b.group_size;
    });
  }
}

}  // namespace

void check_profile(const HardwareProfile& p, const std::string& source) {
  if (p.name.empty()) {
    throw FormatError(fmt::format("{}: name is empty", source));
  }
  check_rate(source, "gemm_flops", p.gemm_flops);
  check_rate(source, "memory_bandwidth_Bps", p.memory_bandwidth_Bps);
  if (p.activation_bytes < 1 || p.activation_bytes > 8) {
    throw FormatError(
        fmt::format("{}: activation_bytes is {}, expected 1 to 8", source, p.activation_bytes));
  }
  check_fits(p.collectives, "collectives", source);
  if (!std::isfinite(p.overlap_efficiency) || p.overlap_efficiency < 0.0 ||
      p.overlap_efficiency > 1.0) {
    throw FormatError(fmt::format("{}: overlap_efficiency is {}, expected a value from 0 to 1",
                                  source, p.overlap_efficiency));
  }
  if (p.ranks_per_node < 0) {
    throw FormatError(
        fmt::format("{}: ranks_per_node is {}, expected 0 or more", source, p.ranks_per_node));
  }
  if (p.ranks_per_node > 0) {
    if (p.cross_node_collectives.empty()) {
      throw FormatError(fmt::format(
          "{}: cross_node_collectives is missing (required when ranks_per_node > 0)", source));
    }
    check_fits(p.cross_node_collectives, "cross_node_collectives", source);
  } else if (!p.cross_node_collectives.empty()) {
    throw FormatError(fmt::format(
        "{}: cross_node_collectives is given but ranks_per_node is 0 (a single node)", source));
  }
}

HardwareProfile load_profile(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    throw FormatError(fmt::format("{}: cannot open the hardware profile", path));
  }
  json j;
  try {
    j = json::parse(in);
  } catch (const json::parse_error& e) {
    throw FormatError(fmt::format("{}: not valid JSON: {}", path, e.what()));
  }
  const JsonReader r(path);
  if (!j.is_object()) {
    r.fail("the top level", "is not a JSON object");
  }
  r.only_keys(j,
              {"name", "description", "source", "gemm_flops", "gemm_flops_by_rows",
               "memory_bandwidth_Bps", "activation_bytes", "exp_per_s", "collectives",
               "ranks_per_node", "cross_node_collectives", "overlap_efficiency", "calibration"},
              "");
  if (j.contains("calibration") && !j["calibration"].is_object()) {
    r.fail("calibration", "is not an object (the measurements of flashcomm calibrate)");
  }

  HardwareProfile p;
  p.name = r.string(j, "name");
  p.description = r.string(j, "description");
  p.source = r.string(j, "source");
  p.gemm_flops = r.number(j, "gemm_flops");
  p.memory_bandwidth_Bps = r.number(j, "memory_bandwidth_Bps");
  p.activation_bytes = r.integer(j, "activation_bytes");
  p.collectives = r.fits(j, "collectives");
  if (j.contains("gemm_flops_by_rows")) {
    const json& table = j["gemm_flops_by_rows"];
    if (!table.is_array()) {
      r.fail("gemm_flops_by_rows", "is not an array of [rows, flops] pairs");
    }
    for (const json& e : table) {
      if (!e.is_array() || e.size() != 2 || !e[0].is_number_integer() || !e[1].is_number() ||
          e[0].get<int>() < 1 || !(e[1].get<double>() > 0) ||
          (!p.gemm_flops_by_rows.empty() && e[0].get<int>() <= p.gemm_flops_by_rows.back().first)) {
        r.fail("gemm_flops_by_rows",
               fmt::format("entry {} is not [rows >= 1, flops > 0] in ascending rows", e.dump()));
      }
      p.gemm_flops_by_rows.emplace_back(e[0].get<int>(), e[1].get<double>());
    }
  }
  if (j.contains("exp_per_s")) {
    p.exp_per_s = r.number(j, "exp_per_s");
  }
  if (j.contains("ranks_per_node")) {
    p.ranks_per_node = r.integer(j, "ranks_per_node");
  }
  if (j.contains("cross_node_collectives")) {
    p.cross_node_collectives = r.fits(j, "cross_node_collectives");
  }
  if (j.contains("overlap_efficiency")) {
    p.overlap_efficiency = r.number(j, "overlap_efficiency");
  }
  sort_fits(p.collectives);
  sort_fits(p.cross_node_collectives);
  check_profile(p, path);
  return p;
}

void save_profile(const HardwareProfile& p, const std::string& path) {
  json j = {{"name", p.name},
            {"description", p.description},
            {"source", p.source},
            {"gemm_flops", p.gemm_flops},
            {"memory_bandwidth_Bps", p.memory_bandwidth_Bps},
            {"activation_bytes", p.activation_bytes},
            {"collectives", fits_json(p.collectives)}};
  if (p.exp_per_s > 0) {
    j["exp_per_s"] = p.exp_per_s;
  }
  if (!p.gemm_flops_by_rows.empty()) {
    j["gemm_flops_by_rows"] = p.gemm_flops_by_rows;
  }
  if (p.ranks_per_node > 0) {
    j["ranks_per_node"] = p.ranks_per_node;
    j["cross_node_collectives"] = fits_json(p.cross_node_collectives);
  }
  if (p.overlap_efficiency > 0) {
    j["overlap_efficiency"] = p.overlap_efficiency;
  }
  std::ofstream out(path);
  if (!out) {
    throw ConfigError(fmt::format("{}: cannot write the hardware profile", path));
  }
  out << j.dump(2) << "\n";
  if (!out) {
    throw ConfigError(fmt::format("{}: writing the hardware profile failed", path));
  }
}

std::vector<std::string> builtin_profile_names() {
  std::vector<std::string> names;
  for (const auto& [name, make] : builtins()) {
    names.push_back(name);
  }
  return names;
}

HardwareProfile builtin_profile(const std::string& name) {
  for (const auto& [builtin, make] : builtins()) {
    if (builtin == name) {
      HardwareProfile p = make();
      sort_fits(p.collectives);
      sort_fits(p.cross_node_collectives);
      check_profile(p, "built-in profile " + name);
      return p;
    }
  }
  throw ConfigError(fmt::format("unknown hardware profile '{}': the built-in profiles are {}", name,
                                fmt::join(builtin_profile_names(), ", ")));
}

HardwareProfile resolve_profile(const std::string& name_or_path) {
  const std::vector<std::string> names = builtin_profile_names();
  if (std::find(names.begin(), names.end(), name_or_path) != names.end()) {
    return builtin_profile(name_or_path);
  }
  std::error_code error;
  if (std::filesystem::is_regular_file(name_or_path, error)) {
    return load_profile(name_or_path);
  }
  if (std::filesystem::exists(name_or_path, error)) {
    throw FormatError(fmt::format(
        "hardware profile {}: not a regular file, expected a JSON profile", name_or_path));
  }
  throw ConfigError(fmt::format(
      "unknown hardware profile '{}': not a built-in profile ({}) and no such JSON file",
      name_or_path, fmt::join(names, ", ")));
}

}  // namespace flashcomm
