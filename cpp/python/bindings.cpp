// torchbridge._C: a thin pybind11 layer over torchbridge::Runtime. Tensors cross as DLPack
// capsules (zero-copy both ways); python/torchbridge/runtime.py wraps this into torch.Tensors.
#include <ATen/DLConvertor.h>
#include <pybind11/pybind11.h>

#include <optional>
#include <pybind11/stl.h>
#include <torch/version.h>

#include "internal.hpp"
#include "memory_pool.hpp"
#include "packed_gemm.hpp"
#include "rowwise.hpp"
#include "stem_conv.hpp"
#include "torchbridge/runtime.hpp"

namespace py = pybind11;

namespace {

PyObject* error_type = nullptr;  // torchbridge._C.Error, created once at import

const char* code_name(torchbridge::ErrorCode code) {
  switch (code) {
    case torchbridge::ErrorCode::kInvalidArgument: return "invalid_argument";
    case torchbridge::ErrorCode::kArtifact: return "artifact";
    case torchbridge::ErrorCode::kInput: return "input";
    case torchbridge::ErrorCode::kRuntime: return "runtime";
  }
  return "runtime";
}

at::Tensor from_capsule(const py::capsule& capsule) {
  const char* name = capsule.name();
  if (name == nullptr || std::string(name) != "dltensor")
    throw torchbridge::Error(torchbridge::ErrorCode::kInput, "expected an unused DLPack capsule ('dltensor')");
  auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), "dltensor"));
  at::Tensor tensor = at::fromDLPack(managed);
  PyCapsule_SetName(capsule.ptr(), "used_dltensor");  // ownership moved into `tensor`
  return tensor;
}

void delete_unused_capsule(PyObject* object) {
  if (PyCapsule_IsValid(object, "dltensor")) {
    auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(object, "dltensor"));
    if (managed->deleter) managed->deleter(managed);
  }
}

py::capsule to_capsule(at::Tensor tensor) {
  if (tensor.is_quantized()) tensor = tensor.dequantize();  // DLPack has no quantized dtypes
  return py::capsule(at::toDLPack(tensor), "dltensor", &delete_unused_capsule);
}

std::vector<at::Tensor> from_capsules(const std::vector<py::capsule>& capsules) {
  std::vector<at::Tensor> tensors;
  tensors.reserve(capsules.size());
  for (const auto& capsule : capsules) tensors.push_back(from_capsule(capsule));
  return tensors;
}

py::list to_capsules(std::vector<at::Tensor> tensors) {
  py::list out;
  for (auto& tensor : tensors) out.append(to_capsule(std::move(tensor)));
  return out;
}

py::dict stats_dict(const torchbridge::MemoryPoolStats& stats) {
  return py::dict(py::arg("in_use") = stats.in_use, py::arg("cached") = stats.cached, py::arg("peak") = stats.peak,
                  py::arg("hits") = stats.hits, py::arg("misses") = stats.misses);
}

