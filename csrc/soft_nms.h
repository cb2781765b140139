// Soft-NMS pieces shared by the CPU (csrc/cpu/soft_nms.cpp) and CUDA (csrc/cuda/soft_nms.cu) kernels.
// Semantics: lofi/ops/soft_nms.py. All arithmetic is in double, in the same order as the pure-PyTorch reference, so
// the implementations differ only by the rounding of exp().
#pragma once
#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define LOFI_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LOFI_HOST_DEVICE inline
#endif

namespace lofi {

enum SoftNmsMethod : int64_t { kGaussian = 0, kLinear = 1, kHard = 2 };

struct SoftNmsParams {
  int64_t method;
  double sigma;
  double iou_threshold;
};

// Exact 1-D IoU of [s1, s1 + l1] and [s2, s2 + l2] (e = end, l = end - start); a union <= 0 gives 0.
LOFI_HOST_DEVICE double segment_iou(double s1, double e1, double l1, double s2, double e2, double l2) {
  double inter = fmin(e1, e2) - fmax(s1, s2);
  inter = inter > 0 ? inter : 0.0;
  const double uni = (l1 + l2) - inter;
  return uni > 0 ? inter / uni : 0.0;
}

// The factor a remaining candidate's score is multiplied by when a candidate it overlaps by `iou` is picked.
LOFI_HOST_DEVICE double soft_nms_weight(double iou, const SoftNmsParams& p) {
  if (p.method == kGaussian) return iou > 0 ? exp(-(iou * iou) / p.sigma) : 1.0;  // exp(-0) == 1 exactly
  if (iou < p.iou_threshold) return 1.0;
  return p.method == kLinear ? 1.0 - iou : 0.0;
}

}  // namespace lofi
