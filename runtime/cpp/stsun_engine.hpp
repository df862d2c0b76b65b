// STSUN engine for C++ services: loads an AOTInductor package written by
// `python export/build_engine.py --profile NAME --cpp`, checks inputs against the profile
// stored in it, runs a batch and returns logits and class maps. Errors are returned, never
// thrown past this API or aborted on.
#pragma once

#include <ATen/Tensor.h>

#include <memory>
#include <string>

namespace torch::inductor {
class AOTIModelPackageLoader;
}

namespace stsun {

struct Profile {
  std::string name, task;
  int64_t t_in = 0, c_in = 0, tile_size = 0, t_out = 0, c_out = 0;
  std::string classes_json;
  std::string device = "cpu";  // where the package's code runs ("cpu" or "cuda")
};

struct Result {  // on the CPU, whatever the package's device
  at::Tensor logits;   // (B, T_out, C_out, H, W) float32
  at::Tensor classes;  // (B, T_out, H, W) int64: argmax, or logit > 0 for one channel
};

class Engine {
 public:
  // nullptr and *error set on failure.
  static std::unique_ptr<Engine> open(const std::string& package_path, std::string* error);
  ~Engine();

  const Profile& profile() const { return profile_; }
  // x: a CPU tensor, moved to the package's device. false and *error set on failure (bad
  // shape, dtype, non-finite values, runtime error).
  bool run(const at::Tensor& x, Result* out, std::string* error) const;

 private:
  Engine() = default;
  Profile profile_;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
};

}  // namespace stsun
