#include "train/checkpoint.h"

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "core/io_faults.h"
#include "core/safetensors.h"

namespace mf {
namespace fs = std::filesystem;
namespace {

bool complete(const fs::path& dir) { return fs::is_regular_file(dir / kTrainerStateFile); }

void fsync_path(const fs::path& p, bool directory) {
  const int fd = ::open(p.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  MF_CHECK(fd >= 0, "[checkpoint] cannot open '", p.string(), "' to flush it: ", std::strerror(errno));
  const int rc = take_io_fault(IoStep::Flush) ? -1 : ::fsync(fd);
  const int err = errno;
  ::close(fd);
  MF_CHECK(rc == 0, "[checkpoint] cannot flush '", p.string(), "': ", std::strerror(err));
}

void rename_or_fail(const fs::path& from, const fs::path& to) {
  MF_CHECK(!take_io_fault(IoStep::Rename) && ::rename(from.c_str(), to.c_str()) == 0, "[checkpoint] cannot rename '", from.string(), "' to '",
           to.string(), "': ", std::strerror(errno));
}

}  // namespace

std::string model_folder(const std::string& dir, const char* op) {
  if (fs::exists(fs::path(dir) / "config.json")) return dir;
  MF_CHECK(fs::is_directory(dir), op, " '", dir, "' is neither a model folder nor a training run (no such directory)");
  const std::string ckpt = find_checkpoint(dir);
  MF_CHECK(!ckpt.empty(), op, " '", dir, "' holds neither config.json (a model folder) nor a training checkpoint (a run "
           "folder of `modformer train --out`)");
  return ckpt;
}

std::string find_checkpoint(const std::string& out_dir) {
  const fs::path out(out_dir);
  const fs::path cur = out / kCheckpointDirName, old = out / (std::string(kCheckpointDirName) + ".old");
  std::error_code ec;
  // Leftovers of writes that were interrupted before their swap.
  if (fs::is_directory(out, ec))
    for (const auto& entry : fs::directory_iterator(out, ec)) {
      const std::string name = entry.path().filename().string();
      if (name.rfind(std::string(kCheckpointDirName) + ".tmp.", 0) == 0) fs::remove_all(entry.path(), ec);
    }
  if (complete(cur)) {
    if (fs::exists(old, ec)) fs::remove_all(old, ec);
    return cur.string();
  }
  // Killed between the two renames of the fallback swap: the old one is whole.
  if (complete(old)) {
    if (fs::exists(cur, ec)) fs::remove_all(cur, ec);
    rename_or_fail(old, cur);
    return cur.string();
  }
  return "";
}

std::string commit_checkpoint(const std::string& out_dir, const std::function<void(const std::string&)>& write) {
  const fs::path out(out_dir);
  const fs::path cur = out / kCheckpointDirName, old = out / (std::string(kCheckpointDirName) + ".old");
  const fs::path tmp = out / (std::string(kCheckpointDirName) + ".tmp." + std::to_string(::getpid()));
  std::error_code ec;
  fs::remove_all(tmp, ec);
  MF_CHECK(fs::create_directories(tmp, ec) || fs::is_directory(tmp), "[checkpoint] cannot create '", tmp.string(),
           "': ", ec.message());
  try {
    write(tmp.string());
    MF_CHECK(complete(tmp), "[checkpoint] the writer did not produce ", kTrainerStateFile, " in '", tmp.string(), "'");
    for (const auto& entry : fs::directory_iterator(tmp)) fsync_path(entry.path(), false);
    fsync_path(tmp, true);
    if (!fs::exists(cur)) {
      rename_or_fail(tmp, cur);
    } else if (!rename_exchange_unavailable() &&
               ::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, cur.c_str(), RENAME_EXCHANGE) == 0) {
      fs::remove_all(tmp);  // now holds the previous checkpoint
    } else {
      MF_CHECK(rename_exchange_unavailable() || errno == EINVAL || errno == ENOSYS || errno == ENOTSUP,
               "[checkpoint] cannot swap '", tmp.string(),
               "' with '", cur.string(), "': ", std::strerror(errno));
      fs::remove_all(old, ec);
      rename_or_fail(cur, old);  // a kill here leaves only checkpoint.old: find_checkpoint restores it
      rename_or_fail(tmp, cur);
      fs::remove_all(old);
    }
    fsync_path(out, true);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  return cur.string();
}

void load_model_parameters(LanguageModel& model, const std::string& path) { load_parameters(model.parameters(), path); }

void load_parameters(const std::vector<Parameter*>& params, const std::string& path) {
  const SafetensorsContents c = load_safetensors(path);
  for (Parameter* p : params) {
    auto it = c.tensors.find(p->name);
    MF_CHECK(it != c.tensors.end(), "[checkpoint] '", path, "' has no tensor '", p->name, "'");
    MF_CHECK(it->second.shape() == p->value.shape(), "[checkpoint] tensor '", p->name, "' in '", path,
             "' has shape ", shape_str(it->second.shape()), " but the model expects ", shape_str(p->value.shape()));
    MF_CHECK(it->second.dtype() != DType::I32 && it->second.dtype() != DType::I64, "[checkpoint] tensor '", p->name,
             "' in '", path, "' has integer dtype ", dtype_name(it->second.dtype()));
    p->value.copy_from(it->second.dtype() == DType::F32 ? it->second : it->second.to(DType::F32));
  }
}

}  // namespace mf
