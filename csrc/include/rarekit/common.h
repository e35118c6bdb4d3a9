// Shared by the CPU, per-ISA and CUDA translation units. No torch headers here: the per-ISA
// kernels include this and are compiled without them.
#pragma once
#include <cstdint>

// Helpers get internal linkage on the host, so the copies compiled per ISA never merge at link
// time (an AVX-512 copy must not serve the baseline path).
#if defined(__CUDACC__)
#define RAREKIT_HOST_DEVICE __host__ __device__ __forceinline__
#define RAREKIT_HOST_DEVICE_MEMBER __host__ __device__ __forceinline__
#else
#define RAREKIT_HOST_DEVICE static inline
#define RAREKIT_HOST_DEVICE_MEMBER inline
#endif
