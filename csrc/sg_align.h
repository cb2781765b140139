// SGAlign (G-TAD's Align1D) sampling plan, shared by the CPU (.cpp) and CUDA (.cu) kernels.
//
// Row (roi r, bin p) of the plan averages the linear interpolation of the input at the bin's sample points,
// exactly as torchvision's roi_align (aligned=False, sampling_ratio=0) on an H=1 image and G-TAD's Align1D:
//   len = max(end - start, 1); bin = len / bins; g = ceil(len / bins)
//   pos_i = start + p*bin + (i + 0.5)*bin / g,  i < g
//   a sample outside [-1, T] adds nothing; pos < 0 is clamped to 0; lo = floor(pos); lo >= T-1 reads x[T-1] only.
// Positions use acc_t (float for float/half/bfloat16 inputs, double for double), as torchvision does.
// Samples are visited in increasing position, so the snippets a row touches form one contiguous run.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define LOFI_HD __host__ __device__ inline
#else
#define LOFI_HD inline
#endif

namespace lofi {
namespace sgalign {

// Windows longer than this many snippets per bin are treated as invalid (zeros): their sample indices would not be
// exactly representable, and no real ROI comes near it.
constexpr double kMaxGrid = 1099511627776.0;  // 2^40

LOFI_HD bool finite(double v) { return v - v == 0.0; }  // false for NaN and +-inf

// Calls visit(lo, hi, w_lo, w_hi) for every in-range sample of bin p of the ROI [start, end] with `bins` bins over
// `length` snippets; the weights already include the 1/g average. Checks a bounded number of candidate
// samples whatever the ROI (about (T+2)*max(2, bins)+8), and none for a non-finite ROI.
template <typename acc_t, typename Visit>
LOFI_HD void for_each_sample(acc_t start, acc_t end, int64_t bins, int64_t p, int64_t length, Visit visit) {
  acc_t roi_len = end - start;
  if (!(roi_len >= acc_t(1))) roi_len = acc_t(1);  // max(len, 1); also catches NaN (then start is NaN too)
  const acc_t bin = roi_len / static_cast<acc_t>(bins);
  const acc_t grid = ceil(roi_len / static_cast<acc_t>(bins));
  if (!(finite(static_cast<double>(start)) && static_cast<double>(grid) <= kMaxGrid)) return;
  const acc_t base = start + static_cast<acc_t>(p) * bin;
  // Closed-form bounds on the sample indices inside [-1, T] (then every sample is still checked exactly).
  const double step = static_cast<double>(bin) / static_cast<double>(grid);
  const double g = static_cast<double>(grid);
  double first = floor((-1.0 - static_cast<double>(base)) / step - 0.5) - 2.0;  // margins: acc_t rounding
  double last = ceil((static_cast<double>(length) - static_cast<double>(base)) / step - 0.5) + 2.0;
  first = first < 0.0 ? 0.0 : (first > g - 1.0 ? g - 1.0 : first);
  last = last < 0.0 ? 0.0 : (last > g - 1.0 ? g - 1.0 : last);
  const double cap = (static_cast<double>(length) + 2.0) / step + 6.0;
  if (last - first > cap) last = first + cap;
  const int64_t i0 = static_cast<int64_t>(first), i1 = static_cast<int64_t>(last);
  const acc_t inv_grid = acc_t(1) / grid;
  for (int64_t i = i0; i <= i1; ++i) {
    acc_t pos = base + (static_cast<acc_t>(i) + acc_t(0.5)) * bin / grid;
    if (!(pos >= acc_t(-1) && pos <= static_cast<acc_t>(length))) continue;
    if (pos <= acc_t(0)) pos = acc_t(0);
    int64_t lo = static_cast<int64_t>(pos);
    int64_t hi;
    if (lo >= length - 1) {
      lo = hi = length - 1;
      pos = static_cast<acc_t>(lo);
    } else {
      hi = lo + 1;
    }
    const acc_t frac = pos - static_cast<acc_t>(lo);
    visit(lo, hi, (acc_t(1) - frac) * inv_grid, frac * inv_grid);
  }
}

// Batch index of a ROI, or -1 when it is not finite or outside [0, num_batches).
template <typename acc_t>
LOFI_HD int64_t roi_batch(acc_t b, acc_t start, acc_t end, int64_t num_batches) {
  if (!(b >= acc_t(0) && b < static_cast<acc_t>(num_batches))) return -1;
  if (!(finite(static_cast<double>(start)) && finite(static_cast<double>(end)))) return -1;
  return static_cast<int64_t>(b);
}

// The bin group of plan bin p: bins are concatenated groups (e.g. 32 inner + 4 context); returns the group's bin
// count and sets `local` to p's index inside it.
LOFI_HD int64_t group_of(const int64_t* groups, int64_t num_groups, int64_t p, int64_t* local) {
  for (int64_t k = 0; k < num_groups; ++k) {
    if (p < groups[k]) {
      *local = p;
      return groups[k];
    }
    p -= groups[k];
  }
  *local = 0;
  return 1;  // unreachable for p < sum(groups)
}

// Number of snippets that row (bin p of a ROI) touches: last hi - first lo + 1, or 0. Sets *first to the first lo.
template <typename acc_t>
LOFI_HD int64_t row_extent(acc_t start, acc_t end, int64_t bins, int64_t p, int64_t length, int64_t* first) {
  int64_t lo_min = -1, hi_max = -1;
  for_each_sample<acc_t>(start, end, bins, p, length, [&](int64_t lo, int64_t hi, acc_t, acc_t) {
    if (lo_min < 0) lo_min = lo;
    hi_max = hi;
  });
  *first = lo_min < 0 ? 0 : lo_min;
  return lo_min < 0 ? 0 : hi_max - lo_min + 1;
}

// Adds the row's weights into w[0 .. extent), w[k] belonging to snippet first + k (w must be zeroed).
template <typename acc_t>
LOFI_HD void row_weights(acc_t start, acc_t end, int64_t bins, int64_t p, int64_t length, int64_t first, acc_t* w) {
  for_each_sample<acc_t>(start, end, bins, p, length, [&](int64_t lo, int64_t hi, acc_t w_lo, acc_t w_hi) {
    w[lo - first] += w_lo;
    w[hi - first] += w_hi;
  });
}

// Host-side shape/dtype checks of a plan passed to sg_align_gather / sg_align_scatter (internal ops).
inline void check_plan(const at::Tensor& batch, const at::Tensor& row_ptr, const at::Tensor& start,
                       const at::Tensor& weight, int64_t bins, at::ScalarType input_type) {
  TORCH_CHECK(bins >= 1, "sg_align: bins must be >= 1");
  TORCH_CHECK(batch.dim() == 1 && batch.scalar_type() == at::kLong, "sg_align: batch must be (R,) int64");
  TORCH_CHECK(row_ptr.numel() == batch.numel() * bins + 1 && row_ptr.scalar_type() == at::kLong,
              "sg_align: row_ptr must be (R*P+1,) int64");
  TORCH_CHECK(start.numel() == batch.numel() * bins && start.scalar_type() == at::kLong,
              "sg_align: start must be (R*P,) int64");
  const auto acc = input_type == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(weight.scalar_type() == acc, "sg_align: plan weights must be ", acc, " for ", input_type, " input");
}

}  // namespace sgalign
}  // namespace lofi
