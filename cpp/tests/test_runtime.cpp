// torchbridge::Runtime on the samples in data/ (see data/make_samples.py): what a C++ user does
// with an artifact, and every way a bad artifact or a bad input must fail.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/cuda.h>

#include <algorithm>
#include <atomic>
#include <thread>

#include "check.hpp"
#include "internal.hpp"
#include "packed_gemm.hpp"
#include "rowwise.hpp"

using torchbridge::ErrorCode;
using torchbridge::Runtime;

namespace {

const std::filesystem::path kScratch = tbtest::scratch_dir("runtime");

const std::string kTinyMlp = tbtest::data_path("tiny_mlp.pt");
const std::string kTwoIo = tbtest::data_path("two_io.pt");

void require_close(const char* file, int line, const at::Tensor& actual, const at::Tensor& expected, double rtol,
                   double atol) {
  const torchbridge::Comparison comparison = torchbridge::compare(actual, expected, rtol, atol);
  if (!comparison.passed) {
    std::ostringstream message;
    message << "outputs differ: max abs " << comparison.max_abs << ", max rel " << comparison.max_rel << " (rtol "
            << rtol << ", atol " << atol << ") " << comparison.note;
    tbtest::fail(file, line, message.str());
  }
}
#define REQUIRE_CLOSE(actual, expected, rtol, atol) require_close(__FILE__, __LINE__, actual, expected, rtol, atol)

std::string scratch_file(const std::string& name, const std::string& bytes) {
  const std::string path = (kScratch / name).string();
  tbtest::write_file(path, bytes);
  return path;
}

}  // namespace

TEST(loads_the_sample_and_reads_its_manifest) {
  const Runtime runtime(kTinyMlp);
  const torchbridge::Manifest& manifest = runtime.manifest();
  REQUIRE(manifest.present);
  REQUIRE_EQ(manifest.format_version, 1);
  REQUIRE_EQ(manifest.format, std::string("torchscript"));
  REQUIRE_EQ(runtime.format(), std::string("torchscript"));  // read from the archive's records
  REQUIRE_EQ(manifest.method, std::string("script"));
  REQUIRE_EQ(manifest.model, std::string("TinyMLP"));
  REQUIRE_EQ(manifest.torch_version.rfind("2.", 0), 0u);
  REQUIRE(manifest.quantized_engine.empty());
  REQUIRE_EQ(manifest.inputs.size(), 1u);
  REQUIRE_EQ(manifest.inputs[0].to_string(), std::string("x: float32[?, 4]"));
  REQUIRE_EQ(manifest.outputs.size(), 1u);
  REQUIRE_EQ(manifest.outputs[0].to_string(), std::string("output_0: float32[?, 3]"));
  REQUIRE_EQ(manifest.rtol, 1e-5);
  REQUIRE(manifest.atol > 0 && manifest.atol < 1e-4);
  REQUIRE(manifest.json.find("\"golden\"") != std::string::npos);

  REQUIRE_EQ(runtime.path(), kTinyMlp);
  REQUIRE(runtime.device() == at::Device(at::kCPU));
  REQUIRE_EQ(runtime.golden_inputs().size(), 1u);
  REQUIRE(runtime.golden_inputs()[0].sizes() == at::IntArrayRef({2, 4}));  // export keeps 2 samples
  REQUIRE_EQ(runtime.golden_outputs().size(), 1u);
  REQUIRE(runtime.golden_outputs()[0].sizes() == at::IntArrayRef({2, 3}));
}

TEST(forward_matches_the_eager_output_saved_by_python) {
  const Runtime runtime(kTinyMlp);
  const at::Tensor x = torchbridge::read_npy(tbtest::data_path("tiny_mlp_input.npy"));
  const std::vector<at::Tensor> outputs = runtime.forward({x});
  REQUIRE_EQ(outputs.size(), 1u);
  REQUIRE(outputs[0].sizes() == at::IntArrayRef({3, 3}));
  REQUIRE_CLOSE(outputs[0], torchbridge::read_npy(tbtest::data_path("tiny_mlp_output.npy")), runtime.manifest().rtol,
                runtime.manifest().atol);
}

TEST(selftest_passes_on_the_golden_example) {
  const Runtime runtime(kTinyMlp);
  const torchbridge::SelftestReport report = runtime.selftest();
  REQUIRE(report.passed);
  REQUIRE_EQ(report.outputs.size(), 1u);
  REQUIRE(report.outputs[0].passed);
  REQUIRE(report.outputs[0].max_abs <= runtime.manifest().atol);
}

TEST(wrong_input_count_names_the_expected_spec) {
  const Runtime runtime(kTinyMlp);
  const at::Tensor x = at::zeros({2, 4});
  REQUIRE_ERROR(runtime.forward({}), ErrorCode::kInput, "expected 1 input(s) (x: float32[?, 4]), got 0");
  REQUIRE_ERROR(runtime.forward({x, x}), ErrorCode::kInput, "expected 1 input(s) (x: float32[?, 4]), got 2");
}

TEST(wrong_input_dtype_or_shape_names_the_expected_spec) {
  const Runtime runtime(kTinyMlp);
  REQUIRE_ERROR(runtime.forward({at::zeros({2, 4}, at::kDouble)}), ErrorCode::kInput,
              "input 0 must be x: float32[?, 4] (? = any size), got float64[2, 4]");
  REQUIRE_ERROR(runtime.forward({at::zeros({2, 5})}), ErrorCode::kInput, "input 0 must be x: float32[?, 4]");
  REQUIRE_ERROR(runtime.forward({at::zeros({2, 5})}), ErrorCode::kInput, "got float32[2, 5]");
  REQUIRE_ERROR(runtime.forward({at::zeros({4})}), ErrorCode::kInput, "got float32[4]");
  REQUIRE_ERROR(runtime.forward({at::Tensor()}), ErrorCode::kInput, "got an undefined tensor");
  REQUIRE_ERROR(runtime.validate({at::zeros({1, 4}, at::kHalf)}), ErrorCode::kInput, "got float16[1, 4]");
  runtime.validate({at::zeros({7, 4})});  // the batch dimension is dynamic
}

