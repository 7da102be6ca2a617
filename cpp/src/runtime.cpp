#include "torchbridge/runtime.hpp"

#include <ATen/Config.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/Utils.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/cuda.h>
#include <torch/csrc/jit/codegen/onednn/interface.h>
#include <torch/csrc/jit/passes/pass_manager.h>
#include <torch/script.h>
#include <torch/version.h>

#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <future>
#include <map>
#include <optional>
#include <mutex>
#include <set>
#include <sstream>

#include "backend.hpp"
#include "cuda_graphs.hpp"
#include "json.hpp"

#ifndef TORCHBRIDGE_VERSION
#define TORCHBRIDGE_VERSION "0.0.0"
#endif

namespace torchbridge {

const char* version() { return TORCHBRIDGE_VERSION; }

namespace {

// Both formats are zip archives read by PyTorchStreamReader; the manifest sits under extra/ in both.
constexpr char kManifestRecord[] = "extra/torchbridge/manifest.json";
constexpr char kTorchScriptRecord[] = "constants.pkl";  // written by torch.jit.save
constexpr char kPt2FormatRecord[] = "archive_format";   // "pt2" in a torch.export / AOTInductor package

std::string shape_string(c10::IntArrayRef shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ", ";
    out += shape[i] < 0 ? "?" : std::to_string(shape[i]);
  }
  return out + "]";
}

std::string tensor_string(const at::Tensor& tensor) {
  if (!tensor.defined()) return "an undefined tensor";
  std::string dtype;
  try {
    dtype = dtype_name(tensor.scalar_type());
  } catch (const Error&) {
    dtype = c10::toString(tensor.scalar_type());
  }
  return dtype + shape_string(tensor.sizes());
}

TensorSpec parse_spec(const json::Value& value, const std::string& what) {
  TensorSpec spec;
  spec.name = value.has("name") ? value.at("name").as_string(what + ".name") : "";
  spec.dtype = dtype_from_name(value.at("dtype").as_string(what + ".dtype"));
  for (const auto& dim : value.at("shape").as_array(what + ".shape")) {
    spec.shape.push_back(dim.is_null() ? -1 : static_cast<int64_t>(dim.as_number(what + ".shape")));
  }
  if (value.has("min_shape") && value.has("max_shape")) {
    for (const auto& dim : value.at("min_shape").as_array(what + ".min_shape"))
      spec.min_shape.push_back(static_cast<int64_t>(dim.as_number(what + ".min_shape")));
    for (const auto& dim : value.at("max_shape").as_array(what + ".max_shape"))
      spec.max_shape.push_back(static_cast<int64_t>(dim.as_number(what + ".max_shape")));
    if (spec.min_shape.size() != spec.shape.size() || spec.max_shape.size() != spec.shape.size())
      throw std::runtime_error(what + ": min_shape/max_shape must have one entry per dimension");
  }
  return spec;
}

Manifest parse_manifest(const std::string& text, const std::string& path) {
  Manifest manifest;
  manifest.present = true;
  manifest.json = text;
  try {
    const json::Value root = json::parse(text);
    manifest.format_version = static_cast<int>(root.at("format_version").as_number("format_version"));
    if (manifest.format_version != 1)
      throw std::runtime_error("format_version " + std::to_string(manifest.format_version) +
                               " is newer than this runtime understands (1); upgrade torchbridge");
    manifest.format = root.at("format").as_string("format");
    manifest.torchbridge_version = root.at("torchbridge_version").as_string("torchbridge_version");
    manifest.torch_version = root.at("torch_version").as_string("torch_version");
    manifest.method = root.has("method") ? root.at("method").as_string("method") : "";
    manifest.model = root.has("model") ? root.at("model").as_string("model") : "";
    if (root.has("runtime") && root.at("runtime").has("optimize_from_batch"))
      manifest.optimize_from_batch =
          static_cast<int64_t>(root.at("runtime").at("optimize_from_batch").as_number("runtime.optimize_from_batch"));
    if (root.has("quantized_engine") && !root.at("quantized_engine").is_null())
      manifest.quantized_engine = root.at("quantized_engine").as_string("quantized_engine");
    const auto& inputs = root.at("inputs").as_array("inputs");
    for (size_t i = 0; i < inputs.size(); ++i) manifest.inputs.push_back(parse_spec(inputs[i], "inputs[" + std::to_string(i) + "]"));
    const auto& outputs = root.at("outputs").as_array("outputs");
    for (size_t i = 0; i < outputs.size(); ++i) manifest.outputs.push_back(parse_spec(outputs[i], "outputs[" + std::to_string(i) + "]"));
    if (root.has("tolerance")) {
      manifest.rtol = root.at("tolerance").at("rtol").as_number("tolerance.rtol");
      manifest.atol = root.at("tolerance").at("atol").as_number("tolerance.atol");
    }
  } catch (const Error& error) {
    throw Error(ErrorCode::kArtifact, path + ": bad torchbridge manifest: " + error.what());
  } catch (const std::exception& error) {
    throw Error(ErrorCode::kArtifact, path + ": bad torchbridge manifest: " + error.what());
  }
  return manifest;
}

std::string read_record(caffe2::serialize::PyTorchStreamReader& reader, const std::string& name) {
  auto [data, size] = reader.getRecord(name);
  return std::string(static_cast<const char*>(data.get()), size);
}

std::vector<std::string> golden_names(const json::Value& root, const char* key) {
  std::vector<std::string> names;
  if (!root.has("golden")) return names;
  for (const auto& name : root.at("golden").at(key).as_array(std::string("golden.") + key))
    names.push_back(name.as_string("golden entry"));
  return names;
}

at::QEngine qengine_from_name(const std::string& name, const std::string& path) {
  static const std::vector<std::pair<std::string, at::QEngine>> engines = {
      {"x86", at::QEngine::X86}, {"fbgemm", at::QEngine::FBGEMM}, {"qnnpack", at::QEngine::QNNPACK},
      {"onednn", at::QEngine::ONEDNN}};
  std::string available;
  for (at::QEngine engine : at::globalContext().supportedQEngines()) {
    for (const auto& [engine_name, value] : engines) {
      if (value != engine) continue;
      if (engine_name == name) return value;
      available += (available.empty() ? "" : ", ") + engine_name;
    }
  }
  throw Error(ErrorCode::kInvalidArgument, path + ": artifact needs quantized engine '" + name +
                                               "', which this LibTorch lacks (available: " +
                                               (available.empty() ? "none" : available) + ")");
}

// "2.14.1+cu130" -> {2, 14}; {-1, -1} when unreadable.
std::pair<int, int> major_minor(const std::string& version) {
  int major = -1, minor = -1;
  if (std::sscanf(version.c_str(), "%d.%d", &major, &minor) != 2) return {-1, -1};
  return {major, minor};
}

// An AOTInductor package is native code built against one torch release and one CPU family;
// refuse what would otherwise fail inside the loader or crash (SIGILL) on the first forward.
void check_aoti_package(const Manifest& manifest, const json::Value& root, const at::Device& device,
                        const std::string& path) {
  if (!manifest.present) return;  // a .pt2 exported without torchbridge: nothing recorded to check
  const auto [major, minor] = major_minor(manifest.torch_version);
  if (major != TORCH_VERSION_MAJOR || minor != TORCH_VERSION_MINOR)
    throw Error(ErrorCode::kArtifact,
                path + ": this .pt2 was built with torch " + manifest.torch_version + ", but this runtime's LibTorch is " +
                    TORCH_VERSION + "; an AOTInductor package holds native code compiled against one torch release, " +
                    "so re-export it with torch " + std::to_string(TORCH_VERSION_MAJOR) + "." +
                    std::to_string(TORCH_VERSION_MINOR));
  if (!root.has("aoti")) return;
  const json::Value& aoti = root.at("aoti");
  if (aoti.has("device")) {
    const std::string package_device = aoti.at("device").as_string("aoti.device");
    if (package_device != c10::DeviceTypeName(device.type(), /*lower_case=*/true))
      throw Error(ErrorCode::kInvalidArgument, path + ": this .pt2 was compiled for " + package_device +
                                                   " and cannot run on device '" + device.str() +
                                                   "' (export it again on a machine with that device)");
  }
  if (aoti.has("required_cpu_features")) {
    const auto capabilities = at::cpu::get_cpu_capabilities();
    std::string missing;
    for (const auto& feature : aoti.at("required_cpu_features").as_array("aoti.required_cpu_features")) {
      const std::string name = feature.as_string("aoti.required_cpu_features");
      const auto found = capabilities.find(name);
      if (found == capabilities.end() || !found->second.isBool() || !found->second.toBool())
        missing += (missing.empty() ? "" : ", ") + name;
    }
    if (!missing.empty()) {
      const std::string isa = aoti.has("isa") ? aoti.at("isa").as_string("aoti.isa") : "native";
      throw Error(ErrorCode::kArtifact, path + ": this .pt2 was compiled (isa '" + isa +
                                            "') for CPU features this CPU lacks: " + missing +
                                            "; export it with isa='x86-64-v3' (any AVX2 CPU) or on this machine");
    }
  }
}

void flatten_outputs(const c10::IValue& value, std::vector<at::Tensor>& out) {
  if (value.isTensor()) {
    out.push_back(value.toTensor());
  } else if (value.isTuple()) {
    for (const auto& element : value.toTupleRef().elements()) flatten_outputs(element, out);
  } else if (value.isList()) {
    for (const auto& element : value.toListRef()) flatten_outputs(element, out);
  } else {
    throw Error(ErrorCode::kRuntime, std::string("model returned a ") + value.tagKind() +
                                         "; torchbridge expects a tensor or a tuple/list of tensors");
  }
}

std::mutex& fusion_mutex() {
  static std::mutex mutex;
  return mutex;
}

}  // namespace

