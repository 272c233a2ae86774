// The cost model of one rank's prefill and the planner built on it.
//
// predict_layer walks the phases of Engine::attention_block, flashcomm2_o_proj
// and mlp_block (src/engine/engine.cpp) in their order, with the same buffer
// shapes: every collective's buffer is the one the engine hands to the
// communicator, so comm_bytes equals what CommStats counts for that call.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>

#include "flashcomm/cost_model.hpp"
#include "flashcomm/error.hpp"

namespace flashcomm {

double gemm_rate(const HardwareProfile& profile, double rows) {
  const auto& table = profile.gemm_flops_by_rows;
  if (table.empty()) {
    return profile.gemm_flops;
  }
  if (rows <= table.front().first) {
    return table.front().second;
  }
  for (size_t i = 1; i < table.size(); ++i) {
    if (rows <= table[i].first) {
      const double x0 = std::log(table[i - 1].first);
      const double x1 = std::log(table[i].first);
      const double t = (std::log(rows) - x0) / (x1 - x0);
      return table[i - 1].second + t * (table[i].second - table[i - 1].second);
    }
  }
  return table.back().second;
}

double collective_seconds(const HardwareProfile& profile, CommOp op, int group_size,
                          std::int64_t bytes_sent, bool crosses_nodes) {
  FC_ASSERT(group_size >= 1 && bytes_sent >= 0, "group_size {} bytes_sent {}", group_size,
            bytes_sent);
  if (group_size == 1) {
    return 0.0;
  }
  // Groups larger than a node cross nodes by necessity; the main table's
  // large sizes describe them.
  const bool small_crossing = crosses_nodes && profile.ranks_per_node > 0 &&
                              group_size <= profile.ranks_per_node &&
                              profile.cross_node_collectives.count(op) > 0;
  const auto& table = small_crossing ? profile.cross_node_collectives : profile.collectives;
  const auto it = table.find(op);
  FC_ASSERT(it != table.end() && !it->second.empty(), "profile {} has no fit for {}", profile.name,
            to_string(op));

  // The nearest measured group size; on a tie the larger, the safer guess.
  const CollectiveFit* best = nullptr;
  for (const CollectiveFit& f : it->second) {
    const int distance = std::abs(f.group_size - group_size);
    if (best == nullptr || distance < std::abs(best->group_size - group_size) ||
        (distance == std::abs(best->group_size - group_size) && f.group_size > best->group_size)) {
      best = &f;
    }
  }
  return best->latency_s + static_cast<double>(bytes_sent) / best->bandwidth_Bps;
}

const PhaseCost* LayerCost::find(Phase phase) const {
  for (const PhaseCost& p : phases) {
    if (p.phase == phase) {
      return &p;
    }
  }
  return nullptr;
}

namespace {

// The shapes of one rank's pass, named as in the engine.
struct Shapes {
  std::int64_t n = 0;  // n_tokens
  std::int64_t n_padded = 0;
  std::int64_t n_slice = 0;  // n_padded / tp_size
  std::int64_t n_res = 0;  // rows of the residual stream on this rank
  std::int64_t d = 0;  // d_model
  std::int64_t q_dim = 0;
  std::int64_t q_local = 0;  // this rank's query heads * head_dim
  std::int64_t kv_local = 0;  // this rank's KV heads * head_dim (one head when replicated)
  std::int64_t hidden = 0;  // hidden_dim
  std::int64_t hid = 0;  // hidden_dim / tp_size
  int tp = 1;
  int k = 0;  // otp_size; 0 when FlashComm2 is off
  int g = 1;  // odp_size
  int k_mlp = 0;  // down_proj's K_mlp; 0 when its FlashComm2 is off
  int g_mlp = 1;  // tp_size / k_mlp
  int chunks = 1;  // overlap_chunks; 1: no overlap
  bool flashcomm1 = false;
  bool flashcomm2 = false;
  bool flashcomm2_mlp = false;
};

Shapes shapes_of(const ModelConfig& m, const ParallelConfig& pc, int n_tokens) {
  Shapes s;
  s.tp = pc.tp_size;
  s.n = n_tokens;
  s.n_padded = padded_tokens(n_tokens, pc.tp_size);
  s.n_slice = s.n_padded / pc.tp_size;
  // As Engine::plan_pass: FlashComm1 does nothing on one rank.
  s.flashcomm1 = pc.flashcomm1 && pc.tp_size > 1;
  s.flashcomm2 = pc.flashcomm2_on();
  s.flashcomm2_mlp = pc.flashcomm2_mlp_on();
  s.n_res = s.flashcomm1 ? s.n_slice : s.n;
  s.k = pc.otp_size();
  s.g = pc.odp_size();
  s.k_mlp = pc.flashcomm2_mlp;
  s.g_mlp = s.flashcomm2_mlp ? pc.tp_size / pc.flashcomm2_mlp : pc.tp_size;
  s.chunks = pc.overlap_chunks;
  const HeadShard heads = head_shard(m, pc.tp_size, 0);
  s.d = m.d_model;
  s.q_dim = m.q_dim();
  s.q_local = std::int64_t{heads.n_q_heads} * m.head_dim;
  s.kv_local = std::int64_t{heads.n_kv_heads} * m.head_dim;
  s.hidden = m.hidden_dim;
  s.hid = m.hidden_dim / pc.tp_size;
  return s;
}

// Which groups of the layout span nodes: a collective is as slow as its
// slowest group, since every rank waits for it at the next one.
struct Crossings {
  bool tp = false;
  bool odp = false;  // o_proj's ODP groups (K)
  bool otp = false;
  bool mlp_odp = false;  // down_proj's ODP groups (K_mlp)
  bool mlp_otp = false;
};

// The groups of layout.hpp are arithmetic progressions of world ranks
// (first, first + stride, ...), and a rank's node grows with the rank, so a
// group spans nodes exactly when its first and last ranks do.
Crossings crossings_of(const HardwareProfile& profile, const ParallelConfig& pc) {
  Crossings c;
  const int per_node = profile.ranks_per_node;
  if (per_node <= 0) {
    return c;
  }
  const auto spans = [per_node](int first, int stride, int count) {
    return first / per_node != (first + (count - 1) * stride) / per_node;
  };
  const int tp = pc.tp_size;
  // ODP and OTP groups of a projection split with TP size k (layout.hpp).
  const auto split = [&](int k, bool& odp, bool& otp) {
    const int g = tp / k;
    for (int d = 0; d < pc.dp_size; ++d) {
      for (int j = 0; j < k; ++j) {
        odp = odp || spans(d * tp + j * g, 1, g);  // odp_group_ranks(pc, d, j)
      }
      for (int i = 0; i < g; ++i) {
        otp = otp || spans(d * tp + i, g, k);  // otp_group_ranks(pc, d, i)
      }
    }
  };
  for (int d = 0; d < pc.dp_size; ++d) {
    c.tp = c.tp || spans(d * tp, 1, tp);
  }
  if (pc.flashcomm2_on()) {
    split(pc.otp_size(), c.odp, c.otp);
  }
  if (pc.flashcomm2_mlp_on()) {
    split(pc.flashcomm2_mlp, c.mlp_odp, c.mlp_otp);
  }
  return c;
}

// One collective call on a buffer of `rows` token rows of `cols` elements
// (S_in for ReduceScatter, S_out for AllGather, S for AlltoAll, as comm.hpp
// counts), and the rows this rank converts to the wire format before it and
// back after it.
struct Collective {
  CommOp op = CommOp::all_reduce;
  const char* group = "tp";
  int size = 1;
  bool crosses = false;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t encode_rows = 0;
  std::int64_t decode_rows = 0;
};

// How a collective's payload travels (layout.hpp): int8 rows for the
// collectives that move activations when comm_quant is int8; else 2-byte
// elements with comm_dtype bf16; else the activations as they are. bf16 from
// activations no wider than 2 bytes (the GPU and NPU profiles) is what they
// already are, and costs no conversion.
struct Wire {
  bool int8 = false;
  std::int64_t elem = 4;  // bytes per element when not int8
  bool converts = false;  // encoded before sending and decoded after

