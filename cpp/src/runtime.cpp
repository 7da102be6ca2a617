#include "torchbridge/runtime.hpp"

#include <ATen/Config.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/Utils.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/cuda.h>
#include <torch/csrc/jit/codegen/onednn/interface.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/csrc/jit/passes/pass_manager.h>
#include <torch/script.h>
#include <torch/version.h>

#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <optional>
#include <mutex>
#include <set>
#include <sstream>

#include "backend.hpp"
#include "integrity.hpp"
#include "internal.hpp"
#include "json.hpp"
#include "libraries.hpp"
#include "manifest.hpp"
#include "memory_pool.hpp"

#ifndef TORCHBRIDGE_VERSION
#define TORCHBRIDGE_VERSION "0.0.0"
#endif

namespace torchbridge {

const char* version() { return TORCHBRIDGE_VERSION; }

namespace {
// oneDNN Graph keeps every partition it compiles in a process-wide LRU cache (1024 entries) as
// well as in the kernel that compiled it; the cache's copies outlive the Runtime, so each load
// and destroy of a fused model grew the process (hundreds of KiB per cycle, measured) until the
// cache filled. The kernels keep their own compiled partitions, so the cache only saves a compile
// when one process builds the same partition twice. Set before the cache is first created (it
// reads the variable once); a value the user set wins.
const bool kPartitionCacheOff = [] {
  setenv("DNNL_GRAPH_COMPILED_PARTITION_CACHE_CAPACITY", "0", /*overwrite=*/0);
  return true;
}();

// Why a pass is off although the options ask for it (a crash cannot be fallen back from in-process).
constexpr char kCrashedAtExport[] =
    "LibTorch crashed on this model with it when export ran the artifact in torchbridge-run, so the manifest sets ";
}  // namespace

std::string Error::printable(const std::string& message) {
  std::string out;
  out.reserve(message.size());
  size_t i = 0;
  auto escape = [&](unsigned char c) {
    static const char digits[] = "0123456789abcdef";
    out += "\\x";
    out += digits[c >> 4];
    out += digits[c & 15];
  };
  while (i < message.size()) {
    const auto c = static_cast<unsigned char>(message[i]);
    const size_t length = json::utf8_sequence_length(message, i);
    if (length == 0 || (c < 0x20 && c != '\n' && c != '\t')) {
      escape(c);
      ++i;
    } else {
      out.append(message, i, length);
      i += length;
    }
  }
  return out;
}

// Shared with the backends (backend.hpp).

std::string shape_string(c10::IntArrayRef shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ", ";
    out += shape[i] < 0 ? "?" : std::to_string(shape[i]);
  }
  return out + "]";
}

// What LibTorch said, without the C++ stack its errors append ("Exception raised from ...").
std::string libtorch_message(const std::exception& error) {
  const std::string message = error.what();
  const size_t stack = message.find("Exception raised from");
  if (stack == std::string::npos) return message;
  const size_t end = message.find_last_not_of(" \t\r\n", stack == 0 ? 0 : stack - 1);
  return stack == 0 || end == std::string::npos ? std::string() : message.substr(0, end + 1);
}

// The first non-blank line of a LibTorch message, without its C++ stack.
std::string first_line(const std::exception& error) {
  std::istringstream lines(libtorch_message(error));
  std::string line;
  while (std::getline(lines, line))
    if (line.find_first_not_of(" \t\r") != std::string::npos) return line.substr(line.find_first_not_of(" \t\r"));
  return "(LibTorch gave no message)";
}

void flatten_outputs(const c10::IValue& value, std::vector<at::Tensor>& out) {
  if (value.isTensor()) {
    out.push_back(value.toTensor());
  } else if (value.isTuple()) {
    for (const auto& element : value.toTupleRef().elements()) flatten_outputs(element, out);
  } else if (value.isList()) {
    for (const auto& element : value.toListRef()) flatten_outputs(element, out);
  } else if (value.isGenericDict()) {
    // In insertion order, as Python's dicts (export.flatten_outputs).
    for (const auto& entry : value.toGenericDict()) flatten_outputs(entry.value(), out);
  } else if (!value.isNone()) {  // None leaves (an unused auxiliary output) are not outputs
    throw Error(ErrorCode::kRuntime, std::string("model returned a ") + value.tagKind() +
                                         "; torchbridge expects tensors in (nested) tuples, lists or dicts");
  }
}