TEST(tensor_spec_enforces_the_declared_dynamic_range) {
  // What a .pt2 manifest declares: dim 0 in 1..16, the other dims fixed.
  torchbridge::TensorSpec spec;
  spec.name = "x";
  spec.shape = {-1, 4};
  REQUIRE(spec.matches(at::zeros({1000, 4})));  // no range declared: any size
  REQUIRE_EQ(spec.out_of_range_dim(at::zeros({1000, 4})), -1);
  spec.min_shape = {1, 4};
  spec.max_shape = {16, 4};
  REQUIRE(spec.matches(at::zeros({16, 4})));
  REQUIRE(spec.matches(at::zeros({1, 4})));
  REQUIRE(!spec.matches(at::zeros({17, 4})));
  REQUIRE_EQ(spec.out_of_range_dim(at::zeros({17, 4})), 0);
  REQUIRE_EQ(spec.out_of_range_dim(at::zeros({0, 4})), 0);
  REQUIRE(!spec.matches(at::zeros({8, 5})));
  REQUIRE_EQ(spec.to_string(), std::string("x: float32[?, 4]"));
}

TEST(example_inputs_satisfy_the_manifest) {
  const Runtime runtime(kTinyMlp);
  const std::vector<at::Tensor> inputs = runtime.example_inputs(5, 42);
  REQUIRE_EQ(inputs.size(), 1u);
  REQUIRE(inputs[0].sizes() == at::IntArrayRef({5, 4}));
  REQUIRE(at::equal(inputs[0], runtime.example_inputs(5, 42)[0]));  // seeded
  REQUIRE(!at::equal(inputs[0], runtime.example_inputs(5, 43)[0]));
  REQUIRE(runtime.forward(inputs)[0].sizes() == at::IntArrayRef({5, 3}));
}

// Runs body(t) in `count` threads released at the same moment; returns how many threw (the first
// error is printed).
template <class Body>
int run_at_once(int count, Body body) {
  std::atomic<int> exceptions{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < count; ++t) {
    threads.emplace_back([&, t] {
      while (!go.load()) std::this_thread::yield();
      try {
        body(t);
      } catch (const std::exception& error) {
        if (exceptions++ == 0) std::cerr << "thread " << t << ": " << error.what() << "\n";
      }
    });
  }
  go = true;
  for (auto& thread : threads) thread.join();
  return exceptions.load();
}

TEST(forward_from_four_threads_at_once_gives_identical_results) {
  const Runtime runtime(kTinyMlp);
  constexpr int kThreads = 4;
  constexpr int kCalls = 50;
  std::vector<at::Tensor> inputs, expected;
  for (int i = 0; i < kThreads; ++i) {
    inputs.push_back(at::randn({i + 1, 4}));
    expected.push_back(runtime.forward({inputs.back()})[0]);
  }
  std::atomic<int> mismatches{0};
  const int exceptions = run_at_once(kThreads, [&](int t) {
    for (int call = 0; call < kCalls; ++call)
      if (!at::equal(runtime.forward({inputs[t]})[0], expected[t])) ++mismatches;
  });
  REQUIRE_EQ(exceptions, 0);
  REQUIRE_EQ(mismatches.load(), 0);
}

TEST(threads_meeting_new_shapes_at_once_each_get_the_right_outputs) {
  // Each thread's first call is at a shape not compiled yet: compilations take turns, and every
  // result agrees with the module as loaded.
  const Runtime runtime(kTinyMlp);
  torchbridge::RuntimeOptions options;
  options.optimize = false;
  const Runtime plain(kTinyMlp, options);
  constexpr int kThreads = 4;
  std::vector<at::Tensor> inputs, expected;
  for (int i = 0; i < kThreads; ++i) {
    inputs.push_back(at::randn({20 + i, 4}));
    expected.push_back(plain.forward({inputs.back()})[0]);
  }
  std::vector<at::Tensor> outputs(kThreads);
  const int exceptions = run_at_once(kThreads, [&](int t) {
    for (int call = 0; call < 3; ++call) outputs[t] = runtime.forward({inputs[t]})[0];
  });
  REQUIRE_EQ(exceptions, 0);
  for (int t = 0; t < kThreads; ++t)
    REQUIRE_CLOSE(outputs[t], expected[t], runtime.manifest().rtol, runtime.manifest().atol);
}

TEST(many_threads_at_new_shapes_in_many_fresh_runtimes_do_not_race) {
  // Each new shape makes its variants from the runtime's frozen module. Copies of one module share
  // its compilation unit, which LibTorch does not lock: made from several threads at once they
  // corrupted the heap. Fresh runtimes, each met by eight threads at new shapes, make it likely.
  constexpr int kRounds = 40;
  constexpr int kThreads = 8;
  torchbridge::RuntimeOptions options;
  options.optimize = false;
  const Runtime plain(kTinyMlp, options);
  for (int round = 0; round < kRounds; ++round) {
    const Runtime runtime(kTinyMlp);
    std::vector<at::Tensor> outputs(2 * kThreads), inputs;
    for (int i = 0; i < 2 * kThreads; ++i) inputs.push_back(at::randn({30 + i, 4}));
    const int exceptions = run_at_once(kThreads, [&](int t) {
      for (int i : {t, t + kThreads}) outputs[i] = runtime.forward({inputs[i]})[0];
    });
    REQUIRE_EQ(exceptions, 0);
    for (int i = 0; i < 2 * kThreads; ++i)
      REQUIRE_CLOSE(outputs[i], plain.forward({inputs[i]})[0], runtime.manifest().rtol, runtime.manifest().atol);
  }
}

// The memory pool (RuntimeOptions::reuse_memory). TinyMLP's hidden layer at a batch of 4096 is
// 128 KiB and its output at 8192 is 96 KiB: both large enough to be pooled.
torchbridge::RuntimeOptions without_pool() {
  torchbridge::RuntimeOptions options;
  options.reuse_memory = false;
  return options;
}

TEST(the_memory_pool_serves_a_repeated_call_from_its_cache) {
  const Runtime runtime(kTinyMlp);
  const Runtime plain(kTinyMlp, without_pool());
  const at::Tensor x = at::randn({8192, 4});
  const at::Tensor expected = plain.forward({x})[0];
  REQUIRE(at::equal(runtime.forward({x})[0], expected));  // the first call at this shape
  const torchbridge::MemoryPoolStats before = runtime.memory_pool_stats();
  for (int call = 0; call < 3; ++call) REQUIRE(at::equal(runtime.forward({x})[0], expected));
  const torchbridge::MemoryPoolStats after = runtime.memory_pool_stats();
  REQUIRE_EQ(after.misses, before.misses);
  REQUIRE(after.hits >= before.hits + 3 * 2);  // the hidden activation and the output, each call
  REQUIRE_EQ(after.in_use, before.in_use);     // every output above is gone
  REQUIRE(after.cached > 0);
  REQUIRE(after.cached <= 2 * after.peak);
  const torchbridge::MemoryPoolStats none = plain.memory_pool_stats();
  REQUIRE_EQ(none.hits + none.misses + none.peak, int64_t{0});
}

