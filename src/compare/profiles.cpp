// The sizes of `modformer compare --profile`: "quick" runs every task and
// every registered mixer in about 10 minutes on 2 cores (a smoke test of the
// whole comparison: the numbers are far from converged), "full" is the real
// measurement (hours; see README), "tiny" is for the tests (seconds).
#include "compare/harness.h"
#include "core/error.h"

namespace mf {

CompareProfile compare_profile(const std::string& name) {
  CompareProfile p;
  p.name = name;
  if (name == "full") {
    p.steps = 1000;
    p.params = 1000000;
    p.layers = 4;
    p.batch_size = 16;
    p.warmup_steps = 50;
    p.lr = 2e-3;
    p.min_lr = 2e-4;
    p.checkpoints = 10;
    p.lm_seq_len = 256;
    p.lm_corpus_bytes = 8 << 20;
    p.lm_eval_windows = 64;
    p.extrapolation_factors = {1, 2, 4, 8, 16};
    p.listops = ListOpsOptions{10, 10, 50, 200, 0.25};  // LRA: 500..2000 (too long for a CPU budget)
    p.listops_train = 16000;
    p.listops_test = 2000;
    p.mqar_vocab = 256;
    p.mqar_seq_len = 256;
    p.mqar_pairs = {4, 8, 16, 32, 64};
    p.mqar_train_per_pairs = 4000;
    p.mqar_test_per_pairs = 500;
    p.copy_vocab = 16;
    p.copy_seq_len = 256;
    p.copy_tokens = 16;
    p.copy_train = 16000;
    p.copy_test = 1000;
    p.induction_vocab = 16;
    p.induction_seq_len = 128;
    p.induction_factors = {1, 2, 4, 8, 16};
    p.induction_train = 16000;
    p.induction_test = 500;
    p.speed_hidden = 256;
    p.speed_heads = 4;
    p.speed_reps = 3;
    p.speed_lengths = {512, 1024, 2048, 4096};
    p.decode_contexts = {256, 1024, 4096};
    p.decode_steps = 32;
    p.mixer_options = {{"linformer", {{"k", 64}}}};
  } else if (name == "quick") {  // 250 steps: ~5 min of CPU for every task and the 8 mixers of issue 14
    p.steps = 250;
    p.params = 100000;
    p.layers = 2;
    p.batch_size = 16;
    p.warmup_steps = 6;
    p.lr = 3e-3;
    p.min_lr = 3e-4;
    p.checkpoints = 2;
    p.lm_seq_len = 64;
    p.lm_corpus_bytes = 400000;
    p.lm_eval_windows = 16;
    p.extrapolation_factors = {1, 2, 4, 8, 16};
    p.listops = ListOpsOptions{10, 10, 6, 24, 0.25};
    p.listops_train = 1000;
    p.listops_test = 200;
    p.mqar_vocab = 64;
    p.mqar_seq_len = 64;
    p.mqar_pairs = {2, 4, 8, 16};
    p.mqar_train_per_pairs = 250;
    p.mqar_test_per_pairs = 50;
    p.copy_vocab = 16;
    p.copy_seq_len = 64;
    p.copy_tokens = 8;
    p.copy_train = 1000;
    p.copy_test = 100;
    p.induction_vocab = 16;
    p.induction_seq_len = 32;
    p.induction_factors = {1, 2, 4, 8, 16};
    p.induction_train = 1000;
    p.induction_test = 100;
    p.speed_hidden = 64;
    p.speed_heads = 2;
    p.speed_reps = 2;
    p.speed_lengths = {128, 256, 512, 1024};
    p.decode_contexts = {128, 512};
    p.decode_steps = 8;
    p.mixer_options = {{"linformer", {{"k", 16}}}};
  } else if (name == "tiny") {
    p.steps = 4;
    p.params = 20000;
    p.layers = 1;
    p.batch_size = 4;
    p.warmup_steps = 1;
    p.lr = 3e-3;
    p.min_lr = 3e-4;
    p.checkpoints = 2;
    p.lm_seq_len = 16;
    p.lm_corpus_bytes = 20000;
    p.lm_eval_windows = 4;
    p.extrapolation_factors = {1, 2};
    p.listops = ListOpsOptions{4, 4, 3, 10, 0.25};
    p.listops_train = 40;
    p.listops_test = 20;
    p.mqar_vocab = 16;
    p.mqar_seq_len = 16;
    p.mqar_pairs = {2, 4};
    p.mqar_train_per_pairs = 20;
    p.mqar_test_per_pairs = 10;
    p.copy_vocab = 8;
    p.copy_seq_len = 16;
    p.copy_tokens = 4;
    p.copy_train = 40;
    p.copy_test = 10;
    p.induction_vocab = 8;
    p.induction_seq_len = 8;
    p.induction_factors = {1, 2};
    p.induction_train = 40;
    p.induction_test = 10;
    p.speed_hidden = 32;
    p.speed_heads = 1;
    p.speed_reps = 1;
    p.speed_lengths = {16, 32};
    p.decode_contexts = {16};
    p.decode_steps = 2;
    p.mixer_options = {{"linformer", {{"k", 4}}}};
  } else {
    fail("[compare] unknown profile \"", name, "\" (known: quick, full, tiny)");
  }
  return p;
}

}  // namespace mf
