// STSUN engine for C++ services: loads an AOTInductor package written by
// `python export/build_engine.py --profile NAME --cpp`, checks inputs against the profile
// stored in it, runs a batch and returns logits and the map bands `stsun predict` writes
// (uint8 or uint16, with its nodata value where an input pixel is NaN). Errors are returned,
// never thrown past this API or aborted on.
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
  at::Tensor logits;  // (B, T_out, C_out, H, W) float32 (NaN inputs read as 0)
  // (B, bands, H, W) as stsun predict writes them (stsun.classmaps.map_layout): per date the class
  // (argmax, or logit > 0 for one channel); for scd then the from-to codes 1 + from * C_out + to
  // (0: no change) between consecutive dates. uint8 with nodata 255 (uint16 / 65535 when the
  // codes need it) where any band of any date of the pixel is NaN.
  at::Tensor maps;
  int64_t nodata = 255;
};

class Engine {
 public:
  // nullptr and *error set on failure.
  static std::unique_ptr<Engine> open(const std::string& package_path, std::string* error);
  ~Engine();

  const Profile& profile() const { return profile_; }
  // x: a CPU tensor, moved to the package's device. false and *error set on failure (bad shape,
  // dtype, infinite values, runtime error). NaN marks nodata, as stsun predict's masked pixels.
  bool run(const at::Tensor& x, Result* out, std::string* error) const;

 private:
  Engine() = default;
  Profile profile_;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
};

}  // namespace stsun
