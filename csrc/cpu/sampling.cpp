// CPU implementations of the resampling index ops.
//  - class_buckets: a stable counting sort in two parallel passes over contiguous chunks: the per-ISA
//    histogram kernel counts each chunk, a prefix sum over (class, chunk) gives every chunk its
//    write cursors, and each chunk scatters its positions in order.
//  - draw_from_buckets: with replacement, output j of bucket b is order[offsets[b] + bounded(random_bits(j), size_b)];
//    without, bucket b keeps its draw_counts[b] positions of smallest (random_key(order[p]), p), in that
//    order, or all of them in bucket order when it is drawn in full (rarekit/sampling_math.h).
// The results depend on the seed only, not on the thread count. Indexing is 64-bit.
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <utility>
#include <vector>

#include "rarekit/count_math.h"
#include "rarekit/cpu_kernels.h"
#include "rarekit/cpu_histogram.h"
#include "rarekit/cpu_parallel.h"
#include "rarekit/sampling_math.h"
#include "rarekit/sampling_op.h"
#include "rarekit/torch_utils.h"

namespace rarekit {

void check_bucket_arguments(const at::Tensor& codes, int64_t num_classes) {
  TORCH_CHECK_VALUE(num_classes >= 0 && num_classes < std::numeric_limits<int64_t>::max(),
                    "rarekit.class_buckets: num_classes must be >= 0 and < 2^63 - 1, got ", num_classes);
  TORCH_CHECK_VALUE(codes.dim() == 1, "rarekit.class_buckets: codes must be 1-D, got shape ", codes.sizes());
  TORCH_CHECK_TYPE(at::isIntegralType(codes.scalar_type(), /*includeBool=*/false) && codes.scalar_type() != at::kUInt64,
                   "rarekit.class_buckets: codes must have an integer dtype (uint8, int8, int16, int32, int64, "
                   "uint16, uint32), got ", codes.scalar_type());
}

void check_draw_arguments(const at::Tensor& order, const at::Tensor& offsets, const at::Tensor& draw_counts,
                          const at::Tensor& out) {
  const auto check_index_tensor = [&](const at::Tensor& tensor, const char* name) {
    TORCH_CHECK_TYPE(tensor.scalar_type() == at::kLong, "rarekit.draw_from_buckets: ", name,
                     " must be a 1-D int64 tensor, got ", tensor.scalar_type());
    TORCH_CHECK_VALUE(tensor.dim() == 1, "rarekit.draw_from_buckets: ", name, " must be a 1-D int64 tensor, got shape ",
                      tensor.sizes());
    TORCH_CHECK_VALUE(tensor.device() == order.device(), "rarekit.draw_from_buckets: ", name,
                      " must be on the device of order (", order.device(), "), got ", tensor.device());
  };
  check_index_tensor(order, "order");
  check_index_tensor(offsets, "offsets");
  check_index_tensor(draw_counts, "draw_counts");
  check_index_tensor(out, "out");
  TORCH_CHECK_VALUE(out.is_contiguous(), "rarekit.draw_from_buckets: out must be contiguous");
  TORCH_CHECK_VALUE(offsets.numel() == draw_counts.numel() + 1, "rarekit.draw_from_buckets: offsets must have one "
                    "entry more than draw_counts (", draw_counts.numel(), " buckets), got ", offsets.numel());
}

std::vector<int64_t> checked_draw_ends(const int64_t* offsets, const int64_t* draw_counts, int64_t buckets,
                                       int64_t order_size, int64_t total, bool replacement) {
  TORCH_CHECK_VALUE(offsets[0] == 0, "rarekit.draw_from_buckets: offsets[0] must be 0, got ", offsets[0]);
  TORCH_CHECK_VALUE(offsets[buckets] <= order_size, "rarekit.draw_from_buckets: offsets[", buckets, "] = ",
                    offsets[buckets], " exceeds the length of order (", order_size, ")");
  std::vector<int64_t> ends(buckets);
  int64_t drawn = 0;
  for (int64_t b = 0; b < buckets; ++b) {
    TORCH_CHECK_VALUE(offsets[b + 1] >= offsets[b], "rarekit.draw_from_buckets: offsets must be non-decreasing, got "
                      "offsets[", b, "] = ", offsets[b], " > offsets[", b + 1, "] = ", offsets[b + 1]);
    const int64_t size = offsets[b + 1] - offsets[b];
    TORCH_CHECK_VALUE(draw_counts[b] >= 0, "rarekit.draw_from_buckets: draw_counts must be >= 0, got draw_counts[",
                      b, "] = ", draw_counts[b]);
    TORCH_CHECK_VALUE(replacement ? draw_counts[b] == 0 || size > 0 : draw_counts[b] <= size,
                      "rarekit.draw_from_buckets: draw_counts[", b, "] = ", draw_counts[b], " draws ",
                      replacement ? "with" : "without", " replacement from a bucket of ", size);
    TORCH_CHECK_VALUE(draw_counts[b] <= total - drawn, "rarekit.draw_from_buckets: draw_counts.sum() must equal the "
                      "number of outputs, ", total, ", but draw_counts[:", b + 1, "] already sums to more");
    drawn += draw_counts[b];
    ends[b] = drawn;
  }
  TORCH_CHECK_VALUE(drawn == total, "rarekit.draw_from_buckets: draw_counts.sum() = ", drawn,
                    " must equal the number of outputs, ", total);
  return ends;
}

namespace cpu {
namespace {

// Each chunk's int32 histogram slots count fewer ids than this.
constexpr int64_t kMaxChunk = int64_t{1} << 30;
// Outputs per parallel task of the draws with replacement.
constexpr int64_t kDrawGrain = int64_t{1} << 15;

std::tuple<at::Tensor, at::Tensor> class_buckets_cpu(const at::Tensor& codes, int64_t num_classes) {
  check_bucket_arguments(codes, num_classes);
  const HistogramFn histogram = count_kernels().histogram[id_type(codes.scalar_type(), "rarekit.class_buckets: codes")];
  const at::Tensor flat = codes.contiguous();
  const int64_t n = flat.numel();
  const int64_t chunks = std::max(histogram_threads(n, num_classes), (n + kMaxChunk - 1) / kMaxChunk);
  const auto chunk_start = [&](int64_t chunk) { return n * chunk / chunks; };
  const auto* base = static_cast<const char*>(flat.const_data_ptr());
  const int64_t item = flat.element_size();

  // pass 1: per-chunk counts; codes outside [0, num_classes) go to a last, spare bucket
  std::vector<int32_t> counts(chunks * num_classes, 0);
  std::vector<int64_t> spare(chunks, 0);
  parallel_tasks(chunks, chunks, [&](int64_t chunk, int64_t) {
    const int64_t lo = chunk_start(chunk), hi = chunk_start(chunk + 1);
    spare[chunk] = histogram(base + lo * item, hi - lo, num_classes, false, 0, counts.data() + chunk * num_classes);
  });

  // exclusive prefix sum over (bucket, chunk): bucket b of chunk c writes from cursors[c][b] on
  at::Tensor offsets = at::empty({num_classes + 1}, codes.options().dtype(at::kLong));
  int64_t* offsets_data = offsets.mutable_data_ptr<int64_t>();
  const int64_t width = num_classes + 1;
  std::vector<int64_t> cursors(chunks * width);
  int64_t running = 0;
  for (int64_t bucket = 0; bucket < width; ++bucket) {
    offsets_data[bucket] = running;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      cursors[chunk * width + bucket] = running;
      running += bucket < num_classes ? counts[chunk * num_classes + bucket] : spare[chunk];
    }
  }

