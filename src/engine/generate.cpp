// Greedy generation on top of the engine's prefill and decode passes.
#include <algorithm>
#include <chrono>

#include "flashcomm/engine.hpp"
#include "flashcomm/error.hpp"
#include "flashcomm/kernels.hpp"

namespace flashcomm {

namespace {
double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}
}  // namespace

Generation generate(Engine& engine, const std::vector<int>& prompt, int steps,
                    const std::vector<int>& stop_tokens,
                    const std::function<void(Pass pass, int step)>& before_pass) {
  const ModelConfig& c = engine.weights().config;
  FC_ASSERT(!prompt.empty(), "a prompt holds at least BOS");
  check_prompt_fits(c, static_cast<int>(prompt.size()));
  FC_ASSERT(static_cast<int>(prompt.size()) <= engine.context(), "prompt of {} in a context of {}",
            prompt.size(), engine.context());
  Generation g;

  auto start = std::chrono::steady_clock::now();
  if (before_pass) {
    before_pass(Pass::prefill, 0);
  }
  std::vector<float> logits = engine.prefill(prompt);
  g.prefill_seconds = seconds_since(start);
  g.prefill_logits = logits;

  start = std::chrono::steady_clock::now();
  for (int step = 0; step < steps; ++step) {
    const int next = kernels::argmax(logits.data(), c.vocab_size);
    if (std::find(stop_tokens.begin(), stop_tokens.end(), next) != stop_tokens.end()) {
      break;
    }
    g.tokens.push_back(next);
    // The new token is returned even when the context has no room to run it.
    if (step + 1 == steps || engine.position() >= engine.context()) {
      break;
    }
    if (before_pass) {
      before_pass(Pass::decode, step + 1);
    }
    logits = engine.decode(next);
  }
  g.decode_seconds = seconds_since(start);
  return g;
}

}  // namespace flashcomm
