// Soft-NMS on the CPU: one video per task (at::parallel_for over the batch), eager O(top_k·N) per video, stopping
// at top_k, with the per-step pass over the candidates written in 8-wide vectors (AVX-512 / AVX2 / SSE2 clones).
//
// Per video, the candidates with a positive score (and index < num_valid) are packed in order into double arrays.
// Each step updates every candidate against the previous pick and takes the argmax (ties: lowest index) in the same
// pass. Gaussian scores are kept in the log domain: key = log(score) - (sum of IoU²)/sigma, so a step needs no exp;
// the emitted score is score·exp(-(sum of IoU²)/sigma), which equals the reference's product of per-pick weights up to
// float64 rounding. Linear and hard scores are kept as products, exactly as in the reference.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

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

// A video's candidates, packed and padded to a multiple of kLanes (padding never wins: key -inf or 0).
struct Packed {
  std::vector<double> start, end, length, score, key, decay;  // decay: sum of IoU² (gaussian), unused otherwise
  std::vector<int64_t> index;                                 // original index of each packed candidate
  int64_t size = 0;
};

struct Pick {
  double start, end, length;
};

// Updates every packed candidate against `pick` (none on the first step) and returns the argmax of the keys; `best`
// is -inf (gaussian) or 0 (linear, hard) when no candidate can be picked.
template <int64_t method>
LOFI_VECTOR_CLONES int64_t update_and_argmax(Packed& v, const Pick* pick, double inv_sigma, double iou_threshold,
                                             double& best_key) {
  const vdouble zero = {}, one = zero + 1.0;
  vdouble best = zero - std::numeric_limits<double>::infinity();
  vlong best_at = {}, at = {0, 1, 2, 3, 4, 5, 6, 7};
  const double* start = v.start.data();
  const double* end = v.end.data();
  const double* length = v.length.data();
  const double* score = v.score.data();
  double* key = v.key.data();
  double* decay = v.decay.data();
  for (int64_t j = 0; j < v.size; j += kLanes, at += kLanes) {
    vdouble k = *reinterpret_cast<const vdouble*>(key + j);
    if (pick != nullptr) {  // segment_iou() and soft_nms_weight() of soft_nms.h, on kLanes candidates at once
      const vdouble s = *reinterpret_cast<const vdouble*>(start + j);
      const vdouble e = *reinterpret_cast<const vdouble*>(end + j);
      const vdouble l = *reinterpret_cast<const vdouble*>(length + j);
      vdouble inter = (e < pick->end ? e : zero + pick->end) - (s > pick->start ? s : zero + pick->start);
      inter = inter > zero ? inter : zero;
      const vdouble uni = (l + pick->length) - inter;
      const vlong positive = uni > zero;
      const vdouble ratio = inter / (positive ? uni : one);
      const vdouble iou = positive ? ratio : zero;
      if constexpr (method == kGaussian) {
        const vdouble d = *reinterpret_cast<const vdouble*>(decay + j) + iou * iou;
        *reinterpret_cast<vdouble*>(decay + j) = d;
        k = *reinterpret_cast<const vdouble*>(score + j) - d * inv_sigma;  // score holds log(score) here
      } else {
        const vdouble w = method == kLinear ? one - iou : zero;
        k = iou < iou_threshold ? k : k * w;
      }
      *reinterpret_cast<vdouble*>(key + j) = k;
    }
    const vlong better = k > best;  // strict: the first (lowest) index wins within a lane; NaN never wins
    best = better ? k : best;
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
  v.index.clear();
  for (int64_t j = 0; j < n; ++j) {
    if (static_cast<double>(score[j]) > 0) v.index.push_back(j);  // NaN and non-positive scores are never picked
  }
  v.size = (static_cast<int64_t>(v.index.size()) + kLanes - 1) / kLanes * kLanes;
  const double dead = method == kGaussian ? -std::numeric_limits<double>::infinity() : 0.0;
  for (auto* a : {&v.start, &v.end, &v.length, &v.decay}) a->assign(v.size, 0.0);
  v.score.assign(v.size, dead);
  v.key.assign(v.size, dead);
  for (size_t i = 0; i < v.index.size(); ++i) {
    const int64_t j = v.index[i];
    v.start[i] = static_cast<double>(seg[2 * j]);
    v.end[i] = static_cast<double>(seg[2 * j + 1]);
    v.length[i] = v.end[i] - v.start[i];
    const double s = static_cast<double>(score[j]);
    v.score[i] = method == kGaussian ? std::log(s) : s;
    v.key[i] = v.score[i];
  }
}

template <typename scalar_t>
void soft_nms_video(const scalar_t* seg, const scalar_t* score, int64_t n, int64_t top_k, const SoftNmsParams& p,
                    int64_t* out_index, scalar_t* out_score, Packed& v) {
  pack(seg, score, n, p.method, v);
  const auto update = p.method == kGaussian ? update_and_argmax<kGaussian>
                      : p.method == kLinear ? update_and_argmax<kLinear>
                                            : update_and_argmax<kHard>;
  const double dead = p.method == kGaussian ? -std::numeric_limits<double>::infinity() : 0.0;
  Pick pick;
  for (int64_t k = 0; k < top_k; ++k) {
    double best;
    const int64_t i = update(v, k ? &pick : nullptr, 1.0 / p.sigma, p.iou_threshold, best);
    if (!(best > dead)) break;
    // Gaussian: score·exp(-sum/sigma) may underflow to 0, as the reference's product does; then nothing is left.
    const double value = p.method == kGaussian ? score[v.index[i]] * std::exp(-v.decay[i] / p.sigma) : best;
    if (!(value > 0)) break;
    out_index[k] = v.index[i];
    out_score[k] = static_cast<scalar_t>(value);
    pick = {v.start[i], v.end[i], v.length[i]};
    v.key[i] = v.score[i] = dead;
  }
}

std::tuple<at::Tensor, at::Tensor> batched_soft_nms_cpu(const at::Tensor& segments, const at::Tensor& scores,
                                                        const std::optional<at::Tensor>& num_valid, double sigma,
                                                        int64_t top_k, int64_t method, double iou_threshold) {
  TORCH_CHECK(segments.dim() == 3 && segments.size(2) == 2, "segments must be (B, N, 2)");
  TORCH_CHECK(scores.dim() == 2 && scores.sizes() == segments.sizes().slice(0, 2), "scores must be (B, N)");
  TORCH_CHECK(scores.scalar_type() == segments.scalar_type(), "segments and scores must have one dtype");
  TORCH_CHECK(top_k >= 1 && sigma > 0 && method >= kGaussian && method <= kHard, "bad top_k, sigma or method");
  const int64_t b = scores.size(0), n = scores.size(1);
  if (num_valid.has_value()) {
    TORCH_CHECK(num_valid->dim() == 1 && num_valid->size(0) == b && num_valid->scalar_type() == at::kLong,
                "num_valid must be int64 (B,)");
  }
  const auto seg = segments.contiguous();
  const auto sc = scores.contiguous();
  const auto valid = num_valid.has_value() ? num_valid->contiguous() : at::Tensor();
  auto out_index = at::full({b, top_k}, -1, scores.options().dtype(at::kLong));
  auto out_score = at::zeros({b, top_k}, scores.options());
  const SoftNmsParams params{method, sigma, iou_threshold};
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "batched_soft_nms_cpu", [&] {
    const scalar_t* seg_ptr = seg.data_ptr<scalar_t>();
    const scalar_t* score_ptr = sc.data_ptr<scalar_t>();
    const int64_t* valid_ptr = valid.defined() ? valid.data_ptr<int64_t>() : nullptr;
    int64_t* index_ptr = out_index.data_ptr<int64_t>();
    scalar_t* out_ptr = out_score.data_ptr<scalar_t>();
    at::parallel_for(0, b, 1, [&](int64_t begin, int64_t end) {
      Packed packed;
      for (int64_t v = begin; v < end; ++v) {
        const int64_t count = valid_ptr ? std::clamp<int64_t>(valid_ptr[v], 0, n) : n;
        soft_nms_video(seg_ptr + v * n * 2, score_ptr + v * n, count, top_k, params, index_ptr + v * top_k,
                       out_ptr + v * top_k, packed);
      }
    });
  });
  return {out_index, out_score};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lofi, m) {
  m.def(
      "batched_soft_nms(Tensor segments, Tensor scores, Tensor? num_valid, float sigma, int top_k, int method, "
      "float iou_threshold) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(lofi, CPU, m) { m.impl("batched_soft_nms", &batched_soft_nms_cpu); }

}  // namespace lofi
