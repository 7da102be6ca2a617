// The TorchScript backend: the module as loaded and its faster variants, each checked at an input
// shape before it runs there (see TorchScriptBackend).
#include <ATen/Config.h>
#include <ATen/Parallel.h>
#include <torch/csrc/jit/codegen/onednn/interface.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/csrc/jit/passes/pass_manager.h>
#include <torch/script.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>

#include "backend.hpp"
#include "internal.hpp"
#include "libraries.hpp"
#include "rowwise.hpp"
#include "torchbridge/runtime.hpp"

namespace torchbridge {

namespace {

// oneDNN Graph fusion is a graph pass LibTorch would run on every graph the profiling executor
// optimizes, in every thread. torchbridge registers it once, behind a per-thread switch, so that only
// the graphs a thread optimizes inside a OneDnnFusionScope are fused: a runtime fusing one shape never
// changes what another thread, or another module, compiles meanwhile.
thread_local int fusion_scopes = 0;

void fuse_inside_scopes(std::shared_ptr<torch::jit::Graph>& graph) {
#if AT_MKLDNN_ENABLED()
  if (fusion_scopes > 0) torch::jit::fuser::onednn::fuseGraph(graph);
#endif
}

// Registered while the library loads, before any thread can be optimizing a graph.
const torch::jit::GraphPassNameType fusion_pass = torch::jit::registerPrePass(fuse_inside_scopes);

}  // namespace

OneDnnFusionScope::OneDnnFusionScope() { ++fusion_scopes; }
OneDnnFusionScope::~OneDnnFusionScope() { --fusion_scopes; }

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
    const std::vector<int64_t> key = key_of(inputs);
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

  // What get() has made for these inputs' shapes, without making it; nothing while it is made.
  std::optional<T> find(const std::vector<at::Tensor>& inputs) {
    const std::vector<int64_t> key = key_of(inputs);
    const std::lock_guard<std::mutex> lock(mutex_);
    const auto found = entries_.find(key);
    if (found == entries_.end() ||
        found->second.wait_for(std::chrono::seconds(0)) != std::future_status::ready)
      return std::nullopt;
    try {
      return found->second.get();
    } catch (...) {
      return std::nullopt;
    }
  }

  void clear() {
    const std::lock_guard<std::mutex> lock(mutex_);
    entries_.clear();
  }

 private:
  static std::vector<int64_t> key_of(const std::vector<at::Tensor>& inputs) {
    std::vector<int64_t> key;
    for (const auto& input : inputs) {
      key.push_back(input.dim());
      key.insert(key.end(), input.sizes().begin(), input.sizes().end());
      key.push_back(input.dim() == 4 && input.is_contiguous(at::MemoryFormat::ChannelsLast) ? 1 : 0);
    }
    return key;
  }

  size_t capacity_;
  std::mutex mutex_;
  std::map<std::vector<int64_t>, std::shared_future<T>> entries_;
};

// "[2, 3]" for one input, "([2, 32], [2, 32])" for several.
std::string shapes_string(const std::vector<at::Tensor>& inputs) {
  std::string out;
  for (const auto& input : inputs) out += (out.empty() ? "" : ", ") + shape_string(input.sizes());
  return inputs.size() == 1 ? out : "(" + out + ")";
}

