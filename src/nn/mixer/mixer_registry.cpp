// The one table of mixers: adding a technique adds its entry here (one line)
// and its include, nothing else.
#include "nn/mixer/mixer_registry.h"

#include "core/error.h"
#include "nn/attention/attention_mixer.h"
#include "nn/ffn/ffn_mixer.h"
#include "nn/fnet/fnet_mixer.h"
#include "nn/linformer/linformer_mixer.h"
#include "nn/performer/performer_mixer.h"
#include "nn/reformer/lsh_attention_mixer.h"
#include "nn/mamba/mamba_mixer.h"
#include "nn/multilevel/multilevel_mixer.h"
#include "nn/mla/mla_mixer.h"
#include "nn/moe/moe_mixer.h"
#include "nn/retnet/retention_mixer.h"
#include "nn/transformer_xl/transformer_xl_mixer.h"
#include "nn/sparse/sparse_attention_mixer.h"

namespace mf {

const std::vector<TokenMixerEntry>& token_mixer_registry() {
  static const std::vector<TokenMixerEntry> table = {
      full_attention_mixer_entry(),
      sliding_attention_mixer_entry(),
      fnet_mixer_entry(),
      linformer_mixer_entry(),
      lsh_attention_mixer_entry(),
      performer_mixer_entry(),
      mamba_mixer_entry(),
      retention_mixer_entry(),
      multilevel_attention_mixer_entry(),
      transformer_xl_mixer_entry(),
      sparse_attention_mixer_entry(),
      mla_mixer_entry(),
  };
  return table;
}

const std::vector<ChannelMixerEntry>& channel_mixer_registry() {
  static const std::vector<ChannelMixerEntry> table = {
      swiglu_mixer_entry(),
      geglu_mixer_entry(),
      mlp_mixer_entry(),
      moe_mixer_entry(),
  };
  return table;
}

namespace {

template <typename Entry>
const Entry* find_in(const std::vector<Entry>& table, const std::string& name) {
  for (const auto& e : table)
    if (e.name == name) return &e;
  return nullptr;
}

template <typename Entry>
std::string names_of(const std::vector<Entry>& table) {
  std::string s;
  for (const auto& e : table) s += (s.empty() ? "\"" : ", \"") + e.name + "\"";
  return s;
}

}  // namespace

const TokenMixerEntry* find_token_mixer(const std::string& name) { return find_in(token_mixer_registry(), name); }
const ChannelMixerEntry* find_channel_mixer(const std::string& name) {
  return find_in(channel_mixer_registry(), name);
}
std::string token_mixer_names() { return names_of(token_mixer_registry()); }
std::string channel_mixer_names() { return names_of(channel_mixer_registry()); }

const TokenMixerEntry& token_mixer_entry(const std::string& name, const std::string& prefix) {
  const TokenMixerEntry* e = find_token_mixer(name);
  MF_CHECK(e != nullptr, prefix, "unknown token mixer \"", name, "\" (known: ", token_mixer_names(), ")");
  return *e;
}

const ChannelMixerEntry& channel_mixer_entry(const std::string& name, const std::string& prefix) {
  const ChannelMixerEntry* e = find_channel_mixer(name);
  MF_CHECK(e != nullptr, prefix, "unknown channel mixer \"", name, "\" (known: ", channel_mixer_names(), ")");
  return *e;
}

std::string capabilities_text(const MixerCapabilities& c) {
  std::string s;
  auto add = [&](bool on, const char* what) {
    if (on) s += (s.empty() ? "" : ", ") + std::string(what);
  };
  add(c.causal, "causal");
  add(c.bidirectional, "bidirectional");
  add(c.generation, "generation");
  add(c.variable_length, "variable length");
  add(c.padding, "padding");
  add(c.segment_memory, "segment memory");
  return s.empty() ? "none" : s;
}

}  // namespace mf