  std::int64_t bytes(std::int64_t rows, std::int64_t cols) const {
    // int8: cols bytes and one 4-byte float scale per row.
    return int8 ? rows * (cols + 4) : rows * cols * elem;
  }
};

Wire wire_of(const ParallelConfig& pc, CommOp op, std::int64_t activation_bytes) {
  const bool moves = op == CommOp::all_gather || op == CommOp::all_to_all;
  if (moves && pc.comm_quant == CommQuant::int8) {
    return {true, 0, true};
  }
  if (pc.comm_dtype == CommDtype::bf16 && activation_bytes > 2) {
    return {false, 2, true};
  }
  return {false, activation_bytes, false};
}

// A collective's bytes on the wire and the memory traffic of its encoding
// (int8 reads the rows twice: the maximum, then scale and round) and
// decoding.
struct CollectiveCost {
  std::int64_t bytes_sent = 0;
  double transfer_s = 0.0;  // latency + bytes_sent / bandwidth
  double encode_bytes = 0.0;  // bytes read and written by the encoding, before sending
  double decode_bytes = 0.0;  // and by the decoding, after receiving

  double convert_bytes() const { return encode_bytes + decode_bytes; }
};

CollectiveCost cost_of(const HardwareProfile& profile, const ParallelConfig& pc,
                       const Collective& c) {
  const std::int64_t act = profile.activation_bytes;
  const Wire w = wire_of(pc, c.op, act);
  CollectiveCost out;
  out.bytes_sent = bytes_sent(c.op, c.size, w.bytes(c.rows, c.cols));
  out.transfer_s = collective_seconds(profile, c.op, c.size, out.bytes_sent, c.crosses);
  if (w.converts) {
    const std::int64_t reads = w.int8 ? 2 : 1;
    out.encode_bytes =
        static_cast<double>(reads * c.encode_rows * c.cols * act + w.bytes(c.encode_rows, c.cols));
    out.decode_bytes =
        static_cast<double>(w.bytes(c.decode_rows, c.cols) + c.decode_rows * c.cols * act);
  }
  return out;
}

// Seconds a rank waits in a pipeline of chunked collectives posted at once:
// transfer_s[c] is chunk c's collective alone (they complete in order, one
// link), busy_s[c] the rank's work after chunk c arrived (its unpacking and
// GEMM), during which later chunks advance at `efficiency` of real time.
double pipeline_wait(const std::vector<double>& transfer_s, const std::vector<double>& busy_s,
                     double efficiency) {
  std::vector<double> left = transfer_s;
  double waited = 0.0;
  for (size_t c = 0; c < left.size(); ++c) {
    // Wait for chunk c: the earlier ones are done, so only its remainder.
    waited += left[c];
    left[c] = 0.0;
    double progress = efficiency * busy_s[c];
    for (size_t i = c + 1; i < left.size() && progress > 0.0; ++i) {
      const double done = std::min(left[i], progress);
      left[i] -= done;
      progress -= done;
    }
  }
  return waited;
}

// An overlapped pair's chunk of `rows` rows of every slice: its collective,
// the elements its unpacking copies, and the rows of its GEMM.
struct ChunkPlan {
  Collective collective;
  std::int64_t unpack_elements = 0;
  std::int64_t gemm_rows = 0;  // rows of each of gemm_segments runs, multiplied in panels
  std::int64_t gemm_segments = 1;
};

// Builds the phases of one layer with the profile's rates.
class LayerBuilder {
 public:
  LayerBuilder(const HardwareProfile& profile, const ParallelConfig& parallel)
      : profile_(profile), parallel_(parallel), elem_(profile.activation_bytes) {
    cost_.phases.reserve(kPhaseCount);
  }

