// Soft-NMS on the CPU: videos shared out dynamically among torch's intra-op threads, eager O(top_k·N) per video,
// stopping at top_k. Per video, the candidates with a positive score (and index < num_valid) are packed in order;
// each step updates all their keys against the previous pick and takes the argmax in the same pass, kLanes
// candidates at a time in GCC vectors (AVX-512 / AVX2 / SSE2 clones). Keys and IoU: csrc/soft_nms.h.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <vector>

// GCC vectors of doubles only live inside the per-ISA clones of one pass, whose helpers are inlined.
#pragma GCC diagnostic ignored "-Wpsabi"
#include "../soft_nms.h"

namespace lofi {
namespace {

constexpr int64_t kLanes = 8;
typedef double vdouble __attribute__((vector_size(kLanes * sizeof(double)), aligned(sizeof(double))));
typedef int64_t vlong __attribute__((vector_size(kLanes * sizeof(int64_t)), aligned(sizeof(int64_t))));

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// One clone per instruction set, picked at load time; no FMA contraction, so every clone rounds alike.
#define LOFI_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default"), optimize("fp-contract=off")))
#else
#define LOFI_VECTOR_CLONES
#endif

// A video's candidates, packed in order and padded to a multiple of kLanes. Per block of kLanes candidates, the
// smallest start and largest end (NaN ignored): a pick outside that span leaves the block's keys unchanged.
struct Packed {
  std::vector<double> start, end;
  std::vector<double> key, block_start, block_end;
  std::vector<int64_t> index;  // original index of each packed candidate
  int64_t size = 0;
};

inline vdouble load(const double* p) { return *reinterpret_cast<const vdouble*>(p); }
inline vdouble broadcast(double x) { return vdouble{x, x, x, x, x, x, x, x}; }

struct Pick {
  double start, end, length, threshold;  // threshold: pick_threshold of the pick
};

// Applies `pick` (none on the first step) to every packed key and returns the position of the largest key (ties: the
// lowest position), and that key in `best_key` (-inf when every key is -inf or NaN). IoU 0 leaves a key unchanged
// (log keys, or a positive threshold), so blocks that the pick does not reach are only scanned.
template <int64_t method>
LOFI_VECTOR_CLONES int64_t update_and_argmax(Packed& v, const Pick* pick, double inv_sigma, double& best_key) {
  vdouble best = vdouble{} - std::numeric_limits<double>::infinity();
  vlong best_at = {}, at = {0, 1, 2, 3, 4, 5, 6, 7};
  double* keys = v.key.data();
  const bool skip_disjoint = log_keys(method) || (pick != nullptr && pick->threshold > 0);
  const double* starts = v.start.data();
  const double* ends = v.end.data();
  const double* block_start = v.block_start.data();
  const double* block_end = v.block_end.data();
  const double ps = pick ? pick->start : 0, pe = pick ? pick->end : 0, threshold = pick ? pick->threshold : 0;
  const vdouble pick_start = broadcast(ps), pick_end = broadcast(pe), pick_length = broadcast(pick ? pick->length : 0);
  for (int64_t j = 0; j < v.size; j += kLanes, at += kLanes) {
    vdouble key = *reinterpret_cast<const vdouble*>(keys + j);
    const int64_t block = j / kLanes;
    if (pick != nullptr && (!skip_disjoint || (block_end[block] > ps && block_start[block] < pe))) {
      const vdouble s = load(starts + j), e = load(ends + j);
      const vdouble iou = segment_iou(s, e, e - s, pick_start, pick_end, pick_length);
      key = decayed_key<method>(key, iou, inv_sigma, threshold);
      *reinterpret_cast<vdouble*>(keys + j) = key;
    }
    const vlong better = key > best;  // strict: the lowest position wins within a lane; NaN never wins
    best = better ? key : best;
    best_at = better ? at : best_at;
  }
  double b = best[0];
  int64_t where = best_at[0];
  for (int lane = 1; lane < kLanes; ++lane) {
    if (best[lane] > b || (best[lane] == b && best_at[lane] < where)) {
      b = best[lane];
      where = best_at[lane];
    }
  }
  best_key = b;
  return where;
}

template <typename scalar_t>
void pack(const scalar_t* seg, const scalar_t* score, int64_t n, int64_t method, Packed& v) {
  v.index.resize(n);
  int64_t m = 0;
  for (int64_t j = 0; j < n; ++j) {  // branch-free: NaN and non-positive scores are never picked
    v.index[m] = j;
    m += static_cast<double>(score[j]) > 0;
  }
  v.index.resize(m);
  v.size = (m + kLanes - 1) / kLanes * kLanes;
  v.start.assign(v.size, 0);
  v.end.assign(v.size, 0);
  v.key.assign(v.size, dead_key(method));
  v.block_start.assign(v.size / kLanes, std::numeric_limits<double>::infinity());
  v.block_end.assign(v.size / kLanes, -std::numeric_limits<double>::infinity());
  for (size_t i = 0; i < v.index.size(); ++i) {
    const int64_t j = v.index[i];
    v.start[i] = static_cast<double>(seg[2 * j]);
    v.end[i] = static_cast<double>(seg[2 * j + 1]);
    v.key[i] = initial_key(static_cast<double>(score[j]), method);
    double& lo = v.block_start[i / kLanes];
    double& hi = v.block_end[i / kLanes];
    lo = v.start[i] < lo ? v.start[i] : lo;
    hi = v.end[i] > hi ? v.end[i] : hi;
  }
}

template <typename scalar_t>
void soft_nms_video(const scalar_t* seg, const scalar_t* score, int64_t n, int64_t top_k, int64_t method,
                    double sigma, double iou_threshold, double high_threshold, int64_t* out_index,
                    scalar_t* out_score, Packed& v) {
  pack(seg, score, n, method, v);
  const auto update = method == kGaussian ? update_and_argmax<kGaussian>
                      : method == kLinear ? update_and_argmax<kLinear>
                      : method == kHard   ? update_and_argmax<kHard>
                                          : update_and_argmax<kBmn>;
  const double dead = dead_key(method);
  Pick pick;
  for (int64_t k = 0; k < top_k; ++k) {
    double best;
    const int64_t i = update(v, k ? &pick : nullptr, 1.0 / sigma, best);
    if (!(best > dead)) break;
    // A Gaussian score may underflow to 0, as the reference's product does: then nothing positive is left.
    const double value = current_score(best, static_cast<double>(score[v.index[i]]), method);
    if (!(value > 0)) break;
    out_index[k] = v.index[i];
    out_score[k] = static_cast<scalar_t>(value);
    const double length = v.end[i] - v.start[i];
    pick = {v.start[i], v.end[i], length, pick_threshold(method, iou_threshold, high_threshold, length)};
    v.key[i] = dead;
  }
}

std::tuple<at::Tensor, at::Tensor> batched_soft_nms_cpu(const at::Tensor& segments, const at::Tensor& scores,
                                                        const std::optional<at::Tensor>& num_valid, double sigma,
                                                        int64_t top_k, int64_t method, double iou_threshold,
                                                        double high_threshold) {
  check_soft_nms_args(segments, scores, num_valid, sigma, top_k, method, iou_threshold, high_threshold);
  const int64_t b = scores.size(0), n = scores.size(1);
  const auto seg = segments.contiguous();
  const auto sc = scores.contiguous();
  const auto valid = num_valid.has_value() ? num_valid->contiguous() : at::Tensor();
  auto out_index = at::full({b, top_k}, -1, scores.options().dtype(at::kLong));
  auto out_score = at::zeros({b, top_k}, scores.options());
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "batched_soft_nms_cpu", [&] {
    const scalar_t* seg_ptr = seg.data_ptr<scalar_t>();
    const scalar_t* score_ptr = sc.data_ptr<scalar_t>();
    const int64_t* valid_ptr = valid.defined() ? valid.data_ptr<int64_t>() : nullptr;
    int64_t* index_ptr = out_index.data_ptr<int64_t>();
    scalar_t* out_ptr = out_score.data_ptr<scalar_t>();
    // One task per thread, each taking the next video until none is left: a thread that the OS holds back (a shared
    // machine) then does fewer videos instead of delaying the whole batch.
    std::atomic<int64_t> next{0};
    at::parallel_for(0, std::min<int64_t>(b, at::get_num_threads()), 1, [&](int64_t, int64_t) {
      Packed packed;
      for (int64_t v = next++; v < b; v = next++) {
        const int64_t count = valid_ptr ? std::clamp<int64_t>(valid_ptr[v], 0, n) : n;
        soft_nms_video(seg_ptr + v * n * 2, score_ptr + v * n, count, top_k, method, sigma, iou_threshold,
                       high_threshold, index_ptr + v * top_k, out_ptr + v * top_k, packed);
      }
    });
  });
  return {out_index, out_score};
}

}  // namespace

TORCH_LIBRARY_IMPL(lofi, CPU, m) { m.impl("batched_soft_nms", &batched_soft_nms_cpu); }

}  // namespace lofi
