// AOTInductor packages (.pt2) behind torchbridge::Backend: native code compiled ahead of time by
// torch._inductor.aoti_compile_and_package, loaded and run by LibTorch's AOTIModelPackageLoader
// (libtorch_cpu). The Runtime has already read the manifest, checked the torch version, CPU
// features and device, and validates every input against the manifest before calling forward.
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include "backend.hpp"
#include "torchbridge/runtime.hpp"

namespace torchbridge {
namespace {

constexpr char kWhole[] =
    "is not supported for .pt2 artifacts: AOTInductor compiles the model as a whole, without its "
    "submodules (export the submodule itself, or use the TorchScript format)";

class AotiBackend final : public Backend {
 public:
  AotiBackend(const std::string& path, const at::Device& device)
      // One runner: concurrent forwards wait for it inside the loader (the container is
      // thread-safe), which keeps memory at one set of activation buffers.
      : loader_(path, "model", /*run_single_threaded=*/false, /*num_runners=*/1,
                device.is_cuda() && device.has_index() ? device.index() : -1) {}

  std::vector<at::Tensor> forward(const std::vector<at::Tensor>& inputs) const override {
    // The compiled kernels index memory with the strides seen at export (contiguous).
    std::vector<at::Tensor> contiguous;
    contiguous.reserve(inputs.size());
    for (const auto& input : inputs) contiguous.push_back(input.contiguous());
    return loader_.run(contiguous);
  }

  std::vector<at::Tensor> forward_submodule(const std::string& name, const std::vector<at::Tensor>&) const override {
    throw Error(ErrorCode::kInvalidArgument, "forward_submodule('" + name + "') " + kWhole);
  }

  std::vector<std::string> submodule_names() const override {
    throw Error(ErrorCode::kInvalidArgument, std::string("submodule_names() ") + kWhole);
  }

 private:
  // run() is not declared const, but it leaves the loaded model unchanged.
  mutable torch::inductor::AOTIModelPackageLoader loader_;
};

}  // namespace

std::unique_ptr<Backend> make_aoti_backend(const std::string& path, const at::Device& device) {
  return std::make_unique<AotiBackend>(path, device);
}

}  // namespace torchbridge
