// The shared training loop on the classify task, with a tiny real classifier
// (mean of byte embeddings over the mask, then a linear head): it learns a
// generated "more a's or b's" task, logs val_accuracy, resumes bit-identically
// after a simulated kill, and refuses mismatched tasks, labels and data.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "model/sequence_classifier.h"
#include "testing/gradcheck.h"
#include "train/checkpoint.h"
#include "train/trainer.h"
#include "../support/errors.h"
#include "../support/train_runs.h"

using namespace mf;
using mf::testing::error_of;
using mf::testing::metric_lines;
namespace fs = std::filesystem;

namespace {

// h_b = mean of E[tokens[b, j]] over mask[b, j] != 0; logits_b = W h_b + c.
// E [256, D], W [C, D], c [C]; real gradients. kill_at_call throws at that
// call of classify_loss(..., compute_grads = true) (a simulated kill).
class MeanPoolClassifier : public SequenceClassifier {
 public:
  MeanPoolClassifier(std::int64_t dim, std::int64_t labels, std::uint64_t seed)
      : emb_("emb.weight", randn({256, dim}, seed, 0), false),
        head_("head.weight", randn({labels, dim}, seed, 1), true),
        bias_("head.bias", Tensor::zeros({labels}), false) {
    for (Parameter* p : {&emb_, &head_})
      for (std::int64_t i = 0; i < p->value.numel(); ++i) p->value.data<float>()[i] *= 0.1f;
  }
  std::vector<Parameter*> parameters() override { return {&emb_, &head_, &bias_}; }
  std::int64_t num_labels() const override { return head_.value.shape()[0]; }

  double classify_loss(const Tensor& tokens, const Tensor& mask, const Tensor& labels, bool compute_grads) override {
    if (compute_grads && ++grad_calls == kill_at_call) throw std::runtime_error("simulated kill");
    const std::int64_t b = tokens.shape()[0], l = tokens.shape()[1], d = dim(), c = num_labels();
    std::vector<double> h;
    const Tensor logits = forward(tokens, mask, h);
    const std::int32_t* tok = tokens.data<std::int32_t>();
    const std::int32_t* msk = mask.data<std::int32_t>();
    double loss = 0;
    for (std::int64_t i = 0; i < b; ++i) {
      const float* z = logits.data<float>() + i * c;
      const std::int32_t y = labels.data<std::int32_t>()[i];
      double zmax = z[0], sum = 0;
      for (std::int64_t k = 1; k < c; ++k) zmax = std::max<double>(zmax, z[k]);
      for (std::int64_t k = 0; k < c; ++k) sum += std::exp(z[k] - zmax);
      loss += std::log(sum) + zmax - z[y];
      if (!compute_grads) continue;
      std::int64_t count = 0;
      for (std::int64_t j = 0; j < l; ++j) count += msk[i * l + j] != 0;
      std::vector<double> dh(static_cast<std::size_t>(d), 0.0);
      for (std::int64_t k = 0; k < c; ++k) {
        const double dz = (std::exp(z[k] - zmax) / sum - (k == y ? 1.0 : 0.0)) / static_cast<double>(b);
        bias_.grad.data<float>()[k] += static_cast<float>(dz);
        for (std::int64_t e = 0; e < d; ++e) {
          head_.grad.data<float>()[k * d + e] += static_cast<float>(dz * h[static_cast<std::size_t>(i * d + e)]);
          dh[static_cast<std::size_t>(e)] += dz * head_.value.data<float>()[k * d + e];
        }
      }
      for (std::int64_t j = 0; j < l; ++j)
        if (msk[i * l + j] != 0)
          for (std::int64_t e = 0; e < d; ++e)
            emb_.grad.data<float>()[tok[i * l + j] * d + e] +=
                static_cast<float>(dh[static_cast<std::size_t>(e)] / static_cast<double>(count));
    }
    return loss / static_cast<double>(b);
  }
  Tensor class_logits(const Tensor& tokens, const Tensor& mask) override {
    std::vector<double> h;
    return forward(tokens, mask, h);
  }
  void save(const std::string& dir) const override {
    write_file_atomic(dir + "/config.json", "{\"model_type\": \"mean_pool_test\", \"is_decoder\": false}\n");
    save_safetensors(dir + "/model.safetensors",
                     {{emb_.name, emb_.value}, {head_.name, head_.value}, {bias_.name, bias_.value}});
  }

