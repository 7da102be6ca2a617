// A per-Runtime pool of the CPU memory its forwards allocate (RuntimeOptions::reuse_memory).
//
// LibTorch's CPU allocator hands every large tensor back to the system when it is freed; glibc maps
// blocks of 32 MiB and more afresh on each allocation, so a batch-32 convolution network pays a page
// fault per 4 KiB of every activation on every call. The pool keeps the blocks a forward frees for
// the next forward, the way onnxruntime's arena does.
//
// It works by wrapping the process's CPU allocator (c10::SetCPUAllocator) once: while a
// MemoryPoolScope is open on a thread, that thread's CPU allocations of kMinPooledBytes and more come
// from its pool; everything else, and every thread without a scope, goes to the allocator that was
// there before, unchanged. The pool carves blocks out of segments it takes from the system (the
// block freed last of those that fit closely, else the best fit; split, merged again when freed),
// and returns empty segments to make room rather than hold more than the most its forwards have
// had in use at once; the rest goes back to the system when the Runtime is destroyed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "torchbridge/runtime.hpp"

namespace torchbridge {

constexpr size_t kMinPooledBytes = size_t{64} << 10;

struct PoolState;

class MemoryPool {
 public:
  /// nullptr when the process's CPU allocator cannot be wrapped (one without a raw deleter, or one
  /// installed with a higher priority): the Runtime then runs without a pool.
  static std::unique_ptr<MemoryPool> create();
  ~MemoryPool();  // returns the cached blocks; blocks still held by tensors go back when freed
  MemoryPool(const MemoryPool&) = delete;
  MemoryPool& operator=(const MemoryPool&) = delete;

  MemoryPoolStats stats() const;

 private:
  explicit MemoryPool(std::shared_ptr<PoolState> state);
  std::shared_ptr<PoolState> state_;
  friend class MemoryPoolScope;
};

/// While alive, this thread's large CPU allocations come from `pool` (nullptr: as before). Scopes nest.
class MemoryPoolScope {
 public:
  explicit MemoryPoolScope(const MemoryPool* pool);
  ~MemoryPoolScope();
  MemoryPoolScope(const MemoryPoolScope&) = delete;
  MemoryPoolScope& operator=(const MemoryPoolScope&) = delete;

 private:
  const std::shared_ptr<PoolState>* previous_;
};

}  // namespace torchbridge
