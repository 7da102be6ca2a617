// torchbridge-run: run a torchbridge artifact from the command line, with no Python involved.
#include <torch/torch.h>
#include <torch/version.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "torchbridge/runtime.hpp"

namespace {

// Exit statuses, one per cause.
enum Exit : int {
  kOk = 0,
  kRuntimeFailure = 1,  // the model raised while running, or an unexpected error
  kUsage = 2,           // bad command line
  kBadInput = 3,        // an input file or tensor does not match what the model expects
  kLoadFailure = 4,     // the artifact is missing, truncated, foreign or fails to load
  kMismatch = 5,        // --selftest outputs differ from the golden outputs
};

struct Params {
  std::string model;
  std::vector<std::string> inputs;
  std::vector<std::string> outputs;
  std::string output_dir;
  // The runtime's options, with the library's own defaults (--help prints them from here).
  torchbridge::RuntimeOptions runtime;
  int bench = 0;
  int warmup = 10;
  int64_t batch = 1;
  uint64_t seed = 0;
  bool selftest = false;
  bool info = false;
  bool json = false;
};

void print_help(std::ostream& out) {
  const Params defaults;
  out << "usage: torchbridge-run MODEL [options]\n"
         "\n"
         "Runs a torchbridge artifact (TorchScript .pt or AOTInductor .pt2 from `torchbridge export`) in C++.\n"
         "With no --input, random inputs are made from the artifact's manifest.\n"
         "\n"
         "options:\n"
         "  -i, --input PATH     .npy file for the next model input (repeat once per input, in order)\n"
         "  -o, --output PATH    .npy file for the next model output (repeat once per output)\n"
         "  --output-dir DIR     write every output to DIR/NAME.npy, NAME its path in what the model\n"
         "                       returns as the manifest names it (output_0, logits, output_1.boxes, ...)\n"
         "  --selftest           run the golden example stored in the artifact and compare\n"
         "  --bench N            time N forwards after warm-up; print p50/p90/p99 latency (default "
      << defaults.bench << ": off); on a GPU the inputs\n"
         "                       start on the device, and a second timing adds the host copies\n"
      << "  --warmup N           untimed forwards before --bench (default " << defaults.warmup << ")\n"
      << "  --batch N            size of dynamic dimensions in random inputs (default " << defaults.batch << ")\n"
      << "  --seed N             seed for random inputs (default " << defaults.seed << ")\n"
      << "  --threads N          intra-op threads, 0 = LibTorch's default (default " << defaults.runtime.threads << ")\n"
      << "  --max-input-bytes N  refuse an input larger than N bytes, 0 = no limit (default " << defaults.runtime.max_input_bytes
      << ")\n"
      << "  --device D           cpu, cuda or cuda:N (default " << defaults.runtime.device << ")\n"
      << "  --no-optimize        run the TorchScript module as loaded (default: freeze + oneDNN Graph fusion)\n"
      << "  --no-fuse            freeze + optimize_for_inference instead of oneDNN Graph: less memory at large\n"
      << "                       batches, no compilation per input shape, about 10 % slower\n"
      << "  --no-reuse-memory    hand the memory of large tensors back to the system after each forward\n"
         "                       (default: kept for the next one, about the most a forward used)\n"
      << "  --no-cuda-graphs     on a CUDA device, launch every kernel instead of replaying a CUDA graph\n"
      << "                       captured per input shape\n"
      << "  --precision P        fp32, bf16 or fp16: the dtype float TorchScript models run in (default "
      << defaults.runtime.precision << ")\n"
      << "  --info               print the artifact's manifest and submodules\n"
         "  --json               machine-readable output on stdout\n"
         "  -h, --help           this help\n"
         "  --version            torchbridge and LibTorch versions\n"
         "\n"
         "exit status: 0 ok, 1 model failed while running, 2 usage error, 3 bad input,\n"
         "             4 artifact failed to load, 5 selftest mismatch\n";
}

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

int64_t parse_int(const std::string& flag, const std::string& text, int64_t minimum) {
  char* end = nullptr;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || value < minimum)
    throw UsageError(flag + " expects an integer >= " + std::to_string(minimum) + ", got '" + text + "'");
  return value;
}