  std::int64_t grad_calls = 0, kill_at_call = -1;

 private:
  std::int64_t dim() const { return emb_.value.shape()[1]; }
  // logits [B, C]; h gets the pooled features [B, D] (double).
  Tensor forward(const Tensor& tokens, const Tensor& mask, std::vector<double>& h) const {
    const std::int64_t b = tokens.shape()[0], l = tokens.shape()[1], d = dim(), c = num_labels();
    h.assign(static_cast<std::size_t>(b * d), 0.0);
    Tensor logits = Tensor::empty({b, c});
    for (std::int64_t i = 0; i < b; ++i) {
      std::int64_t count = 0;
      for (std::int64_t j = 0; j < l; ++j) {
        if (mask.data<std::int32_t>()[i * l + j] == 0) continue;
        ++count;
        const float* row = emb_.value.data<float>() + tokens.data<std::int32_t>()[i * l + j] * d;
        for (std::int64_t e = 0; e < d; ++e) h[static_cast<std::size_t>(i * d + e)] += row[e];
      }
      for (std::int64_t e = 0; e < d; ++e) h[static_cast<std::size_t>(i * d + e)] /= static_cast<double>(count);
      for (std::int64_t k = 0; k < c; ++k) {
        double z = bias_.value.data<float>()[k];
        for (std::int64_t e = 0; e < d; ++e)
          z += head_.value.data<float>()[k * d + e] * h[static_cast<std::size_t>(i * d + e)];
        logits.data<float>()[i * c + k] = static_cast<float>(z);
      }
    }
    return logits;
  }
  Parameter emb_, head_, bias_;
};

// "Source\tTarget" then n lines of 6..29 letters from a..f; label 1 when 'a'
// occurs more often than 'b', 0 when less (ties are drawn again).
std::string majority_tsv(std::int64_t n, std::uint64_t seed) {
  Rng rng(seed);
  std::string out = "Source\tTarget\n";
  for (std::int64_t i = 0; i < n;) {
    const std::uint64_t len = 6 + rng.below(24);
    std::string text;
    int balance = 0;
    for (std::uint64_t j = 0; j < len; ++j) {
      const char ch = static_cast<char>('a' + rng.below(6));
      balance += ch == 'a' ? 1 : ch == 'b' ? -1 : 0;
      text += ch;
    }
    if (balance == 0) continue;
    out += text + "\t" + (balance > 0 ? "1" : "0") + "\n";
    ++i;
  }
  return out;
}

const ClassifyData& train_set() {
  static const ClassifyData d = ClassifyData::parse(majority_tsv(400, 1), "majority_train.tsv");
  return d;
}
const ClassifyData& val_set() {
  static const ClassifyData d = ClassifyData::parse(majority_tsv(200, 2), "majority_val.tsv");
  return d;
}

std::string fresh_dir(const std::string& tag) {
  const fs::path d = fs::temp_directory_path() / ("mf_classify_" + std::to_string(::getpid()) + "_" + tag);
  fs::remove_all(d);
  return d.string();
}

TrainConfig small_config(const std::string& dir) {
  TrainConfig cfg = mf::testing::small_train_config(dir);
  cfg.task = "classify";
  return cfg;
}

std::vector<std::vector<float>> weights(SequenceClassifier& m) {
  std::vector<std::vector<float>> out;
  for (Parameter* p : m.parameters()) out.push_back(p->value.to_vector());
  return out;
}

}  // namespace

