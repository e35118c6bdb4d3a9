// Work sharing of the CPU operators: the calling thread and helpers take tasks from a shared counter,
// and the caller never waits for a thread that has not started.
//
// at::parallel_for (an OpenMP parallel region in torch's builds) ends in a barrier that waits for
// every thread of the team, so with more runnable threads than cores a helper that the scheduler has
// not run yet holds the caller for a whole time slice, and GOMP's spin-wait takes the core the helper
// needs. Measured on a 2-core machine with 3 busy processes: rarekit.count of 1e6 ids took 72 ms on
// 2 threads against 0.7 ms on 1. Here the helpers are posted to torch's inter-op pool (threads that
// sleep on a condition variable, no spinning) and the caller works through the tasks itself: it
// waits only for tasks a helper has claimed and not finished, never for a helper to arrive. A helper
// that starts after every task was claimed returns at once without touching the caller's state.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <memory>
#include <mutex>

namespace rarekit::cpu {

// Inputs smaller than this many bytes of work run on the calling thread: posting a helper and
// waking it costs ~10-50 us on an idle core and a time slice on a busy one.
constexpr int64_t kParallelMinBytes = int64_t{1} << 21;

namespace detail {

struct TaskState {
  std::atomic<int64_t> next{0}, done{0};
  int64_t tasks = 0;
  std::mutex error_mutex;
  std::exception_ptr error;
};

// Claims and runs tasks until none is left; the first error is kept for the caller.
template <typename Fn>
void run_tasks(TaskState& state, const Fn& fn, int64_t worker) {
  for (int64_t task; (task = state.next.fetch_add(1, std::memory_order_relaxed)) < state.tasks;) {
    try {
      fn(task, worker);
    } catch (...) {
      std::lock_guard<std::mutex> lock(state.error_mutex);
      if (!state.error) state.error = std::current_exception();
    }
    if (state.done.fetch_add(1, std::memory_order_acq_rel) + 1 == state.tasks) state.done.notify_all();
  }
}

}  // namespace detail

// How many threads may share the work: at::get_num_threads(), 1 inside a parallel region.
inline int64_t available_threads() {
  return at::in_parallel_region() ? 1 : static_cast<int64_t>(at::get_num_threads());
}

// Runs fn(task, worker) for every task in [0, tasks) on up to `workers` threads; worker < workers may
// index per-worker state (worker 0 is the calling thread; a worker index is used by one thread at a
// time). A thread that runs slower (another process on its core, an efficiency core) does fewer
// tasks instead of holding up the others. fn must not capture anything it frees: helpers may still
// read the counter after the call returns, but never call fn then.
template <typename Fn>
void parallel_tasks(int64_t tasks, int64_t workers, const Fn& fn) {
  workers = std::min({workers, tasks, available_threads()});
  if (workers <= 1) {
    for (int64_t task = 0; task < tasks; ++task) fn(task, 0);
    return;
  }
  auto state = std::make_shared<detail::TaskState>();
  state->tasks = tasks;
  for (int64_t worker = 1; worker < workers; ++worker) {
    // fn is only called for a claimed task, and the caller stays until every claimed task is done
    at::launch([state, fn_ptr = &fn, worker] { detail::run_tasks(*state, *fn_ptr, worker); });
  }
  detail::run_tasks(*state, fn, 0);
  for (int64_t done; (done = state->done.load(std::memory_order_acquire)) < tasks;) state->done.wait(done);
  if (state->error) std::rethrow_exception(state->error);
}

// Runs fn(lo, hi) over [begin, end) in contiguous chunks of at least `grain` items, on the calling
// thread alone when the range is small (items * bytes_per_item < kParallelMinBytes) or makes one
// chunk. Up to kChunksPerThread chunks per thread: a late or slow thread takes fewer of them.
template <typename Fn>
void parallel_range(int64_t begin, int64_t end, int64_t grain, int64_t bytes_per_item, const Fn& fn) {
  constexpr int64_t kChunksPerThread = 4;
  const int64_t items = end - begin;
  if (items <= 0) return;
  const int64_t threads = available_threads();
  const bool small = items * std::max<int64_t>(bytes_per_item, 1) < kParallelMinBytes;
  const int64_t chunks = small || threads <= 1 ? 1
                                               : std::min(threads * kChunksPerThread,
                                                          std::max<int64_t>(1, items / std::max<int64_t>(grain, 1)));
  if (chunks == 1) {
    fn(begin, end);
    return;
  }
  parallel_tasks(chunks, threads, [&](int64_t chunk, int64_t) {
    fn(begin + items * chunk / chunks, begin + items * (chunk + 1) / chunks);
  });
}

}  // namespace rarekit::cpu
