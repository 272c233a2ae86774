// The shaped link's numbers: rates and delays as the user writes them, as tc
// reads them, and the rate that keeps a cluster's balance of arithmetic and
// communication.
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <regex>
#include <string>

#include "flashcomm/error.hpp"
#include "flashcomm/testbed.hpp"

namespace flashcomm::testbed {

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// 1e6 as "1mbit", 1e11 as "100gbit": the limits as the user writes them.
std::string short_rate(double bps) {
  if (bps >= 1e9) {
    return fmt::format("{:g}gbit", bps / 1e9);
  }
  return fmt::format("{:g}mbit", bps / 1e6);
}

}  // namespace

double parse_link_rate(const std::string& text, const std::string& flag) {
  const std::string range =
      fmt::format("from {} to {}", short_rate(kMinRateBps), short_rate(kMaxRateBps));
  // A decimal number, then a unit; nothing else (the value reaches tc only
  // as tc_rate() spells it, never as typed).
  static const std::regex form(R"(([0-9]{1,15}(?:\.[0-9]{1,9})?)([a-z]+))");
  std::smatch m;
  const std::string l = lower(text);
  if (!l.empty() && l[0] == '-') {
    throw ConfigError(fmt::format("{} {} is negative, expected a rate {}", flag, text, range));
  }
  double scale = 0.0;
  if (std::regex_match(l, m, form)) {
    const std::string unit = m[2].str();
    if (unit == "bit") {
      scale = 1.0;
    } else if (unit == "kbit") {
      scale = 1e3;
    } else if (unit == "mbit") {
      scale = 1e6;
    } else if (unit == "gbit") {
      scale = 1e9;
    } else if (unit == "tbit") {
      scale = 1e12;
    }
  }
  if (scale == 0.0) {
    throw ConfigError(
        fmt::format("{} '{}' is not a link rate, expected a number and a unit of bits per second "
                    "(bit, kbit, mbit, gbit or tbit; k = 1000), e.g. 800mbit, 1gbit or 2.5gbit",
                    flag, text));
  }
  const double bps = std::stod(m[1].str()) * scale;
  if (bps <= 0.0) {
    throw ConfigError(fmt::format("{} {} is zero, expected a rate {}", flag, text, range));
  }
  if (bps < kMinRateBps || bps > kMaxRateBps) {
    throw ConfigError(fmt::format("{} {} is {}, expected a rate {}", flag, text,
                                  bps < kMinRateBps ? "too slow" : "too fast", range));
  }
  return bps;
}

double parse_link_delay(const std::string& text, const std::string& flag) {
  static const std::regex form(R"(([0-9]{1,15}(?:\.[0-9]{1,9})?)(us|ms|s))");
  std::smatch m;
  const std::string l = lower(text);
  if (!l.empty() && l[0] == '-') {
    throw ConfigError(
        fmt::format("{} {} is negative, expected a delay from 0 to {:g}s", flag, text, kMaxDelayS));
  }
  if (l == "0") {
    return 0.0;
  }
  if (!std::regex_match(l, m, form)) {
    throw ConfigError(fmt::format(
        "{} '{}' is not a delay, expected a number and a unit (us, ms or s), e.g. 2ms or 500us",
        flag, text));
  }
  const double scale = m[2] == "us" ? 1e-6 : (m[2] == "ms" ? 1e-3 : 1.0);
  const double s = std::stod(m[1].str()) * scale;
  if (s > kMaxDelayS) {
    throw ConfigError(
        fmt::format("{} {} is too long, expected a delay from 0 to {:g}s", flag, text, kMaxDelayS));
  }
  return s;
}

std::string tc_rate(double bits_per_s) {
  FC_ASSERT(bits_per_s >= 1.0, "rate {} bit/s", bits_per_s);
  return fmt::format("{}bit", std::llround(bits_per_s));
}

std::string tc_time(double seconds) {
  FC_ASSERT(seconds >= 0.0, "time {} s", seconds);
  return fmt::format("{}us", std::llround(seconds * 1e6));
}

std::string human_rate(double bits_per_s) {
  if (bits_per_s >= 1e9) {
    return fmt::format("{:.4g} Gbit/s", bits_per_s / 1e9);
  }
  if (bits_per_s >= 1e6) {
    return fmt::format("{:.4g} Mbit/s", bits_per_s / 1e6);
  }
  return fmt::format("{:.4g} kbit/s", bits_per_s / 1e3);
}

std::int64_t tbf_burst_bytes(double rate_bps) {
  const auto per_ms = static_cast<std::int64_t>(rate_bps / 8.0 * 1e-3);
  return std::max<std::int64_t>(std::int64_t{4} * kLinkMtuBytes, per_ms);
}