// The test model's gradients are real (the learning test depends on them).
TEST(ClassifyTrain, TestModelGradientsMatchFiniteDifferences) {
  MeanPoolClassifier m(4, 3, 5);
  const ClassifyData d = ClassifyData::parse("abca\t2\nbb\t0\ncab\t1\n", "g.tsv");
  Tensor tokens, mask, labels;
  fill_classify_batch(d, {0, 1, 2}, tokens, mask, labels);
  m.classify_loss(tokens, mask, labels, true);
  std::vector<Tensor> values, grads;
  for (Parameter* p : m.parameters()) values.push_back(p->value), grads.push_back(p->grad);
  const auto r = mf::testing::gradcheck([&] { return m.classify_loss(tokens, mask, labels, false); }, values, grads);
  EXPECT_TRUE(r.ok) << r.report;
}

TEST(ClassifyTrain, LearnsMajorityTaskAndLogsAccuracy) {
  const std::string dir = fresh_dir("learn");
  MeanPoolClassifier model(16, 2, 1);
  const ClassifyEvalResult before = evaluate(model, val_set(), 32);
  EXPECT_NEAR(before.loss, std::log(2.0), 0.05);
  TrainConfig cfg = small_config(dir);
  cfg.steps = 150;
  cfg.batch_size = 16;
  cfg.grad_accum = 1;
  cfg.lr = 0.05;
  cfg.warmup_steps = 10;
  cfg.grad_clip = 1.0;
  cfg.log_interval = 25;
  cfg.eval_interval = 50;
  cfg.checkpoint_interval = 0;
  const ClassifyTrainResult r = train(model, train_set(), val_set(), cfg);
  EXPECT_EQ(r.end_step, 150);
  EXPECT_EQ(r.val.examples, 200);
  EXPECT_GE(r.val.accuracy, 0.95) << "val accuracy " << r.val.accuracy << ", loss " << r.val.loss;
  EXPECT_LT(r.val.loss, 0.2);
  EXPECT_GT(r.tokens_per_s, 0);
  const auto lines = metric_lines(dir);
  ASSERT_EQ(lines.size(), 6u);  // steps 25, 50, ..., 150
  EXPECT_TRUE(lines[0]["val_accuracy"].is_null());
  for (std::size_t i : {1u, 3u, 5u}) {
    EXPECT_TRUE(lines[i]["val_accuracy"].is_number()) << i;
    EXPECT_TRUE(lines[i]["val_loss"].is_number()) << i;
  }
  EXPECT_EQ(lines[5]["val_accuracy"].get<double>(), r.val.accuracy);
  EXPECT_EQ(lines[5]["examples"], 150 * 16);
  for (const char* absent : {"val_bpb", "train_bpb"}) EXPECT_FALSE(lines[5].contains(absent)) << absent;
  for (const char* key : {"train_loss", "lr", "grad_norm", "tokens"}) EXPECT_TRUE(lines[5].contains(key)) << key;
  EXPECT_LT(lines[5]["train_loss"].get<double>(), lines[0]["train_loss"].get<double>());
  EXPECT_NE(read_file(dir + "/loss.svg").find("nats per sequence"), std::string::npos);
  const auto st = nlohmann::json::parse(read_file(dir + "/checkpoint/trainer_state.json"));
  EXPECT_EQ(st["config"]["task"], "classify");
  EXPECT_EQ(st["data"]["train"]["examples"], 400);
  fs::remove_all(dir);
}

TEST(ClassifyTrain, EvaluateMatchesPerExampleLoss) {
  MeanPoolClassifier m(8, 2, 3);
  double sum = 0;
  std::int64_t correct = 0;
  Tensor tokens, mask, labels;
  for (std::int64_t i = 0; i < val_set().size(); ++i) {
    fill_classify_batch(val_set(), {i}, tokens, mask, labels);
    sum += m.classify_loss(tokens, mask, labels, false);
    const Tensor z = m.class_logits(tokens, mask);
    correct += (z.data<float>()[1] > z.data<float>()[0] ? 1 : 0) == labels.data<std::int32_t>()[0];
  }
  const ClassifyEvalResult r = evaluate(m, val_set(), 7);  // batches of 7 padded to their own length
  EXPECT_EQ(r.examples, val_set().size());
  EXPECT_EQ(r.correct, correct);
  EXPECT_NEAR(r.loss, sum / static_cast<double>(val_set().size()), 1e-6);
  EXPECT_DOUBLE_EQ(r.accuracy, static_cast<double>(correct) / static_cast<double>(val_set().size()));
}

