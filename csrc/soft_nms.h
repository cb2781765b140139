// Soft-NMS arithmetic shared by the CPU (csrc/cpu/soft_nms.cpp) and CUDA (csrc/cuda/soft_nms.cu) kernels.
// Semantics: lofi/ops/soft_nms.py. Everything is in double. A candidate's state is (base, decay):
//   gaussian: base = log(score), decay = sum of IoU² with the picks so far; its key log(current score) is
//             base - decay/sigma and its current score is score·exp(-decay/sigma), which equals the reference's
//             product of per-pick weights exp(-IoU²/sigma) up to float64 rounding, while a step needs no exp;
//   linear, hard: base = the current score (the key), multiplied by each pick's weight exactly as the reference does.
// The argmax of the keys is the pick (ties: lowest index). T is double, or (CPU) a GCC vector of doubles.
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define LOFI_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LOFI_HOST_DEVICE inline
#endif

namespace lofi {

enum SoftNmsMethod : int64_t { kGaussian = 0, kLinear = 1, kHard = 2 };

// Exact 1-D IoU of segments [s, e] (l = e - s) with one pick [ps, pe] (pl = pe - ps); a union <= 0 gives 0, and so
// does any NaN coordinate (its length is NaN). Same operations, in the same order, as the pure-PyTorch reference.
template <typename T>
LOFI_HOST_DEVICE T segment_iou(T s, T e, T l, double ps, double pe, double pl) {
  const T zero = T{};
  T inter = (e < pe ? e : zero + pe) - (s > ps ? s : zero + ps);
  inter = inter > zero ? inter : zero;
  const T uni = (l + pl) - inter;
  const T ratio = inter / (uni > zero ? uni : zero + 1.0);
  return uni > zero ? ratio : zero;
}

// Applies one pick that overlaps the candidate by `iou` to its state; returns its new key.
template <int64_t method, typename T>
LOFI_HOST_DEVICE T decay_key(T& base, T& decay, T iou, double inv_sigma, double iou_threshold) {
  if constexpr (method == kGaussian) {
    decay = decay + iou * iou;
    return base - decay * inv_sigma;
  } else {
    const T zero = T{};
    const T weight = method == kLinear ? T(1.0 - iou) : zero;
    base = iou < iou_threshold ? base : base * weight;
    return base;
  }
}

// The key of a candidate whose state has not changed.
template <int64_t method, typename T>
LOFI_HOST_DEVICE T current_key(T base, T decay, double inv_sigma) {
  if constexpr (method == kGaussian) {
    return base - decay * inv_sigma;
  } else {
    return base;
  }
}

}  // namespace lofi