// LibTorch's own switch (RegisterLlgaFuseGraph::setEnabled) cannot register the pass again once
// cleared, so the scope registers and clears the pass itself.
// A LibTorch built without oneDNN has no fuser: the scope then registers nothing, and the
// runtime runs optimize_for_inference instead.
OneDnnFusionScope::OneDnnFusionScope() : lock_(fusion_mutex()) {
#if AT_MKLDNN_ENABLED()
  pass_ = torch::jit::registerPrePass(torch::jit::fuser::onednn::fuseGraph);
#endif
}
OneDnnFusionScope::~OneDnnFusionScope() {
#if AT_MKLDNN_ENABLED()
  torch::jit::clearPrePass(pass_);
#endif
}

namespace {

// Something made once per input shape (a fused module, a CUDA graph) on the first call at that
// shape. Only the map is locked while it is made: calls at shapes made already go on, calls at the
// same new shape wait for it. A make that throws is not kept: the callers waiting get the error and
// a later call at that shape tries again. Past `capacity` shapes get() returns nothing.
template <typename T>
class PerShape {
 public:
  explicit PerShape(size_t capacity) : capacity_(capacity) {}

  std::optional<T> get(const std::vector<at::Tensor>& inputs, const std::function<T()>& make) {
    std::vector<int64_t> key;
    for (const auto& input : inputs) {
      key.push_back(input.dim());
      key.insert(key.end(), input.sizes().begin(), input.sizes().end());
      key.push_back(input.dim() == 4 && input.is_contiguous(at::MemoryFormat::ChannelsLast) ? 1 : 0);
    }
    std::shared_future<T> entry;
    std::promise<T> making;
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (const auto found = entries_.find(key); found != entries_.end()) return found->second.get();
      if (entries_.size() >= capacity_) return std::nullopt;
      entry = making.get_future().share();
      entries_.emplace(key, entry);
    }
    try {
      making.set_value(make());
    } catch (...) {
      {
        const std::lock_guard<std::mutex> lock(mutex_);
        entries_.erase(key);
      }
      making.set_exception(std::current_exception());
      throw;
    }
    return entry.get();
  }