TEST(the_memory_pool_takes_only_what_forward_allocates) {
  const Runtime runtime(kTinyMlp);
  runtime.forward({at::randn({8192, 4})});
  const torchbridge::MemoryPoolStats before = runtime.memory_pool_stats();
  const at::Tensor outside = at::ones({1 << 20});  // 4 MiB, allocated outside forward
  const torchbridge::MemoryPoolStats after = runtime.memory_pool_stats();
  REQUIRE_EQ(after.hits, before.hits);
  REQUIRE_EQ(after.misses, before.misses);
  REQUIRE_EQ(outside.sum().item<float>(), float(1 << 20));
}

TEST(outputs_outlive_the_runtime_and_its_memory_pool) {
  const Runtime plain(kTinyMlp, without_pool());
  const at::Tensor x = at::randn({8192, 4});
  const at::Tensor expected = plain.forward({x})[0];
  at::Tensor kept;
  {
    const Runtime runtime(kTinyMlp);
    for (int call = 0; call < 3; ++call) kept = runtime.forward({x})[0];
    REQUIRE(runtime.memory_pool_stats().in_use > 0);  // kept is pooled
  }
  // The pool is closed; the output's block goes back to the system when the tensor goes.
  REQUIRE(at::equal(kept, expected));
  kept = at::Tensor();
}

TEST(the_memory_pool_stops_growing_once_it_has_seen_each_batch_size) {
  const Runtime runtime(kTinyMlp);
  const Runtime plain(kTinyMlp, without_pool());
  const std::vector<int64_t> batches = {8192, 100, 16384, 4096, 3000};
  torchbridge::MemoryPoolStats first;
  for (int pass = 0; pass < 2; ++pass) {
    for (const int64_t batch : batches) {
      const at::Tensor x = at::randn({batch, 4});
      REQUIRE(at::equal(runtime.forward({x})[0], plain.forward({x})[0]));
    }
    const torchbridge::MemoryPoolStats stats = runtime.memory_pool_stats();
    if (pass == 1) REQUIRE_EQ(stats.in_use, first.in_use);
    REQUIRE(stats.cached <= 2 * stats.peak);  // segments split and merged, not one per size
    if (pass == 0) first = stats;
  }
  const torchbridge::MemoryPoolStats second = runtime.memory_pool_stats();
  REQUIRE_EQ(second.misses, first.misses);
  REQUIRE_EQ(second.cached, first.cached);
}

TEST(threads_share_one_memory_pool) {
  const Runtime runtime(kTinyMlp);
  const Runtime plain(kTinyMlp, without_pool());
  constexpr int kThreads = 4;
  std::vector<at::Tensor> inputs, expected;
  for (int i = 0; i < kThreads; ++i) {
    inputs.push_back(at::randn({4096 * (i + 1), 4}));
    expected.push_back(plain.forward({inputs.back()})[0]);
    runtime.forward({inputs.back()});  // the first call at each shape, before the threads
  }
  const int64_t in_use = runtime.memory_pool_stats().in_use;
  std::atomic<int> mismatches{0};
  const int exceptions = run_at_once(kThreads, [&](int t) {
    for (int call = 0; call < 30; ++call)
      if (!at::equal(runtime.forward({inputs[t]})[0], expected[t])) ++mismatches;
  });
  REQUIRE_EQ(exceptions, 0);
  REQUIRE_EQ(mismatches.load(), 0);
  REQUIRE_EQ(runtime.memory_pool_stats().in_use, in_use);
}

TEST(forward_submodule_runs_one_layer) {
  // Submodules run as loaded, so composing them equals the unoptimized forward bit for bit.
  torchbridge::RuntimeOptions options;
  options.optimize = false;
  const Runtime runtime(kTinyMlp, options);
  REQUIRE(Runtime(kTinyMlp).submodule_names() == std::vector<std::string>({"hidden", "act", "head"}));
  REQUIRE(runtime.submodule_names() == std::vector<std::string>({"hidden", "act", "head"}));
  const at::Tensor x = torchbridge::read_npy(tbtest::data_path("tiny_mlp_input.npy"));
  const at::Tensor hidden = runtime.forward_submodule("hidden", {x})[0];
  REQUIRE(hidden.sizes() == at::IntArrayRef({3, 8}));
  const at::Tensor activated = runtime.forward_submodule("act", {hidden})[0];
  REQUIRE(at::equal(activated, hidden.clamp_min(0)));
  const at::Tensor composed = runtime.forward_submodule("head", {activated})[0];
  REQUIRE(at::equal(composed, runtime.forward({x})[0]));
  REQUIRE(at::equal(runtime.forward_submodule("", {x})[0], runtime.forward({x})[0]));
  REQUIRE_ERROR(runtime.forward_submodule("layer9", {x}), ErrorCode::kInput, "no submodule named 'layer9'");
  REQUIRE_ERROR(runtime.forward_submodule("head", {hidden.narrow(1, 0, 5)}), ErrorCode::kRuntime,
              "forward of submodule 'head' failed");
}

TEST(runtime_is_movable) {
  Runtime first(kTinyMlp);
  Runtime second(std::move(first));
  REQUIRE_EQ(second.path(), kTinyMlp);
  REQUIRE(second.selftest().passed);
  Runtime third(kTwoIo);
  third = std::move(second);
  REQUIRE_EQ(third.manifest().model, std::string("TinyMLP"));
}

