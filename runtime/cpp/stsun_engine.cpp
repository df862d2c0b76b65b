#include "stsun_engine.hpp"

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>

#include <sstream>

namespace stsun {

Engine::~Engine() = default;

std::unique_ptr<Engine> Engine::open(const std::string& package_path, std::string* error) {
  try {
    std::unique_ptr<Engine> engine(new Engine());
    engine->loader_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(package_path);
    auto meta = engine->loader_->get_metadata();
    auto need = [&](const char* key) -> std::string {
      auto it = meta.find(key);
      if (it == meta.end()) throw std::runtime_error(std::string("package has no '") + key + "' metadata: not built by stsun");
      return it->second;
    };
    Profile& p = engine->profile_;
    p.name = need("profile");
    p.task = need("task");
    p.t_in = std::stoll(need("t_in"));
    p.c_in = std::stoll(need("c_in"));
    p.tile_size = std::stoll(need("tile_size"));
    p.t_out = std::stoll(need("t_out"));
    p.c_out = std::stoll(need("c_out"));
    p.classes_json = need("classes");
    if (meta.count("device")) p.device = meta.at("device");  // packages built before it was recorded: cpu
    return engine;
  } catch (const std::exception& e) {
    *error = "could not load STSUN package " + package_path + ": " + e.what();
    return nullptr;
  }
}

bool Engine::run(const at::Tensor& x, Result* out, std::string* error) const {
  const Profile& p = profile_;
  std::ostringstream want;
  want << "(B, T_in=" << p.t_in << ", C_in=" << p.c_in << ", H=" << p.tile_size << ", W=" << p.tile_size << ")";
  if (x.dim() != 5 || x.size(1) != p.t_in || x.size(2) != p.c_in || x.size(3) != p.tile_size ||
      x.size(4) != p.tile_size || x.size(0) < 1) {
    std::ostringstream got;
    got << x.sizes();
    *error = "profile '" + p.name + "' expects input " + want.str() + ", got " + got.str();
    return false;
  }
  if (x.scalar_type() != at::kFloat) {
    *error = std::string("expected float32 input, got ") + c10::toString(x.scalar_type());
    return false;
  }
  if (torch::isinf(x).any().item<bool>()) {
    *error = "input contains infinite values; mark nodata as NaN";
    return false;
  }
  try {
    torch::NoGradGuard no_grad;
    auto nodata = torch::isnan(x).any(2).any(1);  // (B, H, W): any band of any date missing
    auto outputs = loader_->run({torch::nan_to_num(x, 0.0).to(c10::Device(p.device)).contiguous()});
    out->logits = outputs.at(0).cpu();
    auto cls = p.c_out == 1 ? (out->logits.select(2, 0) > 0).to(at::kLong) : out->logits.argmax(2);
    at::Tensor maps = cls;
    if (p.task == "scd") {  // from-to codes between consecutive dates, 0 where the class stays
      auto before = cls.narrow(1, 0, p.t_out - 1), after = cls.narrow(1, 1, p.t_out - 1);
      maps = torch::cat({cls, torch::where(before != after, 1 + before * p.c_out + after, torch::zeros_like(before))}, 1);
    }
    bool wide = p.task == "scd" && 1 + p.c_out * p.c_out > 254;  // as stsun.classmaps.map_layout
    out->nodata = wide ? 65535 : 255;
    maps.masked_fill_(nodata.unsqueeze(1), out->nodata);
    out->maps = maps.to(wide ? at::kUInt16 : at::kByte);
    return true;
  } catch (const std::exception& e) {
    *error = std::string("inference failed: ") + e.what();
    return false;
  }
}

}  // namespace stsun
