// stsun_example PACKAGE.pt2 INPUT.bin OUTPUT_PREFIX [REPEATS] [--threads N]
// INPUT.bin: int64 rank, int64 dims[rank], float32 data (row-major; NaN = nodata), as written
// by stsun.runtime.cpp_io.write_tensor. Writes OUTPUT_PREFIX.logits.bin (float32) and
// OUTPUT_PREFIX.maps.bin (uint8, or uint16 for large scd class sets: the bands stsun predict
// writes, nodata 255 / 65535) in the same format and prints the latency per run.
// --threads: intra-op threads (default: half the hardware threads, at least one: on a box that
// also runs other work, all of them oversubscribe the cores and OpenMP's spinning threads wait
// on each other, 8x slower measured on a busy 2-core machine).
#include "stsun_engine.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <thread>
#include <vector>

static bool read_tensor(const std::string& path, at::Tensor* out, std::string* error) {
  std::ifstream f(path, std::ios::binary);
  int64_t rank = 0;
  if (!f.read(reinterpret_cast<char*>(&rank), sizeof rank) || rank < 1 || rank > 8) {
    *error = "cannot read tensor header from " + path;
    return false;
  }
  std::vector<int64_t> dims(rank);
  f.read(reinterpret_cast<char*>(dims.data()), rank * sizeof(int64_t));
  *out = torch::empty(dims, torch::kFloat);
  f.read(reinterpret_cast<char*>(out->data_ptr<float>()), out->numel() * sizeof(float));
  if (!f) {
    *error = "truncated tensor data in " + path;
    return false;
  }
  return true;
}

static void write_tensor(const std::string& path, const at::Tensor& t) {
  std::ofstream f(path, std::ios::binary);
  int64_t rank = t.dim();
  f.write(reinterpret_cast<const char*>(&rank), sizeof rank);
  for (auto d : t.sizes()) f.write(reinterpret_cast<const char*>(&d), sizeof d);
  auto c = t.contiguous();
  f.write(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
}

int main(int argc, char** argv) {
  std::vector<std::string> args;
  int threads = std::max(1u, std::thread::hardware_concurrency() / 2);
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else {
      args.emplace_back(argv[i]);
    }
  }
  if (args.size() < 3 || threads < 1) {
    std::cerr << "usage: " << argv[0] << " PACKAGE.pt2 INPUT.bin OUTPUT_PREFIX [REPEATS] [--threads N]\n";
    return 2;
  }
  at::set_num_threads(threads);
  std::string error;
  auto engine = stsun::Engine::open(args[0], &error);
  if (!engine) {
    std::cerr << "error: " << error << "\n";
    return 1;
  }
  at::Tensor x;
  if (!read_tensor(args[1], &x, &error)) {
    std::cerr << "error: " << error << "\n";
    return 1;
  }
  int repeats = args.size() > 3 ? std::atoi(args[3].c_str()) : 1;
  stsun::Result result;
  std::vector<double> ms;
  for (int i = 0; i < std::max(1, repeats); ++i) {
    auto start = std::chrono::steady_clock::now();
    if (!engine->run(x, &result, &error)) {
      std::cerr << "error: " << error << "\n";
      return 1;
    }
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  write_tensor(args[2] + ".logits.bin", result.logits);
  write_tensor(args[2] + ".maps.bin", result.maps);
  std::sort(ms.begin(), ms.end());
  std::printf("profile %s batch %lld, %d threads: median %.2f ms over %zu runs\n", engine->profile().name.c_str(),
              static_cast<long long>(x.size(0)), threads, ms[ms.size() / 2], ms.size());
  return 0;
}