// Operators whose result is chosen by comparing values (which boxes survive NMS, which entries are
// the top k, where the maximum is). A faster variant rounds differently in the last bits; where two
// values are that close, it chooses differently and the output changes by a whole element. One
// check at an input cannot rule that out for the next input, so such graphs run as loaded.
void collect_selecting_ops(const torch::jit::Block* block, std::set<std::string>& found) {
  static const std::set<std::string> selecting = {
      "aten::topk",        "aten::sort",         "aten::argsort",        "aten::msort",
      "aten::kthvalue",    "aten::argmax",       "aten::argmin",         "aten::nonzero",
      "aten::masked_select", "aten::unique",     "aten::_unique2",       "aten::unique_consecutive",
      "aten::unique_dim",  "aten::mode",         "aten::searchsorted",   "aten::bucketize",
      "torchvision::nms"};
  for (const torch::jit::Node* node : block->nodes()) {
    const std::string kind = node->kind().toQualString();
    // max/min/median along a dim return the index too (2 outputs).
    const bool indexed = ((kind == "aten::max" || kind == "aten::min" || kind == "aten::median") &&
                          node->outputs().size() == 2) ||
                         (kind == "aten::where" && node->inputs().size() == 1);  // where(mask): nonzero
    if (selecting.count(kind) || indexed) found.insert(kind);
    for (const torch::jit::Block* inner : node->blocks()) collect_selecting_ops(inner, found);
  }
}

std::string selecting_ops(const torch::jit::Module& module) {
  const std::shared_ptr<torch::jit::Graph> graph = module.get_method("forward").graph()->copy();
  torch::jit::Inline(*graph);
  std::set<std::string> found;
  collect_selecting_ops(graph->block(), found);
  std::string out;
  for (const std::string& kind : found) out += (out.empty() ? "" : ", ") + kind;
  return out;
}

// The variant of last resort: the module exactly as loaded, without any pass of torchbridge's.
constexpr char kAsLoaded[] = "as_loaded";