// Returns false when the program should exit 0 right away (--help, --version).
bool parse_args(int argc, char** argv, Params& params) {
  std::vector<std::string> args(argv + 1, argv + argc);
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    auto value = [&]() -> const std::string& {
      if (i + 1 >= args.size()) throw UsageError(arg + " needs a value");
      return args[++i];
    };
    if (arg == "-h" || arg == "--help") {
      print_help(std::cout);
      return false;
    } else if (arg == "--version") {
      std::cout << "torchbridge-run " << torchbridge::version() << " (LibTorch " << TORCH_VERSION << ")\n";
      return false;
    } else if (arg == "-i" || arg == "--input") {
      params.inputs.push_back(value());
    } else if (arg == "-o" || arg == "--output") {
      params.outputs.push_back(value());
    } else if (arg == "--output-dir") {
      params.output_dir = value();
    } else if (arg == "--selftest") {
      params.selftest = true;
    } else if (arg == "--bench") {
      params.bench = static_cast<int>(parse_int(arg, value(), 1));
    } else if (arg == "--warmup") {
      params.warmup = static_cast<int>(parse_int(arg, value(), 0));
    } else if (arg == "--batch") {
      params.batch = parse_int(arg, value(), 1);
    } else if (arg == "--seed") {
      params.seed = static_cast<uint64_t>(parse_int(arg, value(), 0));
    } else if (arg == "--threads") {
      params.runtime.threads = static_cast<int>(parse_int(arg, value(), 0));
    } else if (arg == "--max-input-bytes") {
      params.runtime.max_input_bytes = parse_int(arg, value(), 0);
    } else if (arg == "--device") {
      params.runtime.device = value();
    } else if (arg == "--no-optimize") {
      params.runtime.optimize = false;
    } else if (arg == "--no-fuse") {
      params.runtime.fuse = false;
    } else if (arg == "--no-reuse-memory") {
      params.runtime.reuse_memory = false;
    } else if (arg == "--no-cuda-graphs") {
      params.runtime.cuda_graphs = false;
    } else if (arg == "--precision") {
      params.runtime.precision = value();
    } else if (arg == "--info") {
      params.info = true;
    } else if (arg == "--json") {
      params.json = true;
    } else if (!arg.empty() && arg[0] == '-') {
      throw UsageError("unknown option '" + arg + "' (see --help)");
    } else if (params.model.empty()) {
      params.model = arg;
    } else {
      throw UsageError("unexpected argument '" + arg + "': one MODEL only (inputs go after --input)");
    }
  }
  if (params.model.empty()) throw UsageError("missing MODEL (the artifact to run; see --help)");
  return true;
}

std::string json_escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buffer[8];
          std::snprintf(buffer, sizeof(buffer), "\\u%04x", c);
          out += buffer;
        } else {
          out += c;
        }
    }
  }
  return out;
}

std::string json_number(double value) {
  if (!std::isfinite(value)) return "null";
  std::ostringstream out;
  out.precision(9);
  out << value;
  return out.str();
}

std::string shape_json(const at::Tensor& tensor) {
  std::string out = "[";
  for (int64_t i = 0; i < tensor.dim(); ++i) out += (i ? ", " : "") + std::to_string(tensor.size(i));
  return out + "]";
}

std::string describe(const at::Tensor& tensor) {
  std::ostringstream out;
  out << torchbridge::dtype_name(tensor.scalar_type()) << "[";
  for (int64_t i = 0; i < tensor.dim(); ++i) out << (i ? ", " : "") << tensor.size(i);
  out << "]";
  return out.str();
}

double peak_rss_mb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::strtod(line.c_str() + 6, nullptr) / 1024.0;
  }
  return 0.0;
}

