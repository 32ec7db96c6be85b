// Adapter from the FNet transform (fnet.h) to the token-mixer interface.
// Padding: the rows of padding tokens are zeroed before the transform (so
// their content cannot leak into real tokens); the transform still runs over
// the padded length, as the paper's fixed-length padded inputs do, so the
// amount of padding changes the result (documented, not hidden).
#include "nn/fnet/fnet_mixer.h"

#include <cstring>

#include "core/error.h"
#include "nn/fnet/fnet.h"

namespace mf {

namespace {

constexpr const char* kLimits =
    "FNet's Fourier transform mixes every position with every other, including later ones: encoder only, no "
    "causal form and no generation";

const MixerCapabilities kCaps{.causal = false, .bidirectional = true, .generation = false, .variable_length = true,
                              .padding = true};

struct NothingSaved : MixerSaved {
  void tensors(std::vector<const Tensor*>&) const override {}
};

// Zeroes the rows of padding tokens of t [B*L, C] (mask int32 [B, L], 0 = padding), in place.
void zero_padding_rows(const Tensor& t, const Tensor& mask) {
  const std::int64_t rows = t.size(0), c = t.size(1);
  const std::int32_t* m = mask.data<std::int32_t>();
  for (std::int64_t r = 0; r < rows; ++r)
    if (m[r] == 0) std::memset(t.data<float>() + r * c, 0, static_cast<std::size_t>(c) * sizeof(float));
}

class FnetMixer final : public TokenMixer {
 public:
  explicit FnetMixer(FnetPath path) : TokenMixer("fnet", kCaps, kLimits), path_(path) {}

  std::unique_ptr<MixerSaved> forward(const Tensor& y, const Tensor& x, const MixerCall& call,
                                      bool for_backward) override {
    check_call(call);
    Tensor in = x;
    if (call.key_padding_mask.defined()) {
      in = x.clone();
      zero_padding_rows(in, call.key_padding_mask);
    }
    fnet_forward(y, in, call.batch, call.seq_len, path_);
    if (!for_backward) return nullptr;
    return std::make_unique<NothingSaved>();
  }

  // y = Re(F_L (M x) F_C) is linear and self-adjoint up to the mask:
  // dx = M Re(F_L dy F_C).
  void backward(const Tensor& dx, const Tensor& dy, const Tensor&, const MixerSaved&,
                const MixerCall& call) override {
    fnet_backward(dx, dy, call.batch, call.seq_len, path_);
    if (call.key_padding_mask.defined()) zero_padding_rows(dx, call.key_padding_mask);
  }

 private:
  FnetPath path_;
};

}  // namespace

TokenMixerEntry fnet_mixer_entry() {
  return {"fnet",
          "FNet (Lee-Thorp et al. 2021): y = Re(DFT_seq(DFT_hidden(x))), no parameters; DFT-as-GEMM for short "
          "sequences, FFT beyond the measured crossover",
          kCaps,
          kLimits,
          {choice_option("path", "auto", {"auto", "dft", "fft"},
                         "auto: DFT-as-GEMM or FFT by the measured crossover per (L, C); dft, fft: force one")},
          [](const MixerContext& ctx, ParamStore&) -> std::unique_ptr<TokenMixer> {
            const std::string p = ctx.options.value("path", "auto");
            return std::make_unique<FnetMixer>(p == "dft" ? FnetPath::Dft : p == "fft" ? FnetPath::Fft : FnetPath::Auto);
          }};
}

}  // namespace mf
