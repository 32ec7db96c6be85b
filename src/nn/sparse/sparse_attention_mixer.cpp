// The "sparse_attention" mixer: make_attention_mixer (attention_mixer.h) with
// a per-call hook that sets the block layout of the chosen pattern, built
// once per length and reused (causal layouts are prefix-consistent, so one
// built for more blocks serves shorter calls and generation steps; BigBird's
// bidirectional random blocks depend on the block count and are rebuilt when
// it changes). Longformer also sets the kernel's window and global tokens.
// Generation keeps every key in the KV cache: strided (each residue class mod
// l stays visible to later queries), fixed (summary positions of every block),
// BigBird (random blocks may reach any earlier block) and user maps need
// them; only a Longformer without global tokens could drop keys (not done).
#include "nn/sparse/sparse_attention_mixer.h"

#include <algorithm>
#include <bit>
#include <vector>

#include "core/error.h"
#include "nn/attention/attention_mixer.h"
#include "nn/sparse/block_layout.h"

namespace mf {

namespace {

using i64 = std::int64_t;
constexpr const char* kName = "sparse_attention";

const MixerCapabilities kCaps{.causal = true, .bidirectional = true, .generation = true, .variable_length = true,
                              .padding = true};

std::vector<i64> first_positions(i64 n, i64 key_len) {
  std::vector<i64> v;
  for (i64 g = 0; g < std::min(n, key_len); ++g) v.push_back(g);
  return v;
}

// The layout for `blocks` blocks (not a length: callers round up).
std::shared_ptr<const BlockLayout> build_layout(const nlohmann::json& o, i64 blocks, bool causal, i64 num_heads,
                                                const std::shared_ptr<const BlockLayout>& user_map) {
  const std::string pattern = o.at("pattern").get<std::string>();
  const i64 block = o.at("block").get<i64>(), length = blocks * block;
  if (pattern == "strided") return std::make_shared<BlockLayout>(strided_layout(length, block, o.at("stride").get<i64>(), causal));
  if (pattern == "fixed")
    return std::make_shared<BlockLayout>(fixed_layout(length, block, o.at("stride").get<i64>(), o.at("c").get<i64>(), causal));
  if (pattern == "bigbird")
    return std::make_shared<BlockLayout>(bigbird_layout(length, block, o.at("window_blocks").get<i64>(), o.at("global_blocks").get<i64>(),
                                                        o.at("random_blocks").get<i64>(), o.at("per_head").get<bool>() ? num_heads : 1,
                                                        o.at("seed").get<std::uint64_t>(), causal));
  if (pattern == "longformer") {
    const i64 w = o.at("window").get<i64>();
    return std::make_shared<BlockLayout>(
        longformer_layout(length, block, w, causal ? -1 : w, first_positions(o.at("global_tokens").get<i64>(), length), causal));
  }
  return user_map;  // "npy"
}

// Per-mixer cache of the last layout built (calls of one mixer are sequential).
struct LayoutCache {
  nlohmann::json options;
  i64 num_heads = 0;
  std::shared_ptr<const BlockLayout> user_map;  // pattern "npy"
  std::shared_ptr<const BlockLayout> layout;
  i64 blocks = 0;
  bool causal = false;