// Run A goes straight through; run B is killed mid-step 10 (after the step-8
// checkpoint) and a differently initialized model resumes it.
TEST(ClassifyTrain, ResumeAfterKillIsBitIdentical) {
  const std::string dir_a = fresh_dir("resume_a"), dir_b = fresh_dir("resume_b");
  MeanPoolClassifier a(8, 2, 7);
  const ClassifyTrainResult ra = train(a, train_set(), val_set(), small_config(dir_a));

  MeanPoolClassifier b(8, 2, 7);
  b.kill_at_call = 2 * 9 + 2;  // grad_accum 2: the second micro-batch of step 10
  EXPECT_EQ(mf::testing::exception_message_of([&] { train(b, train_set(), val_set(), small_config(dir_b)); }), "simulated kill");
  EXPECT_EQ(metric_lines(dir_b).size(), 3u);  // steps 3, 6, 9

  MeanPoolClassifier c(8, 2, 12345);
  const ClassifyTrainResult rc = train(c, train_set(), val_set(), small_config(dir_b), /*resume=*/true);
  EXPECT_EQ(rc.start_step, 8);
  EXPECT_EQ(weights(c), weights(a));
  EXPECT_EQ(rc.train_loss, ra.train_loss);
  EXPECT_EQ(rc.val.loss, ra.val.loss);
  EXPECT_EQ(rc.val.accuracy, ra.val.accuracy);
  EXPECT_EQ(metric_lines(dir_b), metric_lines(dir_a));
  const auto oa = load_safetensors(dir_a + "/checkpoint/optimizer.safetensors");
  const auto ob = load_safetensors(dir_b + "/checkpoint/optimizer.safetensors");
  for (const auto& [name, t] : oa.tensors) EXPECT_EQ(ob.tensors.at(name).to_vector(), t.to_vector()) << name;
  EXPECT_EQ(nlohmann::json::parse(read_file(dir_b + "/checkpoint/trainer_state.json"))["tokens_seen"],
            nlohmann::json::parse(read_file(dir_a + "/checkpoint/trainer_state.json"))["tokens_seen"]);

  // other data is refused on resume
  const ClassifyData other = ClassifyData::parse(majority_tsv(400, 3), "other.tsv");
  TrainConfig longer = small_config(dir_b);
  longer.steps = 14;
  EXPECT_NE(error_of([&] { train(c, other, val_set(), longer, true); }).find("the train data 'other.tsv'"),
            std::string::npos);
  EXPECT_NE(error_of([&] { train(c, train_set(), other, longer, true); }).find("the val data 'other.tsv'"),
            std::string::npos);
  fs::remove_all(dir_a);
  fs::remove_all(dir_b);
}

TEST(ClassifyTrain, RefusesMismatchedTaskLabelsAndLengths) {
  const std::string dir = fresh_dir("checks");
  MeanPoolClassifier m(4, 2, 1);
  TrainConfig lm = small_config(dir);
  lm.task = "lm";
  EXPECT_NE(error_of([&] { train(m, train_set(), val_set(), lm); }).find("trains with task \"classify\""),
            std::string::npos);
  TrainConfig bad = small_config(dir);
  bad.task = "regress";
  EXPECT_NE(error_of([&] { train(m, train_set(), val_set(), bad); }).find("task must be \"lm\", \"classify\" or \"sequence\""),
            std::string::npos);
  const ClassifyData three = ClassifyData::parse("ab\t0\ncd\t2\n", "three.tsv");
  EXPECT_NE(error_of([&] { train(m, three, val_set(), small_config(dir)); })
                .find("three.tsv:2: label 2 is outside the model's 2 labels"),
            std::string::npos);
  TrainConfig short_len = small_config(dir);
  short_len.seq_len = 8;
  EXPECT_NE(error_of([&] { train(m, train_set(), val_set(), short_len); })
                .find("bytes, longer than seq_len 8"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(dir));  // refused before anything was written
}
