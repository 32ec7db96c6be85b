// Training checkpoints that survive a kill at any moment: a checkpoint is the
// folder OUT/checkpoint (config.json + model.safetensors from
// the model's save, optimizer.safetensors, trainer_state.json written last),
// built in a temporary folder and swapped in with one atomic rename
// (renameat2 RENAME_EXCHANGE; where the filesystem lacks it, two renames that
// find_checkpoint knows how to recover from).
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "model/language_model.h"

namespace mf {

inline constexpr const char* kCheckpointDirName = "checkpoint";
inline constexpr const char* kTrainerStateFile = "trainer_state.json";
inline constexpr const char* kOptimizerFile = "optimizer.safetensors";
inline constexpr const char* kModelFile = "model.safetensors";

// The newest complete checkpoint folder under out_dir ("" when there is none).
// Removes leftovers of interrupted writes.
std::string find_checkpoint(const std::string& out_dir);

// The model folder a command was given: DIR itself when it holds
// config.json, else the newest checkpoint of the training run DIR (so
// `generate --model RUN` works on `train --out RUN`). Throws naming op and DIR.
std::string model_folder(const std::string& dir, const char* op);

// Builds a checkpoint in a temporary folder with write(tmp_dir) (which must
// write trainer_state.json last), flushes it to disk and makes it
// OUT/checkpoint atomically. The previous checkpoint stays intact until then.
// Returns the checkpoint folder.
std::string commit_checkpoint(const std::string& out_dir, const std::function<void(const std::string&)>& write);

// Copies the tensors of a model.safetensors file into `params` by name; every
// parameter must be present with its shape (float32 or a type that converts).
// Throws mf::Error naming the file and tensor otherwise.
void load_parameters(const std::vector<Parameter*>& params, const std::string& safetensors_path);
// load_parameters(model.parameters(), ...).
void load_model_parameters(LanguageModel& model, const std::string& safetensors_path);

}  // namespace mf
