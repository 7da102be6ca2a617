// Loading shared libraries at run time: LibTorch's own (libtorch_cuda.so, libtorch.so) and
// torchbridge's CUDA graph plugin, each from the folder its neighbour came from.
#include "libraries.hpp"

#include <ATen/Parallel.h>
#include <dlfcn.h>

#include <cstdio>
#include <mutex>
#include <set>

#include "torchbridge/runtime.hpp"

namespace torchbridge {

// The folder (with a trailing '/') of the shared library that holds `symbol`; "" if unknown.
std::string library_folder(const void* symbol) {
  Dl_info info{};
  if (dladdr(symbol, &info) == 0 || info.dli_fname == nullptr) return "";
  const std::string path = info.dli_fname;
  return path.substr(0, path.find_last_of('/') + 1);
}

// The CUDA graph plugin (cuda_graphs.hpp), from the folder libtorchbridge came from; nullptr and
// `why` when this build or LibTorch has none. Loaded once per process, after libtorch_cuda.so.
cuda::CaptureFn cuda_graph_plugin(std::string& why) {
  static std::mutex mutex;
  static bool tried = false;
  static cuda::CaptureFn capture = nullptr;
  static std::string reason;
  const std::lock_guard<std::mutex> lock(mutex);
  if (!tried) {
    tried = true;
    const std::string folder = library_folder(reinterpret_cast<const void*>(&torchbridge::version));
    if (folder.empty()) {
      reason = "cannot locate libtorchbridge";
    } else {
      const std::string path = folder + cuda::kPluginFile;
      if (void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL); handle == nullptr) {
        const char* error = dlerror();
        reason = std::string(cuda::kPluginFile) + " not loaded (torchbridge was built without CUDA headers, or " +
                 (error ? error : "it is missing") + ")";
      } else if (capture = reinterpret_cast<cuda::CaptureFn>(dlsym(handle, cuda::kCaptureSymbol)); capture == nullptr) {
        reason = std::string(cuda::kPluginFile) + " lacks " + cuda::kCaptureSymbol;
      }
    }
  }
  why = reason;
  return capture;
}

// libtorchbridge links libtorch_cpu only. Two things need more of LibTorch, loaded here from the
// folder libtorch_cpu came from: a CUDA device needs libtorch_cuda.so (a CPU-only LibTorch has
// none: CUDA then stays unavailable), and the code in an AOTInductor package links libtorch.so.
// RTLD_GLOBAL: kernels register with the dispatcher and the symbols serve later libraries.
void load_torch_library(const std::string& name) {
  static std::mutex mutex;
  static std::set<std::string> loaded;
  const std::lock_guard<std::mutex> lock(mutex);
  if (!loaded.insert(name).second) return;
  const std::string folder = library_folder(reinterpret_cast<const void*>(&at::get_num_threads));
  if (folder.empty()) return;
  if (dlopen((folder + name).c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr)
    std::fprintf(stderr, "torchbridge: cannot load %s (%s)\n", name.c_str(), dlerror());
}

}  // namespace torchbridge