namespace {

// Both formats are zip archives read by PyTorchStreamReader; the manifest sits under extra/ in both.
constexpr char kManifestRecord[] = "extra/torchbridge/manifest.json";
constexpr char kTorchScriptRecord[] = "constants.pkl";  // written by torch.jit.save
constexpr char kPt2FormatRecord[] = "archive_format";   // "pt2" in a torch.export / AOTInductor package

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

std::string read_record(caffe2::serialize::PyTorchStreamReader& reader, const std::string& name) {
  auto [data, size] = reader.getRecord(name);
  return std::string(static_cast<const char*>(data.get()), size);
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
  // First, so destroyed last: blocks the backend's tensors hold go back to it, then to the system.
  std::unique_ptr<MemoryPool> pool;
  std::string path;
  std::string format;  // "torchscript" or "aoti", from the archive's records
  RuntimeOptions options;
  Manifest manifest;
  int64_t optimize_from_batch = 1;  // the manifest's runtime.optimize_from_batch
  std::vector<std::string> manifest_variants;  // runtime.variants: the CPU order measured at export
  int64_t large_batches_from = 0;               // runtime.large_batches: from this batch on,
  std::vector<std::string> large_batch_variants;  // this order (measured at a large batch)
  bool manifest_fuse = true;        // runtime.fuse and runtime.optimize: false where export saw
  bool manifest_optimize = true;    // that pass crash LibTorch on this model
  at::Device device{at::kCPU};
  std::unique_ptr<Backend> backend;
  std::vector<at::Tensor> golden_inputs;
  std::vector<at::Tensor> golden_outputs;
  at::ScalarType precision = at::kFloat;
  // 4-D floating inputs go channels-last: bf16/fp16 (oneDNN on the CPU) and an optimized model on a
  // GPU (cuDNN's NHWC kernels), unless the model refused them at load (a view on the input, say).
  bool channels_last_inputs = false;
  std::string optimization;
  TorchScriptModel* torchscript = nullptr;  // the backend, when the artifact is TorchScript
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
  if (impl_->device.is_cpu() && options.reuse_memory) impl_->pool = MemoryPool::create();

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
    const ZipDirectory directory = read_zip_directory(path);
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
    // Before anything is parsed or, for a .pt2, compiled code is loaded.
    check_archive_integrity(path, reader, directory);
    if (reader.hasRecord(kManifestRecord)) {
      ParsedManifest parsed = parse_manifest(read_record(reader, kManifestRecord), path);
      if (parsed.sealed && !reader.hasRecord(kDigestRecord))
        throw Error(ErrorCode::kArtifact, path + ": damaged artifact: record '" + kDigestRecord +
                                              "', which the manifest promises, is missing (export it again or restore a copy)");
      impl_->manifest = std::move(parsed.manifest);
      impl_->optimize_from_batch = parsed.optimize_from_batch;
      impl_->manifest_fuse = parsed.fuse;
      impl_->manifest_optimize = parsed.optimize;
      impl_->manifest_variants = std::move(parsed.variants);
      impl_->large_batches_from = parsed.large_batches_from;
      impl_->large_batch_variants = std::move(parsed.large_batch_variants);
      manifest_root = std::move(parsed.root);
      // Under extra/ in TorchScript; at the top level in a .pt2 (torch's loader reads extra/ as text).
      auto golden_record = [&](const std::string& name) {
        return reader.hasRecord("extra/" + name) ? "extra/" + name : name;
      };
      // The golden example is part of the artifact: damage to it is the artifact's fault.
      auto golden = [&](const std::string& name) {
        if (!reader.hasRecord(golden_record(name)))
          throw Error(ErrorCode::kArtifact, path + ": damaged artifact: golden record '" + name +
                                                "', which the manifest names, is missing (export it again)");
        try {
          return parse_npy(read_record(reader, golden_record(name)), name);
        } catch (const Error& error) {
          throw Error(ErrorCode::kArtifact, path + ": damaged artifact: golden record " + error.what());
        }
      };
      for (const auto& name : parsed.golden_inputs) impl_->golden_inputs.push_back(golden(name));
      for (const auto& name : parsed.golden_outputs) impl_->golden_outputs.push_back(golden(name));
      for (size_t i = 0; i < impl_->golden_inputs.size(); ++i)
        if (!impl_->manifest.inputs[i].matches(impl_->golden_inputs[i]))
          throw Error(ErrorCode::kArtifact, path + ": damaged artifact: golden record '" + parsed.golden_inputs[i] +
                                                "' holds " + tensor_string(impl_->golden_inputs[i]) +
                                                " where the manifest declares " + impl_->manifest.inputs[i].to_string());
      for (size_t i = 0; i < impl_->golden_outputs.size(); ++i)
        if (impl_->golden_outputs[i].scalar_type() != impl_->manifest.outputs[i].dtype ||
            impl_->golden_outputs[i].dim() != static_cast<int64_t>(impl_->manifest.outputs[i].shape.size()))
          throw Error(ErrorCode::kArtifact, path + ": damaged artifact: golden record '" + parsed.golden_outputs[i] +
                                                "' holds " + tensor_string(impl_->golden_outputs[i]) +
                                                " where the manifest declares " + impl_->manifest.outputs[i].to_string());
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
      // Bit-level differences are expected from fusion; in reduced precision or on a GPU (TF32,
      // cuDNN's algorithm choice) rounding differs far more between two correct graphs.
      const double check_rtol = impl_->precision == at::kFloat && impl_->device.is_cpu()
                                    ? (impl_->manifest.present ? impl_->manifest.rtol : 1e-5)
                                    : 2e-2;
      // The manifest turns a pass off only on the CPU, where export ran the model with it.
      const bool cpu = impl_->device.is_cpu();
      const bool optimize_off = cpu && !impl_->manifest_optimize;
      const bool fuse_off = cpu && !impl_->manifest_fuse;
      // The measured orders hold for the CPU in fp32, where export timed them.
      const bool measured_here = cpu && impl_->precision == at::kFloat;
      auto backend = make_torchscript_backend(
          path, impl_->device, impl_->precision, options.optimize && !quantized && !optimize_off,
          options.fuse && !fuse_off, options.cuda_graphs, check_rtol,
          measured_here ? impl_->manifest_variants : std::vector<std::string>{},
          measured_here ? impl_->large_batches_from : 0,
          measured_here ? impl_->large_batch_variants : std::vector<std::string>{});
      impl_->optimization = !options.optimize ? "none (optimize off)"
                            : quantized       ? "none (quantized artifact: int8 kernels are prepacked already)"
                            : optimize_off    ? "none (" + std::string(kCrashedAtExport) + "runtime.optimize false)"
                            : backend->failure().empty() ? backend->optimization()
                                                         : "none (" + backend->failure() + ")";
      if (options.optimize && !quantized && !optimize_off && options.fuse && fuse_off &&
          backend->failure().empty())
        impl_->optimization += " (no oneDNN Graph: " + std::string(kCrashedAtExport) + "runtime.fuse false)";
      impl_->torchscript = backend.get();
      impl_->backend = std::move(backend);
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& error) {
    const std::string message = libtorch_message(error);
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

  // The optimized module can cost more than it saves on small inputs to a small model (oneDNN's
  // layouts and fused-kernel calls); export times both and records from which batch size the
  // optimized module is faster (deterministic: every process makes the same choice).
  const bool batch_dynamic = !impl_->manifest.inputs.empty() && !impl_->manifest.inputs[0].shape.empty() &&
                             impl_->manifest.inputs[0].shape[0] < 0;
  if (TorchScriptModel* const ts = impl_->torchscript; ts != nullptr && !ts->optimization().empty()) {
    // Measured at export on the CPU: it says nothing about a GPU.
    const int64_t from =
        impl_->precision == at::kFloat && batch_dynamic && impl_->device.is_cpu() ? impl_->optimize_from_batch : 1;
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
        try {
          for (int i = 0; i < options.warmup_runs; ++i) forward(inputs);
        } catch (const Error& error) {
          // The model as loaded refuses this batch size (random inputs, or a model that needs a
          // batch of 2): a call at that size fails the same way; the load does not.
          if (error.code() != ErrorCode::kRuntime) throw;
        }
      }
    }
  }
}