  // A GEMM y[rows, out] = x[rows, in] . w[out, in]^T on the roofline: its
  // FLOPs at gemm_flops or its bytes (x, w, y once each) at memory
  // bandwidth, whichever is slower.
  // `segments` runs of `rows` rows each, multiplied in panels of kPanelRows
  // rows, one GEMM per panel (Engine's panel_gemm): each panel computes at
  // the rate of its own row count, and the bytes are those of one GEMM over
  // every row (the panels of a run stream through the same weights; a GPU
  // engine would make them one call).
  void panel_gemm(Phase phase, std::int64_t segments, std::int64_t rows, std::int64_t in,
                  std::int64_t out) {
    double compute_s = 0.0;
    for (std::int64_t p = 0; p < rows; p += kPanelRows) {
      const auto m = static_cast<double>(std::min<std::int64_t>(kPanelRows, rows - p));
      compute_s +=
          2.0 * m * static_cast<double>(in) * static_cast<double>(out) / gemm_rate(profile_, m);
    }
    compute_s *= static_cast<double>(segments);
    const std::int64_t all = segments * rows;
    PhaseCost& c = at(phase);
    const double bytes = static_cast<double>(all * in + out * in + all * out) * elem_;
    c.flops += 2.0 * static_cast<double>(all) * static_cast<double>(in) * static_cast<double>(out);
    c.bytes_moved += bytes;
    c.seconds += std::max(compute_s, bytes / profile_.memory_bandwidth_Bps);
  }

  void gemm(Phase phase, std::int64_t rows, std::int64_t in, std::int64_t out) {
    const double flops =
        2.0 * static_cast<double>(rows) * static_cast<double>(in) * static_cast<double>(out);
    const double bytes = static_cast<double>(rows * in + out * in + rows * out) * elem_;
    roofline(phase, flops, bytes, static_cast<double>(rows));
  }

  // `rows`: the activation rows of the GEMMs, which set their rate.
  void roofline(Phase phase, double flops, double bytes, double rows) {
    PhaseCost& p = at(phase);
    p.flops += flops;
    p.bytes_moved += bytes;
    p.seconds += std::max(flops / gemm_rate(profile_, rows), bytes / profile_.memory_bandwidth_Bps);
  }

  // `count` exp() evaluations, when the profile rates them.
  void exps(Phase phase, double count) {
    if (profile_.exp_per_s > 0) {
      at(phase).seconds += count / profile_.exp_per_s;
    }
  }

  // A memory-bound step that reads and writes `elements` elements in all.
  void memory(Phase phase, std::int64_t elements) {
    memory_bytes(phase, static_cast<double>(elements) * static_cast<double>(elem_));
  }

  void memory_bytes(Phase phase, double bytes) {
    PhaseCost& p = at(phase);
    p.bytes_moved += bytes;
    p.seconds += bytes / profile_.memory_bandwidth_Bps;
  }

  // One blocking collective with its encoding and decoding.
  void collective(Phase phase, const Collective& c) {
    const CollectiveCost cost = cost_of(profile_, parallel_, c);
    PhaseCost& p = start_collective(phase, c);
    p.calls = 1;
    p.comm_bytes = cost.bytes_sent;
    p.seconds += cost.transfer_s;
    memory_bytes(phase, cost.convert_bytes());
  }

  // An overlapped pair: the collective in the chunks of overlap_row_chunks
  // (whole panels of rows), all posted at once, each waited for, unpacked and multiplied in turn,
  // as the engine runs ParallelConfig::overlap_chunks. The comm phase gets the encoding of every
  // chunk before posting, the waits and the unpacking; the GEMM phase the chunk GEMMs.
  template <typename ChunkOf>
  void overlapped(Phase comm_phase, Phase gemm_phase, std::int64_t n_slice, int chunks,
                  std::int64_t gemm_in, std::int64_t gemm_out, const ChunkOf& chunk_of) {
    const std::vector<RowRange> ranges = overlap_row_chunks(static_cast<int>(n_slice), chunks);
    const auto c_eff = static_cast<std::int64_t>(ranges.size());
    std::vector<double> transfer;
    std::vector<double> busy;
    std::int64_t bytes = 0;
    double convert_bytes = 0.0;
    double unpack_bytes = 0.0;
    Collective first;
    for (std::int64_t c = 0; c < c_eff; ++c) {
      const std::int64_t rows = ranges[static_cast<size_t>(c)].rows;
      const ChunkPlan chunk = chunk_of(rows);
      if (c == 0) {
        first = chunk.collective;
      }
      const CollectiveCost cost = cost_of(profile_, parallel_, chunk.collective);
      bytes += cost.bytes_sent;
      transfer.push_back(cost.transfer_s);
      convert_bytes += cost.convert_bytes();
      const double unpack = static_cast<double>(chunk.unpack_elements * elem_);
      unpack_bytes += unpack;
      const double before = at(gemm_phase).seconds;
      panel_gemm(gemm_phase, chunk.gemm_segments, chunk.gemm_rows, gemm_in, gemm_out);
      const double g = at(gemm_phase).seconds - before;
      // Decoding this chunk follows its wait as its unpacking does; the
      // encoding of every chunk precedes the posting, outside the pipeline.
      busy.push_back((unpack + cost.decode_bytes) / profile_.memory_bandwidth_Bps + g);
    }
    const double waited = pipeline_wait(transfer, busy, profile_.overlap_efficiency);
    double all = 0.0;
    for (double t : transfer) {
      all += t;
    }

    // The comm phase comes first in the engine's order; its entry was
    // opened by the caller's packing or is opened here, before the GEMM's.
    PhaseCost& p = phase_entry(comm_phase);
    FC_ASSERT(!p.has_collective(), "phase {} already has a collective", to_string(comm_phase));
    p.op = first.op;
    p.group = first.group;
    p.group_size = first.size;
    p.calls = static_cast<int>(c_eff);
    p.comm_bytes = bytes;
    p.bytes_moved += convert_bytes + unpack_bytes;
    p.seconds += waited + (convert_bytes + unpack_bytes) / profile_.memory_bandwidth_Bps;
    p.hidden_s = all - waited;
  }