TEST(two_inputs_two_outputs) {
  const Runtime runtime(kTwoIo);
  const torchbridge::Manifest& manifest = runtime.manifest();
  REQUIRE_EQ(manifest.inputs.size(), 2u);
  REQUIRE_EQ(manifest.inputs[0].to_string(), std::string("x: float32[?, 4]"));
  REQUIRE_EQ(manifest.inputs[1].to_string(), std::string("index: int64[?]"));
  REQUIRE_EQ(manifest.outputs.size(), 2u);
  REQUIRE_EQ(manifest.outputs[0].to_string(), std::string("output_0: float32[?, 3]"));
  REQUIRE_EQ(manifest.outputs[1].to_string(), std::string("output_1: float32[?]"));

  const at::Tensor x = torchbridge::read_npy(tbtest::data_path("two_io_input_0.npy"));
  const at::Tensor index = torchbridge::read_npy(tbtest::data_path("two_io_input_1.npy"));
  const std::vector<at::Tensor> outputs = runtime.forward({x, index});
  REQUIRE_EQ(outputs.size(), 2u);
  const at::Tensor expected_scores = torchbridge::read_npy(tbtest::data_path("two_io_output_0.npy"));
  const at::Tensor expected_norms = torchbridge::read_npy(tbtest::data_path("two_io_output_1.npy"));
  REQUIRE_CLOSE(outputs[0], expected_scores, manifest.rtol, manifest.atol);
  REQUIRE_CLOSE(outputs[1], expected_norms, manifest.rtol, manifest.atol);

  const torchbridge::SelftestReport report = runtime.selftest();
  REQUIRE(report.passed);
  REQUIRE_EQ(report.outputs.size(), 2u);
  REQUIRE_ERROR(runtime.forward({x, index.to(at::kInt)}), ErrorCode::kInput, "input 1 must be index: int64[?]");
  REQUIRE_ERROR(runtime.forward({x}), ErrorCode::kInput, "(x: float32[?, 4], index: int64[?]), got 1");
}

TEST(float_torchscript_is_optimized_at_load_unless_turned_off) {
  const Runtime optimized(kTinyMlp);
  // Optimized at every batch size, from some batch size on, or (measured slower) not at all.
  const std::string& what = optimized.optimization();
  REQUIRE(what.rfind("freeze+onednn_graph", 0) == 0 || what.find("measured slower") != std::string::npos);
  REQUIRE_EQ(optimized.optimized(), optimized.optimized_from_batch() >= 1);
  torchbridge::RuntimeOptions options;
  options.optimize = false;
  const Runtime plain(kTinyMlp, options);
  REQUIRE(!plain.optimized());
  REQUIRE_EQ(plain.optimization(), std::string("none (optimize off)"));
  const at::Tensor x = torchbridge::read_npy(tbtest::data_path("tiny_mlp_input.npy"));
  REQUIRE_CLOSE(optimized.forward({x})[0], plain.forward({x})[0], optimized.manifest().rtol, optimized.manifest().atol);
  // Submodules come from the module as loaded: freezing inlines them.
  REQUIRE(optimized.submodule_names() == plain.submodule_names());
  torchbridge::RuntimeOptions unfused_options;
  unfused_options.fuse = false;
  const Runtime unfused(kTinyMlp, unfused_options);
  REQUIRE(unfused.optimization().rfind("freeze+optimize_for_inference", 0) == 0 ||
          unfused.optimization().find("measured slower") != std::string::npos);
  REQUIRE_CLOSE(unfused.forward({x})[0], plain.forward({x})[0], optimized.manifest().rtol, optimized.manifest().atol);
}

TEST(fused_shapes_and_the_shapes_beyond_them_match_the_module_as_loaded) {
  // oneDNN Graph compiles per input shape for the first kFusedShapes shapes (warm-up took two);
  // later shapes run optimize_for_inference. Every one must agree with the module as loaded.
  const Runtime optimized(kTinyMlp);
  torchbridge::RuntimeOptions options;
  options.optimize = false;
  const Runtime plain(kTinyMlp, options);
  for (int64_t batch = 1; batch <= torchbridge::kFusedShapes + 3; ++batch) {
    const at::Tensor x = at::randn({batch, 4});
    for (int call = 0; call < 2; ++call)
      REQUIRE_CLOSE(optimized.forward({x})[0], plain.forward({x})[0], optimized.manifest().rtol, optimized.manifest().atol);
  }
}

TEST(reduced_precision_returns_the_manifest_dtype) {
  torchbridge::RuntimeOptions options;
  options.precision = "bf16";
  const Runtime runtime(kTinyMlp, options);
  const at::Tensor x = torchbridge::read_npy(tbtest::data_path("tiny_mlp_input.npy"));
  const at::Tensor y = runtime.forward({x})[0];
  REQUIRE(y.scalar_type() == at::kFloat);
  // bfloat16 keeps 8 bits of mantissa: about 1e-2 relative.
  REQUIRE_CLOSE(y, torchbridge::read_npy(tbtest::data_path("tiny_mlp_output.npy")), 5e-2, 5e-2);
  options.precision = "int4";
  REQUIRE_ERROR(Runtime bad(kTinyMlp, options), ErrorCode::kInvalidArgument, "precision must be fp32, bf16 or fp16");
}

TEST(plain_torchscript_without_manifest_loads) {
  const Runtime runtime(tbtest::data_path("tiny_mlp_plain.pt"));
  REQUIRE(!runtime.manifest().present);
  REQUIRE(runtime.manifest().inputs.empty());
  REQUIRE(runtime.golden_inputs().empty());
  const at::Tensor x = torchbridge::read_npy(tbtest::data_path("tiny_mlp_input.npy"));
  REQUIRE_CLOSE(runtime.forward({x})[0], torchbridge::read_npy(tbtest::data_path("tiny_mlp_output.npy")), 1e-5, 1e-6);
  REQUIRE_ERROR(runtime.selftest(), ErrorCode::kArtifact, "no golden example");
  REQUIRE_ERROR(runtime.example_inputs(), ErrorCode::kInput, "no torchbridge manifest");
}

TEST(missing_artifact_is_an_artifact_error) {
  const std::string path = (kScratch / "no_such_model.pt").string();
  REQUIRE_ERROR(Runtime runtime(path), ErrorCode::kArtifact, path + ": cannot open artifact");
}

TEST(non_zip_files_are_artifact_errors) {
  REQUIRE_ERROR(Runtime runtime(scratch_file("text.pt", "this is not a model\n")), ErrorCode::kArtifact,
              "not a torchbridge artifact");
  REQUIRE_ERROR(Runtime runtime(scratch_file("empty.pt", "")), ErrorCode::kArtifact, "not a torchbridge artifact");
  REQUIRE_ERROR(Runtime runtime(tbtest::data_path("tiny_mlp_input.npy")), ErrorCode::kArtifact,
              "not a torchbridge artifact");
  REQUIRE_ERROR(Runtime runtime(kScratch.string()), ErrorCode::kArtifact, kScratch.string());  // a directory
}

