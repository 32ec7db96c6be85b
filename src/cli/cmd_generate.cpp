// `modformer generate --model DIR --prompt TEXT`: loads a checkpoint, encodes
// the prompt with the byte-level tokenizer, prefills it, then streams each
// sampled byte to stdout (flushed per token; the prompt is echoed first) and
// reports prefill and decode tokens/s on stderr.
// `--prompts FILE` (one prompt per line) generates for all of them at once
// (generate_batch: each weight read once per step for every prompt) and
// prints one line per prompt, in order, once all are done: the prompt (unless
// --no-echo) and its continuation, with newline, carriage return and
// backslash written as \n, \r and \\ so that each result stays one line.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>

#include "cli/command.h"
#include "core/error.h"
#include "core/threads.h"
#include "model/checkpoint.h"
#include "train/checkpoint.h"
#include "model/generate.h"
#include "train/data.h"

namespace {

struct GenerateCliOptions {
  std::string model;
  std::string prompt;
  std::string prompts_file;
  std::int64_t max_new_tokens = 200;
  float temperature = 1.0f;
  std::int64_t top_k = 0;
  float top_p = 1.0f;
  std::uint64_t seed = 0;
  bool no_echo = false;
  bool prompt_given = false;  // --prompt appeared (possibly empty)
};

constexpr const char* kOp = "[generate]";

// The lines of a --prompts file (a last line without a newline counts; an
// empty line is refused by number).
std::vector<std::string> read_prompt_lines(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MF_CHECK(in.good(), kOp, " --prompts '", path, "' cannot be opened");
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();  // CRLF files
    MF_CHECK(!line.empty(), kOp, " --prompts '", path, "' line ", lines.size() + 1,
             " is empty: every line is a prompt of at least one character");
    lines.push_back(line);
  }
  MF_CHECK(in.eof(), kOp, " --prompts '", path, "' could not be read to the end");
  MF_CHECK(!lines.empty(), kOp, " --prompts '", path, "' holds no prompt (one prompt per line)");
  return lines;
}

// Bytes as one output line: newline, carriage return and backslash escaped.
std::string one_line(const std::string& bytes) {
  std::string out;
  for (char c : bytes) {
    if (c == '\n')
      out += "\\n";
    else if (c == '\r')
      out += "\\r";
    else if (c == '\\')
      out += "\\\\";
    else
      out += c;
  }
  return out;
}

int run_generate_batch(const GenerateCliOptions& o, const mf::GenerateOptions& g) {
  using namespace mf;
  const std::vector<std::string> lines = read_prompt_lines(o.prompts_file);
  std::unique_ptr<Transformer> model = load_checkpoint(model_folder(o.model, kOp));
  const ModelConfig& cfg = model->config();
  MF_CHECK(cfg.vocab_size == kByteVocabSize, kOp, " '", o.model, "' has vocab_size ", cfg.vocab_size,
           " but the byte-level tokenizer needs ", kByteVocabSize);
  std::vector<std::vector<std::int32_t>> prompts;
  for (std::size_t i = 0; i < lines.size(); ++i) {
    prompts.push_back(byte_encode(lines[i]));
    MF_CHECK(static_cast<std::int64_t>(prompts.back().size()) <= cfg.max_position_embeddings, kOp, " --prompts line ",
             i + 1, " is ", prompts.back().size(), " tokens (bytes) long but the model's context is ",
             cfg.max_position_embeddings, " positions (max_position_embeddings)");
  }
  const BatchGenerateResult r = generate_batch(*model, prompts, g);
  for (std::size_t i = 0; i < lines.size(); ++i) {
    const std::string text = (o.no_echo ? std::string() : lines[i]) + byte_decode(r.tokens[i]);
    std::fputs((one_line(text) + "\n").c_str(), stdout);
  }
  std::fflush(stdout);
  std::fprintf(stderr,
               "batch of %zu prompts: prefill: %lld tokens in %.2f ms (%.1f tokens/s); decode: %lld tokens in %.2f ms "
               "(%.1f tokens/s, all prompts); threads %d\n",
               lines.size(), static_cast<long long>(r.prompt_tokens), r.prefill_seconds * 1e3, r.prefill_tokens_per_s(),
               static_cast<long long>(r.decode_tokens), r.decode_seconds * 1e3, r.decode_tokens_per_s(), num_threads());
  return 0;
}

