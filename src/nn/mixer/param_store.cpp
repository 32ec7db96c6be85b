// ParamList: parameters in creation order, initialized from (seed, index).
#include "nn/mixer/param_store.h"

#include "core/error.h"
#include "core/rng.h"

namespace mf {

ParamInitFn ParamList::standard(ParamInit init) const {
  const auto std_dev = static_cast<float>(init_std_);
  switch (init) {
    case ParamInit::Normal:
      return [std_dev](Tensor& v, std::uint64_t seed, std::uint64_t stream) { fill_normal(v, seed, 0.0f, std_dev, stream); };
    case ParamInit::Ones: return [](Tensor& v, std::uint64_t, std::uint64_t) { v.fill(1.0f); };
    case ParamInit::Zeros: return [](Tensor& v, std::uint64_t, std::uint64_t) { v.fill(0.0f); };
  }
  fail("[params] internal: unknown ParamInit");
}

Parameter* ParamList::make(const std::string& name, const Shape& shape, const ParamInitFn& init, bool weight_decay) {
  MF_CHECK(find(name) == nullptr, "[params] parameter '", name, "' is created twice");
  Tensor v = Tensor::empty(shape);
  init(v, seed_, params_.size());
  params_.push_back(std::make_unique<Parameter>(name, std::move(v), weight_decay));
  return params_.back().get();
}

Parameter* ParamList::add(const std::string& name, const Shape& shape, ParamInit init, bool weight_decay) {
  return make(prefix_ + name, shape, standard(init), weight_decay);
}

Parameter* ParamList::add_custom(const std::string& name, const Shape& shape, const ParamInitFn& init,
                                 bool weight_decay) {
  return make(prefix_ + name, shape, init, weight_decay);
}

Parameter* ParamList::shared(const std::string& name, const Shape& shape, const ParamInitFn& init,
                             bool weight_decay) {
  if (Parameter* p = find(name)) {
    MF_CHECK(p->value.shape() == shape, "[params] shared parameter '", name, "' was created with shape ",
             shape_str(p->value.shape()), " but is asked for with ", shape_str(shape));
    return p;
  }
  return make(name, shape, init, weight_decay);
}

Parameter* ParamList::add_global(const std::string& name, const Shape& shape, ParamInit init, bool weight_decay) {
  return make(name, shape, standard(init), weight_decay);
}

Parameter* ParamList::find(const std::string& name) const {
  for (const auto& p : params_)
    if (p->name == name) return p.get();
  return nullptr;
}

}  // namespace mf
