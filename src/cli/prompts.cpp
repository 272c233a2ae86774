// Turning --prompt and --prompt-tokens into requests, and tokens into text.
#include "cli/prompts.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <charconv>
#include <cstdint>
#include <string_view>
#include <system_error>

#include "flashcomm/error.hpp"
#include "flashcomm/layout.hpp"
#include "flashcomm/log.hpp"

namespace flashcomm::cli {

namespace {

std::string_view trim_blanks(std::string_view s) {
  const std::size_t first = s.find_first_not_of(" \t");
  if (first == std::string_view::npos) {
    return {};
  }
  return s.substr(first, s.find_last_not_of(" \t") - first + 1);
}

// An element as a message shows it: a long one is cut.
std::string shown(std::string_view element) {
  constexpr std::size_t kMax = 24;
  return element.size() <= kMax ? std::string(element)
                                : fmt::format("{}...", element.substr(0, kMax));
}

std::vector<Request> token_requests(const RunOptions& opt, const ModelConfig& config,
                                    const Tokenizer* tokenizer) {
  std::vector<Request> requests;
  for (std::size_t i = 0; i < opt.prompt_tokens.size(); ++i) {
    const std::string which = opt.prompt_tokens.size() > 1 ? fmt::format("prompt {}: ", i) : "";
    Request r;
    r.index = static_cast<int>(i);
    try {
      r.prompt_tokens = parse_prompt_tokens(opt.prompt_tokens[i], config.vocab_size);
    } catch (const ConfigError& e) {
      throw ConfigError(which + e.what());
    }
    if (r.prompt_tokens.size() > static_cast<std::size_t>(config.seq_len)) {
      throw ConfigError(
          fmt::format("{}--prompt-tokens has {} ids but the model's context (seq_len) is {}", which,
                      r.prompt_tokens.size(), config.seq_len));
    }
    if (tokenizer != nullptr) {
      // A leading BOS is shown as nothing, as a text prompt's is.
      const bool bos_first = r.prompt_tokens.front() == tokenizer->bos_id();
      const std::vector<int> shown_tokens(r.prompt_tokens.begin() + (bos_first ? 1 : 0),
                                          r.prompt_tokens.end());
      r.prompt = decode_tokens(*tokenizer, bos_first ? tokenizer->bos_id() : -1, shown_tokens);
    }
    requests.push_back(std::move(r));
  }
  return requests;
}

std::vector<Request> text_requests(const RunOptions& opt, const ModelConfig& config,
                                   const Tokenizer& tokenizer) {
  const std::vector<std::string> prompts =
      opt.prompts.empty() ? std::vector<std::string>{""} : opt.prompts;
  std::vector<Request> requests;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    const std::string which = prompts.size() > 1 ? fmt::format("prompt {}: ", i) : "";
    Request r;
    r.index = static_cast<int>(i);
    r.prompt = prompts[i];
    // A slow (quadratic) encoder must not run on a text that cannot fit even
    // at the tokenizer's fewest tokens per byte.
    const std::size_t bos = tokenizer.bos_id() >= 0 ? 1 : 0;
    const std::size_t fewest_tokens = tokenizer.fewest_tokens(r.prompt->size()) + bos;
    if (fewest_tokens > static_cast<std::size_t>(config.seq_len)) {
      throw ConfigError(fmt::format(
          "{}the prompt has {} bytes, at least {} tokens, but the model's context (seq_len) is {}",
          which, r.prompt->size(), fewest_tokens, config.seq_len));
    }
    r.prompt_tokens = tokenizer.encode(*r.prompt, true);
    if (r.prompt_tokens.empty()) {
      throw ConfigError(fmt::format(
          "{}the prompt is empty and the {} tokenizer has no BOS token to start from: give a "
          "--prompt with text, or --prompt-tokens",
          which, tokenizer.format()));
    }
    try {
      check_prompt_fits(config, static_cast<int>(r.prompt_tokens.size()));
    } catch (const ConfigError& e) {
      throw ConfigError(which + e.what());
    }
    requests.push_back(std::move(r));
  }
  return requests;
}

}  // namespace

std::vector<Request> make_requests(const RunOptions& opt, const ModelConfig& config,
                                   const Tokenizer* tokenizer) {
  // CLI11 keeps each option's values apart, so the order of requests given
  // by two options (and with it their DP replicas) would be lost.
  if (!opt.prompts.empty() && !opt.prompt_tokens.empty()) {
    throw ConfigError(
        "--prompt and --prompt-tokens cannot be mixed in one run: give every prompt as text or "
        "every prompt as token ids");
  }
  if (!opt.prompt_tokens.empty()) {
    return token_requests(opt, config, tokenizer);
  }
  if (tokenizer == nullptr) {
    throw ConfigError(
        opt.prompts.empty()
            ? "--tokenizer is needed to start from BOS alone; without a tokenizer, give the "
              "prompt as --prompt-tokens IDS"
            : "--tokenizer is needed to encode --prompt text; without a tokenizer, give the "
              "prompt as --prompt-tokens IDS");
  }
  return text_requests(opt, config, *tokenizer);
}

std::vector<int> parse_prompt_tokens(const std::string& text, int vocab_size) {
  if (trim_blanks(text).empty()) {
    throw ConfigError(
        "--prompt-tokens is empty, expected token ids separated by commas (e.g. 1,2,3): a prompt "
        "needs at least one token");
  }
  std::vector<int> ids;
  std::size_t start = 0;
  for (int position = 0;; ++position) {
    const std::size_t comma = text.find(',', start);
    const std::string_view element = trim_blanks(
        std::string_view(text).substr(start, comma == std::string::npos ? comma : comma - start));
    if (element.empty()) {
      throw ConfigError(fmt::format(
          "--prompt-tokens: the id at position {} (counting from 0) is empty, expected a "
          "decimal token id",
          position));
    }
    if (element.find_first_not_of("0123456789") != std::string_view::npos) {
      throw ConfigError(fmt::format(
          "--prompt-tokens: '{}' at position {} (counting from 0) is not a token id, expected a "
          "decimal number from 0 to {}",
          shown(element), position, vocab_size - 1));
    }
    std::uint64_t value = 0;
    const auto [end, error] =
        std::from_chars(element.data(), element.data() + element.size(), value);
    if (error != std::errc() || end != element.data() + element.size() ||
        value >= static_cast<std::uint64_t>(vocab_size)) {
      throw ConfigError(fmt::format(
          "--prompt-tokens: id {} at position {} (counting from 0) is not below the model's "
          "vocab_size {}",
          shown(element), position, vocab_size));
    }
    ids.push_back(static_cast<int>(value));
    if (comma == std::string::npos) {
      return ids;
    }
    start = comma + 1;
  }
}

std::string join_token_ids(const std::vector<int>& ids) {
  return fmt::format("{}", fmt::join(ids, ","));
}

std::string decode_tokens(const Tokenizer& tokenizer, int prev, const std::vector<int>& tokens) {
  std::string text;
  int without_piece = 0;
  for (const int t : tokens) {
    if (t >= 0 && t < tokenizer.vocab_size()) {
      text += tokenizer.decode(prev, t);
    } else {
      ++without_piece;
    }
    prev = t;
  }
  if (without_piece > 0) {
    log::warn(
        "{} of {} tokens are past the tokenizer's {} pieces (embedding padding) and have no "
        "text",
        without_piece, tokens.size(), tokenizer.vocab_size());
  }
  return text;
}

}  // namespace flashcomm::cli
