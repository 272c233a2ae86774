// The requests of `flashcomm run`: prompts given as text (--prompt, encoded by
// the tokenizer) or as token ids (--prompt-tokens, taken verbatim), and the
// text of generated tokens.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "cli/options.hpp"
#include "flashcomm/model.hpp"
#include "flashcomm/tokenizer.hpp"

namespace flashcomm::cli {

struct Request {
  int index = 0;
  // The text: as given, or decoded from --prompt-tokens; none without a
  // tokenizer.
  std::optional<std::string> prompt;
  std::vector<int> prompt_tokens;  // as the model sees them (never empty)
};

// One request per --prompt or per --prompt-tokens (never both), BOS alone
// when neither is given; `tokenizer` may be null only with --prompt-tokens.
// Throws ConfigError naming the prompt and what is wrong with it.
std::vector<Request> make_requests(const RunOptions& opt, const ModelConfig& config,
                                   const Tokenizer* tokenizer);

// The ids of one --prompt-tokens value: decimal numbers separated by commas
// (blanks around a number are allowed), each below `vocab_size`. Throws
// ConfigError naming the bad element and its position.
std::vector<int> parse_prompt_tokens(const std::string& text, int vocab_size);

// "1,2,3": the form --prompt-tokens takes.
std::string join_token_ids(const std::vector<int>& ids);

// The text of `tokens` when they follow `prev` (-1: the start of a text). Ids
// past the tokenizer's vocabulary (rows a checkpoint pads its embedding
// with) have no text.
std::string decode_tokens(const Tokenizer& tokenizer, int prev, const std::vector<int>& tokens);

}  // namespace flashcomm::cli
