// Microbenchmarks of the engine's kernels, each beside the machine's own
// ceiling measured in the same run: OpenBLAS sgemm called directly for the
// GEMM wrapper and attention (FLOP/s), memcpy for the memory-bound kernels
// (bytes/s).
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <cstring>
#include <random>
#include <vector>

#include "flashcomm/kernels.hpp"

namespace {

std::vector<float> random_floats(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0F, 1.0F);
  std::vector<float> v(n);
  for (float& x : v) {
    x = dist(rng);
  }
  return v;
}

void set_flops(benchmark::State& state, double flops_per_iteration) {
  state.counters["FLOP/s"] =
      benchmark::Counter(flops_per_iteration, benchmark::Counter::kIsIterationInvariantRate,
                         benchmark::Counter::kIs1000);
}

// Ceiling: OpenBLAS sgemm, x[m, k] . w[n, k]^T.
void BM_OpenBlasSgemm(benchmark::State& state) {
  const int m = static_cast<int>(state.range(0));
  const int k = static_cast<int>(state.range(1));
  const int n = static_cast<int>(state.range(2));
  const auto x = random_floats(static_cast<size_t>(m) * k, 1);
  const auto w = random_floats(static_cast<size_t>(n) * k, 2);
  std::vector<float> y(static_cast<size_t>(m) * n);
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0F, x.data(), k, w.data(), k,
                0.0F, y.data(), n);
    benchmark::DoNotOptimize(y.data());
  }
  set_flops(state, 2.0 * m * n * k);
}

void BM_MatmulWt(benchmark::State& state) {
  const int m = static_cast<int>(state.range(0));
  const int k = static_cast<int>(state.range(1));
  const int n = static_cast<int>(state.range(2));
  const auto x = random_floats(static_cast<size_t>(m) * k, 1);
  const auto w = random_floats(static_cast<size_t>(n) * k, 2);
  std::vector<float> y(static_cast<size_t>(m) * n);
  for (auto _ : state) {
    flashcomm::kernels::matmul_wt(x.data(), k, w.data(), k, y.data(), n, m, k, n);
    benchmark::DoNotOptimize(y.data());
  }
  set_flops(state, 2.0 * m * n * k);
}

// Causal prefill attention of n tokens, 8 heads of head_dim, 2 KV heads.
void BM_Attention(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  const int head_dim = static_cast<int>(state.range(1));
  const int heads = 8;
  const int kv_heads = 2;
  const auto q = random_floats(static_cast<size_t>(n) * heads * head_dim, 1);
  const auto k = random_floats(static_cast<size_t>(n) * kv_heads * head_dim, 2);
  const auto v = random_floats(static_cast<size_t>(n) * kv_heads * head_dim, 3);
  std::vector<float> out(q.size());
  for (auto _ : state) {
    flashcomm::kernels::attention(q.data(), heads * head_dim, k.data(), v.data(),
                                  kv_heads * head_dim, out.data(), heads * head_dim, n, 0, heads,
                                  kv_heads, head_dim);
    benchmark::DoNotOptimize(out.data());
  }
  // Two GEMMs per head over the full score matrix (the kernel's real work).
  set_flops(state, 2.0 * 2.0 * n * n * head_dim * heads);
}

// Ceiling: memcpy, bytes read + written.
void BM_Memcpy(benchmark::State& state) {
  const size_t bytes = static_cast<size_t>(state.range(0));
  std::vector<char> src(bytes, 1);
  std::vector<char> dst(bytes);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), bytes);
    benchmark::DoNotOptimize(dst.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * 2 *
                          static_cast<int64_t>(bytes));
}

void BM_RmsNorm(benchmark::State& state) {
  const int rows = static_cast<int>(state.range(0));
  const int dim = static_cast<int>(state.range(1));
  const auto x = random_floats(static_cast<size_t>(rows) * dim, 1);
  const auto weight = random_floats(static_cast<size_t>(dim), 2);
  std::vector<float> y(x.size());
  for (auto _ : state) {
    flashcomm::kernels::rmsnorm(x.data(), weight.data(), y.data(), rows, dim, 1e-5F);
    benchmark::DoNotOptimize(y.data());
  }
  // x read twice (sum of squares, then scale), y written once.
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * 3 * rows * dim * 4);
}

void BM_SiluMul(benchmark::State& state) {
  const int rows = static_cast<int>(state.range(0));
  const int dim = static_cast<int>(state.range(1));
  const auto gu = random_floats(static_cast<size_t>(rows) * 2 * dim, 1);
  std::vector<float> out(static_cast<size_t>(rows) * dim);
  for (auto _ : state) {
    flashcomm::kernels::silu_mul(gu.data(), gu.data() + dim, 2 * dim, out.data(), rows, dim);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * 3 * rows * dim * 4);
}

}  // namespace

BENCHMARK(BM_OpenBlasSgemm)->Args({256, 1024, 1024})->Args({64, 4096, 1024})->Args({16, 64, 64});
BENCHMARK(BM_MatmulWt)->Args({256, 1024, 1024})->Args({64, 4096, 1024})->Args({16, 64, 64});
BENCHMARK(BM_Attention)->Args({256, 64})->Args({512, 128})->Args({256, 8});
BENCHMARK(BM_Memcpy)->Arg(16 << 20);
BENCHMARK(BM_RmsNorm)->Args({256, 4096});
BENCHMARK(BM_SiluMul)->Args({256, 4096});

BENCHMARK_MAIN();
