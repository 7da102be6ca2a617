#include "manifest.hpp"

#include <cmath>
#include <stdexcept>

namespace torchbridge {
namespace {

[[noreturn]] void bad(const std::string& why) { throw std::runtime_error(why); }

std::string number_text(double value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.17g", value);
  return text;
}

// An integer in [low, high]: JSON numbers are doubles, so 1e300, 2.5 and 2**63 are refused here
// rather than wrapped by a cast.
int64_t integer(const json::Value& value, const std::string& what, int64_t low, int64_t high) {
  const double number = value.as_number(what);
  if (!(number >= static_cast<double>(low) && number <= static_cast<double>(high)) || std::floor(number) != number)
    bad("'" + what + "' must be an integer in [" + std::to_string(low) + ", " + std::to_string(high) + "], got " +
        number_text(number));
  return static_cast<int64_t>(number);
}

std::vector<int64_t> dims(const json::Value& value, const std::string& what, bool allow_null) {
  std::vector<int64_t> out;
  const auto& array = value.as_array(what);
  if (array.size() > 64) bad("'" + what + "' has " + std::to_string(array.size()) + " dimensions (at most 64)");
  for (size_t i = 0; i < array.size(); ++i) {
    const std::string dim = what + "[" + std::to_string(i) + "]";
    if (allow_null && array[i].is_null()) {
      out.push_back(-1);
      continue;
    }
    out.push_back(integer(array[i], dim, 0, kMaxManifestDim));
  }
  return out;
}

TensorSpec parse_spec(const json::Value& value, const std::string& what) {
  if (value.type != json::Value::Type::kObject) bad("'" + what + "' must be an object");
  TensorSpec spec;
  spec.name = value.has("name") && !value.at("name").is_null() ? value.at("name").as_string(what + ".name") : "";
  try {
    spec.dtype = dtype_from_name(value.at("dtype").as_string(what + ".dtype"));
  } catch (const Error& error) {
    bad("'" + what + ".dtype': " + error.what());
  }
  spec.shape = dims(value.at("shape"), what + ".shape", /*allow_null=*/true);
  if (value.has("min_shape") || value.has("max_shape")) {
    spec.min_shape = dims(value.at("min_shape"), what + ".min_shape", false);
    spec.max_shape = dims(value.at("max_shape"), what + ".max_shape", false);
    if (spec.min_shape.size() != spec.shape.size() || spec.max_shape.size() != spec.shape.size())
      bad("'" + what + "': min_shape/max_shape must have one entry per dimension");
    for (size_t i = 0; i < spec.shape.size(); ++i) {
      if (spec.min_shape[i] > spec.max_shape[i])
        bad("'" + what + "': min_shape[" + std::to_string(i) + "] exceeds max_shape[" + std::to_string(i) + "]");
      if (spec.shape[i] >= 0 && (spec.min_shape[i] != spec.shape[i] || spec.max_shape[i] != spec.shape[i]))
        bad("'" + what + "': the range of static dimension " + std::to_string(i) + " differs from its size");
    }
  }
  return spec;
}

double tolerance(const json::Value& value, const std::string& what) {
  const double number = value.as_number(what);
  if (!(number >= 0.0 && number <= 1.0)) bad("'" + what + "' must be in [0, 1], got " + number_text(number));
  return number;
}

// runtime.variants and runtime.large_batches.variants: at most 16 names of 1 to 64 characters.
std::vector<std::string> variant_names(const json::Value& value, const std::string& what) {
  const auto& names = value.as_array(what);
  if (names.size() > 16) bad("'" + what + "' must list at most 16 names");
  std::vector<std::string> out;
  for (const json::Value& name : names) {
    const std::string& text = name.as_string(what + "[]");
    if (text.empty() || text.size() > 64) bad("'" + what + "' names must be 1 to 64 characters");
    out.push_back(text);
  }
  return out;
}

std::vector<std::string> golden_names(const json::Value& golden, const char* key, size_t expected) {
  std::vector<std::string> names;
  const std::string what = std::string("golden.") + key;
  for (const auto& name : golden.at(key).as_array(what)) {
    names.push_back(name.as_string(what + " entry"));
    if (names.back().empty() || names.back().size() > 256 || names.back().find("..") != std::string::npos)
      bad("'" + what + "' holds a bad record name");
  }
  if (names.size() != expected)
    bad("'" + what + "' names " + std::to_string(names.size()) + " records for " + std::to_string(expected) + " " +
        key);
  return names;
}

}  // namespace

ParsedManifest parse_manifest(const std::string& text, const std::string& path) {
  ParsedManifest parsed;
  Manifest& manifest = parsed.manifest;
  manifest.present = true;
  manifest.json = text;
  try {
    if (text.size() > (16u << 20)) bad("larger than 16 MiB");
    parsed.root = json::parse(text);
    const json::Value& root = parsed.root;
    if (root.type != json::Value::Type::kObject) bad("expected a JSON object");
    const double version = root.at("format_version").as_number("format_version");
    if (version != 1.0) {
      if (version > 1.0 && version < 1e6 && std::floor(version) == version)
        bad("format_version " + number_text(version) + " is newer than this runtime understands (1); upgrade torchbridge");
      bad("format_version must be 1, got " + number_text(version));
    }
    manifest.format_version = 1;
    manifest.format = root.at("format").as_string("format");
    if (manifest.format != "torchscript" && manifest.format != "aoti")
      bad("format must be 'torchscript' or 'aoti', got '" + manifest.format.substr(0, 40) + "'");
    manifest.torchbridge_version = root.at("torchbridge_version").as_string("torchbridge_version");
    manifest.torch_version = root.at("torch_version").as_string("torch_version");
    manifest.method = root.has("method") ? root.at("method").as_string("method") : "";
    manifest.model = root.has("model") ? root.at("model").as_string("model") : "";
    if (root.has("runtime")) {
      const json::Value& runtime = root.at("runtime");
      if (runtime.has("optimize_from_batch"))
        parsed.optimize_from_batch =
            integer(runtime.at("optimize_from_batch"), "runtime.optimize_from_batch", 0, kMaxOptimizeFromBatch);
      if (runtime.has("fuse")) parsed.fuse = runtime.at("fuse").as_bool("runtime.fuse");
      if (runtime.has("optimize")) parsed.optimize = runtime.at("optimize").as_bool("runtime.optimize");
      if (runtime.has("variants")) parsed.variants = variant_names(runtime.at("variants"), "runtime.variants");
      if (runtime.has("large_batches")) {
        const json::Value& large = runtime.at("large_batches");
        if (large.type != json::Value::Type::kObject) bad("'runtime.large_batches' must be an object");
        parsed.large_batches_from =
            integer(large.at("from"), "runtime.large_batches.from", 2, kMaxOptimizeFromBatch);
        parsed.large_batch_variants = variant_names(large.at("variants"), "runtime.large_batches.variants");
      }
    }
    if (root.has("quantized_engine") && !root.at("quantized_engine").is_null())
      manifest.quantized_engine = root.at("quantized_engine").as_string("quantized_engine");
    const auto& inputs = root.at("inputs").as_array("inputs");
    const auto& outputs = root.at("outputs").as_array("outputs");
    if (inputs.empty() || inputs.size() > 1024) bad("'inputs' must list 1 to 1024 inputs");
    if (outputs.empty() || outputs.size() > 65536) bad("'outputs' must list 1 to 65536 outputs");
    for (size_t i = 0; i < inputs.size(); ++i)
      manifest.inputs.push_back(parse_spec(inputs[i], "inputs[" + std::to_string(i) + "]"));
    for (size_t i = 0; i < outputs.size(); ++i)
      manifest.outputs.push_back(parse_spec(outputs[i], "outputs[" + std::to_string(i) + "]"));
    if (root.has("tolerance")) {
      manifest.rtol = tolerance(root.at("tolerance").at("rtol"), "tolerance.rtol");
      const double atol = root.at("tolerance").at("atol").as_number("tolerance.atol");
      if (!(atol >= 0.0 && atol < 1e30)) bad("'tolerance.atol' must be >= 0, got " + number_text(atol));
      manifest.atol = atol;
    }
    if (root.has("golden")) {
      const json::Value& golden = root.at("golden");
      parsed.golden_inputs = golden_names(golden, "inputs", manifest.inputs.size());
      parsed.golden_outputs = golden_names(golden, "outputs", manifest.outputs.size());
    }
    if (root.has("integrity")) {
      const std::string& integrity = root.at("integrity").as_string("integrity");
      if (integrity != "sha256") bad("integrity must be 'sha256', got '" + integrity.substr(0, 40) + "'");
      parsed.sealed = true;
    }
    if (manifest.format == "aoti") {
      // What the CPU check at load reads: a package without it would skip that check.
      const json::Value& aoti = root.at("aoti");
      const auto& features = aoti.at("required_cpu_features").as_array("aoti.required_cpu_features");
      for (const auto& feature : features) feature.as_string("aoti.required_cpu_features entry");
      const std::string device = aoti.has("device") ? aoti.at("device").as_string("aoti.device") : "cpu";
      if (device == "cpu" && features.empty()) bad("'aoti.required_cpu_features' is empty for a CPU package");
    }
  } catch (const Error& error) {
    throw Error(ErrorCode::kArtifact, path + ": bad torchbridge manifest: " + error.what());
  } catch (const std::exception& error) {
    throw Error(ErrorCode::kArtifact, path + ": bad torchbridge manifest: " + error.what());
  }
  return parsed;
}

}  // namespace torchbridge
