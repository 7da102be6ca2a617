#include "memory_pool.hpp"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#if defined(__SANITIZE_ADDRESS__)
#define TORCHBRIDGE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TORCHBRIDGE_ASAN 1
#endif
#endif
#ifdef TORCHBRIDGE_ASAN
#include <sanitizer/asan_interface.h>
#endif

#include <algorithm>
#include <iterator>
#include <set>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

namespace torchbridge {

// A pool carves blocks out of segments taken from the system (of the free blocks that fit within
// twice the size asked, the one freed last; else the smallest that fits), splitting a larger free
// block and merging a freed one with its free neighbours (as PyTorch's CUDA caching allocator and
// onnxruntime's arena do): the activations of one layer can then reuse the memory of another's of a
// different size, and the pool stays within the peak a forward has in use.
struct Segment;

struct Block {
  char* data = nullptr;
  size_t size = 0;
  bool free = true;
  Block* prev = nullptr;  // neighbours in the segment, by address
  Block* next = nullptr;
  Segment* segment = nullptr;
  uint64_t freed = 0;  // PoolState::frees when it was last given back
};

struct Segment {
  char* base = nullptr;
  size_t size = 0;
};

struct PoolState {
  // All guarded by the global mutex below.
  std::set<std::pair<size_t, Block*>> free;  // (size, block): best fit is a lower_bound
  size_t reserved = 0;                       // bytes of all segments
  size_t in_use = 0;
  size_t peak = 0;
  int64_t hits = 0;
  int64_t misses = 0;
  uint64_t frees = 0;
  bool closed = false;  // the Runtime is gone: segments go back to the system as they empty
};

namespace {

constexpr size_t kPage = 4096;

// Under AddressSanitizer a free block is poisoned, so a tensor used after it was freed is still
// reported although its memory stays in the pool.
void poison(void* data, size_t size) {
#ifdef TORCHBRIDGE_ASAN
  ASAN_POISON_MEMORY_REGION(data, size);
#else
  (void)data;
  (void)size;
#endif
}

void unpoison(void* data, size_t size) {
#ifdef TORCHBRIDGE_ASAN
  ASAN_UNPOISON_MEMORY_REGION(data, size);
#else
  (void)data;
  (void)size;
#endif
}

// Every pooled block in use, by address, whichever pool it belongs to. The deleter gets only the
// address (a pooled DataPtr's context is its data, as c10's raw_allocate and copy-on-write storage
// expect).
struct Global {
  std::mutex mutex;
  std::unordered_map<void*, std::pair<std::shared_ptr<PoolState>, Block*>> blocks;
  c10::Allocator* system = nullptr;
  c10::DeleterFnPtr system_delete = nullptr;
};

Global& global() {
  static Global* instance = new Global();  // never destroyed: tensors may be freed at exit
  return *instance;
}

thread_local const std::shared_ptr<PoolState>* current = nullptr;

// A free block that spans its whole segment: the segment can go back to the system.
bool whole_segment(const Block* block) { return block->free && block->prev == nullptr && block->next == nullptr; }

// Takes an empty segment (its one free block) out of the pool; the caller frees the memory.
void* drop_segment(PoolState& pool, Block* block) {
  void* base = block->segment->base;
  unpoison(base, block->segment->size);
  pool.free.erase({block->size, block});
  pool.reserved -= block->segment->size;
  delete block->segment;
  delete block;
  return base;
}

// Marks a block free and merges it with free neighbours; returns the merged block (in pool.free).
Block* give_back(PoolState& pool, Block* block) {
  block->free = true;
  block->freed = ++pool.frees;
  pool.in_use -= block->size;
  poison(block->data, block->size);
  if (block->next != nullptr && block->next->free) {
    Block* next = block->next;
    pool.free.erase({next->size, next});
    block->size += next->size;
    block->next = next->next;
    if (block->next != nullptr) block->next->prev = block;
    delete next;
  }
  if (block->prev != nullptr && block->prev->free) {
    Block* prev = block->prev;
    pool.free.erase({prev->size, prev});
    prev->size += block->size;
    prev->freed = block->freed;
    prev->next = block->next;
    if (prev->next != nullptr) prev->next->prev = prev;
    delete block;
    block = prev;
  }
  pool.free.insert({block->size, block});
  return block;
}

void release(void* data) {
  Global& g = global();
  std::unique_lock<std::mutex> lock(g.mutex);
  auto it = g.blocks.find(data);
  if (it == g.blocks.end()) {
    // Not pooled: raw_allocate outside a scope, served by the system allocator.
    lock.unlock();
    g.system_delete(data);
    return;
  }
  const std::shared_ptr<PoolState> state = std::move(it->second.first);
  Block* block = give_back(*state, it->second.second);
  g.blocks.erase(it);
  if (state->closed && whole_segment(block)) {
    void* base = drop_segment(*state, block);
    lock.unlock();
    g.system_delete(base);
  }
}

void* acquire(const std::shared_ptr<PoolState>& state, size_t nbytes) {
  Global& g = global();
  const size_t want = (nbytes + kPage - 1) / kPage * kPage;
  std::vector<void*> dropped;
  {
    std::lock_guard<std::mutex> lock(g.mutex);
    PoolState& pool = *state;
    auto it = pool.free.lower_bound({want, nullptr});
    // Of the blocks that fit without wasting more than they use, the one given back last: its
    // memory is the likeliest to be in the caches still, so the forward's writes to it do not
    // read it from memory first.
    for (auto other = it; other != pool.free.end() && other->first <= 2 * want; ++other)
      if (other->second->freed > it->second->freed) it = other;
    if (it != pool.free.end()) {
      Block* block = it->second;
      pool.free.erase(it);
      if (block->size - want >= kMinPooledBytes) {
        auto* rest = new Block{block->data + want, block->size - want, true, block, block->next, block->segment};
        if (rest->next != nullptr) rest->next->prev = rest;
        block->next = rest;
        block->size = want;
        pool.free.insert({rest->size, rest});
      }
      block->free = false;
      unpoison(block->data, block->size);
      pool.in_use += block->size;
      pool.peak = std::max(pool.peak, pool.in_use);
      ++pool.hits;
      g.blocks.emplace(block->data, std::make_pair(state, block));
      return block->data;
    }
    ++pool.misses;
    pool.in_use += want;
    pool.peak = std::max(pool.peak, pool.in_use);
    // Stay within the peak in use: return empty segments, the largest first, to make room.
    for (auto last = pool.free.end(); pool.reserved + want > pool.peak && last != pool.free.begin();) {
      --last;
      if (!whole_segment(last->second)) continue;
      Block* block = last->second;
      ++last;  // erased next; iterators to other elements stay valid
      dropped.push_back(drop_segment(pool, block));
    }
  }
  for (void* base : dropped) g.system_delete(base);
  void* data = nullptr;
  try {
    data = g.system->raw_allocate(want);
  } catch (...) {
    std::lock_guard<std::mutex> lock(g.mutex);
    state->in_use -= want;
    throw;
  }
  std::lock_guard<std::mutex> lock(g.mutex);
  auto* segment = new Segment{static_cast<char*>(data), want};
  auto* block = new Block{segment->base, want, false, nullptr, nullptr, segment};
  state->reserved += want;
  g.blocks.emplace(data, std::make_pair(state, block));
  return data;
}

class PoolingAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t nbytes) override {
    if (current == nullptr || nbytes < kMinPooledBytes) return global().system->allocate(nbytes);
    void* data = acquire(*current, nbytes);
    return {data, data, &release, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &release; }
  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }
};