Runtime::~Runtime() = default;
Runtime::Runtime(Runtime&&) noexcept = default;
Runtime& Runtime::operator=(Runtime&&) noexcept = default;

const std::string& Runtime::path() const { return impl_->path; }

MemoryPoolStats Runtime::memory_pool_stats() const { return impl_->pool ? impl_->pool->stats() : MemoryPoolStats{}; }
const std::string& Runtime::format() const { return impl_->format; }
const RuntimeOptions& Runtime::options() const { return impl_->options; }
const Manifest& Runtime::manifest() const { return impl_->manifest; }
std::string Runtime::optimization() const {
  return impl_->backend ? impl_->optimization + impl_->backend->fallbacks() : impl_->optimization;
}
std::string Runtime::variant_at(const std::vector<at::Tensor>& inputs) const {
  return impl_->backend->variant_at(prepare_inputs(inputs));
}
bool Runtime::optimized() const { return !impl_->backend->optimization().empty(); }
int64_t Runtime::optimized_from_batch() const {
  return impl_->torchscript != nullptr ? impl_->torchscript->optimized_from_batch() : 0;
}
at::Device Runtime::device() const { return impl_->device; }
const std::vector<at::Tensor>& Runtime::golden_inputs() const { return impl_->golden_inputs; }
const std::vector<at::Tensor>& Runtime::golden_outputs() const { return impl_->golden_outputs; }

