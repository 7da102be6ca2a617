// The artifact formats behind torchbridge::Runtime. Runtime owns validation, devices, threads
// and the manifest; a Backend only runs a loaded model.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <memory>
#include <string>
#include <vector>

namespace torchbridge {

class Backend {
 public:
  virtual ~Backend() = default;
  // Inputs are already validated and on the runtime's device; called under c10::InferenceMode.
  virtual std::vector<at::Tensor> forward(const std::vector<at::Tensor>& inputs) const = 0;
  virtual std::vector<at::Tensor> forward_submodule(const std::string& name,
                                                    const std::vector<at::Tensor>& inputs) const = 0;
  virtual std::vector<std::string> submodule_names() const = 0;
  /// The speed passes applied at load ("" when none); drop_optimization() returns to the module
  /// as loaded, e.g. when the optimized one misses the golden outputs.
  virtual std::string optimization() const { return ""; }
  /// Input shapes where a faster variant was rejected, and why ("" when none).
  virtual std::string fallbacks() const { return ""; }
  /// What runs at these inputs' shapes ("" when not decided yet, or not applicable).
  virtual std::string variant_at(const std::vector<at::Tensor>& /*inputs*/) const { return ""; }
  virtual void drop_optimization() {}
};

// An AOTInductor package (.pt2); aoti_backend.cpp. Throws what LibTorch's loader throws.
std::unique_ptr<Backend> make_aoti_backend(const std::string& path, const at::Device& device);

}  // namespace torchbridge