  // Opens the comm phase of an overlapped pair before its GEMM phase.
  void open(Phase phase) { at(phase); }

  LayerCost finish() {
    for (const PhaseCost& p : cost_.phases) {
      (kind_of(p.phase) == PhaseKind::comm ? cost_.comm_s : cost_.compute_s) += p.seconds;
    }
    cost_.total_s = cost_.compute_s + cost_.comm_s;
    return std::move(cost_);
  }

 private:
  PhaseCost& start_collective(Phase phase, const Collective& c) {
    PhaseCost& p = at(phase);
    FC_ASSERT(!p.has_collective(), "phase {} already has a collective", to_string(phase));
    p.op = c.op;
    p.group = c.group;
    p.group_size = c.size;
    return p;
  }

  // The phase's entry, appended when it first appears (so in engine order).
  PhaseCost& at(Phase phase) {
    if (cost_.phases.empty() || cost_.phases.back().phase != phase) {
      FC_ASSERT(cost_.find(phase) == nullptr, "phase {} twice", to_string(phase));
      PhaseCost p;
      p.phase = phase;
      cost_.phases.push_back(p);
    }
    return cost_.phases.back();
  }

  // An existing phase's entry, wherever it is.
  PhaseCost& phase_entry(Phase phase) {
    for (PhaseCost& p : cost_.phases) {
      if (p.phase == phase) {
        return p;
      }
    }
    FC_ASSERT(false, "phase {} was not opened", to_string(phase));
    return cost_.phases.back();
  }