int run_generate(const GenerateCliOptions& o) {
  using namespace mf;
  MF_CHECK(!o.prompt_given || o.prompts_file.empty(), kOp, " give --prompt or --prompts, not both");
  MF_CHECK(!o.prompt_given || !o.prompt.empty(), kOp, " --prompt is empty: give at least one character to continue");
  MF_CHECK(o.prompt_given || !o.prompts_file.empty(), kOp,
           " nothing to continue: give --prompt TEXT or --prompts FILE (one prompt per line)");
  MF_CHECK(std::filesystem::is_directory(o.model), kOp, " --model '", o.model,
           "' is not a checkpoint folder (no such directory)");
  GenerateOptions g;
  g.max_new_tokens = o.max_new_tokens;
  g.sampling.temperature = o.temperature;
  g.sampling.top_k = o.top_k;
  g.sampling.top_p = o.top_p;
  g.seed = o.seed;
  g.validate();  // option errors before the (slower) checkpoint load
  if (!o.prompts_file.empty()) return run_generate_batch(o, g);

  std::unique_ptr<Transformer> model = load_checkpoint(model_folder(o.model, kOp));
  const ModelConfig& cfg = model->config();
  MF_CHECK(cfg.vocab_size == kByteVocabSize, kOp, " '", o.model, "' has vocab_size ", cfg.vocab_size,
           " but the byte-level tokenizer needs ", kByteVocabSize);
  const std::vector<std::int32_t> prompt = byte_encode(o.prompt);
  const auto n_prompt = static_cast<std::int64_t>(prompt.size());
  MF_CHECK(n_prompt <= cfg.max_position_embeddings, kOp, " the prompt is ", n_prompt,
           " tokens (bytes) long but the model's context is ", cfg.max_position_embeddings,
           " positions (max_position_embeddings)");

  if (!o.no_echo) {
    std::fwrite(o.prompt.data(), 1, o.prompt.size(), stdout);
    std::fflush(stdout);
  }
  const GenerateResult r = generate(*model, prompt, g, [](std::int32_t token) {
    const char byte = static_cast<char>(static_cast<unsigned char>(token));  // raw bytes, even mid-UTF-8
    std::fwrite(&byte, 1, 1, stdout);
    std::fflush(stdout);
  });
  std::fputc('\n', stdout);
  std::fflush(stdout);
  const auto n_new = static_cast<std::int64_t>(r.tokens.size());
  std::fprintf(stderr,
               "prefill: %lld tokens in %.2f ms (%.1f tokens/s); decode: %lld tokens in %.2f ms (%.1f tokens/s); "
               "threads %d\n",
               static_cast<long long>(r.prompt_tokens), r.prefill_seconds * 1e3, r.prefill_tokens_per_s(),
               static_cast<long long>(n_new - 1), r.decode_seconds * 1e3, r.decode_tokens_per_s(), num_threads());
  return 0;
}

}  // namespace

MF_REGISTER_COMMAND("generate", "Generate text from a checkpoint with a KV cache (streams to stdout)",
                    [](CLI::App& app) {
                      auto o = std::make_shared<GenerateCliOptions>();
                      app.add_option("--model", o->model, "Checkpoint folder (config.json + model.safetensors)")
                          ->required();
                      CLI::Option* prompt =
                          app.add_option("--prompt", o->prompt, "Text to continue (byte-level tokens)");
                      app.add_option("--prompts", o->prompts_file,
                                     "File of prompts, one per line, generated together (batched); prints one line "
                                     "per prompt with \\n, \\r, \\\\ escaped");
                      app.add_option("--max-new-tokens", o->max_new_tokens, "Tokens (bytes) to generate")
                          ->capture_default_str()
                          ->check(CLI::Range(std::int64_t{1}, std::int64_t{1} << 40));
                      app.add_option("--temperature", o->temperature, "Sampling temperature; 0: greedy")
                          ->capture_default_str()
                          ->check(CLI::Range(0.0f, 1e6f));
                      app.add_option("--top-k", o->top_k, "Keep the k most likely tokens; 0: off")
                          ->capture_default_str()
                          ->check(CLI::NonNegativeNumber);
                      app.add_option("--top-p", o->top_p, "Nucleus: smallest set with mass >= p; 1: off")
                          ->capture_default_str()
                          ->check(CLI::Range(0.0f, 1.0f));
                      app.add_option("--seed", o->seed, "Sampling seed")->capture_default_str();
                      app.add_flag("--no-echo", o->no_echo, "Do not print the prompt before the generated text");
                      return std::function<int()>([o, prompt] {
                        o->prompt_given = prompt->count() > 0;
                        return run_generate(*o);
                      });
                    });