  // pass 2: each chunk scatters its positions, in order, behind its cursors
  at::Tensor order = at::empty({n}, codes.options().dtype(at::kLong));
  advise_huge_pages(order);
  int64_t* order_data = order.mutable_data_ptr<int64_t>();
  RAREKIT_DISPATCH_ID_TYPES(flat.scalar_type(), "rarekit_class_buckets", [&] {
    const scalar_t* code = flat.const_data_ptr<scalar_t>();
    parallel_tasks(chunks, chunks, [&](int64_t chunk, int64_t) {
      int64_t* cursor = cursors.data() + chunk * width;
      for (int64_t i = chunk_start(chunk), end = chunk_start(chunk + 1); i < end; ++i) {
        const int64_t bucket = bin_of(code[i], num_classes, false, 0);
        order_data[cursor[bucket >= 0 ? bucket : num_classes]++] = i;
      }
    });
  });
  return {order, offsets};
}

void draw_with_replacement(const int64_t* order, const int64_t* offsets, const std::vector<int64_t>& ends,
                           uint64_t base, int64_t total, int64_t* out) {
  const auto buckets = static_cast<int64_t>(ends.size());
  const DrawRunFn draw_run = sampling_kernels().draw_run;
  parallel_range(0, total, kDrawGrain, sizeof(int64_t), [&](int64_t lo, int64_t hi) {
    for (int64_t b = bucket_of(ends.data(), buckets, lo), j = lo; j < hi; ++b) {
      const int64_t end = std::min(hi, ends[b]);
      if (end > j) draw_run(order + offsets[b], offsets[b + 1] - offsets[b], base, j, end, out);
      j = std::max(j, end);
    }
  });
}

void draw_without_replacement(const int64_t* order, const int64_t* offsets, const int64_t* draw_counts,
                              const std::vector<int64_t>& ends, uint64_t base, int64_t* out) {
  const auto buckets = static_cast<int64_t>(ends.size());
  const int64_t bytes_per_bucket = buckets == 0 ? 0 : sizeof(int64_t) * (offsets[buckets] / buckets + 1);
  parallel_range(0, buckets, 1, bytes_per_bucket, [&](int64_t first, int64_t last) {
    std::vector<std::pair<int64_t, int64_t>> keyed;  // (key, position in the bucket)
    for (int64_t b = first; b < last; ++b) {
      const int64_t* bucket = order + offsets[b];
      const int64_t size = offsets[b + 1] - offsets[b], k = draw_counts[b];
      int64_t* kept = out + ends[b] - k;
      if (k == size) {
        std::copy(bucket, bucket + size, kept);
        continue;
      }
      if (k == 0) continue;
      keyed.resize(size);
      for (int64_t p = 0; p < size; ++p) keyed[p] = {random_key(base, bucket[p]), p};
      std::nth_element(keyed.begin(), keyed.begin() + (k - 1), keyed.end());
      std::sort(keyed.begin(), keyed.begin() + k);
      for (int64_t q = 0; q < k; ++q) kept[q] = bucket[keyed[q].second];
    }
  });
}

// check: ignored, the CPU always checks (the arguments are on the host).
void draw_from_buckets_into_cpu(const at::Tensor& order, const at::Tensor& offsets, const at::Tensor& draw_counts,
                                int64_t seed, bool replacement, const at::Tensor& out, bool /*check*/) {
  check_draw_arguments(order, offsets, draw_counts, out);
  const at::Tensor order_c = order.contiguous(), offsets_c = offsets.contiguous(), counts_c = draw_counts.contiguous();
  const int64_t* offsets_data = offsets_c.const_data_ptr<int64_t>();
  const int64_t* counts_data = counts_c.const_data_ptr<int64_t>();
  const std::vector<int64_t> ends =
      checked_draw_ends(offsets_data, counts_data, counts_c.numel(), order_c.numel(), out.numel(), replacement);
  int64_t* out_data = out.mutable_data_ptr<int64_t>();
  if (replacement) {
    draw_with_replacement(order_c.const_data_ptr<int64_t>(), offsets_data, ends, stream_base(seed), out.numel(),
                          out_data);
  } else {
    draw_without_replacement(order_c.const_data_ptr<int64_t>(), offsets_data, counts_data, ends, stream_base(seed),
                             out_data);
  }
}

at::Tensor draw_from_buckets_cpu(const at::Tensor& order, const at::Tensor& offsets, const at::Tensor& draw_counts,
                                 int64_t total, int64_t seed, bool replacement, bool check) {
  TORCH_CHECK_VALUE(total >= 0, "rarekit.draw_from_buckets: total must be >= 0, got ", total);
  at::Tensor out = at::empty({total}, order.options());
  advise_huge_pages(out);  // a fresh output costs more in 4 KiB page faults than in draws
  draw_from_buckets_into_cpu(order, offsets, draw_counts, seed, replacement, out, check);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rarekit, CPU, m) {
  m.impl("class_buckets", &class_buckets_cpu);
  m.impl("draw_from_buckets", &draw_from_buckets_cpu);
  m.impl("draw_from_buckets_into", &draw_from_buckets_into_cpu);
}

}  // namespace cpu
}  // namespace rarekit