  std::shared_ptr<const BlockLayout> get(i64 key_len, bool want_causal) {
    const i64 block = options.at("block").get<i64>(), need = layout_blocks(key_len, block);
    if (user_map) {
      MF_CHECK(user_map->row_blocks >= need, "[", kName, "] option 'layout_file' map has ", user_map->row_blocks,
               " blocks of ", block, " but a call of ", key_len, " positions needs ", need);
      return user_map;
    }
    const bool bigbird_bidirectional = options.at("pattern") == "bigbird" && !want_causal;
    const bool reusable = layout && causal == want_causal && (bigbird_bidirectional ? blocks == need : blocks >= need);
    if (!reusable) {
      blocks = bigbird_bidirectional ? need : std::max<i64>(1, std::bit_ceil(static_cast<std::uint64_t>(need)));
      causal = want_causal;
      layout = build_layout(options, blocks, causal, num_heads, user_map);
    }
    return layout;
  }
};

}  // namespace

std::shared_ptr<const BlockLayout> sparse_attention_layout(const nlohmann::json& options, i64 key_len, bool causal,
                                                           i64 num_heads) {
  const i64 block = options.at("block").get<i64>();
  std::shared_ptr<const BlockLayout> user;
  if (options.at("pattern") == "npy")
    user = std::make_shared<BlockLayout>(layout_from_npy(options.at("layout_file").get<std::string>(), block));
  return build_layout(options, layout_blocks(key_len, block), causal, num_heads, user);
}

TokenMixerEntry sparse_attention_mixer_entry() {
  return {
      kName,
      "block-sparse exact attention (flash kernels skip absent tiles): Sparse Transformer strided/fixed (Child et al. "
      "2019), BigBird window+global+random blocks (Zaheer et al. 2020), Longformer window+global tokens, or a .npy "
      "block map; KV cache (keeps every key)",
      kCaps,
      "",
      {choice_option("pattern", "bigbird", {"strided", "fixed", "bigbird", "longformer", "npy"},
                     "which layout: strided/fixed (Child et al.), bigbird, longformer, npy (layout_file)"),
       int_option("block", 64, 16, 4096, "tile side in positions (a multiple of 16)"),
       int_option("stride", 128, 1, std::int64_t{1} << 24,
                  "l: strided: |i-j| < l or (i-j) mod l = 0; fixed: the l-blocks"),
       int_option("c", 16, 0, std::int64_t{1} << 24, "fixed: summary positions per l-block (the last c)"),
       int_option("window", 128, 0, std::int64_t{1} << 24, "longformer: positions seen on each side (causal: before)"),
       int_option("global_tokens", 1, 0, std::int64_t{1} << 24,
                  "longformer: the first N positions are global (see and are seen by all)"),
       int_option("window_blocks", 1, 0, std::int64_t{1} << 20, "bigbird: blocks seen on each side"),
       int_option("global_blocks", 1, 0, std::int64_t{1} << 20, "bigbird: the first N blocks are global"),
       int_option("random_blocks", 3, 0, (std::int64_t{1} << 20) - 1, "bigbird: random blocks per block row"),
       bool_option("per_head", true, "bigbird: random blocks drawn per query head (else one map for all heads)"),
       int_option("seed", 0, 0, std::int64_t{1} << 53, "bigbird: Philox seed of the random blocks"),
       OptionSpec{"layout_file", OptionSpec::Kind::String, "", {}, 0, 0,
                  "npy: block map .npy, [R, R] or [heads, R, R], nonzero = present"}},
      [](const MixerContext& ctx, ParamStore& store) -> std::unique_ptr<TokenMixer> {
        auto cache = std::make_shared<LayoutCache>();
        cache->options = ctx.options;
        cache->num_heads = ctx.num_heads;
        const nlohmann::json& o = ctx.options;
        const i64 block = o.at("block").get<i64>();
        MF_CHECK(block % 16 == 0, "[", kName, "] option 'block' must be a multiple of 16, got ", block);
        const std::string pattern = o.at("pattern").get<std::string>();
        MF_CHECK(pattern != "fixed" || o.at("c").get<i64>() <= o.at("stride").get<i64>(), "[", kName, "] option 'c' (",
                 o.at("c").get<i64>(), ") must be at most 'stride' (", o.at("stride").get<i64>(), ") for pattern \"fixed\"");
        if (pattern == "npy") {
          MF_CHECK(!o.at("layout_file").get<std::string>().empty(), "[", kName,
                   "] pattern \"npy\" needs option 'layout_file' (a .npy block map)");
          cache->user_map = std::make_shared<BlockLayout>(layout_from_npy(o.at("layout_file").get<std::string>(), block));
          MF_CHECK(cache->user_map->heads == 1 || cache->user_map->heads == ctx.num_heads, "[", kName,
                   "] option 'layout_file' map has ", cache->user_map->heads, " head maps but the layer has ",
                   ctx.num_heads, " query heads");
        }
        return make_attention_mixer(kName, ctx, store, [cache, pattern](AttentionOptions& opt, i64 key_len) {
          opt.block_layout = cache->get(key_len, opt.causal);
          if (pattern == "longformer") {
            const i64 w = cache->options.at("window").get<i64>();
            opt.window_left = w;
            opt.window_right = opt.causal ? -1 : w;
            opt.global_tokens = first_positions(cache->options.at("global_tokens").get<i64>(), key_len);
          }
        });
      }};
}

}  // namespace mf