  void clear() {
    const std::lock_guard<std::mutex> lock(mutex_);
    entries_.clear();
  }

 private:
  size_t capacity_;
  std::mutex mutex_;
  std::map<std::vector<int64_t>, std::shared_future<T>> entries_;
};

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

std::string shapes_string(const std::vector<at::Tensor>& inputs) {
  std::string out;
  for (const auto& input : inputs) out += (out.empty() ? "" : ", ") + shape_string(input.sizes());
  return out;
}

// Loads TorchScript archives; AOTInductor packages load in aoti_backend.cpp.
class TorchScriptBackend final : public Backend {
 public:
  // precision: the floating dtype the module runs in (kFloat keeps the artifact's own).
  TorchScriptBackend(const std::string& path, const at::Device& device, at::ScalarType precision, bool optimize,
                     bool fuse, bool cuda_graphs)
      : path_(path), device_(device), precision_(precision) {
    module_ = load();
    if (!optimize) return;
    if (device_.is_cuda()) {
      // Fixed shapes per call site: let cuDNN time its algorithms once per shape (process-wide).
      at::globalContext().setBenchmarkCuDNN(true);
    }
    try {
      // An artifact exported already frozen is used as it is. Freeze, then let go of the module as
      // loaded: one copy of the weights.
      torch::jit::Module frozen =
          module_._ivalue()->type()->hasAttribute("training") ? torch::jit::freeze(module_) : module_;
      module_ = torch::jit::Module();
      if (fuse && precision_ != at::kHalf && device_.is_cpu() && AT_MKLDNN_ENABLED()) {
        // oneDNN Graph compiles fused kernels per input shape: each shape gets its own copy of the
        // frozen module (sharing its weights), fused on its first calls; see forward(). In bf16
        // it uses AMX where the CPU has it (README, Speed: ResNet-18 b1 3.1 ms vs 8.2 ms unfused).
        module_ = frozen;
        fused_ = true;
        optimization_ = "freeze+onednn_graph";
      } else if (precision_ != at::kFloat && device_.is_cpu()) {
        // Unfused bf16/fp16 convolutions run fastest on channels-last weights and inputs (oneDNN
        // picks its AMX/AVX512 kernels); optimize_for_inference converts float32 only.
        module_ = frozen;
        optimization_ = "freeze+channels_last";
      } else {
        module_ = torch::jit::optimize_for_inference(frozen);
        optimization_ = "freeze+optimize_for_inference";
      }
    } catch (const std::exception& error) {
      // Freezing refuses modules that mutate their attributes, for example: run as loaded.
      std::string message = error.what();
      failure_ = message.substr(0, message.find('\n'));
      module_ = load();
      return;
    }
    if (device_.is_cuda() && cuda_graphs) {
      std::string why;
      capture_ = cuda_graph_plugin(why);
      optimization_ += capture_ != nullptr ? "+cuda_graphs" : " (no CUDA graphs: " + why + ")";
    }
  }

  std::vector<at::Tensor> forward(const std::vector<at::Tensor>& inputs) const override {
    // as_loaded_ is read in use_optimized_from whenever from_batch_ > 1: no lock on this path.
    if (from_batch_ > 1 && !inputs.empty() && inputs[0].dim() > 0 && inputs[0].size(0) < from_batch_)
      return call(as_loaded_, inputs);
    if (capture_ != nullptr) return call_graph(inputs);
    if (!fused_) return call(module_, inputs);
    return call_fused(inputs);
  }

  // Batches of at least `batch` run the optimized module, smaller ones the module as loaded
  // (read now; with batch 1 it is read only if submodules are asked for).
  void use_optimized_from(int64_t batch) {
    from_batch_ = batch;
    if (batch > 1) as_loaded();
  }
  int64_t optimized_from_batch() const { return optimization_.empty() ? 0 : from_batch_; }

  std::vector<at::Tensor> forward_submodule(const std::string& name,
                                            const std::vector<at::Tensor>& inputs) const override {
    // Freezing inlines submodules, so they come from the module as loaded (read again on demand).
    const torch::jit::Module& module = as_loaded();
    if (name.empty()) return call(module, inputs);
    for (const auto& item : module.named_modules()) {
      if (item.name != name) continue;
      // Tracing compiles forward only for the submodules it ran; calling another one must not
      // read as the model failing.
      if (!item.value.find_method("forward"))
        throw Error(ErrorCode::kInput, "submodule '" + name +
                                           "' has no forward method in the artifact (tracing keeps only the submodules it ran)");
      return call(item.value, inputs);
    }
    throw Error(ErrorCode::kInput, "no submodule named '" + name +
                                       "' in the artifact (it may have been inlined by tracing or freezing)");
  }

  std::vector<std::string> submodule_names() const override {
    std::vector<std::string> names;
    for (const auto& item : as_loaded().named_modules())
      if (!item.name.empty()) names.push_back(item.name);
    return names;
  }

  std::string optimization() const override { return optimization_; }
  const std::string& failure() const { return failure_; }

