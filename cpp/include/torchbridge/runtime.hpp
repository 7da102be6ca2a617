// torchbridge/runtime.hpp: run torchbridge artifacts from C++, no Python involved.
//
// Usage
//
//   #include <torchbridge/runtime.hpp>
//
//   torchbridge::RuntimeOptions options;
//   options.device = "cpu";
//   options.threads = 2;
//   torchbridge::Runtime runtime("model.pt", options);      // loads, validates, warms up
//   std::cout << runtime.manifest().inputs[0].to_string();  // "x: float32[?, 1, 8, 8]"
//   std::vector<at::Tensor> outputs = runtime.forward({torch::rand({4, 1, 8, 8})});
//   torchbridge::SelftestReport report = runtime.selftest(); // golden example stored in the artifact
//
//   at::Tensor x = torchbridge::read_npy("x.npy");
//   torchbridge::write_npy("y.npy", outputs[0]);
//
// Contract
//
// - Every failure throws torchbridge::Error (a std::runtime_error); Error::code() tells the cause.
//   The message names the file or input and what was expected.
// - Runtime is move-only and owns the loaded model. forward() is const and may be called from
//   several threads at once on one Runtime.
// - LibTorch keeps the intra-op thread count and the quantized engine per process: loading a
//   Runtime with threads > 0 or a quantized artifact changes them for the whole process.
// - An artifact is written by torchbridge.export (Python): a TorchScript archive (.pt) or an
//   AOTInductor package (.pt2), told apart by the archive's records, not the file name. Both carry
//   a manifest (input/output specs, tolerances, golden example). A plain TorchScript file or .pt2
//   without a manifest also loads; it then has no input specs, golden example or warm-up.
// - A .pt2 holds native code compiled for one torch release and CPU family; loading one runs that
//   code, so load only trusted artifacts. The Runtime refuses a .pt2 whose manifest names another
//   torch major.minor, CPU features this CPU lacks, or another device, and refuses inputs outside
//   the dynamic range declared at export. forward_submodule/submodule_names are TorchScript-only.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace torchbridge {

/// The torchbridge version, e.g. "0.1.0".
const char* version();

/// Why an operation failed; the CLI maps each code to its own exit status.
enum class ErrorCode {
  kInvalidArgument,  // a bad option or argument (device name, thread count, ...)
  kArtifact,         // the artifact is missing, truncated, not TorchScript or fails to load
  kInput,            // an input tensor or .npy file does not match what was expected
  kRuntime,          // the model raised while running
};

class Error : public std::runtime_error {
 public:
  /// Bytes of `message` that are not UTF-8 text (a damaged file's name or contents quoted by
  /// LibTorch) are written as \xNN, so every message prints and converts to a Python str.
  Error(ErrorCode code, const std::string& message) : std::runtime_error(printable(message)), code_(code) {}
  ErrorCode code() const noexcept { return code_; }
  static std::string printable(const std::string& message);

 private:
  ErrorCode code_;
};

/// One model input or output: dtype and shape; -1 marks a dynamic dimension (printed as "?").
struct TensorSpec {
  std::string name;
  at::ScalarType dtype = at::ScalarType::Float;
  std::vector<int64_t> shape;
  // Bounds per dimension (equal to shape on static ones), or empty: the dynamic range a .pt2 was
  // compiled for. Inputs outside it are refused.
  std::vector<int64_t> min_shape;
  std::vector<int64_t> max_shape;

  std::string to_string() const;  // "x: float32[?, 1, 8, 8]"
  bool matches(const at::Tensor& tensor) const;
  /// The first dimension of `tensor` outside [min_shape, max_shape], or -1.
  int64_t out_of_range_dim(const at::Tensor& tensor) const;
};

/// The manifest torchbridge.export embeds in an artifact (archive entry torchbridge/manifest.json).
struct Manifest {
  bool present = false;  // false for a plain TorchScript file without a manifest
  int format_version = 0;
  std::string torchbridge_version;
  std::string torch_version;  // torch that exported the artifact
  std::string format;         // "torchscript" or "aoti"
  std::string method;         // "script", "trace" (TorchScript) or "export" (torch.export, .pt2)
  std::string model;          // the exported model's class name
  std::string quantized_engine;  // "" for float models, else "x86", "fbgemm", "qnnpack", ...
  std::vector<TensorSpec> inputs;
  std::vector<TensorSpec> outputs;
  double rtol = 1e-5;  // tolerance of the artifact against the eager model it came from
  double atol = 1e-6;
  std::string json;  // the manifest as stored (what torchbridge-run --info --json prints)
};