TEST(truncated_artifacts_are_artifact_errors) {
  const std::string whole = tbtest::read_file(kTinyMlp);
  for (size_t keep : {size_t{4}, size_t{100}, whole.size() / 2, whole.size() - 30, whole.size() - 1}) {
    const std::string path = scratch_file("truncated_" + std::to_string(keep) + ".pt", whole.substr(0, keep));
    REQUIRE_ERROR(Runtime runtime(path), ErrorCode::kArtifact, path);
  }
}

TEST(corrupted_artifacts_are_artifact_errors) {
  const std::string whole = tbtest::read_file(kTinyMlp);

  // Garbage in the model's compressed code: the zip directory is intact, the entry is not.
  std::string bytes = whole;
  const size_t name = bytes.find("code/__torch__.py");
  REQUIRE(name != std::string::npos);
  const size_t next_entry = bytes.find("PK\x03\x04", name);
  REQUIRE(next_entry != std::string::npos && next_entry > name + 200);
  std::fill(bytes.begin() + static_cast<std::ptrdiff_t>(next_entry - 100),
            bytes.begin() + static_cast<std::ptrdiff_t>(next_entry), '\xff');
  const std::string garbled = scratch_file("garbled_code.pt", bytes);
  REQUIRE_ERROR(Runtime runtime(garbled), ErrorCode::kArtifact, garbled);

  // A manifest (stored uncompressed) from a future format: the runtime must refuse, not guess.
  bytes = whole;
  const size_t version = bytes.find("\"format_version\": 1");
  REQUIRE(version != std::string::npos);
  bytes[version + 18] = '9';
  const std::string future = scratch_file("future_manifest.pt", bytes);
  REQUIRE_ERROR(Runtime runtime(future), ErrorCode::kArtifact, future);
}

TEST(torch_save_checkpoint_is_refused_with_a_hint) {
  REQUIRE_ERROR(Runtime runtime(tbtest::data_path("tiny_mlp_state_dict.pt")), ErrorCode::kArtifact,
              "torch.save checkpoint, not a TorchScript artifact");
}

TEST(bad_options_are_invalid_argument_errors) {
  torchbridge::RuntimeOptions options;
  options.device = "tpu";
  REQUIRE_ERROR(Runtime runtime(kTinyMlp, options), ErrorCode::kInvalidArgument, "unknown device 'tpu'");
  options.device = "cpu";
  options.threads = -1;
  REQUIRE_ERROR(Runtime runtime(kTinyMlp, options), ErrorCode::kInvalidArgument, "threads must be >= 0");
  if (!torch::cuda::is_available()) {
    options.threads = 0;
    options.device = "cuda";
    REQUIRE_ERROR(Runtime runtime(kTinyMlp, options), ErrorCode::kInvalidArgument, "CUDA is not available");
  }
}

TEST(threads_option_sets_the_process_thread_count) {
  const int before = at::get_num_threads();
  torchbridge::RuntimeOptions options;
  options.threads = 1;
  options.warmup_runs = 0;
  const Runtime runtime(kTinyMlp, options);
  REQUIRE_EQ(at::get_num_threads(), 1);
  REQUIRE(runtime.selftest().passed);
  at::set_num_threads(before);
}

TEST(compare_checks_shape_dtype_tolerance_and_nan_positions) {
  const at::Tensor a = at::tensor({1.0f, 2.0f, 3.0f});
  REQUIRE(torchbridge::compare(a, a.clone(), 0, 0).passed);
  const torchbridge::Comparison off = torchbridge::compare(a + 1e-3, a, 1e-5, 1e-6);
  REQUIRE(!off.passed);
  REQUIRE(std::abs(off.max_abs - 1e-3) < 1e-6);
  REQUIRE(torchbridge::compare(a + 1e-3, a, 0, 2e-3).passed);
  REQUIRE(torchbridge::compare(a.reshape({3, 1}), a, 1, 1).note.find("shape") != std::string::npos);
  REQUIRE(torchbridge::compare(a.to(at::kDouble), a, 1, 1).note.find("dtype") != std::string::npos);
  const at::Tensor with_nan = at::tensor({1.0f, NAN, 3.0f});
  REQUIRE(torchbridge::compare(with_nan, with_nan.clone(), 0, 0).passed);
  REQUIRE(!torchbridge::compare(with_nan, a, 1, 1).passed);
}

TEST(rowwise_linear_matches_linear_and_passes_on_what_its_kernel_does_not_take) {
  const auto op = c10::Dispatcher::singleton()
                      .findSchemaOrThrow("torchbridge::rowwise_linear", "")
                      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&)>();
  at::manual_seed(0);
  // K and N not multiples of the kernel's 16 and 4, so its tails run (and AddressSanitizer sees them)
  const at::Tensor weight = at::randn({37, 1029});
  const at::Tensor bias = at::randn({37});
  for (const int64_t rows : {int64_t{1}, int64_t{3}, torchbridge::kRowwiseMaxRows}) {
    const at::Tensor x = at::randn({rows, 1029});
    const at::Tensor expected = at::linear(x.to(at::kDouble), weight.to(at::kDouble), bias.to(at::kDouble));
    // float32 sums of 1029 products against float64: within 1e-5 of the largest output
    const auto off = [](const at::Tensor& actual, const at::Tensor& reference) {
      return (actual.to(at::kDouble) - reference).abs().max().item<double>() / reference.abs().max().item<double>();
    };
    REQUIRE(off(op.call(x, weight, bias), expected) <= 1e-5);
    REQUIRE(off(op.call(x, weight, std::nullopt), at::linear(x.to(at::kDouble), weight.to(at::kDouble))) <= 1e-5);
  }
  const at::Tensor many = at::randn({torchbridge::kRowwiseMaxRows + 1, 1029});
  REQUIRE(at::equal(op.call(many, weight, bias), at::linear(many, weight, bias)));
  const at::Tensor strided = at::randn({1029, 2}).t();
  REQUIRE(at::equal(op.call(strided, weight, bias), at::linear(strided, weight, bias)));
}