  void drop_optimization() override {
    if (optimization_.empty()) return;
    module_ = as_loaded();
    optimization_.clear();
    from_batch_ = 1;
    fused_ = false;
    fused_by_shape_.clear();
    capture_ = nullptr;
    graphs_.clear();
    {
      const std::lock_guard<std::mutex> lock(beyond_mutex_);
      beyond_ = torch::jit::Module();
      beyond_ready_ = false;
    }
    const std::lock_guard<std::mutex> lock(as_loaded_mutex_);
    as_loaded_ = torch::jit::Module();
    as_loaded_ready_ = false;
  }

 private:
  torch::jit::Module load() const {
    torch::jit::Module module = torch::jit::load(path_, device_);
    module.eval();
    if (precision_ != at::kFloat) {
      module.to(precision_);
      // oneDNN's bf16/fp16 convolutions want channels-last weights. On a GPU they stay contiguous:
      // optimize_for_inference fuses convolution + bias (+ residual add) + ReLU into one cuDNN call
      // only for contiguous weights (ResNet-18 fp16 b256: 3.2 vs 5.4 ms, README, GPU).
      if (device_.is_cpu())
        for (const auto& parameter : module.parameters())
          if (parameter.dim() == 4) parameter.set_data(parameter.contiguous(at::MemoryFormat::ChannelsLast));
    }
    return module;
  }

  const torch::jit::Module& as_loaded() const {
    if (optimization_.empty()) return module_;
    const std::lock_guard<std::mutex> lock(as_loaded_mutex_);
    if (!as_loaded_ready_) {
      as_loaded_ = load();
      as_loaded_ready_ = true;
    }
    return as_loaded_;
  }

  // The fused module for these input sizes: a clone of the frozen template, where the profiling
  // executor profiles (call 1) and optimizes with the pass registered (call 2, which compiles
  // oneDNN Graph's kernels). Past kFusedShapes shapes: one module optimized by
  // optimize_for_inference, made on first need.
  std::vector<at::Tensor> call_fused(const std::vector<at::Tensor>& inputs) const {
    const std::optional<torch::jit::Module> fused = fused_by_shape_.get(inputs, [&] {
      torch::jit::Module module = module_.clone();
      const OneDnnFusionScope scope;
      call(module, inputs);
      call(module, inputs);
      return module;
    });
    if (fused) return call(*fused, inputs);
    const std::lock_guard<std::mutex> lock(beyond_mutex_);
    if (!beyond_ready_) {
      torch::jit::Module copy = module_.clone();
      beyond_ = torch::jit::optimize_for_inference(copy);
      beyond_ready_ = true;
    }
    return call(beyond_, inputs);
  }

  // On a CUDA device: a CUDA graph per input shape, captured from its own clone of the frozen
  // module on the first call at that shape, then replayed (one launch instead of one per kernel).
  // A model the graph cannot capture (it synchronizes with the host, e.g. branches on a tensor's
  // value) runs without one at that shape, said once on stderr. Past kCudaGraphShapes shapes: no graph.
  std::vector<at::Tensor> call_graph(const std::vector<at::Tensor>& inputs) const {
    const auto graph = graphs_.get(inputs, [&]() -> std::shared_ptr<cuda::Graph> {
      const torch::jit::Module module = module_.clone();
      const cuda::Forward forward = [module](const std::vector<at::Tensor>& in) { return call(module, in); };
      try {
        std::shared_ptr<cuda::Graph> graph(capture_(forward, inputs, /*warmup_runs=*/3));
        // The replay runs the kernels the direct call runs (cuDNN's choice is cached per shape),
        // so anything beyond rounding noise means the capture missed something.
        const std::vector<at::Tensor> replayed = graph->replay(inputs);
        const std::vector<at::Tensor> direct = forward(inputs);
        for (size_t i = 0; i < direct.size(); ++i) {
          const bool same = i < replayed.size() && replayed[i].sizes() == direct[i].sizes() &&
                            replayed[i].scalar_type() == direct[i].scalar_type() &&
                            (!at::isFloatingType(direct[i].scalar_type())
                                 ? at::equal(replayed[i], direct[i])
                                 : at::allclose(replayed[i].to(at::kFloat), direct[i].to(at::kFloat), 1e-3, 1e-5, true));
          if (!same) throw std::runtime_error("the replayed graph's output " + std::to_string(i) + " differs from a direct run");
        }
        return graph;
      } catch (const std::exception& error) {
        std::string message = error.what();
        std::fprintf(stderr, "torchbridge: %s: no CUDA graph for input shapes %s, running without one: %s\n",
                     path_.c_str(), shapes_string(inputs).c_str(),
                     message.substr(0, message.find("\nException raised from")).c_str());
        return nullptr;
      }
    });
    if (graph && *graph) return (*graph)->replay(inputs);
    return call(module_, inputs);
  }

  static std::vector<at::Tensor> call(torch::jit::Module module, const std::vector<at::Tensor>& inputs) {
    std::vector<c10::IValue> arguments(inputs.begin(), inputs.end());
    std::vector<at::Tensor> outputs;
    flatten_outputs(module.forward(std::move(arguments)), outputs);
    return outputs;
  }

  std::string path_;
  at::Device device_;
  at::ScalarType precision_;
  std::string optimization_;  // empty: running the module as loaded
  std::string failure_;       // why optimization was not possible
  // torch::jit::Module is a handle; its methods are not const, but running forward does not
  // mutate the module in eval mode, and the graph executor serializes its own compilation.
  mutable torch::jit::Module module_;
  mutable torch::jit::Module as_loaded_;  // read on demand when module_ is the optimized one
  mutable bool as_loaded_ready_ = false;
  mutable std::mutex as_loaded_mutex_;
  int64_t from_batch_ = 1;  // batches below it run as loaded (measured faster there at load)
  // oneDNN Graph: module_ is the frozen template, cloned per input shape.
  bool fused_ = false;
  mutable PerShape<torch::jit::Module> fused_by_shape_{kFusedShapes};
  mutable std::mutex beyond_mutex_;
  mutable torch::jit::Module beyond_;  // past kFusedShapes shapes
  mutable bool beyond_ready_ = false;
  // CUDA graphs: module_ is the frozen template; a null graph marks a shape that cannot be captured.
  cuda::CaptureFn capture_ = nullptr;
  mutable PerShape<std::shared_ptr<cuda::Graph>> graphs_{kCudaGraphShapes};
};

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