// Loads TorchScript archives; AOTInductor packages load in aoti_backend.cpp.
//
// With optimize, a float model has variants, fastest first: "onednn_graph" (a frozen copy fused by
// oneDNN Graph for one input shape; CPU), "optimize_for_inference" (freeze +
// torch::jit::optimize_for_inference; CPU fp32 and CUDA, with a CUDA graph there), "frozen" (freeze
// alone; CPU); where export's measured order names them, also "channels_last" (frozen with
// channels-last weights and inputs, SiLUs, first, 1x1 and depthwise convolutions and linear layers
// through torchbridge's kernels) and "rowwise" (frozen, linear layers and LSTMs on a few rows, and
// small layer norms, GELUs and attention, through torchbridge's own kernels, rowwise.hpp). None is
// trusted blindly: on the first
// call at an input shape each is run there in turn and kept for that shape only if it runs and
// matches the module as loaded on the same inputs; otherwise the next is tried, down to the module
// as loaded, and the rejected one is not tried at later shapes. A pass that breaks a model costs
// speed, never a failed call or a wrong answer.
class TorchScriptBackend final : public TorchScriptModel {
 public:
  // precision: the floating dtype the module runs in (kFloat keeps the artifact's own).
  // rtol: how far a variant may stray from the module as loaded, relative to the largest |output|.
  TorchScriptBackend(const std::string& path, const at::Device& device, at::ScalarType precision, bool optimize,
                     bool fuse, bool cuda_graphs, double rtol, const std::vector<std::string>& order,
                     int64_t large_from, const std::vector<std::string>& large_order)
      : path_(path), device_(device), precision_(precision), rtol_(rtol) {
    as_loaded_ = load();
    if (!optimize) return;
    // Fault injection for tests: TORCHBRIDGE_PLANT_FAILURE="onednn_graph=raise,frozen=differ"
    // (or "=crash": SIGSEGV).
    if (const char* planted = std::getenv("TORCHBRIDGE_PLANT_FAILURE")) {
      std::istringstream entries(planted);
      for (std::string entry; std::getline(entries, entry, ',');)
        if (const auto equals = entry.find('='); equals != std::string::npos)
          planted_[entry.substr(0, equals)] = entry.substr(equals + 1);
    }
    if (device_.is_cuda()) {
      // Fixed shapes per call site: let cuDNN time its algorithms once per shape (process-wide).
      at::globalContext().setBenchmarkCuDNN(true);
    }
    try {
      // An artifact exported already frozen is used as it is.
      frozen_ = as_loaded_._ivalue()->type()->hasAttribute("training") ? torch::jit::freeze(as_loaded_) : as_loaded_;
    } catch (const std::exception& error) {
      // Freezing refuses modules that mutate their attributes, for example: run as loaded.
      failure_ = "freezing failed: " + first_line(error);
      return;
    }
    if (const std::string ops = selecting_ops(frozen_); !ops.empty()) {
      failure_ = "the model selects by value (" + ops + "): a faster variant's rounding can change what is selected";
      frozen_ = torch::jit::Module();
      return;
    }
    if (device_.is_cpu()) {
      std::vector<std::string> available;
      if (fuse && precision_ != at::kHalf && AT_MKLDNN_ENABLED()) available.push_back("onednn_graph");
      // optimize_for_inference converts float32 only; bf16/fp16 run frozen with channels-last
      // weights (oneDNN picks its AMX/AVX512 kernels for those).
      if (precision_ == at::kFloat) available.push_back("optimize_for_inference");
      available.push_back("frozen");
      if (order.empty()) {
        variants_ = available;
      } else {
        // Export timed the variants on its CPU and wrote them fastest first; which one is fastest
        // depends on the model (channels-last pays on depthwise convolutions, oneDNN Graph on
        // convolution chains, neither on small matrix products).
        if (precision_ == at::kFloat) {
          available.push_back("channels_last");
          available.push_back("rowwise");
        }
        const auto known = [&](const std::vector<std::string>& names) {
          std::vector<std::string> out;
          for (const std::string& name : names) {
            if (name == kAsLoaded) break;
            if (std::find(available.begin(), available.end(), name) != available.end() &&
                std::find(out.begin(), out.end(), name) == out.end())
              out.push_back(name);
          }
          return out;
        };
        variants_ = known(order);
        // The fastest variant can change with the batch size (oneDNN Graph's fused kernels pay on
        // large batches; freeze alone or the module as loaded can win at batch 1).
        if (large_from >= 2) {
          large_from_ = large_from;
          large_variants_ = known(large_order);
        }
        if (variants_.empty()) {
          failure_ = "the module as loaded measured fastest at export";
          frozen_ = torch::jit::Module();
          return;
        }
        measured_ = true;
      }
      const std::string& first = variants_.front();
      optimization_ = first == "onednn_graph"             ? "freeze+onednn_graph"
                      : first == "optimize_for_inference" ? "freeze+optimize_for_inference"
                      : first == "rowwise"                ? "freeze+rowwise"
                      : first == "channels_last" || precision_ != at::kFloat ? "freeze+channels_last"
                                                                              : "freeze";
      if (measured_) {
        optimization_ += " (variant order measured at export";
        if (large_from_ >= 2)
          optimization_ += "; from batch " + std::to_string(large_from_) + ": " +
                           (large_variants_.empty() ? std::string(kAsLoaded) : large_variants_.front());
        optimization_ += ")";
      }
    } else {
      variants_.push_back("optimize_for_inference");
      optimization_ = "freeze+optimize_for_inference";
      if (cuda_graphs) {
        std::string why;
        capture_ = cuda_graph_plugin(why);
        optimization_ += capture_ != nullptr ? "+cuda_graphs" : " (no CUDA graphs: " + why + ")";
      }
    }
  }

  std::vector<at::Tensor> forward(const std::vector<at::Tensor>& inputs) const override {
    if (!runs_optimized(inputs)) return call(as_loaded_, inputs);
    const std::optional<Choice> choice = choices_.get(inputs, [&] { return choose(inputs); });
    if (!choice) return call(as_loaded_, inputs);  // past kCheckedShapes shapes: nothing unchecked runs
    if (choice->graph) return choice->graph->replay(inputs);
    return call_variant(*choice, inputs);
  }

  std::string variant_at(const std::vector<at::Tensor>& inputs) const override {
    if (!runs_optimized(inputs)) return kAsLoaded;
    const std::optional<Choice> choice = choices_.find(inputs);
    return choice ? choice->variant : "";
  }