TEST(silu_matches_aten_in_any_dense_layout_and_passes_on_what_it_does_not_take) {
  auto& dispatcher = c10::Dispatcher::singleton();
  const auto silu = dispatcher.findSchemaOrThrow("torchbridge::silu", "").typed<at::Tensor(const at::Tensor&)>();
  const auto silu_ = dispatcher.findSchemaOrThrow("torchbridge::silu_", "").typed<at::Tensor&(at::Tensor&)>();
  at::manual_seed(0);
  // 3 x 5 x 7 x 9 = 945 values: a tail of 1 after the vector loop, so the padded copy runs under ASan.
  for (const at::Tensor& x : {at::randn({3, 5, 7, 9}) * 8,
                              at::randn({2, 16, 3, 3}).contiguous(at::MemoryFormat::ChannelsLast), at::randn({5})}) {
    const at::Tensor expected = at::silu(x);
    const at::Tensor y = silu.call(x);
    REQUIRE(y.strides() == x.strides());
    REQUIRE((y - expected).abs().max().item<double>() <= 1e-5 * expected.abs().max().item<double>());
    at::Tensor in_place = x.clone();
    at::Tensor& returned = silu_.call(in_place);
    REQUIRE(returned.data_ptr() == in_place.data_ptr());
    REQUIRE(at::equal(in_place, y));
  }
  const at::Tensor special = at::tensor({-INFINITY, INFINITY, NAN, -100.0f, 100.0f, 0.0f, -0.0f, 3.0f, -3.0f});
  const at::Tensor got = silu.call(special), want = at::silu(special);
  REQUIRE(at::equal(got.isnan(), want.isnan()));  // -inf: NaN, as ATen's -inf / inf
  REQUIRE(got[1].item<float>() == INFINITY);
  const at::Tensor finite = want.isfinite();
  REQUIRE((got.index({finite}) - want.index({finite})).abs().max().item<double>() <= 1e-6);
  const at::Tensor strided = at::randn({64, 6}).t();  // not dense: ATen's
  REQUIRE(at::equal(silu.call(strided.slice(1, 0, 64, 2)), at::silu(strided.slice(1, 0, 64, 2))));
  const at::Tensor doubles = at::randn({40}, at::kDouble);
  REQUIRE(at::equal(silu.call(doubles), at::silu(doubles)));
}

TEST(adaptive_avg_pool2d_matches_aten_on_channels_last_input_and_is_aten_for_what_it_does_not_take) {
  auto& dispatcher = c10::Dispatcher::singleton();
  const auto pool = dispatcher.findSchemaOrThrow("torchbridge::adaptive_avg_pool2d", "")
                        .typed<at::Tensor(const at::Tensor&, at::IntArrayRef)>();
  at::manual_seed(0);
  // 13 channels: a tail after the vector loop; 70 pixels: a second, partial block of pixels.
  for (const auto& shape : std::vector<std::vector<int64_t>>{{3, 13, 7, 10}, {1, 144, 9, 9}, {2, 40, 1, 1}}) {
    const at::Tensor x = (at::randn(shape) + 3).contiguous(at::MemoryFormat::ChannelsLast);
    const at::Tensor y = pool.call(x, {1, 1});
    const at::Tensor expected = at::adaptive_avg_pool2d(x.to(at::kDouble), {1, 1});
    REQUIRE(y.sizes() == expected.sizes());
    REQUIRE((y.to(at::kDouble) - expected).abs().max().item<double>() <= 1e-6 * expected.abs().max().item<double>());
  }
  const at::Tensor nchw = at::randn({2, 16, 5, 5});
  REQUIRE(at::equal(pool.call(nchw, {1, 1}), at::adaptive_avg_pool2d(nchw, {1, 1})));
  const at::Tensor last = nchw.contiguous(at::MemoryFormat::ChannelsLast);
  REQUIRE(at::equal(pool.call(last, {2, 3}), at::adaptive_avg_pool2d(last, {2, 3})));
}

TEST(pointwise_conv_matches_conv2d_on_channels_last_pixels_and_is_conv2d_for_what_it_does_not_take) {
  auto& dispatcher = c10::Dispatcher::singleton();
  const auto op = dispatcher.findSchemaOrThrow("torchbridge::pointwise_conv", "")
                      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                        const std::optional<at::Tensor>&)>();
  const auto pack =
      dispatcher.findSchemaOrThrow("torchbridge::pack_linear_weight", "").typed<at::Tensor(const at::Tensor&)>();
  at::manual_seed(0);
  const at::Tensor weight = at::randn({37, 24, 1, 1}).contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor bias = at::randn({37});
  const at::Tensor packed = pack.call(weight.reshape({37, 24}).contiguous());
  const auto channels_last = [](std::vector<int64_t> sizes) {
    return at::randn(sizes).contiguous(at::MemoryFormat::ChannelsLast);
  };
  // 1 and 16 pixels: the row kernel; 3 x 5 x 7 and 32 x 32: the packed GEMM; 112 x 112: the packed
  // GEMM on AVX2, at::conv2d where ATen runs AVX-512.
  for (const at::Tensor& x : {channels_last({1, 24, 1, 1}), channels_last({1, 24, 4, 4}), channels_last({3, 24, 5, 7}),
                              channels_last({1, 24, 32, 32}), channels_last({1, 24, 112, 112})}) {
    const at::Tensor expected = at::conv2d(x.to(at::kDouble), weight.to(at::kDouble), bias.to(at::kDouble));
    const at::Tensor y = op.call(x, weight, packed, bias);
    REQUIRE(y.sizes() == expected.sizes());
    REQUIRE(y.is_contiguous(at::MemoryFormat::ChannelsLast));
    REQUIRE((y.to(at::kDouble) - expected).abs().max().item<double>() <= 1e-5 * expected.abs().max().item<double>());
    const at::Tensor unbiased = at::conv2d(x.to(at::kDouble), weight.to(at::kDouble));
    REQUIRE((op.call(x, weight, packed, std::nullopt).to(at::kDouble) - unbiased).abs().max().item<double>() <=
            1e-5 * unbiased.abs().max().item<double>());
  }
  // More pixels than the packed GEMM takes, another layout, another dtype: at::conv2d exactly.
  REQUIRE(torchbridge::pointwise_max_pixels() >= torchbridge::kPackedMaxRows);
  const at::Tensor many = channels_last({1, 24, torchbridge::pointwise_max_pixels() / 64 + 1, 64});
  REQUIRE(at::equal(op.call(many, weight, packed, bias), at::conv2d(many, weight, bias)));
  const at::Tensor nchw = at::randn({2, 24, 5, 7});
  REQUIRE(at::equal(op.call(nchw, weight, packed, bias), at::conv2d(nchw, weight, bias)));
  const at::Tensor doubles = channels_last({1, 24, 5, 7}).to(at::kDouble);
  REQUIRE(at::equal(op.call(doubles, weight.to(at::kDouble), packed, bias.to(at::kDouble)),
                    at::conv2d(doubles, weight.to(at::kDouble), bias.to(at::kDouble))));
}

