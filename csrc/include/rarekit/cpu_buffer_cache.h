// Large fresh CPU outputs (the gradient of the logits) that the next training step asks for again.
// A freed buffer is kept and handed to the next request of about its size, so a training loop writes
// its gradient into memory that is already mapped: a fresh 52 MB gradient costs ~15 ms of 4 KiB page
// faults (~5 ms with huge pages, and far more on a VM whose host backs the memory again), several
// times the kernel that writes it. The CUDA caching allocator does the same on the GPU.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>

namespace rarekit::cpu {

// An uninitialized contiguous CPU tensor of `sizes` and `dtype`. From kMinCachedBytes on, its memory
// is 2 MiB aligned, asks for transparent huge pages, and may be a buffer an earlier such tensor freed
// (at most kCachedBuffers are kept, and none when RAREKIT_CPU_BUFFER_CACHE=0); below it, at::empty.
at::Tensor empty_reusing_buffers(at::IntArrayRef sizes, at::ScalarType dtype);

// Frees the kept buffers (rarekit.release_cpu_buffers()); returns the bytes freed.
int64_t release_cached_buffers();

}  // namespace rarekit::cpu