at::ScalarType precision_from_name(const std::string& name) {
  if (name == "fp32" || name == "float32") return at::kFloat;
  if (name == "bf16" || name == "bfloat16") return at::kBFloat16;
  if (name == "fp16" || name == "float16") return at::kHalf;
  throw Error(ErrorCode::kInvalidArgument, "precision must be fp32, bf16 or fp16, got '" + name + "'");
}

}  // namespace

std::string TensorSpec::to_string() const {
  return (name.empty() ? std::string() : name + ": ") + dtype_name(dtype) + shape_string(shape);
}

bool TensorSpec::matches(const at::Tensor& tensor) const {
  if (!tensor.defined() || tensor.scalar_type() != dtype || tensor.dim() != static_cast<int64_t>(shape.size()))
    return false;
  for (size_t i = 0; i < shape.size(); ++i)
    if (shape[i] >= 0 && tensor.size(static_cast<int64_t>(i)) != shape[i]) return false;
  return out_of_range_dim(tensor) < 0;
}

int64_t TensorSpec::out_of_range_dim(const at::Tensor& tensor) const {
  if (min_shape.empty() || !tensor.defined() || tensor.dim() != static_cast<int64_t>(min_shape.size())) return -1;
  for (size_t i = 0; i < min_shape.size(); ++i) {
    const int64_t size = tensor.size(static_cast<int64_t>(i));
    if (size < min_shape[i] || size > max_shape[i]) return static_cast<int64_t>(i);
  }
  return -1;
}

Comparison compare(const at::Tensor& actual_in, const at::Tensor& expected_in, double rtol, double atol) {
  Comparison result;
  if (!actual_in.defined() || !expected_in.defined()) {
    result.note = "undefined tensor";
    return result;
  }
  at::Tensor actual = actual_in.detach().to(at::kCPU);
  at::Tensor expected = expected_in.detach().to(at::kCPU);
  if (actual.is_quantized()) actual = actual.dequantize();
  if (expected.is_quantized()) expected = expected.dequantize();
  if (actual.sizes() != expected.sizes()) {
    result.note = "shape " + shape_string(actual.sizes()) + " != expected " + shape_string(expected.sizes());
    return result;
  }
  if (actual.scalar_type() != expected.scalar_type()) {
    result.note = "dtype " + tensor_string(actual) + " != expected " + tensor_string(expected);
    return result;
  }
  if (actual.numel() == 0) {
    result.passed = true;
    return result;
  }
  actual = actual.to(at::kDouble);
  expected = expected.to(at::kDouble);
  const at::Tensor actual_finite = at::isfinite(actual);
  const at::Tensor expected_finite = at::isfinite(expected);
  // Non-finite values must sit at the same positions with the same value (NaN matches NaN).
  const at::Tensor same_special = (actual == expected) | (at::isnan(actual) & at::isnan(expected));
  const bool specials_agree = (actual_finite == expected_finite).all().item<bool>() &&
                              (actual_finite | same_special).all().item<bool>();
  const at::Tensor both_finite = actual_finite & expected_finite;
  const at::Tensor difference = at::where(both_finite, (actual - expected).abs(), at::zeros_like(actual));
  const at::Tensor magnitude = at::where(both_finite, expected.abs(), at::zeros_like(expected));
  result.max_abs = difference.max().item<double>();
  const double scale = magnitude.max().item<double>();
  result.max_rel = scale > 0 ? result.max_abs / scale : (result.max_abs > 0 ? INFINITY : 0.0);
  const bool within = (difference <= atol + rtol * magnitude).all().item<bool>();
  result.passed = within && specials_agree;
  if (!specials_agree) result.note = "NaN/Inf positions differ";
  return result;
}

struct Runtime::Impl {
  std::string path;
  std::string format;  // "torchscript" or "aoti", from the archive's records
  RuntimeOptions options;
  Manifest manifest;
  at::Device device{at::kCPU};
  std::unique_ptr<Backend> backend;
  std::vector<at::Tensor> golden_inputs;
  std::vector<at::Tensor> golden_outputs;
  at::ScalarType precision = at::kFloat;
  // 4-D floating inputs go channels-last: bf16/fp16 (oneDNN on the CPU) and an optimized model on a
  // GPU (cuDNN's NHWC kernels), unless the model refused them at load (a view on the input, say).
  bool channels_last_inputs = false;
  std::string optimization;
  TorchScriptBackend* torchscript = nullptr;  // the backend, when the artifact is TorchScript
};



