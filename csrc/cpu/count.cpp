// CPU implementation of rarekit::count: per-thread private histograms, merged.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "rarekit/count_math.h"
#include "rarekit/cpu_histogram.h"
#include "rarekit/cpu_kernels.h"
#include "rarekit/cpu_parallel.h"
#include "rarekit/torch_utils.h"

namespace rarekit {

void check_count_arguments(const at::Tensor& ids, int64_t num_bins, const std::optional<at::Tensor>& weights) {
  TORCH_CHECK_VALUE(num_bins >= 0, "rarekit.count: num_bins must be >= 0, got ", num_bins);
  const at::ScalarType type = ids.scalar_type();
  TORCH_CHECK_TYPE(at::isIntegralType(type, /*includeBool=*/false) && type != at::kUInt64,
                   "rarekit.count: ids must have an integer dtype (uint8, int8, int16, int32, int64, uint16, "
                   "uint32), got ", type);
  if (!weights) return;
  refuse_forward_ad(*weights, "weights", "rarekit.count");
  const at::ScalarType weight_type = weights->scalar_type();
  TORCH_CHECK_TYPE(weight_type == at::kFloat || weight_type == at::kDouble || weight_type == at::kHalf ||
                       weight_type == at::kBFloat16,
                   "rarekit.count: weights must be float32, float64, float16 or bfloat16, got ", weight_type);
  TORCH_CHECK_VALUE(weights->sizes() == ids.sizes(), "rarekit.count: weights must have the shape of ids (one value "
                    "per id): ids has shape ", ids.sizes(), ", weights ", weights->sizes());
  TORCH_CHECK_VALUE(weights->device() == ids.device(), "rarekit.count: weights are on ", weights->device(),
                    " but ids are on ", ids.device());
}

void raise_first_out_of_range(const at::Tensor& ids, int64_t num_bins, std::optional<int64_t> ignore_index) {
  const at::Tensor values = ids.reshape(-1).to(at::kLong);
  at::Tensor bad = values.lt(0).logical_or(values.ge(num_bins));
  if (ignore_index) bad.logical_and_(values.ne(*ignore_index));
  const at::Tensor where = bad.nonzero();
  TORCH_CHECK(where.numel() > 0, "rarekit.count: internal error, no out-of-range id found");
  const int64_t position = where[0][0].item<int64_t>();
  TORCH_CHECK_VALUE(false, "rarekit.count: ids must lie in [0, num_bins=", num_bins, ")",
                    ignore_index ? " or equal ignore_index" : "", "; found ids[", position,
                    "] = ", values[position].item<int64_t>(), " (pass check=False to drop such ids)");
}

namespace cpu {
namespace {

// Each int32 private slot sees fewer than this many ids between merges.
constexpr int64_t kMergeEvery = int64_t{1} << 30;
// Ids per task of parallel_tasks.
constexpr int64_t kIdsPerTask = int64_t{1} << 20;

// Returns the number of out-of-range ids. No torch op runs in parallel here (their OpenMP regions wait
// for every thread, see rarekit/cpu_parallel.h): each worker zeroes its private histogram at its first
// task, and only the histograms of workers that ran are merged.
int64_t histogram_into(const at::Tensor& flat, int64_t num_bins, std::optional<int64_t> ignore_index,
                       int64_t* counts) {
  const HistogramFn histogram = count_kernels().histogram[id_type(flat.scalar_type(), "rarekit.count: ids")];
  const int64_t n = flat.numel();
  const int64_t threads = std::min(histogram_threads(n, num_bins), (n + kIdsPerTask - 1) / kIdsPerTask);
  const auto* base = static_cast<const char*>(flat.const_data_ptr());
  const int64_t item = flat.element_size();
  const auto hist = std::make_unique_for_overwrite<int32_t[]>(threads * num_bins);
  std::vector<char> used(threads, 0);
  std::vector<int64_t> out_of_range(threads, 0);
  std::fill(counts, counts + num_bins, 0);
  for (int64_t start = 0; start < n; start += kMergeEvery) {
    const int64_t len = std::min(kMergeEvery, n - start);
    std::fill(used.begin(), used.end(), 0);
    parallel_tasks((len + kIdsPerTask - 1) / kIdsPerTask, threads, [&](int64_t task, int64_t worker) {
      int32_t* own = hist.get() + worker * num_bins;
      if (!used[worker]) std::fill(own, own + num_bins, 0), used[worker] = 1;
      const int64_t lo = start + task * kIdsPerTask, hi = std::min(start + len, lo + kIdsPerTask);
      out_of_range[worker] += histogram(base + lo * item, hi - lo, num_bins, ignore_index.has_value(),
                                        ignore_index.value_or(0), own);
    });
    for (int64_t worker = 0; worker < threads; ++worker) {
      if (!used[worker]) continue;
      const int32_t* own = hist.get() + worker * num_bins;
      for (int64_t bin = 0; bin < num_bins; ++bin) counts[bin] += own[bin];
    }
  }
  int64_t total = 0;
  for (int64_t value : out_of_range) total += value;
  return total;
}

// Weighted sums, deterministic for any thread count: each thread owns a range of bins and adds
// that range's weights in element order.
template <typename Id, typename Weight>
int64_t weighted_sums(const Id* ids, const Weight* weights, int64_t n, int64_t num_bins,
                      std::optional<int64_t> ignore_index, double* sums) {
  // every task reads all the ids: worth it only where the ids are many
  const int64_t tasks = n * static_cast<int64_t>(sizeof(Id) + sizeof(Weight)) < kParallelMinBytes
                            ? 1 : std::min<int64_t>(available_threads(), num_bins);
  int64_t out_of_range = 0;
  parallel_tasks(tasks, tasks, [&](int64_t task, int64_t) {
    const int64_t lo = num_bins * task / tasks, hi = num_bins * (task + 1) / tasks;
    int64_t dropped = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t bin = bin_of(ids[i], num_bins, ignore_index.has_value(), ignore_index.value_or(0));
      if (bin >= lo && bin < hi) sums[bin] += static_cast<double>(weights[i]);
      dropped += bin == kOutOfRangeId;
    }
    if (task == 0) out_of_range = dropped;
  });
  return out_of_range;
}

at::Tensor count_cpu(const at::Tensor& ids, int64_t num_bins, std::optional<int64_t> ignore_index,
                     const std::optional<at::Tensor>& weights, bool check) {
  check_count_arguments(ids, num_bins, weights);
  TORCH_CHECK_VALUE(ids.is_cpu(), "rarekit.count: ids must be on the CPU here, got ", ids.device());
  const at::Tensor flat = ids.contiguous().view(-1);
  at::Tensor result;
  int64_t out_of_range = 0;
  if (num_bins == 0) {  // every id that is not ignored is out of range
    result = at::zeros({0}, ids.options().dtype(weights ? result_dtype(*weights) : at::kLong));
    out_of_range = ignore_index ? flat.ne(*ignore_index).sum().item<int64_t>() : flat.numel();
  } else if (!weights) {
    result = at::empty({num_bins}, ids.options().dtype(at::kLong));
    out_of_range = histogram_into(flat, num_bins, ignore_index, result.mutable_data_ptr<int64_t>());
  } else {
    const at::Tensor flat_weights = weights->contiguous().view(-1);
    at::Tensor sums = at::zeros({num_bins}, ids.options().dtype(at::kDouble));
    RAREKIT_DISPATCH_ID_TYPES(flat.scalar_type(), "rarekit_count_ids", [&] {
      using Id = scalar_t;
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, flat_weights.scalar_type(), "rarekit_count_weights", [&] {
        out_of_range = weighted_sums(flat.const_data_ptr<Id>(), flat_weights.const_data_ptr<scalar_t>(), flat.numel(),
                                     num_bins, ignore_index, sums.mutable_data_ptr<double>());
      });
    });
    result = sums.to(result_dtype(flat_weights));
  }
  if (check && out_of_range > 0) raise_first_out_of_range(flat, num_bins, ignore_index);
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(rarekit, CPU, m) { m.impl("count", &count_cpu); }

}  // namespace cpu
}  // namespace rarekit