void Runtime::validate(const std::vector<at::Tensor>& inputs) const {
  for (size_t i = 0; i < inputs.size(); ++i) {
    const at::Tensor& input = inputs[i];
    const std::string which = "input " + std::to_string(i);
    if (!input.defined()) throw Error(ErrorCode::kInput, which + ": got an undefined tensor");
    if (input.is_nested()) throw Error(ErrorCode::kInput, which + " is a nested tensor; pass a dense (strided) tensor");
    if (input.layout() != at::kStrided)
      throw Error(ErrorCode::kInput, which + " has layout " + c10::toString(input.layout()) +
                                         "; pass a dense (strided) tensor (e.g. .to_dense())");
    if (input.is_quantized())
      throw Error(ErrorCode::kInput, which + " is a quantized tensor; pass the float tensor (.dequantize()): "
                                             "a quantized artifact quantizes its inputs itself");
    if (!input.device().is_cpu() && !input.device().is_cuda())
      throw Error(ErrorCode::kInput, which + " is on device '" + input.device().str() + "' (expected cpu or cuda)");
    const int64_t limit = impl_->options.max_input_bytes;
    if (limit > 0 && static_cast<int64_t>(input.nbytes()) > limit)
      throw Error(ErrorCode::kInput, which + " (" + tensor_string(input) + ") holds " + std::to_string(input.nbytes()) +
                                         " bytes, more than max_input_bytes (" + std::to_string(limit) +
                                         "): split the batch, or raise the limit");
  }
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
    for (size_t d = 0; d < spec.shape.size() && outside < 0; ++d)
      if (spec.shape[d] < 0 && inputs[i].size(static_cast<int64_t>(d)) == 0)
        throw Error(ErrorCode::kInput, "input " + std::to_string(i) + " (" + spec.to_string() + ") is empty: size 0 in dim " +
                                           std::to_string(d) + " (got " + tensor_string(inputs[i]) + ")");
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

std::vector<at::Tensor> Runtime::prepare_inputs(const std::vector<at::Tensor>& inputs) const {
  std::vector<at::Tensor> moved;
  moved.reserve(inputs.size());
  const at::ScalarType precision = impl_->precision;
  for (const auto& input : inputs) {
    at::Tensor tensor = input.device() == impl_->device ? input : input.to(impl_->device);
    const bool floating = at::isFloatingType(tensor.scalar_type());
    // One conversion for dtype and layout together. Every input reaches the model dense: a view
    // (a transpose, a slice, numpy's strides) must give the answer its values give, and compiled
    // kernels are checked and cached per shape, not per stride.
    const at::ScalarType dtype = floating && precision != at::kFloat ? precision : tensor.scalar_type();
    const at::MemoryFormat layout = floating && impl_->channels_last_inputs && tensor.dim() == 4
                                        ? at::MemoryFormat::ChannelsLast
                                        : at::MemoryFormat::Contiguous;
    // (Tensor::to aliases a strided view whose suggested format is the one asked for: no copy.)
    if (dtype != tensor.scalar_type()) tensor = tensor.to(dtype, /*non_blocking=*/false, /*copy=*/false, layout);
    if (!tensor.is_contiguous(layout)) tensor = tensor.contiguous(layout);
    // A contiguous tensor may still carry any stride on a dimension of size 1 (a permuted view),
    // which oneDNN Graph reads as a layout: give it the canonical strides (same memory, no copy).
    if (layout == at::MemoryFormat::Contiguous) {
      std::vector<int64_t> strides(tensor.dim(), 1);
      for (int64_t d = tensor.dim() - 2; d >= 0; --d) strides[d] = strides[d + 1] * std::max<int64_t>(tensor.size(d + 1), 1);
      if (tensor.strides() != c10::IntArrayRef(strides)) tensor = tensor.as_strided(tensor.sizes(), strides);
    }
    moved.push_back(std::move(tensor));
  }
  return moved;
}

std::vector<at::Tensor> Runtime::forward(const std::vector<at::Tensor>& inputs) const {
  validate(inputs);
  c10::InferenceMode guard;
  MemoryPoolScope pool_scope(impl_->pool.get());
  const at::ScalarType precision = impl_->precision;
  const std::vector<at::Tensor> moved = prepare_inputs(inputs);
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
    throw Error(ErrorCode::kRuntime, impl_->path + ": forward failed: " + libtorch_message(error));
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
    throw Error(ErrorCode::kRuntime,
                impl_->path + ": forward of submodule '" + name + "' failed: " + libtorch_message(error));
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