RateMatch match_link_rate(const HardwareProfile& target, int tp_size, double machine_gemm_flops) {
  if (tp_size < 2) {
    throw ConfigError(fmt::format(
        "--match-profile {} needs a tensor-parallel size above 1 (one rank sends nothing), got "
        "--tp {}",
        target.name, tp_size));
  }
  const auto fits = target.collectives.find(CommOp::all_reduce);
  if (fits == target.collectives.end() || fits->second.empty()) {
    throw ConfigError(fmt::format(
        "--match-profile {}: the profile has no all_reduce fit to take the link bandwidth from",
        target.name));
  }
  FC_ASSERT(machine_gemm_flops > 0.0, "machine GEMM rate {}", machine_gemm_flops);
  RateMatch m;
  m.profile = target.name;
  m.tp_size = tp_size;
  m.profile_gemm_flops = target.gemm_flops;
  m.profile_element_bytes = target.activation_bytes;
  m.machine_gemm_flops = machine_gemm_flops;
  // The bus bandwidth of the fit collective_seconds() picks for this group
  // size: the slope of its time in bytes.
  constexpr std::int64_t kSmall = std::int64_t{1} << 20;
  constexpr std::int64_t kLarge = std::int64_t{1} << 30;
  const double slope = (collective_seconds(target, CommOp::all_reduce, tp_size, kLarge) -
                        collective_seconds(target, CommOp::all_reduce, tp_size, kSmall)) /
                       static_cast<double>(kLarge - kSmall);
  if (!(slope > 0.0)) {
    throw ConfigError(
        fmt::format("--match-profile {}: its all_reduce fit at {} ranks has no "
                    "bandwidth to match",
                    target.name, tp_size));
  }
  m.profile_link_Bps = 1.0 / slope;
  m.profile_latency_s = std::max(
      0.0, collective_seconds(target, CommOp::all_reduce, tp_size, kSmall) - slope * kSmall);
  m.per_rank_Bps = m.machine_gemm_flops * m.profile_link_Bps / m.profile_gemm_flops *
                   m.machine_element_bytes / m.profile_element_bytes;
  m.rate_Bps = m.per_rank_Bps * tp_size;
  m.rate_bps = std::round(m.rate_Bps * 8.0 / 1e3) * 1e3;
  if (m.rate_bps < kMinRateBps || m.rate_bps > kMaxRateBps) {
    throw ConfigError(fmt::format(
        "--match-profile {} asks for a link of {}, outside what the testbed shapes ({} to {})",
        target.name, human_rate(m.rate_bps), short_rate(kMinRateBps), short_rate(kMaxRateBps)));
  }
  return m;
}

std::string RateMatch::explain() const {
  const double flops_per_element_P =
      profile_gemm_flops / (profile_link_Bps / profile_element_bytes);
  // Scaled as the bandwidth is, the target's latency would take this long.
  const double scaled_latency_s = profile_latency_s * profile_gemm_flops / machine_gemm_flops;
  return fmt::format(
      "matching {} at TP {}:\n"
      "  {}: GEMM {:.4g} TFLOP/s, AllReduce bus bandwidth at {} ranks {:.4g} GB/s, {}-byte "
      "elements: {:.0f} FLOPs per element sent ({:.0f} per byte)\n"
      "  this machine: one rank's sgemm {:.4g} GFLOP/s with {} ranks at once; the engine sends "
      "{}-byte elements\n"
      "  per rank: B = {:.4g} GFLOP/s x {:.4g} GB/s / {:.4g} TFLOP/s x {}/{} = {:.4g} MB/s (the "
      "same {:.0f} FLOPs per element sent)\n"
      "  the loopback's one token bucket carries the {} ranks' traffic at once: rate = {} x {:.4g} "
      "MB/s = {:.4g} MB/s = {} (tc rate {})\n"
      "  latency is not scaled: the target's {:.3g} us would become {:.3g} ms here; the loopback's "
      "own is measured",
      profile, tp_size, profile, profile_gemm_flops / 1e12, tp_size, profile_link_Bps / 1e9,
      profile_element_bytes, flops_per_element_P, flops_per_element_P / profile_element_bytes,
      machine_gemm_flops / 1e9, tp_size, machine_element_bytes, machine_gemm_flops / 1e9,
      profile_link_Bps / 1e9, profile_gemm_flops / 1e12, machine_element_bytes,
      profile_element_bytes, per_rank_Bps / 1e6, flops_per_element_P, tp_size, tp_size,
      per_rank_Bps / 1e6, rate_Bps / 1e6, human_rate(rate_bps), tc_rate(rate_bps),
      profile_latency_s * 1e6, scaled_latency_s * 1e3);
}

}  // namespace flashcomm::testbed
