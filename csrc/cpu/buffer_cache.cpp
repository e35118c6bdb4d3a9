// The CPU buffer cache of rarekit/cpu_buffer_cache.h.
#include "rarekit/cpu_buffer_cache.h"

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>

#include "rarekit/torch_utils.h"

namespace rarekit::cpu {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kMinCachedBytes = size_t{4} << 20;  // below, malloc reuses memory and faults cost little
constexpr int kCachedBuffers = 2;  // a step's gradient and the one the step before still holds

struct Buffer {
  void* data = nullptr;
  size_t capacity = 0;
};

std::mutex cache_mutex;
Buffer cached[kCachedBuffers];

bool cache_enabled() {
  static const bool enabled = [] {
    const char* setting = std::getenv("RAREKIT_CPU_BUFFER_CACHE");
    return setting == nullptr || std::strcmp(setting, "0") != 0;
  }();
  return enabled;
}

// A kept buffer of capacity in [bytes, 2 bytes] (the smallest such), or an empty one.
Buffer take_cached(size_t bytes) {
  std::lock_guard<std::mutex> lock(cache_mutex);
  Buffer* best = nullptr;
  for (Buffer& slot : cached) {
    if (slot.data && slot.capacity >= bytes && slot.capacity / 2 <= bytes && (!best || slot.capacity < best->capacity)) {
      best = &slot;
    }
  }
  if (!best) return {};
  const Buffer found = *best;
  *best = {};
  return found;
}

// Keeps a freed buffer in an empty slot, or in place of the smallest kept one; frees what is left over.
void keep_or_free(Buffer freed) {
  if (cache_enabled()) {
    std::lock_guard<std::mutex> lock(cache_mutex);
    Buffer* target = &cached[0];
    for (Buffer& slot : cached) {
      if (!slot.data) {
        target = &slot;
        break;
      }
      if (slot.capacity < target->capacity) target = &slot;
    }
    std::swap(*target, freed);
  }
  std::free(freed.data);
}

}  // namespace

at::Tensor empty_reusing_buffers(at::IntArrayRef sizes, at::ScalarType dtype) {
  const at::TensorOptions options = at::TensorOptions().dtype(dtype).device(at::kCPU);
  int64_t elements = 1;
  for (const int64_t size : sizes) elements *= size;
  const size_t bytes = static_cast<size_t>(elements) * at::elementSize(dtype);
  if (bytes < kMinCachedBytes || !cache_enabled()) {
    at::Tensor fresh = at::empty(sizes, options);
    advise_huge_pages(fresh);
    return fresh;
  }
  Buffer buffer = take_cached(bytes);
  if (!buffer.data) {
    buffer.capacity = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    buffer.data = std::aligned_alloc(kHugePage, buffer.capacity);
    if (!buffer.data) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(buffer.data, buffer.capacity, MADV_HUGEPAGE);
#endif
  }
  return at::from_blob(buffer.data, sizes, [buffer](void*) { keep_or_free(buffer); }, options);
}

int64_t release_cached_buffers() {
  Buffer released[kCachedBuffers];
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    for (int i = 0; i < kCachedBuffers; ++i) std::swap(released[i], cached[i]);
  }
  int64_t bytes = 0;
  for (const Buffer& buffer : released) {
    bytes += static_cast<int64_t>(buffer.capacity);
    std::free(buffer.data);
  }
  return bytes;
}

}  // namespace rarekit::cpu
