// Soft-NMS arithmetic shared by the CPU (csrc/cpu/soft_nms.cpp) and CUDA (csrc/cuda/soft_nms.cu) kernels.
// Semantics: lofi/ops/soft_nms.py. Everything is in double. Each candidate carries one number, its key:
//   gaussian, bmn: key = log(current score): log(score) lowered by IoU²/sigma per pick (bmn: only where the IoU
//             exceeds the pick's threshold), so a step needs no exp; the current score score·exp(key - log(score))
//             equals the reference's product of weights exp(-IoU²/sigma) up to float64 rounding;
//   linear, hard: key = the current score, multiplied by each pick's weight exactly as the reference does.
// The pick is the argmax of the keys (ties: lowest index). T is double, or (CPU) a GCC vector of doubles.
#pragma once
#include <torch/types.h>

#include <cmath>
#include <cstdint>
#include <optional>

#ifdef __CUDACC__
#define LOFI_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LOFI_HOST_DEVICE inline
#endif

// A product that the compiler may not fuse with a following add into an FMA (nvcc fuses by default; the CPU kernel
// is built without contraction), so that CPU and CUDA keys round alike.
#ifdef __CUDA_ARCH__
#define LOFI_UNFUSED_MUL(a, b) __dmul_rn(a, b)
#else
#define LOFI_UNFUSED_MUL(a, b) ((a) * (b))
#endif

namespace lofi {

enum SoftNmsMethod : int64_t { kGaussian = 0, kLinear = 1, kHard = 2, kBmn = 3 };

// Methods whose key is the log of the current score.
LOFI_HOST_DEVICE bool log_keys(int64_t method) { return method == kGaussian || method == kBmn; }

// Exact 1-D IoU of segments [s, e] (l = e - s) with one pick [ps, pe] (pl = pe - ps); a union <= 0 gives 0, and so
// does any NaN coordinate (its length is NaN). Same operations, in the same order, as the pure-PyTorch reference.
template <typename T>
LOFI_HOST_DEVICE T segment_iou(T s, T e, T l, T ps, T pe, T pl) {
  const T zero = T{};
  T inter = (e < pe ? e : pe) - (s > ps ? s : ps);
  inter = inter > zero ? inter : zero;
  const T uni = (l + pl) - inter;
  const T ratio = inter / (uni > zero ? uni : zero + 1.0);
  return uni > zero ? ratio : zero;
}

// The key of a positive score before any pick.
LOFI_HOST_DEVICE double initial_key(double score, int64_t method) { return log_keys(method) ? log(score) : score; }

// The key of a candidate that can never be picked (picked already, never positive): below every positive key.
LOFI_HOST_DEVICE double dead_key(int64_t method) { return log_keys(method) ? -INFINITY : 0.0; }

// The IoU threshold of a pick of width `pick_length`: bmn's low + (high - low)·width, the others' iou_threshold.
LOFI_HOST_DEVICE double pick_threshold(int64_t method, double iou_threshold, double high_threshold,
                                       double pick_length) {
  return method == kBmn ? iou_threshold + LOFI_UNFUSED_MUL(high_threshold - iou_threshold, pick_length)
                        : iou_threshold;
}

// A candidate's key after a pick that overlaps it by `iou`; `threshold` is the pick's (pick_threshold).
template <int64_t method, typename T>
LOFI_HOST_DEVICE T decayed_key(T key, T iou, double inv_sigma, double threshold) {
  if constexpr (method == kGaussian) {
    return key - LOFI_UNFUSED_MUL(LOFI_UNFUSED_MUL(iou, iou), inv_sigma);
  } else if constexpr (method == kBmn) {
    return iou > threshold ? key - LOFI_UNFUSED_MUL(LOFI_UNFUSED_MUL(iou, iou), inv_sigma) : key;
  } else {
    const T weight = method == kLinear ? T(1.0 - iou) : T{};
    return iou < threshold ? key : key * weight;
  }
}

// The current score of a candidate with original `score` and `key`.
LOFI_HOST_DEVICE double current_score(double key, double score, int64_t method) {
  if (!log_keys(method) || key == INFINITY) return key;  // an infinite score stays infinite, as in the reference
  return score * exp(key - log(score));
}

// Checks the arguments of lofi::batched_soft_nms on any device (lofi/ops/soft_nms.py validates them first, with
// messages that name the argument; these guard direct torch.ops calls).
inline void check_soft_nms_args(const at::Tensor& segments, const at::Tensor& scores,
                                const std::optional<at::Tensor>& num_valid, double sigma, int64_t top_k,
                                int64_t method, double iou_threshold, double high_threshold) {
  TORCH_CHECK(segments.dim() == 3 && segments.size(2) == 2, "segments must be (B, N, 2)");
  TORCH_CHECK(scores.dim() == 2 && scores.sizes() == segments.sizes().slice(0, 2), "scores must be (B, N)");
  TORCH_CHECK(scores.scalar_type() == segments.scalar_type(), "segments and scores must have one dtype");
  TORCH_CHECK(scores.device() == segments.device(), "segments and scores must be on one device");
  TORCH_CHECK(top_k >= 1 && method >= kGaussian && method <= kBmn, "bad top_k or method");
  TORCH_CHECK(std::isfinite(iou_threshold) && std::isfinite(high_threshold), "iou_threshold and high_threshold must "
              "be finite, got ", iou_threshold, " and ", high_threshold);
  // The Gaussian decay divides by sigma: a subnormal sigma has an infinite reciprocal, and NaN fails sigma > 0.
  TORCH_CHECK(sigma > 0 && std::isfinite(sigma) && std::isfinite(1.0 / sigma),
              "sigma must be a finite number > 0 with a finite reciprocal, got ", sigma);
  TORCH_CHECK(scores.size(1) < (int64_t{1} << 30), "more than 2^30 candidates per video");
  if (num_valid.has_value()) {
    TORCH_CHECK(num_valid->dim() == 1 && num_valid->size(0) == scores.size(0) &&
                    num_valid->scalar_type() == at::kLong && num_valid->device() == scores.device(),
                "num_valid must be int64 (B,) on the scores' device");
  }
}

}  // namespace lofi
