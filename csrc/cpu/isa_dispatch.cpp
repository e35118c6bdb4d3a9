// Run-time choice among the per-ISA kernel copies (csrc/cpu/isa/*.cpp).
// RAREKIT_CPU_ISA=baseline|avx2|avx512 in the environment, or rarekit._C.set_cpu_isa, caps the choice.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "rarekit/cpu_kernels.h"

namespace rarekit::cpu {
namespace {

bool cpu_has(Isa isa) {
#if defined(RAREKIT_X86)
  __builtin_cpu_init();
  switch (isa) {
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    default:
      return true;
  }
#else
  return isa == Isa::kBaseline;
#endif
}

Isa best_isa() {
  Isa best = Isa::kBaseline;
  for (Isa isa : {Isa::kAvx2, Isa::kAvx512}) {
    if (cpu_has(isa)) best = isa;
  }
  if (const char* cap = std::getenv("RAREKIT_CPU_ISA")) {
    for (Isa isa : {Isa::kBaseline, Isa::kAvx2, Isa::kAvx512}) {
      if (std::strcmp(cap, isa_name(isa)) == 0 && static_cast<int>(isa) < static_cast<int>(best)) best = isa;
    }
  }
  return best;
}

std::atomic<int>& active_slot() {
  static std::atomic<int> slot{static_cast<int>(best_isa())};
  return slot;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "baseline";
  }
}

bool isa_supported(Isa isa) { return cpu_has(isa); }

Isa active_isa() { return static_cast<Isa>(active_slot().load(std::memory_order_relaxed)); }

void set_active_isa(Isa isa) {
  if (!cpu_has(isa)) throw std::invalid_argument(std::string("this CPU cannot run the ") + isa_name(isa) + " kernels");
  active_slot().store(static_cast<int>(isa), std::memory_order_relaxed);
}

#if defined(RAREKIT_X86)
#define RAREKIT_PICK(Family) pick(Family##_baseline, Family##_avx2, Family##_avx512)
#else
#define RAREKIT_PICK(Family) Family##_baseline
#endif

const CountKernels& count_kernels() { return RAREKIT_PICK(CountKernels); }
const SamplingKernels& sampling_kernels() { return RAREKIT_PICK(SamplingKernels); }
const CrossEntropyKernels& cross_entropy_kernels() { return RAREKIT_PICK(CrossEntropyKernels); }

}  // namespace rarekit::cpu