  // Batches of at least `batch` run the optimized module, smaller ones the module as loaded.
  void use_optimized_from(int64_t batch) override { from_batch_ = batch; }
  int64_t optimized_from_batch() const override { return variants_.empty() ? 0 : from_batch_; }

  std::vector<at::Tensor> forward_submodule(const std::string& name,
                                            const std::vector<at::Tensor>& inputs) const override {
    // Freezing inlines submodules, so they come from the module as loaded.
    if (name.empty()) return call(as_loaded_, inputs);
    for (const auto& item : as_loaded_.named_modules()) {
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
    for (const auto& item : as_loaded_.named_modules())
      if (!item.name.empty()) names.push_back(item.name);
    return names;
  }

  std::string optimization() const override { return variants_.empty() ? "" : optimization_; }
  std::string fallbacks() const override {
    const std::lock_guard<std::mutex> lock(fallbacks_mutex_);
    std::string out;
    for (const auto& [cause, shapes] : fallback_shapes_) {
      out += "; at ";
      for (size_t i = 0; i < shapes.size() && i < 4; ++i) out += (i ? " " : "") + shapes[i];
      if (shapes.size() > 4) out += " and " + std::to_string(shapes.size() - 4) + " more";
      out += ": " + cause;
    }
    return out;
  }
  const std::string& failure() const override { return failure_; }

  void drop_optimization() override {
    variants_.clear();
    large_variants_.clear();
    large_from_ = 0;
    from_batch_ = 1;
    choices_.clear();
    frozen_ = torch::jit::Module();
    const std::lock_guard<std::mutex> lock(optimized_mutex_);
    optimized_.reset();
    channels_last_.reset();
    rowwise_.reset();
  }

 private:
  struct Choice {
    std::string variant;
    torch::jit::Module module;
    std::shared_ptr<cuda::Graph> graph;  // on a CUDA device: a graph replaying `module`, or null
    bool channels_last = false;          // 4-d floating inputs go in channels-last
  };

  // The variant's module on `inputs`; "channels_last" takes its 4-d floating inputs in that layout
  // (oneDNN's NHWC convolutions, without a reorder per layer) and gives contiguous outputs, as the
  // module as loaded does.
  static std::vector<at::Tensor> call_variant(const Choice& choice, const std::vector<at::Tensor>& inputs) {
    if (!choice.channels_last) return call(choice.module, inputs);
    std::vector<at::Tensor> converted;
    converted.reserve(inputs.size());
    for (const at::Tensor& input : inputs)
      converted.push_back(input.dim() == 4 && at::isFloatingType(input.scalar_type())
                              ? input.contiguous(at::MemoryFormat::ChannelsLast)
                              : input);
    std::vector<at::Tensor> outputs = call(choice.module, converted);
    for (at::Tensor& output : outputs) output = output.contiguous();
    return outputs;
  }

  // A frozen copy whose 4-d floating weights are channels-last (so oneDNN does not reorder them per
  // call), its SiLUs and 1x1 convolutions through torchbridge's kernels (rowwise.hpp); made on first
  // need, shared by every shape that runs it.
  torch::jit::Module channels_last() const {
    const std::lock_guard<std::mutex> lock(optimized_mutex_);
    if (!channels_last_) {
      torch::jit::Module copy = load();
      for (const auto& parameter : copy.parameters())
        if (parameter.dim() == 4 && at::isFloatingType(parameter.scalar_type()))
          parameter.set_data(parameter.contiguous(at::MemoryFormat::ChannelsLast));
      channels_last_ = copy._ivalue()->type()->hasAttribute("training") ? torch::jit::freeze(copy) : copy;
      fold_fused_layer_weights(*channels_last_);
      rewrite_channels_last(*channels_last_->get_method("forward").graph());
    }
    return *channels_last_;
  }

  torch::jit::Module load() const {
    torch::jit::Module module = torch::jit::load(path_, device_);
    module.eval();
    if (precision_ != at::kFloat) {
      module.to(precision_);
      // oneDNN's bf16/fp16 convolutions want channels-last weights. On a GPU they stay contiguous:
      // optimize_for_inference fuses convolution + bias (+ residual add) + ReLU into one cuDNN call
      // only for contiguous weights.
      if (device_.is_cpu())
        for (const auto& parameter : module.parameters())
          if (parameter.dim() == 4) parameter.set_data(parameter.contiguous(at::MemoryFormat::ChannelsLast));
    }
    return module;
  }

  bool runs_optimized(const std::vector<at::Tensor>& inputs) const {
    if (variants_.empty()) return false;
    // Measured at export: small batches of a small model run faster as loaded.
    if (from_batch_ > 1 && batch_of(inputs) < from_batch_) return false;
    return !variants_for(inputs).empty();
  }

  static int64_t batch_of(const std::vector<at::Tensor>& inputs) {
    return !inputs.empty() && inputs[0].dim() > 0 ? inputs[0].size(0) : 1;
  }

  // The order for these inputs' batch size (export may have measured another for large batches).
  const std::vector<std::string>& variants_for(const std::vector<at::Tensor>& inputs) const {
    return large_from_ >= 2 && batch_of(inputs) >= large_from_ ? large_variants_ : variants_;
  }

  // The variant for these input shapes: the first that runs them and matches the module as loaded.
  Choice choose(const std::vector<at::Tensor>& inputs) const {
    // The reference. If the module as loaded raises, the call raises as it would without torchbridge.
    const std::vector<at::Tensor> expected = call(as_loaded_, inputs);
    std::string rejected;
    for (const std::string& variant : variants_for(inputs)) {
      bool counted = false;
      if (const std::lock_guard<std::mutex> lock(fallbacks_mutex_); rejected_.count(variant)) continue;
      try {
        if (variant == "onednn_graph") {
          // oneDNN Graph keeps compiled kernels and reordered weights per shape: only the first
          // kFusedShapes shapes get them.
          if (fused_shapes_.fetch_add(1) >= kFusedShapes) {
            fused_shapes_.fetch_sub(1);
            continue;
          }
          counted = true;
        }
        auto [choice, actual] = make(variant, inputs);
        const std::string why = differs(actual, expected);
        if (why.empty()) {
          if (!rejected.empty()) note_fallback(inputs, variant, rejected);
          return choice;
        }
        rejected += (rejected.empty() ? "" : "; ") + variant + " " + why;
      } catch (const std::exception& error) {
        rejected += (rejected.empty() ? "" : "; ") + variant + " raised: " + first_line(error);
      }
      {
        // Rejected once, rejected for good: trying it again at every new shape costs a compile and
        // a check per shape, and a pass that broke this model's graph once rarely mends elsewhere.
        const std::lock_guard<std::mutex> lock(fallbacks_mutex_);
        rejected_.insert(variant);
      }
      if (counted) fused_shapes_.fetch_sub(1);
    }
    if (!rejected.empty()) note_fallback(inputs, kAsLoaded, rejected);
    return Choice{kAsLoaded, as_loaded_, nullptr};
  }

  // The variant made for these inputs and run there as later calls will run it (the profiling
  // executor profiles on the first call and runs its optimized graph from the second), with the
  // outputs of that run.
  std::pair<Choice, std::vector<at::Tensor>> make(const std::string& variant, const std::vector<at::Tensor>& inputs) const {
    const auto planted = planted_.find(variant);
    // "crash": the way LibTorch itself can die inside a pass (tests export's crash check).
    if (planted != planted_.end() && planted->second == "crash") std::raise(SIGSEGV);
    auto [choice, outputs] = make_variant(variant, inputs);
    if (planted != planted_.end()) {
      if (planted->second == "raise") throw std::runtime_error("planted failure (TORCHBRIDGE_PLANT_FAILURE)");
      for (auto& output : outputs)
        if (at::isFloatingType(output.scalar_type())) output = output * 1.001 + 1e-3;
    }
    return {std::move(choice), std::move(outputs)};
  }

  std::pair<Choice, std::vector<at::Tensor>> make_variant(const std::string& variant,
                                                          const std::vector<at::Tensor>& inputs) const {
    Choice choice{variant, {}, nullptr};
    std::vector<at::Tensor> outputs;
    if (variant == "onednn_graph") {
      choice.module = copy_of(frozen_);
      const OneDnnFusionScope scope;  // the pass applies to what this thread optimizes meanwhile
      call(choice.module, inputs);
      outputs = call(choice.module, inputs);
      return {std::move(choice), std::move(outputs)};
    }
    choice.module = variant == "frozen"           ? frozen_
                    : variant == "channels_last"  ? channels_last()
                    : variant == "rowwise"        ? rowwise()
                                                  : optimized();
    choice.channels_last = variant == "channels_last";
    call_variant(choice, inputs);
    outputs = call_variant(choice, inputs);
    if (capture_ != nullptr) {
      choice.graph = capture(choice.module, inputs);
      if (choice.graph) outputs = choice.graph->replay(inputs);
    }
    return {std::move(choice), std::move(outputs)};
  }

  // Why `actual` does not stand for `expected` ("" when it does): every output of the same shape and
  // dtype, NaN/Inf in the same places, and within rtol_ of the largest |expected|.
  std::string differs(const std::vector<at::Tensor>& actual, const std::vector<at::Tensor>& expected) const {
    if (actual.size() != expected.size())
      return "gave " + std::to_string(actual.size()) + " output(s), the module as loaded " + std::to_string(expected.size());
    for (size_t i = 0; i < actual.size(); ++i) {
      const Comparison comparison = compare(actual[i], expected[i], rtol_, 0.0);
      if (!comparison.note.empty()) return "output " + std::to_string(i) + ": " + comparison.note;
      if (comparison.max_rel > rtol_) {
        std::ostringstream out;
        out << "differs from the module as loaded (output " << i << ", max rel " << comparison.max_rel << " > " << rtol_
            << ")";
        return out.str();
      }
    }
    return "";
  }

  // Fallbacks are listed once per cause, with the shapes where they happened; the first is also
  // said on stderr.
  void note_fallback(const std::vector<at::Tensor>& inputs, const std::string& variant, const std::string& rejected) const {
    const std::lock_guard<std::mutex> lock(fallbacks_mutex_);
    const std::string cause = variant + " (" + rejected + ")";
    if (fallback_shapes_.empty())
      std::fprintf(stderr, "torchbridge: %s: at input shapes %s %s; running %s there (Runtime::optimization lists every such shape)\n",
                   path_.c_str(), shapes_string(inputs).c_str(), rejected.c_str(), variant.c_str());
    auto found = std::find_if(fallback_shapes_.begin(), fallback_shapes_.end(),
                              [&](const auto& entry) { return entry.first == cause; });
    if (found == fallback_shapes_.end()) found = fallback_shapes_.insert(fallback_shapes_.end(), {cause, {}});
    found->second.push_back(shapes_string(inputs));
  }

  // A copy of `module`. LibTorch makes it in the original's compilation unit, which it does not lock:
  // copies made at once from several threads (threads meeting new shapes together) corrupt it.
  // Every copy this backend makes is made here.
  torch::jit::Module copy_of(const torch::jit::Module& module) const {
    const std::lock_guard<std::mutex> lock(copy_mutex_);
    return module.clone();
  }

  // freeze + optimize_for_inference, shared by every shape that runs it; made on first need.
  torch::jit::Module optimized() const {
    const std::lock_guard<std::mutex> lock(optimized_mutex_);
    if (!optimized_) {
      torch::jit::Module copy = copy_of(frozen_);  // optimize_for_inference rewrites its argument's graph
      optimized_ = torch::jit::optimize_for_inference(copy);
    }
    return *optimized_;
  }

  // A frozen copy whose linear layers and LSTMs run torchbridge's own kernels on inputs of a few
  // rows (rowwise.hpp: faster than aten's where the CPU's BLAS does not reach the memory
  // bandwidth), and its layer norms, GELUs and attention on small inputs; made on first need,
  // shared by every shape that runs it.
  torch::jit::Module rowwise() const {
    const std::lock_guard<std::mutex> lock(optimized_mutex_);
    if (!rowwise_) {
      torch::jit::Module copy = copy_of(frozen_);
      fold_fused_layer_weights(copy);
      rewrite_rowwise(*copy.get_method("forward").graph());
      rowwise_ = copy;
    }
    return *rowwise_;
  }

  // On a CUDA device: a CUDA graph of `module` at these shapes, captured from a clone of it. A model
  // the graph cannot capture (it synchronizes with the host, e.g. branches on a tensor's value) runs
  // without one at that shape, said once on stderr.
  std::shared_ptr<cuda::Graph> capture(const torch::jit::Module& template_module, const std::vector<at::Tensor>& inputs) const {
    const torch::jit::Module module = copy_of(template_module);
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
      std::fprintf(stderr, "torchbridge: %s: no CUDA graph for input shapes %s, running without one: %s\n",
                   path_.c_str(), shapes_string(inputs).c_str(), first_line(error).c_str());
      return nullptr;
    }
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
  double rtol_;
  std::string optimization_;  // the fastest variant, as optimization() reports it
  std::string failure_;       // why the model runs as loaded although optimize is on
  std::vector<std::string> variants_;  // fastest first; empty: everything runs as loaded
  int64_t large_from_ = 0;             // >= 2: batches from this size on try large_variants_
  std::vector<std::string> large_variants_;  // empty there: the module as loaded
  // torch::jit::Module is a handle; its methods are not const, but running forward does not
  // mutate the module in eval mode, and the graph executor serializes its own compilation.
  mutable torch::jit::Module as_loaded_;
  mutable torch::jit::Module frozen_;
  mutable std::optional<torch::jit::Module> optimized_;
  mutable std::optional<torch::jit::Module> channels_last_;
  mutable std::optional<torch::jit::Module> rowwise_;
  bool measured_ = false;  // variants_ in the order export measured
  mutable std::mutex optimized_mutex_;
  mutable std::mutex copy_mutex_;  // taken after optimized_mutex_ where both are
  int64_t from_batch_ = 1;  // batches below it run as loaded (measured faster there at export)
  mutable PerShape<Choice> choices_{kCheckedShapes};
  mutable std::atomic<int> fused_shapes_{0};
  mutable std::mutex fallbacks_mutex_;  // guards the three below
  mutable std::vector<std::pair<std::string, std::vector<std::string>>> fallback_shapes_;  // cause -> shapes
  mutable std::set<std::string> rejected_;  // variants that raised or differed: not tried again
  cuda::CaptureFn capture_ = nullptr;
  std::map<std::string, std::string> planted_;  // variant -> "raise" or "differ" (tests only)
};

}  // namespace

std::string selecting_ops_in(const std::string& path) { return selecting_ops(torch::jit::load(path, at::kCPU)); }

std::unique_ptr<TorchScriptModel> make_torchscript_backend(const std::string& path, const at::Device& device,
                                                           at::ScalarType precision, bool optimize, bool fuse,
                                                           bool cuda_graphs, double rtol,
                                                           const std::vector<std::string>& order,
                                                           int64_t large_from,
                                                           const std::vector<std::string>& large_order) {
  return std::make_unique<TorchScriptBackend>(path, device, precision, optimize, fuse, cuda_graphs, rtol, order,
                                              large_from, large_order);
}

}  // namespace torchbridge
