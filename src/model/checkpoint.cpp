// Checkpoint folder I/O: config.json + model.safetensors, validated on load.
#include "model/checkpoint.h"

#include <filesystem>

#include "core/error.h"

namespace mf {

namespace {

constexpr const char* kOp = "[checkpoint]";

std::string join_names(const std::vector<std::string>& names) {
  std::string s;
  const std::size_t shown = std::min<std::size_t>(names.size(), 12);
  for (std::size_t i = 0; i < shown; ++i) s += (i ? ", '" : "'") + names[i] + "'";
  if (names.size() > shown) s += str_cat(" and ", names.size() - shown, " more");
  return s;
}

}  // namespace

void save_checkpoint(const std::string& dir, const Transformer& model) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  MF_CHECK(!ec && std::filesystem::is_directory(dir), kOp, " cannot create the checkpoint folder '", dir,
           "': ", ec.message());
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const Parameter* p : model.parameters()) tensors.emplace_back(p->name, p->value);
  // "format": "pt" is what Hugging Face transformers expects in safetensors metadata.
  save_safetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}, {"producer", "modformer"}});
  save_config(dir + "/config.json", model.config());
}

void load_weights(Transformer& model, const std::map<std::string, Tensor>& tensors, const std::string& source) {
  std::vector<std::string> missing, unexpected;
  std::map<std::string, Parameter*> by_name;
  for (Parameter* p : model.parameters()) by_name[p->name] = p;
  for (const auto& [name, p] : by_name)
    if (!tensors.count(name)) missing.push_back(name);
  for (const auto& [name, t] : tensors)
    if (!by_name.count(name)) unexpected.push_back(name);
  if (!missing.empty() || !unexpected.empty()) {
    std::string msg = str_cat(kOp, " ", source, " does not match the config:");
    if (!missing.empty()) msg += str_cat(" missing ", missing.size(), " tensor(s): ", join_names(missing), ";");
    if (!unexpected.empty()) msg += str_cat(" unexpected ", unexpected.size(), " tensor(s): ", join_names(unexpected), ";");
    if (model.config().tie_word_embeddings && tensors.count("lm_head.weight"))
      msg += " (tie_word_embeddings is true, so the LM head is model.embed_tokens.weight and lm_head.weight must be absent)";
    else if (!model.config().tie_word_embeddings && !tensors.count("lm_head.weight"))
      msg += " (tie_word_embeddings is false, so lm_head.weight is needed)";
    fail(msg);
  }
  for (const auto& [name, p] : by_name) {
    const Tensor& t = tensors.at(name);
    MF_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::BF16 || t.dtype() == DType::F16, kOp, " ", source,
             ": tensor '", name, "' has dtype ", dtype_name(t.dtype()), " (expected float32, bfloat16 or float16)");
    MF_CHECK(t.shape() == p->value.shape(), kOp, " ", source, ": tensor '", name, "' has shape ", shape_str(t.shape()),
             " but the config needs ", shape_str(p->value.shape()));
  }
  for (const auto& [name, p] : by_name) {
    const Tensor& t = tensors.at(name);
    p->value.copy_from(t.dtype() == DType::F32 ? t : t.to(DType::F32));
  }
}

std::unique_ptr<Transformer> load_checkpoint(const std::string& dir) {
  const std::string config_path = dir + "/config.json", weights_path = dir + "/model.safetensors";
  MF_CHECK(std::filesystem::is_directory(dir), kOp, " '", dir, "' is not a checkpoint folder (no such directory)");
  MF_CHECK(std::filesystem::exists(config_path), kOp, " '", dir, "' has no config.json");
  MF_CHECK(std::filesystem::exists(weights_path), kOp, " '", dir, "' has no model.safetensors");
  const ModelConfig cfg = load_config(config_path);
  auto model = std::make_unique<Transformer>(cfg, 0);
  const SafetensorsContents st = load_safetensors(weights_path);
  load_weights(*model, st.tensors, weights_path);
  return model;
}

}  // namespace mf
