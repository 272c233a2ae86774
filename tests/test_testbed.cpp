// The shaped testbed's numbers (flashcomm/testbed.hpp): link rates and
// delays as typed and as tc reads them, the bucket's depth, and the rate
// that keeps a profile's balance of arithmetic and communication.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "flashcomm/cost_model.hpp"
#include "flashcomm/error.hpp"
#include "flashcomm/testbed.hpp"

namespace flashcomm {
namespace {

// The message of the ConfigError `f` throws; a test failure when it throws
// anything else or nothing.
template <typename F>
std::string config_error_of(F f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected ConfigError, got: " << e.what();
    return {};
  }
  ADD_FAILURE() << "expected ConfigError, nothing was thrown";
  return {};
}

TEST(LinkRate, ReadsTcBitUnits) {
  EXPECT_DOUBLE_EQ(testbed::parse_link_rate("800mbit"), 800e6);
  EXPECT_DOUBLE_EQ(testbed::parse_link_rate("1gbit"), 1e9);
  EXPECT_DOUBLE_EQ(testbed::parse_link_rate("100mbit"), 100e6);
  EXPECT_DOUBLE_EQ(testbed::parse_link_rate("1.5Gbit"), 1.5e9);
  EXPECT_DOUBLE_EQ(testbed::parse_link_rate("2000000bit"), 2e6);
  EXPECT_DOUBLE_EQ(testbed::parse_link_rate("100000kbit"), 100e6);
  EXPECT_DOUBLE_EQ(testbed::parse_link_rate("100gbit"), 100e9);
  EXPECT_DOUBLE_EQ(testbed::parse_link_rate("1mbit"), 1e6);
}

TEST(LinkRate, RefusesGarbageZeroNegativeAndOutOfRange) {
  for (const char* text : {"fast", "", "800", "800 mbit", "800mbps", "8e8bit", "mbit", "1.mbit",
                           "800mbit;reboot", "0x10mbit", "1,5gbit"}) {
    const std::string m = config_error_of([&] { testbed::parse_link_rate(text); });
    EXPECT_NE(m.find(std::string("--link-rate '") + text + "' is not a link rate"),
              std::string::npos)
        << m;
    EXPECT_NE(m.find("e.g. 800mbit"), std::string::npos) << m;
  }
  EXPECT_EQ(config_error_of([] { testbed::parse_link_rate("0mbit"); }),
            "--link-rate 0mbit is zero, expected a rate from 1mbit to 100gbit");
  EXPECT_EQ(config_error_of([] { testbed::parse_link_rate("0.0gbit"); }),
            "--link-rate 0.0gbit is zero, expected a rate from 1mbit to 100gbit");
  EXPECT_EQ(config_error_of([] { testbed::parse_link_rate("-5mbit"); }),
            "--link-rate -5mbit is negative, expected a rate from 1mbit to 100gbit");
  EXPECT_EQ(config_error_of([] { testbed::parse_link_rate("10kbit"); }),
            "--link-rate 10kbit is too slow, expected a rate from 1mbit to 100gbit");
  EXPECT_EQ(config_error_of([] { testbed::parse_link_rate("1tbit"); }),
            "--link-rate 1tbit is too fast, expected a rate from 1mbit to 100gbit");
}

TEST(LinkDelay, ReadsMicrosecondsMillisecondsAndSeconds) {
  EXPECT_DOUBLE_EQ(testbed::parse_link_delay("2ms"), 2e-3);
  EXPECT_DOUBLE_EQ(testbed::parse_link_delay("500us"), 500e-6);
  EXPECT_DOUBLE_EQ(testbed::parse_link_delay("0.5s"), 0.5);
  EXPECT_DOUBLE_EQ(testbed::parse_link_delay("0"), 0.0);
  EXPECT_DOUBLE_EQ(testbed::parse_link_delay("0ms"), 0.0);
  EXPECT_DOUBLE_EQ(testbed::parse_link_delay("1s"), 1.0);
}

TEST(LinkDelay, RefusesGarbageNegativeAndTooLong) {
  for (const char* text : {"2", "2 ms", "fast", "2min", "", "ms", "2ms;reboot"}) {
    const std::string m = config_error_of([&] { testbed::parse_link_delay(text); });
    EXPECT_NE(m.find(std::string("--link-delay '") + text + "' is not a delay"), std::string::npos)
        << m;
  }
  EXPECT_EQ(config_error_of([] { testbed::parse_link_delay("-1ms"); }),
            "--link-delay -1ms is negative, expected a delay from 0 to 1s");
  EXPECT_EQ(config_error_of([] { testbed::parse_link_delay("2s"); }),
            "--link-delay 2s is too long, expected a delay from 0 to 1s");
}

TEST(LinkSpelling, TcGetsItsSmallestUnitAndPeopleAReadableOne) {
  EXPECT_EQ(testbed::tc_rate(800e6), "800000000bit");
  EXPECT_EQ(testbed::tc_rate(1.5e9), "1500000000bit");
  EXPECT_EQ(testbed::tc_time(2e-3), "2000us");
  EXPECT_EQ(testbed::tc_time(0.5), "500000us");
  EXPECT_EQ(testbed::human_rate(800e6), "800 Mbit/s");
  EXPECT_EQ(testbed::human_rate(1.5e9), "1.5 Gbit/s");
  EXPECT_EQ(testbed::namespace_name(4711), "flashcomm-4711");
}

TEST(LinkSpelling, TheBucketHoldsFourPacketsOrOneMillisecond) {
  EXPECT_EQ(testbed::tbf_burst_bytes(1e6), 4 * testbed::kLinkMtuBytes);
  EXPECT_EQ(testbed::tbf_burst_bytes(800e6), 100000);  // 100 MB/s for 1 ms
}

// F_M / (B_M / 4) = F_P / (B_P / 2) per rank, and the bucket carries TP ranks.
TEST(MatchLinkRate, KeepsTheProfilesFlopsPerElementSent) {
  const HardwareProfile h100 = builtin_profile("h100-sxm");
  const double machine = 10e9;
  const testbed::RateMatch m = testbed::match_link_rate(h100, 4, machine);
  const double bus = 0.8 * 450e9;  // the profile's NVLink bus bandwidth
  EXPECT_NEAR(m.profile_link_Bps, bus, bus * 1e-9);
  EXPECT_DOUBLE_EQ(m.profile_gemm_flops, h100.gemm_flops);
  EXPECT_EQ(m.profile_element_bytes, 2);
  EXPECT_EQ(m.machine_element_bytes, 4);
  const double per_rank = machine * bus / h100.gemm_flops * 4.0 / 2.0;
  EXPECT_NEAR(m.per_rank_Bps, per_rank, per_rank * 1e-9);
  EXPECT_NEAR(m.rate_Bps, 4 * per_rank, per_rank * 1e-9);
  EXPECT_NEAR(m.rate_bps, 4 * per_rank * 8, 500.0) << "rounded to a whole kbit";
  EXPECT_EQ(std::fmod(m.rate_bps, 1000.0), 0.0);
  EXPECT_NEAR(m.machine_gemm_flops / (m.per_rank_Bps / 4),
              h100.gemm_flops / (m.profile_link_Bps / 2), 1e-6 * h100.gemm_flops / bus);
  EXPECT_NEAR(m.profile_latency_s, 15e-6, 1e-12);
  const std::string why = m.explain();
  EXPECT_NE(why.find("matching h100-sxm at TP 4"), std::string::npos) << why;
  EXPECT_NE(why.find("tc rate " + testbed::tc_rate(m.rate_bps)), std::string::npos) << why;
  EXPECT_NE(why.find("latency is not scaled"), std::string::npos) << why;
}

// The full mesh's bus bandwidth grows with the group: the match takes the
// group size of the TP run.
TEST(MatchLinkRate, TakesTheFitOfTheTpGroup) {
  const HardwareProfile ascend = builtin_profile("ascend-910b");
  EXPECT_NEAR(testbed::match_link_rate(ascend, 4, 10e9).profile_link_Bps, 0.8 * 3 * 28e9, 1.0);
  EXPECT_NEAR(testbed::match_link_rate(ascend, 8, 10e9).profile_link_Bps, 0.8 * 7 * 28e9, 1.0);
  const testbed::RateMatch two = testbed::match_link_rate(ascend, 2, 10e9);
  EXPECT_NEAR(two.rate_Bps, 2 * two.per_rank_Bps, 1e-6);
}

TEST(MatchLinkRate, RefusesWhatCannotBeMatched) {
  const HardwareProfile h100 = builtin_profile("h100-sxm");
  EXPECT_NE(config_error_of([&] {
              testbed::match_link_rate(h100, 1, 10e9);
            }).find("needs a tensor-parallel size above 1"),
            std::string::npos);
  HardwareProfile no_all_reduce = h100;
  no_all_reduce.collectives.erase(CommOp::all_reduce);
  EXPECT_NE(config_error_of([&] {
              testbed::match_link_rate(no_all_reduce, 4, 10e9);
            }).find("has no all_reduce fit"),
            std::string::npos);
  // A machine this slow would need a link below 1 Mbit/s.
  EXPECT_NE(config_error_of([&] {
              testbed::match_link_rate(h100, 4, 1e6);
            }).find("outside what the testbed shapes (1mbit to 100gbit)"),
            std::string::npos);
}

}  // namespace
}  // namespace flashcomm