struct RuntimeOptions {
  std::string device = "cpu";  // "cpu", "cuda", "cuda:1"
  int threads = 0;             // intra-op threads for the process; 0 keeps LibTorch's default
  int warmup_runs = 3;         // forwards run at load on the golden example (0 disables)
  /// Batch sizes to warm up at load besides the golden example's and 1 (a model with a dynamic
  /// batch dimension): oneDNN Graph compiles for each new shape on its first call, 0.1-2 s for
  /// ResNet-18, paid at load for the sizes named here.
  std::vector<int64_t> warmup_batches;
  /// TorchScript: freeze at load (folds BatchNorm into convolutions); on the CPU in fp32 and bf16,
  /// the frozen graph runs with oneDNN Graph fusion, compiled for each input shape on its first call
  /// (up to 8 shapes; torch::jit::optimize_for_inference beyond). On a CUDA device, in
  /// every precision: freeze + optimize_for_inference on contiguous weights (convolution + bias
  /// (+ add) + ReLU fused into cuDNN calls), channels-last inputs, and CUDA graphs (cuda_graphs).
  /// Whatever runs at an input shape was first run there and checked against the module as loaded
  /// (within the manifest's rtol of the largest output; 2e-2 in bf16/fp16 or on a GPU): a variant
  /// that raises or differs gives way to the next safer one, down to the module as loaded, is not
  /// tried again at later shapes, and optimization() says so. A model that selects by value (topk,
  /// sort, argmax, nonzero, NMS, ...) runs as loaded: a variant's rounding can change what it selects
  /// at inputs no check has seen. A .pt2 was optimized when it was compiled. On the CPU in fp32 an
  /// artifact whose manifest has runtime.variants (export timed them) tries its variants in that
  /// order, which may include "channels_last" (frozen, channels-last weights and 4-d inputs) and
  /// "rowwise" (frozen, linear layers and LSTMs on up to 16 rows through torchbridge's own kernels)
  /// and stops at "as_loaded"; with runtime.large_batches, batches from its "from" on follow its order.
  bool optimize = true;
  /// With optimize, on the CPU: false runs torch::jit::optimize_for_inference at every shape
  /// instead of oneDNN Graph (fp32; bf16 runs frozen, channels-last): 10-20 % slower on ResNet-18
  /// in fp32, but no kernels compiled per shape and lower peak memory at large batches (one
  /// prepacked copy of the weights, not one per shape).
  bool fuse = true;
  /// With optimize, on a CUDA device: capture a CUDA graph of the frozen model at each input shape
  /// (up to 8) on its first call and replay it afterwards, one launch instead of one
  /// per kernel. Inputs are copied into the graph's own tensors and outputs copied out, so calls
  /// stay independent; replays of one graph are serialized. Needs libtorchbridge_cuda.so (built
  /// where the LibTorch is a CUDA build with CUDA headers); optimization() says when it is missing.
  /// Loading a CUDA runtime with optimize also turns on cuDNN's algorithm search (benchmark mode)
  /// for the process.
  bool cuda_graphs = true;
  /// "fp32" (default: the artifact's own dtype), "bf16" or "fp16": floating weights and inputs are
  /// converted at load/call and outputs converted back. Faster where the CPU has bf16/fp16 units
  /// (AMX, AVX512-BF16) or on a GPU; results differ from fp32 by about 1e-2 relative. TorchScript only.
  std::string precision = "fp32";
  /// On the CPU: keep the memory of forward's large tensors (64 KiB and more) for the next call,
  /// instead of handing it back to the system and taking it again page by page (a page fault per
  /// 4 KiB of every large activation, at every call). The pool holds about the most the runtime's
  /// calls have had in use at once, and gives it back when the Runtime is destroyed. It works by
  /// wrapping the process's CPU allocator (c10::SetCPUAllocator) at the first such load; other code,
  /// and threads outside forward, allocate as before.
  bool reuse_memory = true;
  /// The largest single input forward() accepts, in bytes (1 GiB by default; 0: no limit). Larger
  /// ones, and inputs with an empty dynamic dimension, are refused with Error(kInput).
  int64_t max_input_bytes = int64_t{1} << 30;
};

/// How one output compares with its reference.
struct Comparison {
  bool passed = false;
  double max_abs = 0.0;  // max |actual - expected|
  double max_rel = 0.0;  // max_abs / max |expected| (0 when both are all zero)
  std::string note;      // why it failed when shapes or dtypes differ, or values are not finite
};

/// passed == all elements satisfy |actual - expected| <= atol + rtol * |expected|, with equal
/// shapes and dtypes and the same NaN/Inf positions.
Comparison compare(const at::Tensor& actual, const at::Tensor& expected, double rtol, double atol);

struct SelftestReport {
  bool passed = false;
  std::vector<Comparison> outputs;
};

/// A CPU runtime's memory pool (RuntimeOptions::reuse_memory); all zero without one.
struct MemoryPoolStats {
  int64_t in_use = 0;  // bytes of pooled blocks held by live tensors (outputs included)
  int64_t cached = 0;  // bytes of free blocks kept for the next allocation
  int64_t peak = 0;    // the most bytes in use at once; in_use + cached stays near it
  int64_t hits = 0;    // allocations served from a cached block
  int64_t misses = 0;  // allocations that took a new block from the system
};