TEST(depthwise_conv_matches_conv2d_on_channels_last_input_and_is_conv2d_for_what_it_does_not_take) {
  auto& dispatcher = c10::Dispatcher::singleton();
  const auto op = dispatcher.findSchemaOrThrow("torchbridge::depthwise_conv", "")
                      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                        const std::optional<at::Tensor>&, at::IntArrayRef, at::IntArrayRef)>();
  const auto pack =
      dispatcher.findSchemaOrThrow("torchbridge::pack_depthwise_weight", "").typed<at::Tensor(const at::Tensor&)>();
  at::manual_seed(0);
  const auto channels_last = [](std::vector<int64_t> sizes) {
    return at::randn(sizes).contiguous(at::MemoryFormat::ChannelsLast);
  };
  // 24 channels: a block of 16 and one of 8; edge columns, tiles of four, images smaller than the
  // kernel's reach, stride and padding different along each axis.
  struct Case {
    std::vector<int64_t> input, kernel, stride, padding;
  };
  for (const Case& c : {Case{{1, 24, 14, 14}, {3, 3}, {1, 1}, {1, 1}}, Case{{3, 24, 7, 9}, {5, 5}, {2, 2}, {2, 2}},
                        Case{{1, 24, 2, 3}, {5, 5}, {1, 1}, {2, 2}}, Case{{2, 24, 9, 30}, {3, 5}, {1, 2}, {1, 2}}}) {
    const at::Tensor weight = at::randn({24, 1, c.kernel[0], c.kernel[1]});
    const at::Tensor bias = at::randn({24});
    const at::Tensor packed = pack.call(weight);
    const at::Tensor x = channels_last(c.input);
    const at::Tensor expected =
        at::conv2d(x.to(at::kDouble), weight.to(at::kDouble), bias.to(at::kDouble), c.stride, c.padding, {1, 1}, 24);
    const at::Tensor y = op.call(x, weight, packed, bias, c.stride, c.padding);
    REQUIRE(y.sizes() == expected.sizes());
    REQUIRE(y.is_contiguous(at::MemoryFormat::ChannelsLast));
    REQUIRE((y.to(at::kDouble) - expected).abs().max().item<double>() <= 1e-5 * expected.abs().max().item<double>());
    const at::Tensor unbiased =
        at::conv2d(x.to(at::kDouble), weight.to(at::kDouble), {}, c.stride, c.padding, {1, 1}, 24);
    REQUIRE((op.call(x, weight, packed, std::nullopt, c.stride, c.padding).to(at::kDouble) - unbiased)
                .abs()
                .max()
                .item<double>() <= 1e-5 * unbiased.abs().max().item<double>());
  }
  // Another layout, another dtype, channels not a multiple of 8, padding past the kernel: at::conv2d.
  const at::Tensor weight = at::randn({24, 1, 3, 3});
  const at::Tensor bias = at::randn({24});
  const at::Tensor packed = pack.call(weight);
  const at::Tensor nchw = at::randn({2, 24, 5, 7});
  REQUIRE(at::equal(op.call(nchw, weight, packed, bias, {1, 1}, {1, 1}),
                    at::conv2d(nchw, weight, bias, {1, 1}, {1, 1}, {1, 1}, 24)));
  const at::Tensor doubles = channels_last({1, 24, 5, 7}).to(at::kDouble);
  REQUIRE(at::equal(op.call(doubles, weight.to(at::kDouble), packed, bias.to(at::kDouble), {1, 1}, {1, 1}),
                    at::conv2d(doubles, weight.to(at::kDouble), bias.to(at::kDouble), {1, 1}, {1, 1}, {1, 1}, 24)));
  const at::Tensor odd_weight = at::randn({12, 1, 3, 3});
  const at::Tensor odd = channels_last({1, 12, 5, 5});
  REQUIRE(at::equal(op.call(odd, odd_weight, pack.call(odd_weight), std::nullopt, {1, 1}, {1, 1}),
                    at::conv2d(odd, odd_weight, {}, {1, 1}, {1, 1}, {1, 1}, 12)));
  const at::Tensor x = channels_last({1, 24, 5, 7});
  REQUIRE(at::equal(op.call(x, weight, packed, bias, {1, 1}, {3, 3}),
                    at::conv2d(x, weight, bias, {1, 1}, {3, 3}, {1, 1}, 24)));
}

TEST(packed_linear_matches_linear_from_one_row_and_passes_on_what_it_does_not_take) {
  auto& dispatcher = c10::Dispatcher::singleton();
  const auto op = dispatcher.findSchemaOrThrow("torchbridge::packed_linear", "")
                      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                        const std::optional<at::Tensor>&)>();
  const auto pack =
      dispatcher.findSchemaOrThrow("torchbridge::pack_linear_weight", "").typed<at::Tensor(const at::Tensor&)>();
  at::manual_seed(0);
  // N = 37: a last panel of 5 columns; K = 1029: four slices along K, the last of 5 values;
  // rows off the 6-row tiles and past one 96-row block, so every tile size runs under ASan.
  const at::Tensor weight = at::randn({37, 1029});
  const at::Tensor bias = at::randn({37});
  const at::Tensor packed = pack.call(weight);
  REQUIRE(packed.sizes() == at::IntArrayRef({3, 1029, 16}));
  const auto off = [](const at::Tensor& actual, const at::Tensor& reference) {
    return (actual.to(at::kDouble) - reference).abs().max().item<double>() / reference.abs().max().item<double>();
  };
  for (const int64_t rows : {int64_t{1}, int64_t{3}, torchbridge::kRowwiseMaxRows + 1, int64_t{19}, int64_t{20}, int64_t{21},
                             int64_t{22}, int64_t{23}, int64_t{97}, int64_t{200}, torchbridge::kPackedMaxRows}) {
    const at::Tensor x = at::randn({rows, 1029});
    const at::Tensor expected = at::linear(x.to(at::kDouble), weight.to(at::kDouble), bias.to(at::kDouble));
    REQUIRE(off(op.call(x, weight, packed, bias), expected) <= 1e-5);
    REQUIRE(off(op.call(x, weight, packed, std::nullopt), at::linear(x.to(at::kDouble), weight.to(at::kDouble))) <=
            1e-5);
  }
  const at::Tensor many = at::randn({torchbridge::kPackedMaxRows + 1, 1029});
  REQUIRE(at::equal(op.call(many, weight, packed, bias), at::linear(many, weight, bias)));
  const at::Tensor doubles = at::randn({40, 1029}, at::kDouble);
  REQUIRE(at::equal(op.call(doubles, weight.to(at::kDouble), packed, bias.to(at::kDouble)),
                    at::linear(doubles, weight.to(at::kDouble), bias.to(at::kDouble))));
  const at::Tensor rows40 = at::randn({40, 1029});
  const at::Tensor foreign = pack.call(at::randn({49, 1029}));  // packed from a weight of another shape
  REQUIRE(at::equal(op.call(rows40, weight, foreign, bias), at::linear(rows40, weight, bias)));
  bool raised = false;  // shapes that do not fit raise as aten::linear does
  try {
    op.call(at::randn({40, 1028}), weight, packed, bias);
  } catch (const c10::Error&) {
    raised = true;
  }
  REQUIRE(raised);
}