  const HardwareProfile& profile_;
  const ParallelConfig& parallel_;
  std::int64_t elem_;
  LayerCost cost_;
};

void check_tokens(const ModelConfig& model, int n_tokens) {
  if (n_tokens < 1 || n_tokens > model.seq_len) {
    throw ConfigError(
        fmt::format("a prefill of {} tokens does not fit: it needs 1 to seq_len {} tokens",
                    n_tokens, model.seq_len));
  }
}

// FlashComm1's AllGather of the slices, [n_slice, d] in, [n_padded, d] out
// over TP, and the GEMM it feeds ([rows, d] . [out, d]^T): under overlap
// chunk c gathers rows_c rows of every slice (one chunk without overlap) and
// the GEMM runs on each rank's rows_c in panels (padding rows included),
// writing the tokens' rows in place: no unpacking copy.
void gather_then_gemm(LayerBuilder& b, Phase comm, Phase gemm, const Shapes& s, const Crossings& x,
                      std::int64_t gemm_out) {
  const auto gather = [&](std::int64_t slice_rows) {
    return Collective{CommOp::all_gather, "tp", s.tp,       x.tp,
                      s.tp * slice_rows,  s.d,  slice_rows, s.tp * slice_rows};
  };
  if (s.chunks <= 1) {
    b.collective(comm, gather(s.n_slice));
    b.panel_gemm(gemm, s.tp, s.n_slice, s.d, gemm_out);
    return;
  }
  b.open(comm);
  b.overlapped(comm, gemm, s.n_slice, s.chunks, s.d, gemm_out, [&](std::int64_t rows) {
    return ChunkPlan{gather(rows), 0, rows, s.tp};
  });
}

// FlashComm2's rewrite of a projection with TP size k (o_proj: the attention
// output, in_local = q_local, in_full = q_dim; down_proj: the activation,
// hid and hidden_dim), phases (1)-(4) of Engine::flashcomm2_o_proj:
void flashcomm2_projection(LayerBuilder& b, const Shapes& s, Phase a2a, Phase gemm, Phase reduce,
                           Phase gather, int k, bool odp_crosses, bool otp_crosses, bool tp_crosses,
                           std::int64_t in_local, std::int64_t in_full) {
  const int g = s.tp / k;
  const char* odp_group = k == 1 ? "tp" : "odp";

  // (1) chunk reorder into the AlltoAll's send buffer [n_padded, in_local]:
  // each chunk copied (encoded) into its slot, padding rows zeroed. Then
  // AlltoAll over ODP (K = 1: the TP group itself) and the feature
  // concatenation [K*n_slice, in_full/K], which reads and writes the whole
  // received buffer.
  const std::int64_t send = s.n_padded * in_local;
  b.memory(a2a, s.n * in_local + send);
  const auto alltoall = [&](std::int64_t slice_rows) {
    const std::int64_t rows = s.tp * slice_rows;
    return Collective{CommOp::all_to_all, odp_group, g, odp_crosses, rows, in_local, rows, rows};
  };

  // (2) the projection's block j: [K*n_slice, in_full/K] . [d_model, in_full/K]^T
  if (s.chunks <= 1) {
    b.collective(a2a, alltoall(s.n_slice));
    b.memory(a2a, 2 * send);
    b.panel_gemm(gemm, k, s.n_slice, in_full / k, s.d);
  } else {
    b.overlapped(a2a, gemm, s.n_slice, s.chunks, in_full / k, s.d, [&](std::int64_t rows) {
      return ChunkPlan{alltoall(rows), 2 * rows * s.tp * in_local, rows, k};
    });
  }

  // (3) K > 1: ReduceScatter over OTP, [K*n_slice, d] in, [n_slice, d] out.
  if (k > 1) {
    b.collective(reduce, {CommOp::reduce_scatter, "otp", k, otp_crosses, k * s.n_slice, s.d,
                          k * s.n_slice, s.n_slice});
  }

  // (4) without FlashComm1: AllGather the slices over TP, [n_padded, d] out.
  if (!s.flashcomm1) {
    b.collective(gather, {CommOp::all_gather, "tp", s.tp, tp_crosses, s.n_padded, s.d, s.n_slice,
                          s.n_padded});
  }
}

// The reduction after o_proj or down_proj outside FlashComm2: FlashComm1's
// ReduceScatter of the zero-padded [n_padded, d] partial sums, or the
// AllReduce of [n_tokens, d]; nothing on one rank.
void reduce_partials(LayerBuilder& b, Phase phase, const Shapes& s, const Crossings& x) {
  if (s.flashcomm1) {
    b.memory(phase, (s.n_padded - s.n) * s.d);
    b.collective(
        phase, {CommOp::reduce_scatter, "tp", s.tp, x.tp, s.n_padded, s.d, s.n_padded, s.n_slice});
  } else if (s.tp > 1) {
    b.collective(phase, {CommOp::all_reduce, "tp", s.tp, x.tp, s.n, s.d, s.n, s.n});
  }
}

}  // namespace

LayerCost predict_layer(const ModelConfig& model, const ParallelConfig& parallel, int n_tokens,
                        const HardwareProfile& profile) {
  check_parallel_config(model, parallel, -1);
  check_tokens(model, n_tokens);
  const Shapes s = shapes_of(model, parallel, n_tokens);
  const Crossings x = crossings_of(profile, parallel);
  LayerBuilder b(profile, parallel);

  // ---- Attention block ------------------------------------------------
  // 1. RMSNorm on the resident rows: read x and the weight, write h.
  b.memory(Phase::attn_norm, 2 * s.n_res * s.d + s.d);

  // 2.-3. FlashComm1: AllGather [n_padded, d] out over TP; then the QKV
  // GEMM, overlapped with it under overlap_chunks.
  const std::int64_t qkv_cols = s.q_local + 2 * s.kv_local;
  if (s.flashcomm1) {
    gather_then_gemm(b, Phase::attn_gather, Phase::qkv_proj, s, x, qkv_cols);
  } else {
    b.gemm(Phase::qkv_proj, s.n, s.d, qkv_cols);
  }

  // 3. Qwen2's bias add reads and writes every q, k, v column and
  // reads the bias; Qwen3's per-head norm reads and writes the q and k
  // columns and reads its two head_dim weights; RoPE rewrites the q and k
  // columns; K and V rows are copied into the cache.
  if (model.qkv_bias) {
    b.memory(Phase::qkv_proj, 2 * s.n * qkv_cols + qkv_cols);
  }
  if (model.qk_norm) {
    b.memory(Phase::qkv_proj,
             2 * s.n * (s.q_local + s.kv_local) + 2 * std::int64_t{model.head_dim});
  }
  b.memory(Phase::qkv_proj, 2 * s.n * (s.q_local + s.kv_local) + s.n * s.kv_local * 4);

  // 4. Causal attention from position 0. Two kernels are modelled:
  // - this engine's (a profile that rates exp(), i.e. a calibrated CPU):
  //   per head two GEMMs over the full [n, n] score matrix (the masked half
  //   zeroed, not skipped): 4*n*n*q_local FLOPs; the scores are materialised
  //   and streamed by the softmax (written by QK^T, read for the maximum,
  //   read and written by exp, read and written by the scaling, read by PV)
  //   over n(n+1)/2 live entries per head, with one exp() each;
  // - a fused, causal-skipping kernel such as FlashAttention (GPU and NPU
  //   profiles): 2*n*(n+1)*q_local FLOPs, scores kept on chip.
  // Both read q, k, v once and write out [n, q_local].
  const double n = static_cast<double>(s.n);
  const bool engine_kernel = profile.exp_per_s > 0;
  const double attention_flops = engine_kernel ? 4.0 * n * n * static_cast<double>(s.q_local)
                                               : 2.0 * n * (n + 1) * static_cast<double>(s.q_local);
  b.roofline(
      Phase::attention, attention_flops,
      static_cast<double>(2 * s.n * s.q_local + 2 * s.n * s.kv_local) * profile.activation_bytes,
      n);
  if (engine_kernel) {
    const std::int64_t q_heads = s.q_local / model.head_dim;
    b.memory(Phase::attention, 7 * q_heads * s.n * (s.n + 1) / 2);
    b.exps(Phase::attention, static_cast<double>(q_heads) * n * (n + 1) / 2);
  }

  // 5. o_proj and its collectives, by scheme.
  if (s.flashcomm2) {
    flashcomm2_projection(b, s, Phase::o_proj_a2a, Phase::o_proj_gemm, Phase::o_proj_reduce,
                          Phase::o_proj_gather, s.k, x.odp, x.otp, x.tp, s.q_local, s.q_dim);
  } else {
    b.gemm(Phase::o_proj_gemm, s.n, s.q_local, s.d);
    reduce_partials(b, Phase::o_proj_reduce, s, x);
  }

  // 6. Residual add on the resident rows: read x and y, write x.
  b.memory(Phase::attn_residual, 3 * s.n_res * s.d);

  // ---- MLP block ------------------------------------------------------
  b.memory(Phase::mlp_norm, 2 * s.n_res * s.d + s.d);
  if (s.flashcomm1) {
    gather_then_gemm(b, Phase::mlp_gather, Phase::gate_up_proj, s, x, 2 * s.hid);
  } else {
    b.gemm(Phase::gate_up_proj, s.n, s.d, 2 * s.hid);
  }
  // SiLU(gate) * up: read both halves, write one.
  b.memory(Phase::activation, 3 * s.n * s.hid);
  b.exps(Phase::activation, static_cast<double>(s.n * s.hid));
  if (s.flashcomm2_mlp) {
    // FlashComm2 for down_proj: the activation [n_tokens, hid] takes
    // o_proj's path with K_mlp; with FlashComm1 the slice is kept.
    flashcomm2_projection(b, s, Phase::mlp_a2a, Phase::down_proj, Phase::mlp_reduce,
                          Phase::mlp_out_gather, s.k_mlp, x.mlp_odp, x.mlp_otp, x.tp, s.hid,
                          s.hidden);
  } else {
    b.gemm(Phase::down_proj, s.n, s.hid, s.d);
    reduce_partials(b, Phase::mlp_reduce, s, x);
  }
  b.memory(Phase::mlp_residual, 3 * s.n_res * s.d);
  return b.finish();
}

PrefillCost predict_prefill_cost(const ModelConfig& model, const ParallelConfig& parallel,
                                 int n_tokens, const HardwareProfile& profile) {
  PrefillCost c;
  c.layer = predict_layer(model, parallel, n_tokens, profile);
  c.n_layers = model.n_layers;
  if (parallel.flashcomm1 && parallel.tp_size > 1) {
    // After the final norm: AllGather [n_slice, d] in, [n_padded, d] out
    // over TP, never overlapped.
    const std::int64_t n_padded = padded_tokens(n_tokens, parallel.tp_size);
    const Collective gather{CommOp::all_gather,
                            "tp",
                            parallel.tp_size,
                            crossings_of(profile, parallel).tp,
                            n_padded,
                            model.d_model,
                            n_padded / parallel.tp_size,
                            n_padded};
    const CollectiveCost cost = cost_of(profile, parallel, gather);
    c.final_gather_bytes = cost.bytes_sent;
    c.final_gather_s = cost.transfer_s + cost.convert_bytes() / profile.memory_bandwidth_Bps;
  }
  c.total_s = c.n_layers * c.layer.total_s + c.final_gather_s;
  return c;
}

double predict_prefill(const ModelConfig& model, const ParallelConfig& parallel, int n_tokens,
                       const HardwareProfile& profile) {
  return predict_prefill_cost(model, parallel, n_tokens, profile).total_s;
}

double extra_o_proj_bytes(const ModelConfig& model, int tp_size, int otp_size, int weight_bytes) {
  FC_ASSERT(tp_size >= 1 && otp_size >= 0 && otp_size <= tp_size && weight_bytes >= 1,
            "tp_size {} otp_size {} weight_bytes {}", tp_size, otp_size, weight_bytes);
  if (otp_size == 0) {
    return 0.0;
  }
  // (1/K - 1/TP) = (TP - K) / (K * TP), kept exact until the last division.
  const double weights = static_cast<double>(model.q_dim()) * model.d_model * model.n_layers;
  return weights * weight_bytes * (tp_size - otp_size) / (static_cast<double>(otp_size) * tp_size);
}

double extra_down_proj_bytes(const ModelConfig& model, int tp_size, int mlp_k, int weight_bytes) {
  FC_ASSERT(tp_size >= 1 && mlp_k >= 0 && mlp_k <= tp_size && weight_bytes >= 1,
            "tp_size {} mlp_k {} weight_bytes {}", tp_size, mlp_k, weight_bytes);
  if (mlp_k == 0) {
    return 0.0;
  }
  const double weights = static_cast<double>(model.hidden_dim) * model.d_model * model.n_layers;
  return weights * weight_bytes * (tp_size - mlp_k) / (static_cast<double>(mlp_k) * tp_size);
}

// ---- Scheme names and candidates ---------------------------------------------

std::string scheme_name(const ParallelConfig& pc) {
  const bool fc1 = pc.flashcomm1 && pc.tp_size > 1;
  const char* prefix = fc1 ? "FlashComm1+" : "";
  std::string name;
  if (pc.flashcomm2_on()) {
    name = fmt::format("{}FlashComm2 K={}", prefix, pc.flashcomm2);
    if (pc.flashcomm2_mlp_on()) {
      name += fmt::format(" +MLP K={}", pc.flashcomm2_mlp);
    }
  } else if (pc.flashcomm2_mlp_on()) {
    name = fmt::format("{}FlashComm2 MLP K={}", prefix, pc.flashcomm2_mlp);
  } else {
    name = fc1 ? "FlashComm1" : "plain TP";
  }
  if (pc.comm_quant == CommQuant::int8) {
    name += " int8";
  }
  if (pc.comm_dtype == CommDtype::bf16) {
    name += " bf16";
  }
  if (pc.overlap_chunks > 1) {
    name += fmt::format(" C={}", pc.overlap_chunks);
  }
  return name;
}

namespace {

constexpr int kMaxChunks = 64;  // as check_parallel_config

// The Ks of a projection's FlashComm2 at this TP size that a held block of
// TP size k0 can run: multiples of k0 that divide TP and are below it.
std::vector<int> ks_from(int tp_size, int k0) {
  std::vector<int> out;
  for (int k = k0; k0 > 0 && k < tp_size; k += k0) {
    if (tp_size % k == 0) {
      out.push_back(k);
    }
  }
  return out;
}

// Whether the scheme has an AllGather or AlltoAll (int8's collectives and
// overlap's pairs), and a reduction (the collectives int8 leaves to bf16).
bool moves_activations(const ParallelConfig& pc) {
  return pc.tp_size > 1 && (pc.flashcomm1 || pc.flashcomm2_on() || pc.flashcomm2_mlp_on());
}

bool has_reduction(const ParallelConfig& pc) {
  return pc.tp_size > 1 && (!pc.flashcomm2_on() || pc.flashcomm2 > 1 || !pc.flashcomm2_mlp_on() ||
                            pc.flashcomm2_mlp > 1);
}

// What to enumerate: the Ks of each projection and the payload and overlap
// variants.
struct Space {
  int tp_size = 1;
  int dp_size = 1;
  std::vector<int> ks;  // o_proj FlashComm2
  std::vector<int> mlp_ks;  // down_proj FlashComm2
  bool int8 = false;
  bool bf16 = false;
  std::vector<int> chunks;  // C > 1, ascending, distinct
};

std::vector<int> chunks_above_one(const std::vector<int>& options) {
  std::vector<int> out;
  for (int c : options) {
    if (c < 1 || c > kMaxChunks) {
      throw ConfigError(
          fmt::format("--overlap-chunks {} must be between 1 (no overlap) and {}", c, kMaxChunks));
    }
    if (c > 1) {
      out.push_back(c);
    }
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

// Nested: base scheme (candidate_schemes' order), down_proj K_mlp (off
// first), payload (f32, int8, bf16, int8 + bf16), C (1 first); variants that
// change nothing left out.
std::vector<ParallelConfig> enumerate(const Space& sp) {
  std::vector<ParallelConfig> bases{{sp.dp_size, sp.tp_size, false, 0}};
  if (sp.tp_size > 1) {
    bases.push_back({sp.dp_size, sp.tp_size, true, 0});
    for (const bool fc1 : {false, true}) {
      for (int k : sp.ks) {
        bases.push_back({sp.dp_size, sp.tp_size, fc1, k});
      }
    }
  }
  std::vector<int> mlp_ks{0};
  mlp_ks.insert(mlp_ks.end(), sp.mlp_ks.begin(), sp.mlp_ks.end());
  std::vector<int> chunks{1};
  chunks.insert(chunks.end(), sp.chunks.begin(), sp.chunks.end());
  const std::pair<CommQuant, CommDtype> payloads[] = {{CommQuant::none, CommDtype::f32},
                                                      {CommQuant::int8, CommDtype::f32},
                                                      {CommQuant::none, CommDtype::bf16},
                                                      {CommQuant::int8, CommDtype::bf16}};

  std::vector<ParallelConfig> out;
  for (const ParallelConfig& base : bases) {
    for (int mlp_k : mlp_ks) {
      for (const auto& [quant, dtype] : payloads) {
        for (int c : chunks) {
          ParallelConfig pc = base;
          pc.flashcomm2_mlp = mlp_k;
          pc.comm_quant = quant;
          pc.comm_dtype = dtype;
          pc.overlap_chunks = c;
          const bool int8_wanted = quant == CommQuant::none || (sp.int8 && moves_activations(pc));
          const bool bf16_wanted =
              dtype == CommDtype::f32 ||
              (sp.bf16 && pc.tp_size > 1 && (quant == CommQuant::none || has_reduction(pc)));
          const bool chunks_wanted = c == 1 || moves_activations(pc);
          if (int8_wanted && bf16_wanted && chunks_wanted) {
            out.push_back(pc);
          }
        }
      }
    }
  }
  return out;
}

void check_held_k(const char* what, int k, int tp_size) {
  if (k < 0 || (k > 0 && (k >= tp_size || tp_size % k != 0))) {
    throw ConfigError(fmt::format(
        "the held {} block's K {} must be 0 (none) or divide the tensor-parallel size {} and be "
        "below it",
        what, k, tp_size));
  }
}

}  // namespace

std::vector<ParallelConfig> candidate_schemes(int tp_size, int dp_size) {
  return candidate_schemes(tp_size, dp_size, CandidateOptions{});
}

std::vector<ParallelConfig> candidate_schemes(int tp_size, int dp_size,
                                              const CandidateOptions& options) {
  Space sp;
  sp.tp_size = tp_size;
  sp.dp_size = dp_size;
  sp.ks = ks_from(tp_size, 1);
  if (options.flashcomm2_mlp) {
    sp.mlp_ks = sp.ks;
  }
  sp.int8 = options.int8;
  sp.bf16 = options.bf16;
  sp.chunks = chunks_above_one(options.overlap_chunks);
  return enumerate(sp);
}

// ---- The automatic choice ---------------------------------------------------

std::vector<ParallelConfig> auto_candidates(const AutoSpace& space) {
  if (space.tp_size < 1 || space.dp_size < 1) {
    throw ConfigError(
        fmt::format("--flashcomm auto needs --tp and --dp of at least 1, not {} and {}",
                    space.tp_size, space.dp_size));
  }
  check_held_k("o_proj", space.o_proj_k, space.tp_size);
  check_held_k("down_proj", space.mlp_k, space.tp_size);
  Space sp;
  sp.tp_size = space.tp_size;
  sp.dp_size = space.dp_size;
  sp.ks = ks_from(space.tp_size, space.o_proj_k);
  sp.mlp_ks = ks_from(space.tp_size, space.mlp_k);
  sp.int8 = space.allow_int8;
  sp.bf16 = space.allow_bf16;
  sp.chunks = chunks_above_one(space.chunk_options);
  return enumerate(sp);
}

AutoChoice choose_scheme(const ModelConfig& model, const HardwareProfile& profile,
                         const AutoSpace& space, int n_tokens) {
  const std::vector<ParallelConfig> candidates = auto_candidates(space);
  AutoChoice best;
  for (size_t i = 0; i < candidates.size(); ++i) {
    const double t = predict_prefill(model, candidates[i], n_tokens, profile);
    if (i == 0) {
      best.plain_tp_s = t;  // enumerate() puts plain TP first
    }
    // Strictly faster: a tie keeps the earlier, simpler scheme.
    if (i == 0 || t < best.predicted_s) {
      best.parallel = candidates[i];
      best.predicted_s = t;
    }
  }
  best.name = scheme_name(best.parallel);
  return best;
}

HeldBlocks held_blocks_for_budget(const ModelConfig& model, int tp_size, double budget_bytes,
                                  int weight_bytes, bool with_mlp) {
  if (std::isnan(budget_bytes) || budget_bytes < 0) {
    throw ConfigError(fmt::format("--memory-budget {} bytes must be 0 or more", budget_bytes));
  }
  if (weight_bytes < 1 || weight_bytes > 8) {
    throw ConfigError(fmt::format("--weight-bytes {} must be 1 to 8", weight_bytes));
  }
  HeldBlocks held;
  double left = budget_bytes;
  for (int k : ks_from(tp_size, 1)) {
    const double extra = extra_o_proj_bytes(model, tp_size, k, weight_bytes);
    if (extra <= left) {
      held.o_proj_k = k;
      left -= extra;
      break;
    }
  }
  for (int k : with_mlp ? ks_from(tp_size, 1) : std::vector<int>{}) {
    if (extra_down_proj_bytes(model, tp_size, k, weight_bytes) <= left) {
      held.mlp_k = k;
      break;
    }
  }
  return held;
}

// ---- Planner --------------------------------------------------------------

namespace {

double budget_bytes_of(const PlanRequest& r) {
  return r.memory_budget_gib ? *r.memory_budget_gib * 1024.0 * 1024.0 * 1024.0
                             : std::numeric_limits<double>::infinity();
}

std::vector<SchemeEstimate> estimate_all(const PlanRequest& r,
                                         const std::vector<ParallelConfig>& schemes, int n_tokens) {
  const double budget = budget_bytes_of(r);
  std::vector<SchemeEstimate> out;
  for (const ParallelConfig& pc : schemes) {
    SchemeEstimate e;
    e.parallel = pc;
    e.name = scheme_name(pc);
    const PrefillCost c = predict_prefill_cost(r.model, pc, n_tokens, r.profile);
    e.layer_s = c.layer.total_s;
    e.prefill_s = c.total_s;
    e.extra_o_proj_bytes = extra_o_proj_bytes(r.model, pc.tp_size, pc.flashcomm2, r.weight_bytes);
    e.extra_down_proj_bytes =
        extra_down_proj_bytes(r.model, pc.tp_size, pc.flashcomm2_mlp, r.weight_bytes);
    e.fits_budget = e.extra_o_proj_bytes + e.extra_down_proj_bytes <= budget;
    out.push_back(std::move(e));
  }
  return out;
}

// Fastest scheme that fits the budget; plain TP (index 0, no extra memory)
// always fits, and a tie keeps the earlier, simpler scheme.
int fastest_fitting(const std::vector<SchemeEstimate>& schemes) {
  int best = 0;
  for (size_t i = 1; i < schemes.size(); ++i) {
    if (schemes[i].fits_budget &&
        schemes[i].prefill_s < schemes[static_cast<size_t>(best)].prefill_s) {
      best = static_cast<int>(i);
    }
  }
  return best;
}

// Whether the best fitting FlashComm2 variant beats plain TP and FlashComm1.
bool flashcomm2_wins(const std::vector<SchemeEstimate>& schemes) {
  double baseline = std::numeric_limits<double>::infinity();
  double best_fc2 = std::numeric_limits<double>::infinity();
  for (const SchemeEstimate& e : schemes) {
    if (!e.parallel.flashcomm2_on()) {
      baseline = std::min(baseline, e.prefill_s);
    } else if (e.fits_budget) {
      best_fc2 = std::min(best_fc2, e.prefill_s);
    }
  }
  return best_fc2 < baseline;
}

void check_request(const PlanRequest& r) {
  check_parallel_config(r.model, {r.dp_size, r.tp_size, false, 0}, -1);
  if (r.token_counts.empty()) {
    throw ConfigError("--tokens: give at least one token count");
  }
  for (int n : r.token_counts) {
    if (n < 1) {
      throw ConfigError(fmt::format("--tokens {} must be at least 1", n));
    }
    if (n > r.model.seq_len) {
      throw ConfigError(
          fmt::format("--tokens {} exceeds the model's context (seq_len) {}", n, r.model.seq_len));
    }
  }
  if (r.memory_budget_gib && (!std::isfinite(*r.memory_budget_gib) || *r.memory_budget_gib < 0)) {
    throw ConfigError(
        fmt::format("--memory-budget {} must be 0 GiB or more", *r.memory_budget_gib));
  }
  if (r.weight_bytes < 1 || r.weight_bytes > 8) {
    throw ConfigError(fmt::format("--weight-bytes {} must be 1 to 8", r.weight_bytes));
  }
  chunks_above_one(r.variants.overlap_chunks);
}

}  // namespace

AutoSpace auto_space_of(const PlanRequest& request) {
  const HeldBlocks held =
      held_blocks_for_budget(request.model, request.tp_size, budget_bytes_of(request),
                             request.weight_bytes, request.variants.flashcomm2_mlp);
  AutoSpace space;
  space.tp_size = request.tp_size;
  space.dp_size = request.dp_size;
  space.o_proj_k = held.o_proj_k;
  space.mlp_k = held.mlp_k;
  space.allow_int8 = request.variants.int8;
  space.allow_bf16 = request.variants.bf16;
  space.chunk_options = {1};
  for (int c : chunks_above_one(request.variants.overlap_chunks)) {
    space.chunk_options.push_back(c);
  }
  return space;
}

Plan plan_prefill(const PlanRequest& request) {
  check_request(request);
  const std::vector<ParallelConfig> schemes =
      candidate_schemes(request.tp_size, request.dp_size, request.variants);
  Plan plan;
  if (request.auto_choice) {
    plan.auto_space = auto_space_of(request);
  }
  for (int n : request.token_counts) {
    TokenPlan row;
    row.n_tokens = n;
    row.schemes = estimate_all(request, schemes, n);
    row.recommended = fastest_fitting(row.schemes);
    if (plan.auto_space) {
      row.auto_choice = choose_scheme(request.model, request.profile, *plan.auto_space, n);
    }
    plan.rows.push_back(std::move(row));
  }

  // Break-even: walk down from the largest requested count while FlashComm2
  // keeps winning. Padding to a multiple of TP makes the margin jump with
  // n % TP, so the first win from below need not last; walking down finds
  // the point from which it does. Over the default schemes only, so that
  // the variants listed do not move it.
  const std::vector<ParallelConfig> defaults = candidate_schemes(request.tp_size, request.dp_size);
  plan.break_even_searched_to =
      *std::max_element(request.token_counts.begin(), request.token_counts.end());
  if (request.tp_size > 1) {
    for (int n = plan.break_even_searched_to; n >= 1; --n) {
      if (!flashcomm2_wins(estimate_all(request, defaults, n))) {
        break;
      }
      plan.break_even = n;
    }
  }
  return plan;
}

}  // namespace flashcomm