class Runtime {
 public:
  /// Loads the artifact at `path`. Throws Error(kArtifact) for a missing, truncated or foreign
  /// file, Error(kInvalidArgument) for a device or engine that this LibTorch cannot provide.
  explicit Runtime(const std::string& path, const RuntimeOptions& options = {});
  ~Runtime();
  Runtime(Runtime&&) noexcept;
  Runtime& operator=(Runtime&&) noexcept;
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  const std::string& path() const;
  /// "torchscript" (.pt) or "aoti" (.pt2 AOTInductor package), read from the archive's records.
  const std::string& format() const;
  const RuntimeOptions& options() const;
  const Manifest& manifest() const;
  /// What load did to the model for speed, e.g. "freeze+onednn_graph", "freeze+channels_last"
  /// (bf16/fp16 on the CPU), "freeze+optimize_for_inference" (fuse off, or CUDA), "+cuda_graphs" on
  /// a CUDA device, "none (optimize off)", "none (quantized artifact...)", or why an optimization was
  /// dropped; followed by "; at [shapes]: <variant> (<why the faster ones were rejected>)" for each
  /// input shape where a faster variant raised or differed from the module as loaded.
  std::string optimization() const;
  /// The variant that runs at these inputs' shapes: "onednn_graph", "optimize_for_inference",
  /// "frozen", "as_loaded", or "" when no call has met these shapes yet (or for a .pt2).
  std::string variant_at(const std::vector<at::Tensor>& inputs) const;
  /// True when forward runs a module optimized at load (the Python mirror applies the same passes).
  bool optimized() const;
  /// 0: forward runs the module as loaded; N >= 1: batches of N or more run the optimized module,
  /// smaller ones the module as loaded (the manifest's optimize_from_batch, measured at export).
  int64_t optimized_from_batch() const;
  at::Device device() const;

  /// Validates the inputs against the manifest's specs (count, dtype, shape; Error(kInput)),
  /// moves them to the runtime's device (converting floating ones to the precision and, for bf16/
  /// fp16 or an optimized model on a GPU, 4-D ones to channels-last), and runs forward under
  /// c10::InferenceMode. Outputs stay on the runtime's device.
  /// Returns the outputs flattened in order (a tuple or list output becomes several tensors).
  std::vector<at::Tensor> forward(const std::vector<at::Tensor>& inputs) const;

  /// Runs forward on the submodule at a dotted path ("layer1.0.conv1"; "" is the model itself)
  /// without validation against the manifest. Error(kInput) if no such submodule exists (tracing
  /// or freezing may have inlined it) or it has no forward method (a traced submodule never run);
  /// Error(kInvalidArgument) for a .pt2, which has no submodules.
  std::vector<at::Tensor> forward_submodule(const std::string& name,
                                            const std::vector<at::Tensor>& inputs) const;

  /// Dotted names of every submodule, in definition order (TorchScript; a .pt2 throws).
  std::vector<std::string> submodule_names() const;

  /// Throws Error(kInput) naming the expected spec when `inputs` do not match the manifest.
  void validate(const std::vector<at::Tensor>& inputs) const;

  /// Random inputs that satisfy the manifest's specs; dynamic dimensions take `dynamic_size`.
  std::vector<at::Tensor> example_inputs(int64_t dynamic_size = 1, uint64_t seed = 0) const;

  /// The golden example stored in the artifact (empty for a plain TorchScript file).
  const std::vector<at::Tensor>& golden_inputs() const;
  const std::vector<at::Tensor>& golden_outputs() const;

  MemoryPoolStats memory_pool_stats() const;

  /// Runs the golden inputs and compares with the golden outputs at the manifest's tolerance.
  SelftestReport selftest() const;

 private:
  /// The inputs as forward passes them to the model: on its device, in its precision, dense.
  std::vector<at::Tensor> prepare_inputs(const std::vector<at::Tensor>& inputs) const;

  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Reads a .npy file (float16/32/64, int8/16/32/64, uint8, bool; C or Fortran order).
/// Throws Error(kInput) for a missing, truncated or malformed file or an unsupported dtype.
at::Tensor read_npy(const std::string& path);

/// Writes a tensor as .npy (moved to CPU, made contiguous). Writes to a temporary file and
/// renames it into place, so a failed write leaves an existing file untouched.
void write_npy(const std::string& path, const at::Tensor& tensor);

/// "float32", "int64", ... as numpy and the manifest spell them; Error(kInvalidArgument) if unknown.
std::string dtype_name(at::ScalarType dtype);
at::ScalarType dtype_from_name(const std::string& name);

}  // namespace torchbridge