py::dict comparison_dict(const torchbridge::Comparison& c) {
  py::dict out;
  out["passed"] = c.passed;
  out["max_abs"] = c.max_abs;
  out["max_rel"] = c.max_rel;
  out["note"] = c.note;
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "torchbridge native runtime (LibTorch); use torchbridge.Runtime";

  error_type = PyErr_NewException("torchbridge._C.Error", PyExc_RuntimeError, nullptr);
  m.add_object("Error", py::handle(error_type));
  py::register_exception_translator([](std::exception_ptr pointer) {
    try {
      if (pointer) std::rethrow_exception(pointer);
    } catch (const torchbridge::Error& error) {
      py::object instance = py::reinterpret_borrow<py::object>(error_type)(error.what());
      instance.attr("code") = code_name(error.code());
      PyErr_SetObject(error_type, instance.ptr());
    }
  });

  m.def("version", &torchbridge::version);
  m.attr("torch_version") = TORCH_VERSION;
  m.def("read_npy", [](const std::string& path) { return to_capsule(torchbridge::read_npy(path)); });
  m.def("write_npy", [](const std::string& path, const py::capsule& tensor) {
    torchbridge::write_npy(path, from_capsule(tensor));
  });
  m.def("compare", [](const py::capsule& actual, const py::capsule& expected, double rtol, double atol) {
    return comparison_dict(torchbridge::compare(from_capsule(actual), from_capsule(expected), rtol, atol));
  });

  // `with _C.OneDnnFusionScope():` fuses the graphs this thread optimizes inside with oneDNN Graph
  // (export.RuntimeMirror mirrors the runtime with it).
  struct FusionScope {
    std::optional<torchbridge::OneDnnFusionScope> scope;
  };
  py::class_<FusionScope>(m, "OneDnnFusionScope")
      .def(py::init<>())
      .def("__enter__",
           [](FusionScope& self) {
             if (self.scope) throw std::runtime_error("OneDnnFusionScope is already entered");
             self.scope.emplace();
           })
      .def("__exit__", [](FusionScope& self, const py::args&) {
        self.scope.reset();
        return false;
      });
  // `with _C.MemoryPool():` this thread's large CPU allocations inside come from a pool of its own,
  // as they do inside Runtime::forward (RuntimeOptions::reuse_memory): export times the variants
  // with one, so it ranks them as the runtime will run them.
  struct PythonMemoryPool {
    std::unique_ptr<torchbridge::MemoryPool> pool = torchbridge::MemoryPool::create();
    std::optional<torchbridge::MemoryPoolScope> scope;
  };
  py::class_<PythonMemoryPool>(m, "MemoryPool")
      .def(py::init<>())
      .def("__enter__",
           [](PythonMemoryPool& self) -> PythonMemoryPool& {
             if (self.scope) throw std::runtime_error("MemoryPool is already entered");
             self.scope.emplace(self.pool.get());
             return self;
           },
           py::return_value_policy::reference)
      .def("__exit__", [](PythonMemoryPool& self, const py::args&) {
        self.scope.reset();
        return false;
      })
      .def("stats", [](const PythonMemoryPool& self) {
        return stats_dict(self.pool ? self.pool->stats() : torchbridge::MemoryPoolStats{});
      });
  m.attr("FUSED_SHAPES") = torchbridge::kFusedShapes;
  // Export skips timing the variants of a model the runtime will run as loaded anyway.
  m.def("selecting_ops", [](const std::string& path) { return torchbridge::selecting_ops_in(path); });
  // The runtime's "rowwise" variant: its kernels run on this CPU, for inputs of up to this many
  // rows (torchbridge::rowwise_linear and rowwise_lstm are aten's operators otherwise).
  m.def("rowwise_available", &torchbridge::rowwise_kernels_available);
  m.attr("ROWWISE_MAX_ROWS") = torchbridge::kRowwiseMaxRows;
  // Up to this many rows, linear layers run torchbridge's GEMM on a weight packed at load
  // (torchbridge::packed_linear is aten::linear past it).
  m.attr("PACKED_MAX_ROWS") = torchbridge::kPackedMaxRows;
  // 1x1 convolutions of channels-last inputs (torchbridge::pointwise_conv) run it up to this many
  // pixels on this CPU (conv2d past it).
  m.attr("POINTWISE_MAX_PIXELS") = torchbridge::pointwise_max_pixels();
  // The first convolution the "channels_last" variant gives torchbridge::stem_conv: up to this many
  // input channels, and taps (kh x kw x C_in).
  m.attr("STEM_MAX_CHANNELS") = torchbridge::kStemMaxChannels;
  m.attr("STEM_MAX_TAPS") = torchbridge::kStemMaxTaps;
  // Its small-input kernels' limits (torchbridge::gelu and attention are aten's operators past them).
  m.attr("SMALL_GELU_ELEMENTS") = torchbridge::kSmallGeluElements;
  m.attr("SMALL_ATTENTION_KEYS") = torchbridge::kSmallAttentionKeys;
  m.attr("SMALL_ATTENTION_HEAD") = torchbridge::kSmallAttentionHead;
  m.attr("CUDA_GRAPH_SHAPES") = torchbridge::kCudaGraphShapes;
  m.attr("CHECKED_SHAPES") = torchbridge::kCheckedShapes;

  // The runtime's options as one object: Python builds one (its defaults are the library's) and
  // passes it whole, so a new option is added here once, not as another positional argument.
  using torchbridge::RuntimeOptions;
  py::class_<RuntimeOptions>(m, "RuntimeOptions")
      .def(py::init<>())
      .def_readwrite("device", &RuntimeOptions::device)
      .def_readwrite("threads", &RuntimeOptions::threads)
      .def_readwrite("warmup_runs", &RuntimeOptions::warmup_runs)
      .def_readwrite("warmup_batches", &RuntimeOptions::warmup_batches)
      .def_readwrite("optimize", &RuntimeOptions::optimize)
      .def_readwrite("fuse", &RuntimeOptions::fuse)
      .def_readwrite("cuda_graphs", &RuntimeOptions::cuda_graphs)
      .def_readwrite("precision", &RuntimeOptions::precision)
      .def_readwrite("reuse_memory", &RuntimeOptions::reuse_memory)
      .def_readwrite("max_input_bytes", &RuntimeOptions::max_input_bytes)
      .def("__copy__", [](const RuntimeOptions& self) { return RuntimeOptions(self); })
      .def("__repr__", [](const RuntimeOptions& o) {
        std::string batches;
        for (size_t i = 0; i < o.warmup_batches.size(); ++i)
          batches += (i ? ", " : "") + std::to_string(o.warmup_batches[i]);
        return "RuntimeOptions(device='" + o.device + "', threads=" + std::to_string(o.threads) +
               ", warmup_runs=" + std::to_string(o.warmup_runs) + ", warmup_batches=[" + batches +
               "], optimize=" + (o.optimize ? "True" : "False") + ", fuse=" + (o.fuse ? "True" : "False") +
               ", cuda_graphs=" + (o.cuda_graphs ? "True" : "False") + ", precision='" + o.precision +
               "', reuse_memory=" + (o.reuse_memory ? "True" : "False") + ", max_input_bytes=" + std::to_string(o.max_input_bytes) + ")";
      });

  py::class_<torchbridge::Runtime>(m, "Runtime")
      .def(py::init([](const std::string& path, const RuntimeOptions& options) {
             py::gil_scoped_release release;
             return std::make_unique<torchbridge::Runtime>(path, options);
           }),
           py::arg("path"), py::arg("options") = RuntimeOptions())
      .def("forward",
           [](const torchbridge::Runtime& self, const std::vector<py::capsule>& inputs) {
             std::vector<at::Tensor> tensors = from_capsules(inputs);
             std::vector<at::Tensor> outputs;
             {
               py::gil_scoped_release release;
               outputs = self.forward(tensors);
             }
             return to_capsules(std::move(outputs));
           })
      .def("forward_submodule",
           [](const torchbridge::Runtime& self, const std::string& name, const std::vector<py::capsule>& inputs) {
             std::vector<at::Tensor> tensors = from_capsules(inputs);
             std::vector<at::Tensor> outputs;
             {
               py::gil_scoped_release release;
               outputs = self.forward_submodule(name, tensors);
             }
             return to_capsules(std::move(outputs));
           })
      .def("submodule_names", &torchbridge::Runtime::submodule_names)
      .def("variant_at", [](const torchbridge::Runtime& self, const std::vector<py::capsule>& inputs) {
        return self.variant_at(from_capsules(inputs));
      })
      .def("validate", [](const torchbridge::Runtime& self, const std::vector<py::capsule>& inputs) {
        self.validate(from_capsules(inputs));
      })
      .def("example_inputs",
           [](const torchbridge::Runtime& self, int64_t dynamic_size, uint64_t seed) {
             return to_capsules(self.example_inputs(dynamic_size, seed));
           },
           py::arg("dynamic_size") = 1, py::arg("seed") = 0)
      .def("golden_inputs", [](const torchbridge::Runtime& self) { return to_capsules(self.golden_inputs()); })
      .def("golden_outputs", [](const torchbridge::Runtime& self) { return to_capsules(self.golden_outputs()); })
      .def("selftest",
           [](const torchbridge::Runtime& self) {
             torchbridge::SelftestReport report;
             {
               py::gil_scoped_release release;
               report = self.selftest();
             }
             py::dict out;
             out["passed"] = report.passed;
             py::list outputs;
             for (const auto& c : report.outputs) outputs.append(comparison_dict(c));
             out["outputs"] = outputs;
             return out;
           })
      .def_property_readonly("path", &torchbridge::Runtime::path)
      .def_property_readonly("format", &torchbridge::Runtime::format)
      .def_property_readonly("optimization", &torchbridge::Runtime::optimization)
      .def_property_readonly("optimized", &torchbridge::Runtime::optimized)
      .def("memory_pool_stats", [](const torchbridge::Runtime& self) { return stats_dict(self.memory_pool_stats()); })
      .def_property_readonly("optimized_from_batch", &torchbridge::Runtime::optimized_from_batch)
      .def_property_readonly("precision", [](const torchbridge::Runtime& self) { return self.options().precision; })
      .def_property_readonly("device", [](const torchbridge::Runtime& self) { return self.device().str(); })
      .def_property_readonly("manifest_json",
                             [](const torchbridge::Runtime& self) { return self.manifest().json; });
}
