// The artifact formats behind torchbridge::Runtime. Runtime owns validation, devices, threads
// and the manifest; a Backend only runs a loaded model.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>
#include <c10/core/Device.h>

#include <exception>

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

// A TorchScript archive (.pt); torchscript_backend.cpp. With optimize, faster variants are tried and
// checked at each input shape; `rtol`: how far one may stray from the module as loaded, relative to
// the largest |output|. `order`: the CPU variants in the order export measured them (the manifest's
// runtime.variants), fastest first; empty: the built-in order. `large_from` >= 2: from that batch
// size on, `large_order` instead (runtime.large_batches; empty there: the module as loaded).
class TorchScriptModel : public Backend {
 public:
  /// Why the model runs as loaded although optimize was asked for ("" when it does not).
  virtual const std::string& failure() const = 0;
  /// Batches of at least `batch` run the optimized module, smaller ones the module as loaded.
  virtual void use_optimized_from(int64_t batch) = 0;
  virtual int64_t optimized_from_batch() const = 0;
};
std::unique_ptr<TorchScriptModel> make_torchscript_backend(const std::string& path, const at::Device& device,
                                                           at::ScalarType precision, bool optimize, bool fuse,
                                                           bool cuda_graphs, double rtol,
                                                           const std::vector<std::string>& order = {},
                                                           int64_t large_from = 0,
                                                           const std::vector<std::string>& large_order = {});

// Helpers the backends share with the runtime (runtime.cpp).
std::string shape_string(c10::IntArrayRef shape);
/// What LibTorch said, without the C++ stack its errors append.
std::string libtorch_message(const std::exception& error);
/// The first non-blank line of libtorch_message.
std::string first_line(const std::exception& error);
/// A model's return value as its tensors, in order (tuples, lists, dicts; None leaves skipped).
void flatten_outputs(const c10::IValue& value, std::vector<at::Tensor>& out);

// An AOTInductor package (.pt2); aoti_backend.cpp. Throws what LibTorch's loader throws.
std::unique_ptr<Backend> make_aoti_backend(const std::string& path, const at::Device& device);

}  // namespace torchbridge
