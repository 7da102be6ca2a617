// libtorchbridge_cuda.so: CUDA graph capture and replay over LibTorch's at::cuda::CUDAGraph.
// cuda.h comes first: CUDAGraph's layout depends on CUDA_VERSION, which must match libtorch_cuda's.
#include <cuda.h>
#include <cuda_runtime_api.h>

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>

#include "cuda_graphs.hpp"

namespace torchbridge::cuda {
namespace {

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

// While it lives, a synchronizing CUDA call (a tensor's value read on the host, a blocking copy)
// throws instead of waiting. Process-wide in LibTorch, so it is held for one forward only.
class RefuseHostSyncs {
 public:
  RefuseHostSyncs() : previous_(c10::cuda::warning_state().get_sync_debug_mode()) {
    c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_ERROR);
  }
  ~RefuseHostSyncs() { c10::cuda::warning_state().set_sync_debug_mode(previous_); }
  RefuseHostSyncs(const RefuseHostSyncs&) = delete;
  RefuseHostSyncs& operator=(const RefuseHostSyncs&) = delete;

 private:
  c10::cuda::SyncDebugMode previous_;
};

// A CUDA event that orders work between two streams.
class Event {
 public:
  Event() { check(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming), "cudaEventCreate"); }
  ~Event() { cudaEventDestroy(event_); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  // Work queued on `waiting` from now on starts after the work queued on `done` so far.
  void order(const c10::cuda::CUDAStream& done, const c10::cuda::CUDAStream& waiting) {
    record(done);
    block(waiting);
  }
  void record(const c10::cuda::CUDAStream& stream) {
    check(cudaEventRecord(event_, stream.stream()), "cudaEventRecord");
    recorded_ = true;
  }
  // Work queued on `stream` from now on starts after the last record(); nothing before one.
  void block(const c10::cuda::CUDAStream& stream) {
    if (recorded_) check(cudaStreamWaitEvent(stream.stream(), event_, 0), "cudaStreamWaitEvent");
  }

 private:
  cudaEvent_t event_ = nullptr;
  bool recorded_ = false;
};

class CapturedGraph final : public Graph {
 public:
  CapturedGraph(const Forward& forward, const std::vector<at::Tensor>& inputs, int warmup_runs)
      : forward_(forward), device_(inputs.at(0).device()) {
    const c10::cuda::CUDAGuard device_guard(device_);
    for (const auto& input : inputs) inputs_.push_back(input.clone());
    // Warm-up and capture run on a side stream, as torch.cuda.graph does: capture cannot use the
    // legacy default stream, and the side stream keeps the caller's stream out of the capture.
    const c10::cuda::CUDAStream caller = c10::cuda::getCurrentCUDAStream(device_.index());
    const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device_.index());
    Event ordering;
    ordering.order(caller, side);
    {
      const c10::cuda::CUDAStreamGuard stream_guard(side);
      for (int i = 0; i < warmup_runs; ++i) forward_(inputs_);
      side.synchronize();
      // A model that waits on the host (a branch on a tensor's value) cannot be captured. Find that
      // out before capturing: LibTorch leaves its CUDA random generator in capture mode after a
      // failed capture, which breaks every later random op of the process.
      {
        const RefuseHostSyncs refuse;
        forward_(inputs_);
      }
      side.synchronize();
      // Thread-local mode: other threads may go on using CUDA while this one captures.
      graph_.capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
      try {
        outputs_ = forward_(inputs_);
      } catch (...) {
        try {
          graph_.capture_end();  // ends the (invalidated) capture; its own error is the lesser one
        } catch (...) {
        }
        (void)cudaGetLastError();  // the refused call's error is not sticky: clear it for later launches
        throw;
      }
      graph_.capture_end();
    }
    ordering.order(side, caller);
    done_ = std::make_unique<Event>();  // created on device_, like the streams it orders
  }

  std::vector<at::Tensor> replay(const std::vector<at::Tensor>& inputs) override {
    const c10::cuda::CUDAGuard device_guard(device_);
    const std::lock_guard<std::mutex> lock(mutex_);
    const c10::cuda::CUDAStream stream = c10::cuda::getCurrentCUDAStream(device_.index());
    done_->block(stream);  // a replay queued from another stream has read its inputs and outputs
    for (size_t i = 0; i < inputs_.size(); ++i) inputs_[i].copy_(inputs[i], /*non_blocking=*/true);
    graph_.replay();
    std::vector<at::Tensor> outputs;
    outputs.reserve(outputs_.size());
    for (const auto& output : outputs_) outputs.push_back(output.clone());
    done_->record(stream);
    return outputs;
  }

 private:
  Forward forward_;  // owns the module whose kernels and constants the graph uses
  at::Device device_;
  std::vector<at::Tensor> inputs_;
  std::vector<at::Tensor> outputs_;
  at::cuda::CUDAGraph graph_;
  std::mutex mutex_;
  std::unique_ptr<Event> done_;
};

}  // namespace
}  // namespace torchbridge::cuda

extern "C" __attribute__((visibility("default"))) torchbridge::cuda::Graph* torchbridge_cuda_graph_capture(
    const torchbridge::cuda::Forward& forward, const std::vector<at::Tensor>& inputs, int warmup_runs) {
  return new torchbridge::cuda::CapturedGraph(forward, inputs, warmup_runs);
}