// Installs the pooling allocator over the process's CPU allocator, once; false when it cannot.
bool install() {
  static const bool installed = [] {
    c10::Allocator* system = c10::GetCPUAllocator();
    if (system == nullptr || system->raw_deleter() == nullptr) return false;
    Global& g = global();
    g.system = system;
    g.system_delete = system->raw_deleter();
    static PoolingAllocator* pooling = new PoolingAllocator();
    c10::SetCPUAllocator(pooling, /*priority=*/0);
    return c10::GetCPUAllocator() == pooling;
  }();
  return installed;
}

}  // namespace

std::unique_ptr<MemoryPool> MemoryPool::create() {
  if (!install()) return nullptr;
  return std::unique_ptr<MemoryPool>(new MemoryPool(std::make_shared<PoolState>()));
}

MemoryPool::MemoryPool(std::shared_ptr<PoolState> state) : state_(std::move(state)) {}

MemoryPool::~MemoryPool() {
  Global& g = global();
  std::vector<void*> dropped;
  {
    std::lock_guard<std::mutex> lock(g.mutex);
    state_->closed = true;
    std::vector<Block*> empty;
    for (const auto& [size, block] : state_->free)
      if (whole_segment(block)) empty.push_back(block);
    for (Block* block : empty) dropped.push_back(drop_segment(*state_, block));
  }
  for (void* base : dropped) g.system_delete(base);
}

MemoryPoolStats MemoryPool::stats() const {
  std::lock_guard<std::mutex> lock(global().mutex);
  MemoryPoolStats stats;
  stats.in_use = static_cast<int64_t>(state_->in_use);
  stats.cached = static_cast<int64_t>(state_->reserved - state_->in_use);
  stats.peak = static_cast<int64_t>(state_->peak);
  stats.hits = state_->hits;
  stats.misses = state_->misses;
  return stats;
}

MemoryPoolScope::MemoryPoolScope(const MemoryPool* pool) : previous_(current) {
  if (pool != nullptr) current = &pool->state_;
}

MemoryPoolScope::~MemoryPoolScope() { current = previous_; }

}  // namespace torchbridge