TEST(rowwise_lstm_matches_lstm_and_passes_on_what_its_kernel_does_not_take) {
  auto& dispatcher = c10::Dispatcher::singleton();
  const auto op =
      dispatcher.findSchemaOrThrow("torchbridge::rowwise_lstm", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, at::TensorList, at::TensorList, bool,
                                                                int64_t, double, bool, bool, bool, at::TensorList)>();
  const auto pack =
      dispatcher.findSchemaOrThrow("torchbridge::pack_linear_weight", "").typed<at::Tensor(const at::Tensor&)>();
  at::manual_seed(0);
  // Two layers, both directions, time-major; hidden 9 (the cell update's tail past 8 lanes) and 20
  // (at two threads or more, slices of the hidden units for the row kernel's steps, the last with a
  // tail); the weights packed by the pass, or not given.
  const int64_t batch = 3, steps = 4, input_size = 5;
  for (const int64_t hidden : {int64_t{9}, int64_t{20}}) {
    std::vector<at::Tensor> params, packed;
    for (int64_t layer = 0; layer < 2; ++layer)
      for (int64_t direction = 0; direction < 2; ++direction) {
        params.push_back(at::randn({4 * hidden, layer == 0 ? input_size : 2 * hidden}) * 0.3);
        params.push_back(at::randn({4 * hidden, hidden}) * 0.3);
        params.push_back(at::randn({4 * hidden}) * 0.1);
        params.push_back(at::randn({4 * hidden}) * 0.1);
        packed.push_back(pack.call(params[params.size() - 4]));
        packed.push_back(pack.call(params[params.size() - 3]));
      }
    // The row kernel, the packed GEMM per step, and past its rows at::lstm.
    for (const int64_t rows : {batch, torchbridge::kRowwiseMaxRows + 1, torchbridge::kPackedMaxRows + 1})
      for (const bool given : {true, false}) {
        const at::Tensor x = at::randn({steps, rows, input_size});
        const std::vector<at::Tensor> h0 = {at::randn({4, rows, hidden}), at::randn({4, rows, hidden})};
        const auto actual =
            op.call(x, h0, params, true, 2, 0.0, false, true, false, given ? packed : std::vector<at::Tensor>{});
        const auto expected = at::lstm(x, h0, params, true, 2, 0.0, false, true, false);
        for (const auto& [a, e] : {std::pair{std::get<0>(actual), std::get<0>(expected)},
                                   std::pair{std::get<1>(actual), std::get<1>(expected)},
                                   std::pair{std::get<2>(actual), std::get<2>(expected)}}) {
          REQUIRE(a.sizes() == e.sizes());
          if (rows > torchbridge::kPackedMaxRows)
            REQUIRE(at::equal(a, e));  // at::lstm itself
          else
            REQUIRE((a - e).abs().max().item<double>() <= 1e-5 * e.abs().max().item<double>());
        }
      }
  }
}

TEST(small_layer_norm_gelu_and_attention_match_aten) {
  auto& dispatcher = c10::Dispatcher::singleton();
  const auto layer_norm =
      dispatcher.findSchemaOrThrow("torchbridge::layer_norm", "")
          .typed<at::Tensor(const at::Tensor&, at::IntArrayRef, const std::optional<at::Tensor>&,
                            const std::optional<at::Tensor>&, double, bool)>();
  const auto gelu =
      dispatcher.findSchemaOrThrow("torchbridge::gelu", "").typed<at::Tensor(const at::Tensor&, c10::string_view)>();
  const auto attention =
      dispatcher.findSchemaOrThrow("torchbridge::attention", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                            double, bool, std::optional<double>, bool)>();
  const auto off = [](const at::Tensor& actual, const at::Tensor& expected) {
    return (actual - expected).abs().max().item<double>() / expected.abs().max().item<double>();
  };
  at::manual_seed(0);
  // Widths and lengths off the kernels' 8 lanes and 32-key blocks, so their tails run under ASan.
  const at::Tensor x = at::randn({3, 7, 13}) * 3;
  const at::Tensor weight = at::randn({13}), bias = at::randn({13});
  REQUIRE(off(layer_norm.call(x, {13}, weight, bias, 1e-5, true), at::layer_norm(x, {13}, weight, bias)) <= 1e-5);
  REQUIRE(off(gelu.call(x, "none"), at::gelu(x)) <= 1e-5);
  const at::Tensor big = at::randn({torchbridge::kSmallGeluElements + 1});
  REQUIRE(at::equal(gelu.call(big, "none"), at::gelu(big)));
  for (const int64_t keys : {int64_t{5}, int64_t{33}}) {
    const at::Tensor q = at::randn({2, keys, 3, 9}).transpose(1, 2), k = at::randn({2, keys, 3, 9}).transpose(1, 2);
    const at::Tensor v = at::randn({2, keys, 3, 11}).transpose(1, 2);
    const at::Tensor mask = at::rand({2, 1, 1, keys}) > 0.3;
    mask.select(3, 0).fill_(true);  // every query sees a key
    const at::Tensor expected = at::scaled_dot_product_attention(q, k, v, mask);
    REQUIRE(off(attention.call(q, k, v, mask, 0.0, false, std::nullopt, false), expected) <= 1e-5);
    REQUIRE(off(attention.call(q, k, v, std::nullopt, 0.0, true, std::nullopt, false),
                at::scaled_dot_product_attention(q, k, v, std::nullopt, 0.0, true)) <= 1e-5);
  }
}

int main(int argc, char** argv) { return tbtest::run_all(argc, argv); }