double percentile(std::vector<double> sorted, double q) {
  if (sorted.empty()) return 0.0;
  const double rank = q * static_cast<double>(sorted.size() - 1);
  const size_t low = static_cast<size_t>(std::floor(rank));
  const size_t high = std::min(low + 1, sorted.size() - 1);
  return sorted[low] + (sorted[high] - sorted[low]) * (rank - static_cast<double>(low));
}

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

int run(const Params& params) {
  torchbridge::RuntimeOptions options = params.runtime;
  // Random inputs come at --batch: compile for it at load, so the first call is not the slow one.
  if (params.inputs.empty()) options.warmup_batches = {params.batch};
  const auto load_start = Clock::now();
  torchbridge::Runtime runtime(params.model, options);
  const double load_ms = ms_since(load_start);
  const torchbridge::Manifest& manifest = runtime.manifest();
  std::ostringstream json;  // assembled as fields, printed as one object at the end
  json << "{\"model\": \"" << json_escape(params.model) << "\", \"format\": \"" << runtime.format()
       << "\", \"device\": \"" << json_escape(params.runtime.device)
       << "\", \"threads\": " << at::get_num_threads() << ", \"load_ms\": " << json_number(load_ms)
       << ", \"optimization\": \"" << json_escape(runtime.optimization()) << "\", \"precision\": \""
       << json_escape(params.runtime.precision) << "\"";

  if (params.info) {
    if (params.json) {
      json << ", \"manifest\": " << (manifest.present ? manifest.json : "null");
    } else {
      const bool aoti = runtime.format() == "aoti";
      std::cout << "artifact: " << params.model << (aoti ? " (AOTInductor package)" : " (TorchScript)") << "\n";
      if (!manifest.present) {
        std::cout << "  (exported without torchbridge: no manifest)\n";
      } else {
        std::cout << "  exported by torchbridge " << manifest.torchbridge_version << " with torch "
                  << manifest.torch_version << " (" << manifest.method << ")\n  model: " << manifest.model << "\n";
        for (const auto& spec : manifest.inputs) {
          std::cout << "  input  " << spec.to_string();
          for (size_t d = 0; d < spec.min_shape.size(); ++d)
            if (spec.shape[d] < 0) std::cout << "  dim " << d << " in " << spec.min_shape[d] << ".." << spec.max_shape[d];
          std::cout << "\n";
        }
        for (const auto& spec : manifest.outputs) std::cout << "  output " << spec.to_string() << "\n";
        std::cout << "  tolerance: rtol " << manifest.rtol << ", atol " << manifest.atol << "\n";
        if (!manifest.quantized_engine.empty()) std::cout << "  quantized engine: " << manifest.quantized_engine << "\n";
      }
      if (!aoti) std::cout << "  submodules: " << runtime.submodule_names().size() << "\n";
      std::cout << "  at load: " << runtime.optimization() << ", precision " << params.runtime.precision << "\n";
    }
  }

  if (params.selftest) {
    const torchbridge::SelftestReport report = runtime.selftest();
    if (params.json) {
      json << ", \"selftest\": {\"passed\": " << (report.passed ? "true" : "false") << ", \"outputs\": [";
      for (size_t i = 0; i < report.outputs.size(); ++i) {
        const auto& c = report.outputs[i];
        json << (i ? ", " : "") << "{\"max_abs\": " << json_number(c.max_abs) << ", \"max_rel\": "
             << json_number(c.max_rel) << ", \"passed\": " << (c.passed ? "true" : "false") << ", \"note\": \""
             << json_escape(c.note) << "\"}";
      }
      json << "]}";
    } else {
      std::cout << "selftest on the golden example (rtol " << manifest.rtol << ", atol " << manifest.atol << "):\n";
      for (size_t i = 0; i < report.outputs.size(); ++i) {
        const auto& c = report.outputs[i];
        std::cout << "  output " << i << ": max abs " << c.max_abs << ", max rel " << c.max_rel << "  "
                  << (c.passed ? "ok" : "MISMATCH") << (c.note.empty() ? "" : " (" + c.note + ")") << "\n";
      }
      std::cout << (report.passed ? "selftest passed\n" : "selftest FAILED\n");
    }
    if (!report.passed) {
      if (params.json) std::cout << json.str() << "}\n";
      return kMismatch;
    }
  }

  const bool wants_forward = !params.inputs.empty() || !params.outputs.empty() || params.bench > 0 ||
                             (!params.selftest && !params.info);
  if (wants_forward) {
    std::vector<at::Tensor> inputs;
    if (params.inputs.empty()) {
      inputs = runtime.example_inputs(params.batch, params.seed);
    } else {
      for (const auto& path : params.inputs) inputs.push_back(torchbridge::read_npy(path));
    }
    const auto first_start = Clock::now();
    std::vector<at::Tensor> outputs = runtime.forward(inputs);
    const double first_ms = ms_since(first_start);
    json << ", \"first_call_ms\": " << json_number(first_ms);

    if (!params.outputs.empty()) {
      if (params.outputs.size() != outputs.size())
        throw torchbridge::Error(torchbridge::ErrorCode::kInput,
                                 "model returned " + std::to_string(outputs.size()) + " output(s) but " +
                                     std::to_string(params.outputs.size()) +
                                     " --output path(s) were given; pass --output once per output");
      for (size_t i = 0; i < outputs.size(); ++i) torchbridge::write_npy(params.outputs[i], outputs[i]);
    }
    std::vector<std::string> written = params.outputs;
    if (!params.output_dir.empty()) {
      std::error_code error;
      std::filesystem::create_directories(params.output_dir, error);
      if (error)
        throw torchbridge::Error(torchbridge::ErrorCode::kInvalidArgument,
                                 "--output-dir " + params.output_dir + ": cannot create the folder (" + error.message() + ")");
      const auto& specs = runtime.manifest().outputs;
      for (size_t i = 0; i < outputs.size(); ++i) {
        std::string name = i < specs.size() && !specs[i].name.empty() ? specs[i].name : "output_" + std::to_string(i);
        // A dict key can hold anything: keep the name a plain file name.
        for (char& c : name)
          if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') c = '_';
        written.push_back(params.output_dir + "/" + name + ".npy");
        torchbridge::write_npy(written.back(), outputs[i]);
      }
    }
    json << ", \"outputs\": [";
    for (size_t i = 0; i < outputs.size(); ++i) {
      json << (i ? ", " : "") << "{\"dtype\": \"" << torchbridge::dtype_name(outputs[i].scalar_type())
           << "\", \"shape\": " << shape_json(outputs[i]) << "}";
      if (!params.json && params.bench == 0) {
        std::cout << "output " << i << ": " << describe(outputs[i]);
        for (size_t w = i; w < written.size(); w += outputs.size()) std::cout << " -> " << written[w];
        std::cout << "\n";
        if (params.outputs.empty()) {
          const at::Tensor flat = outputs[i].detach().to(at::kCPU).flatten();
          std::cout << "  " << flat.slice(0, 0, std::min<int64_t>(flat.numel(), 10)) << "\n";
        }
      }
    }
    json << "]";

    if (params.bench > 0) {
      const bool gpu = runtime.device().is_cuda();
      // On a GPU the timed inputs already live on the device (where a serving process keeps them);
      // the copies from and to the host are timed separately below.
      std::vector<at::Tensor> timed_inputs = inputs;
      if (gpu)
        for (auto& input : timed_inputs) input = input.to(runtime.device());
      auto time_runs = [&](const std::vector<at::Tensor>& in, bool to_host) {
        std::vector<double> times;
        times.reserve(static_cast<size_t>(params.bench));
        for (int i = 0; i < params.bench; ++i) {
          const auto start = Clock::now();
          outputs = runtime.forward(in);
          if (to_host)
            for (auto& output : outputs) output = output.to(at::kCPU);
          if (gpu) torch::cuda::synchronize();
          times.push_back(ms_since(start));
        }
        std::sort(times.begin(), times.end());
        return times;
      };
      for (int i = 0; i < params.warmup; ++i) runtime.forward(timed_inputs);
      std::vector<double> latencies = time_runs(timed_inputs, false);
      double host_p50 = 0.0;
      if (gpu) {
        for (int i = 0; i < std::min(params.warmup, 3); ++i) runtime.forward(inputs);
        host_p50 = percentile(time_runs(inputs, true), 0.5);
      }
      double total = 0;
      for (double value : latencies) total += value;
      const double mean = total / static_cast<double>(latencies.size());
      const int64_t batch = inputs.empty() || inputs[0].dim() == 0 ? 1 : inputs[0].size(0);
      const double p50 = percentile(latencies, 0.5), p90 = percentile(latencies, 0.9),
                   p99 = percentile(latencies, 0.99);
      const double throughput = static_cast<double>(batch) * 1000.0 / mean;
      json << ", \"bench\": {\"runs\": " << params.bench << ", \"warmup\": " << params.warmup << ", \"batch\": " << batch
           << ", \"p50_ms\": " << json_number(p50) << ", \"p90_ms\": " << json_number(p90)
           << ", \"p99_ms\": " << json_number(p99) << ", \"mean_ms\": " << json_number(mean)
           << ", \"min_ms\": " << json_number(latencies.front()) << ", \"max_ms\": " << json_number(latencies.back())
           << ", \"throughput_per_s\": " << json_number(throughput);
      if (gpu) json << ", \"inputs_on\": \"" << runtime.device().str() << "\", \"host_copies_p50_ms\": " << json_number(host_p50);
      json << "}";
      if (!params.json) {
        std::printf("bench: %d runs after %d warm-up, batch %lld, %d threads, %s\n", params.bench, params.warmup,
                    static_cast<long long>(batch), at::get_num_threads(), params.runtime.device.c_str());
        std::printf("  p50 %.3f ms  p90 %.3f ms  p99 %.3f ms  mean %.3f ms  min %.3f ms\n", p50, p90, p99, mean,
                    latencies.front());
        std::printf("  throughput %.1f samples/s   load %.1f ms   first call %.3f ms   peak RSS %.1f MB\n", throughput,
                    load_ms, first_ms, peak_rss_mb());
        std::printf("  at load: %s, precision %s\n", runtime.optimization().c_str(), params.runtime.precision.c_str());
        if (gpu)
          std::printf("  inputs on %s; with the copies from and to the host: p50 %.3f ms\n",
                      runtime.device().str().c_str(), host_p50);
      }
    }
  }
  json << ", \"peak_rss_mb\": " << json_number(peak_rss_mb()) << "}";
  if (params.json) std::cout << json.str() << "\n";
  return kOk;
}

}  // namespace

int main(int argc, char** argv) {
  Params params;
  try {
    if (!parse_args(argc, argv, params)) return kOk;
  } catch (const UsageError& error) {
    std::cerr << "error: " << error.what() << "\n";
    return kUsage;
  }
  try {
    return run(params);
  } catch (const torchbridge::Error& error) {
    std::cerr << "error: " << error.what() << "\n";
    switch (error.code()) {
      case torchbridge::ErrorCode::kInvalidArgument: return kUsage;
      case torchbridge::ErrorCode::kArtifact: return kLoadFailure;
      case torchbridge::ErrorCode::kInput: return kBadInput;
      case torchbridge::ErrorCode::kRuntime: return kRuntimeFailure;
    }
    return kRuntimeFailure;
  } catch (const std::exception& error) {
    std::string message = error.what();
    std::cerr << "error: " << message.substr(0, message.find("\nException raised from")) << "\n";
    return kRuntimeFailure;
  }
}