Runtime::Runtime(const std::string& path, const RuntimeOptions& options) : impl_(std::make_unique<Impl>()) {
  impl_->path = path;
  impl_->options = options;

  try {
    impl_->device = at::Device(options.device);
  } catch (const c10::Error&) {
    throw Error(ErrorCode::kInvalidArgument, "unknown device '" + options.device + "' (expected cpu, cuda or cuda:N)");
  }
  if (impl_->device.is_cuda()) load_torch_library("libtorch_cuda.so");
  if (impl_->device.is_cuda() && !torch::cuda::is_available())
    throw Error(ErrorCode::kInvalidArgument, "device '" + options.device +
                                                 "' requested but CUDA is not available here (no GPU, or a CPU-only LibTorch)");
  if (!impl_->device.is_cpu() && !impl_->device.is_cuda())
    throw Error(ErrorCode::kInvalidArgument, "device '" + options.device + "' is not supported (expected cpu or cuda)");
  if (options.threads < 0)
    throw Error(ErrorCode::kInvalidArgument, "threads must be >= 0 (0 keeps the default), got " + std::to_string(options.threads));
  impl_->precision = precision_from_name(options.precision);

  {
    std::ifstream file(path, std::ios::binary);
    if (!file) throw Error(ErrorCode::kArtifact, path + ": cannot open artifact (no such file, or unreadable)");
    char magic[4] = {0, 0, 0, 0};
    file.read(magic, 4);
    if (file.gcount() < 4 || std::string(magic, 4) != std::string("PK\x03\x04", 4))
      throw Error(ErrorCode::kArtifact, path + ": not a torchbridge artifact (expected a zip archive: a TorchScript "
                                               ".pt or an AOTInductor .pt2 written by torchbridge export)");
  }

  // Read the manifest and golden example straight from the archive, before LibTorch parses code.
  json::Value manifest_root;
  try {
    // The format comes from the archive's records, not from the file name.
    caffe2::serialize::PyTorchStreamReader reader(path);
    if (reader.hasRecord(kTorchScriptRecord)) {
      impl_->format = "torchscript";
    } else if (reader.hasRecord(kPt2FormatRecord) && read_record(reader, kPt2FormatRecord) == "pt2") {
      impl_->format = "aoti";
    } else {
      if (reader.hasRecord("data.pkl"))
        throw Error(ErrorCode::kArtifact, path + ": this is a torch.save checkpoint, not a TorchScript artifact; "
                                                 "export the model first (torchbridge export / torchbridge.export)");
      throw Error(ErrorCode::kArtifact, path + ": zip archive that is neither TorchScript nor an AOTInductor package "
                                               "(expected a file written by torchbridge export)");
    }
    if (reader.hasRecord(kManifestRecord)) {
      impl_->manifest = parse_manifest(read_record(reader, kManifestRecord), path);
      manifest_root = json::parse(impl_->manifest.json);
      // Under extra/ in TorchScript; at the top level in a .pt2 (torch's loader reads extra/ as text).
      auto golden_record = [&](const std::string& name) {
        return reader.hasRecord("extra/" + name) ? "extra/" + name : name;
      };
      for (const auto& name : golden_names(manifest_root, "inputs"))
        impl_->golden_inputs.push_back(parse_npy(read_record(reader, golden_record(name)), path + ":" + name));
      for (const auto& name : golden_names(manifest_root, "outputs"))
        impl_->golden_outputs.push_back(parse_npy(read_record(reader, golden_record(name)), path + ":" + name));
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& error) {
    std::string message = error.what();
    message = message.substr(0, message.find('\n'));
    throw Error(ErrorCode::kArtifact, path + ": corrupt or truncated artifact: " + message);
  }

  if (impl_->precision != at::kFloat && (impl_->format != "torchscript" || !impl_->manifest.quantized_engine.empty()))
    throw Error(ErrorCode::kInvalidArgument,
                path + ": precision '" + options.precision + "' applies to float TorchScript artifacts; " +
                    (impl_->format == "aoti" ? "a .pt2 runs in the dtype it was compiled for" : "this one is quantized"));
  if (!impl_->manifest.quantized_engine.empty()) {
    if (!impl_->device.is_cpu())
      throw Error(ErrorCode::kInvalidArgument, path + ": quantized artifacts run on the CPU only (got device '" +
                                                   options.device + "')");
    // Packed weights are rebuilt at load for the current engine, so select it first.
    at::globalContext().setQEngine(qengine_from_name(impl_->manifest.quantized_engine, path));
  }
  if (impl_->format == "aoti") {
    try {
      check_aoti_package(impl_->manifest, manifest_root, impl_->device, path);
    } catch (const Error&) {
      throw;
    } catch (const std::exception& error) {  // a malformed "aoti" section
      throw Error(ErrorCode::kArtifact, path + ": bad torchbridge manifest: " + error.what());
    }
  }
  if (options.threads > 0) at::set_num_threads(options.threads);

  try {
    if (impl_->format == "aoti") {
      load_torch_library("libtorch.so");
      impl_->backend = make_aoti_backend(path, impl_->device);
    } else {
      // Quantized artifacts run as exported: their int8 kernels are already packed for the engine.
      const bool quantized = !impl_->manifest.quantized_engine.empty();
      auto backend = std::make_unique<TorchScriptBackend>(path, impl_->device, impl_->precision,
                                                          options.optimize && !quantized, options.fuse,
                                                          options.cuda_graphs);
      impl_->optimization = !options.optimize   ? "none (optimize off)"
                            : quantized         ? "none (quantized artifact: int8 kernels are prepacked already)"
                            : backend->failure().empty() ? backend->optimization()
                                                         : "none (freezing failed: " + backend->failure() + ")";
      impl_->torchscript = backend.get();
      impl_->backend = std::move(backend);
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& error) {
    std::string message = error.what();
    message = message.substr(0, message.find("\nException raised from"));
    const std::string what = impl_->format == "aoti" ? "AOTInductor package" : "TorchScript";
    throw Error(ErrorCode::kArtifact, path + ": LibTorch " + TORCH_VERSION + " cannot load this " + what + " (" +
                                          (impl_->manifest.present ? "exported with torch " + impl_->manifest.torch_version
                                                                   : std::string("no torchbridge manifest")) +
                                          "): " + message);
  }

  if (impl_->format == "aoti") impl_->optimization = "AOTInductor (compiled at export)";
  // On a GPU only where the warm-up below can check that the model takes them.
  impl_->channels_last_inputs =
      impl_->format == "torchscript" &&
      (impl_->precision != at::kFloat || (impl_->device.is_cuda() && options.optimize && impl_->manifest.present &&
                                          options.warmup_runs > 0 && impl_->manifest.quantized_engine.empty()));

  // An optimized module must still give the golden outputs (within the manifest's tolerance, as
  // fusion changes rounding); otherwise run the module as loaded and say why.
  // The golden outputs were computed on the CPU: a GPU's own rounding (TF32 convolutions) is no sign
  // of a broken optimization there.
  if (!impl_->backend->optimization().empty() && impl_->precision == at::kFloat && impl_->device.is_cpu() &&
      !impl_->golden_inputs.empty()) {
    const SelftestReport check = selftest();
    if (!check.passed) {
      double worst = 0.0;
      for (const auto& output : check.outputs) worst = std::max(worst, output.max_rel);
      impl_->backend->drop_optimization();
      std::ostringstream reason;
      reason << "none (" << impl_->optimization << " missed the golden outputs: max rel " << worst << ")";
      impl_->optimization = reason.str();
    }
  }

  // The optimized module can cost more than it saves on small inputs to a small model (oneDNN's
  // layouts and fused-kernel calls); export times both and records from which batch size the
  // optimized module is faster (deterministic: every process makes the same choice).
  const bool batch_dynamic = !impl_->manifest.inputs.empty() && !impl_->manifest.inputs[0].shape.empty() &&
                             impl_->manifest.inputs[0].shape[0] < 0;
  if (TorchScriptBackend* const ts = impl_->torchscript; ts != nullptr && !ts->optimization().empty()) {
    // Measured at export on the CPU: it says nothing about a GPU.
    const int64_t from =
        impl_->precision == at::kFloat && batch_dynamic && impl_->device.is_cpu() ? impl_->manifest.optimize_from_batch : 1;
    if (from <= 0) {
      ts->drop_optimization();
      impl_->optimization = "none (" + impl_->optimization + " measured slower at export)";
    } else {
      ts->use_optimized_from(from);
      if (from > 1)
        impl_->optimization += " from batch " + std::to_string(from) + " (as loaded below: faster there, measured at export)";
    }
  }

  // The profiling executor optimizes on the first calls and oneDNN creates its kernels on the
  // first call at each shape; pay both here, at the golden batch, at batch 1 and, when batches
  // from some size on run the optimized module, at that size.
  if (options.warmup_runs > 0 && impl_->manifest.present) {
    const std::vector<at::Tensor> warmup = impl_->golden_inputs.empty() ? example_inputs() : impl_->golden_inputs;
    if (impl_->channels_last_inputs && impl_->device.is_cuda() && impl_->precision == at::kFloat) {
      try {
        forward(warmup);
      } catch (const Error&) {
        impl_->channels_last_inputs = false;  // e.g. a view() of the input: contiguous inputs then
        impl_->optimization += " (inputs kept contiguous: the model failed on channels-last ones)";
      }
    }
    for (int i = 0; i < options.warmup_runs; ++i) forward(warmup);
    if (batch_dynamic && !warmup.empty() && warmup[0].dim() > 0) {
      std::vector<int64_t> sizes = {1};
      if (optimized_from_batch() > 1) sizes.push_back(optimized_from_batch());
      sizes.insert(sizes.end(), options.warmup_batches.begin(), options.warmup_batches.end());
      std::set<int64_t> done = {warmup[0].size(0)};
      for (const int64_t size : sizes) {
        if (size < 1 || !done.insert(size).second) continue;
        const std::vector<at::Tensor> inputs = example_inputs(size);
        for (int i = 0; i < options.warmup_runs; ++i) forward(inputs);
      }
    }
  }
}

Runtime::~Runtime() = default;
Runtime::Runtime(Runtime&&) noexcept = default;
Runtime& Runtime::operator=(Runtime&&) noexcept = default;

const std::string& Runtime::path() const { return impl_->path; }
const std::string& Runtime::format() const { return impl_->format; }
const RuntimeOptions& Runtime::options() const { return impl_->options; }
const Manifest& Runtime::manifest() const { return impl_->manifest; }
const std::string& Runtime::optimization() const { return impl_->optimization; }
bool Runtime::optimized() const { return !impl_->backend->optimization().empty(); }
int64_t Runtime::optimized_from_batch() const {
  return impl_->torchscript != nullptr ? impl_->torchscript->optimized_from_batch() : 0;
}
at::Device Runtime::device() const { return impl_->device; }
const std::vector<at::Tensor>& Runtime::golden_inputs() const { return impl_->golden_inputs; }
const std::vector<at::Tensor>& Runtime::golden_outputs() const { return impl_->golden_outputs; }

void Runtime::validate(const std::vector<at::Tensor>& inputs) const {
  const Manifest& manifest = impl_->manifest;
  if (!manifest.present) return;
  auto expected_list = [&] {
    std::string out;
    for (const auto& spec : manifest.inputs) out += (out.empty() ? "" : ", ") + spec.to_string();
    return out;
  };
  if (inputs.size() != manifest.inputs.size())
    throw Error(ErrorCode::kInput, "expected " + std::to_string(manifest.inputs.size()) + " input(s) (" + expected_list() +
                                       "), got " + std::to_string(inputs.size()));
  for (size_t i = 0; i < inputs.size(); ++i) {
    const TensorSpec& spec = manifest.inputs[i];
    const int64_t outside = spec.out_of_range_dim(inputs[i]);
    if (!spec.matches(inputs[i]) && outside < 0)
      throw Error(ErrorCode::kInput, "input " + std::to_string(i) + " must be " + spec.to_string() + " (? = any size), got " +
                                         tensor_string(inputs[i]));
    if (outside >= 0) {
      TensorSpec unbounded = spec;
      unbounded.min_shape.clear();
      unbounded.max_shape.clear();
      if (!unbounded.matches(inputs[i]))  // wrong dtype or static dims too: name the spec first
        throw Error(ErrorCode::kInput, "input " + std::to_string(i) + " must be " + spec.to_string() +
                                           " (? = any size), got " + tensor_string(inputs[i]));
      const auto d = static_cast<size_t>(outside);
      throw Error(ErrorCode::kInput, "input " + std::to_string(i) + " (" + spec.to_string() + ") has size " +
                                         std::to_string(inputs[i].size(outside)) + " in dim " + std::to_string(d) +
                                         ", outside the range " + std::to_string(spec.min_shape[d]) + ".." +
                                         std::to_string(spec.max_shape[d]) +
                                         " declared at export (split the batch, or export with a wider dynamic_range)");
    }
  }
}

std::vector<at::Tensor> Runtime::forward(const std::vector<at::Tensor>& inputs) const {
  validate(inputs);
  c10::InferenceMode guard;
  std::vector<at::Tensor> moved;
  moved.reserve(inputs.size());
  const at::ScalarType precision = impl_->precision;
  for (const auto& input : inputs) {
    at::Tensor tensor = input.device() == impl_->device ? input : input.to(impl_->device);
    if (at::isFloatingType(tensor.scalar_type())) {
      // One conversion for dtype and layout together.
      const at::ScalarType dtype = precision != at::kFloat ? precision : tensor.scalar_type();
      const bool channels_last = impl_->channels_last_inputs && tensor.dim() == 4;
      if (dtype != tensor.scalar_type() || (channels_last && !tensor.is_contiguous(at::MemoryFormat::ChannelsLast)))
        tensor = tensor.to(dtype, /*non_blocking=*/false, /*copy=*/false,
                           channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Preserve);
    }
    moved.push_back(std::move(tensor));
  }
  try {
    if (precision == at::kFloat) return impl_->backend->forward(moved);
    // Outputs go back to the dtype the manifest declares (float32 for a float model).
    std::vector<at::Tensor> outputs = impl_->backend->forward(moved);
    const auto& specs = impl_->manifest.outputs;
    for (size_t i = 0; i < outputs.size(); ++i) {
      if (!at::isFloatingType(outputs[i].scalar_type())) continue;
      outputs[i] = outputs[i].to(i < specs.size() ? specs[i].dtype : at::kFloat);
    }
    return outputs;
  } catch (const Error&) {
    throw;
  } catch (const std::exception& error) {
    std::string message = error.what();
    throw Error(ErrorCode::kRuntime, impl_->path + ": forward failed: " + message.substr(0, message.find("\nException raised from")));
  }
}

std::vector<at::Tensor> Runtime::forward_submodule(const std::string& name, const std::vector<at::Tensor>& inputs) const {
  c10::InferenceMode guard;
  std::vector<at::Tensor> moved;
  for (const auto& input : inputs) {
    at::Tensor tensor = input.to(impl_->device);
    if (impl_->precision != at::kFloat && at::isFloatingType(tensor.scalar_type())) tensor = tensor.to(impl_->precision);
    moved.push_back(std::move(tensor));
  }
  try {
    return impl_->backend->forward_submodule(name, moved);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& error) {
    std::string message = error.what();
    throw Error(ErrorCode::kRuntime, impl_->path + ": forward of submodule '" + name +
                                         "' failed: " + message.substr(0, message.find("\nException raised from")));
  }
}

std::vector<std::string> Runtime::submodule_names() const { return impl_->backend->submodule_names(); }

std::vector<at::Tensor> Runtime::example_inputs(int64_t dynamic_size, uint64_t seed) const {
  const Manifest& manifest = impl_->manifest;
  if (!manifest.present)
    throw Error(ErrorCode::kInput, impl_->path + ": no torchbridge manifest, so input shapes are unknown; pass inputs explicitly");
  at::Generator generator = at::detail::createCPUGenerator(seed);
  std::vector<at::Tensor> inputs;
  for (const auto& spec : manifest.inputs) {
    std::vector<int64_t> shape;
    for (int64_t dim : spec.shape) shape.push_back(dim < 0 ? dynamic_size : dim);
    if (at::isFloatingType(spec.dtype)) {
      inputs.push_back(at::randn(shape, generator, at::TensorOptions().dtype(at::kFloat)).to(spec.dtype));
    } else {
      inputs.push_back(at::randint(0, 2, shape, generator, at::TensorOptions().dtype(at::kLong)).to(spec.dtype));
    }
  }
  return inputs;
}

SelftestReport Runtime::selftest() const {
  if (impl_->golden_inputs.empty())
    throw Error(ErrorCode::kArtifact, impl_->path + ": artifact carries no golden example (export it with torchbridge)");
  const std::vector<at::Tensor> outputs = forward(impl_->golden_inputs);
  SelftestReport report;
  report.passed = outputs.size() == impl_->golden_outputs.size();
  for (size_t i = 0; i < impl_->golden_outputs.size(); ++i) {
    Comparison comparison;
    if (i < outputs.size()) {
      comparison = compare(outputs[i], impl_->golden_outputs[i], impl_->manifest.rtol, impl_->manifest.atol);
    } else {
      comparison.note = "model returned only " + std::to_string(outputs.size()) + " output(s)";
    }
    report.passed = report.passed && comparison.passed;
    report.outputs.push_back(comparison);
  }
  return report;
}

}  // namespace torchbridge
