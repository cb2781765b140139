// Soft-NMS on CUDA: one launch for the batch, one block per video. The candidates' keys (csrc/soft_nms.h) and
// segments live in shared memory (global memory when a video is too large for it); each step, every thread updates
// its candidates against the previous pick while tracking the best key (warps skip chunks of 32 candidates the pick
// does not reach), and a block-wide argmax (ties: lowest index) picks the next one. One __syncthreads per step: the
// per-warp partials are double-buffered and every thread finishes the reduction itself, so all threads take the same
// decisions from the same data.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/types.h>

#include <cuda_runtime.h>

#include "../soft_nms.h"

namespace lofi {
namespace {

constexpr int kThreads = 1024;  // 32 warps: enough to hide the latency of the float64 arithmetic
constexpr int kWarps = kThreads / 32;
static_assert(kWarps <= 32, "the second reduction stage puts one warp's partial in each lane");

// Folds candidate (key, at) into the running best: larger key, then lower index; NaN keys never win.
__device__ __forceinline__ void keep_best(double key, int at, double& best, int& best_at) {
  if (key > best || (key == best && at < best_at)) {
    best = key;
    best_at = at;
  }
}

// Leaves the best (key, index) of the warp's 32 lanes in every lane. The running bests are never NaN, and "larger key,
// then lower index" orders them totally, so every lane ends with the same pair.
__device__ __forceinline__ void warp_best(double& best, int& best_at) {
  for (int offset = 16; offset > 0; offset /= 2) {
    keep_best(__shfl_xor_sync(0xffffffffu, best, offset), __shfl_xor_sync(0xffffffffu, best_at, offset), best,
              best_at);
  }
}

// Per video, in shared memory (or the global workspace): keys[n], starts[n], ends[n] (double) and, per chunk of 32
// consecutive candidates, the smallest start and the largest end of its positive candidates (NaN ignored).
__host__ __device__ constexpr int64_t state_doubles(int64_t n) { return 3 * n + 2 * ((n + 31) / 32); }

template <typename scalar_t, int64_t method>
__global__ void __launch_bounds__(kThreads)
    soft_nms_kernel(const scalar_t* __restrict__ segments, const scalar_t* __restrict__ scores,
                    const int64_t* __restrict__ num_valid, int n, int64_t top_k, double sigma, double iou_threshold,
                    double high_threshold, double* __restrict__ workspace, int64_t* __restrict__ out_index,
                    scalar_t* __restrict__ out_score) {
  extern __shared__ double shared_state[];
  __shared__ double partial_key[2][kWarps];
  __shared__ int partial_at[2][kWarps];
  const int64_t video = blockIdx.x;
  const scalar_t* seg = segments + video * n * 2;
  const scalar_t* score = scores + video * n;
  const int count = num_valid == nullptr ? n : static_cast<int>(min(max(num_valid[video], int64_t{0}), int64_t{n}));
  double* keys = workspace == nullptr ? shared_state : workspace + video * state_doubles(n);
  double* starts = keys + n;
  double* ends = starts + n;
  double* chunk_start = ends + n;
  double* chunk_end = chunk_start + (n + 31) / 32;
  const double dead = dead_key(method);
  const double inv_sigma = 1.0 / sigma;
  // IoU 0 leaves a key unchanged (log keys, or a positive threshold): chunks the pick does not reach are only read.
  const bool skip_disjoint = log_keys(method) || iou_threshold > 0;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;

  // Warp w owns chunks w, w + kWarps, ...; lane l of it candidate 32·chunk + l: each key has one reader and writer,
  // and the loops below run the same number of times on every lane of a warp (the shuffles need all 32 lanes).
  for (int first = warp * 32; first < count; first += kThreads) {
    const int j = first + lane;
    double lo = INFINITY, hi = -INFINITY;
    if (j < count) {
      const double sc = static_cast<double>(score[j]);
      const double s = static_cast<double>(seg[2 * j]), e = static_cast<double>(seg[2 * j + 1]);
      keys[j] = sc > 0 ? initial_key(sc, method) : dead;  // NaN and non-positive scores are never picked
      starts[j] = s;
      ends[j] = e;
      if (sc > 0) {
        lo = s;
        hi = e;
      }
    }
    for (int offset = 16; offset > 0; offset /= 2) {
      lo = fmin(lo, __shfl_xor_sync(0xffffffffu, lo, offset));
      hi = fmax(hi, __shfl_xor_sync(0xffffffffu, hi, offset));
    }
    if (lane == 0) {
      chunk_start[first / 32] = lo;
      chunk_end[first / 32] = hi;
    }
  }
  __syncthreads();
  double pick_start = 0, pick_end = 0, pick_length = 0, threshold = 0;
  for (int64_t k = 0; k < top_k; ++k) {
    double best = -INFINITY;
    int best_at = n;
    for (int first = warp * 32; first < count; first += kThreads) {
      const int j = first + lane;
      const bool reached = k > 0 && (!skip_disjoint || (chunk_end[first / 32] > pick_start &&
                                                         chunk_start[first / 32] < pick_end));
      if (j < count) {
        double key = keys[j];
        if (reached && key > dead) {  // picked, suppressed or never positive: stays so
          const double s = starts[j], e = ends[j];
          key = decayed_key<method>(key, segment_iou(s, e, e - s, pick_start, pick_end, pick_length), inv_sigma,
                                    threshold);
          keys[j] = key;
        }
        if (key > best) {  // j increases: the first of equal keys stays
          best = key;
          best_at = j;
        }
      }
    }
    warp_best(best, best_at);
    const int buffer = k & 1;  // written before this step's barrier, read after it, rewritten two steps later
    if (lane == 0) {
      partial_key[buffer][warp] = best;
      partial_at[buffer][warp] = best_at;
    }
    __syncthreads();
    best = lane < kWarps ? partial_key[buffer][lane] : -INFINITY;
    best_at = lane < kWarps ? partial_at[buffer][lane] : n;
    warp_best(best, best_at);
    // Every warp reduced the same partials to the same pair, so all threads take the same decisions below and leave
    // at the same step.
    if (!(best > dead)) break;
    const double pick_score = static_cast<double>(score[best_at]);
    // A Gaussian current score may underflow to 0, as the reference's product does (then nothing positive is left);
    // with key = log(current score) >= -700 it is at least 1e-304.
    if (log_keys(method) && best < -700.0 && !(current_score(best, pick_score, method) > 0)) break;
    if (best_at % kThreads == static_cast<int>(threadIdx.x)) {  // its owner
      out_index[video * top_k + k] = best_at;
      out_score[video * top_k + k] = static_cast<scalar_t>(current_score(best, pick_score, method));
      keys[best_at] = dead;
    }
    pick_start = starts[best_at];
    pick_end = ends[best_at];
    pick_length = pick_end - pick_start;
    threshold = pick_threshold(method, iou_threshold, high_threshold, pick_length);
  }
}

template <typename scalar_t, int64_t method>
void launch(const at::Tensor& seg, const at::Tensor& sc, const int64_t* valid, double sigma, int64_t top_k,
            double iou_threshold, double high_threshold, at::Tensor& out_index, at::Tensor& out_score) {
  const int64_t b = sc.size(0), n = sc.size(1);
  const size_t state_bytes = state_doubles(n) * sizeof(double);
  const auto kernel = soft_nms_kernel<scalar_t, method>;
  int device, optin;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  cudaFuncAttributes attributes;
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
  at::Tensor workspace;
  size_t shared_bytes = state_bytes;
  if (state_bytes + attributes.sharedSizeBytes > static_cast<size_t>(optin)) {
    workspace = at::empty({b, state_doubles(n)}, sc.options().dtype(at::kDouble));  // too large for shared memory
    shared_bytes = 0;
  } else if (shared_bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(shared_bytes)));
  }
  kernel<<<static_cast<unsigned>(b), kThreads, shared_bytes, at::cuda::getCurrentCUDAStream()>>>(
      seg.data_ptr<scalar_t>(), sc.data_ptr<scalar_t>(), valid, static_cast<int>(n), top_k, sigma, iou_threshold,
      high_threshold, workspace.defined() ? workspace.data_ptr<double>() : nullptr, out_index.data_ptr<int64_t>(),
      out_score.data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> batched_soft_nms_cuda(const at::Tensor& segments, const at::Tensor& scores,
                                                         const std::optional<at::Tensor>& num_valid, double sigma,
                                                         int64_t top_k, int64_t method, double iou_threshold,
                                                         double high_threshold) {
  check_soft_nms_args(segments, scores, num_valid, sigma, top_k, method, iou_threshold, high_threshold);
  TORCH_CHECK(scores.is_cuda() && scores.size(0) < (int64_t{1} << 31), "scores must be on a GPU, < 2^31 videos");
  const int64_t b = scores.size(0), n = scores.size(1);
  const c10::cuda::CUDAGuard guard(scores.device());
  const auto seg = segments.contiguous();
  const auto sc = scores.contiguous();
  const auto valid = num_valid.has_value() ? num_valid->contiguous() : at::Tensor();
  auto out_index = at::full({b, top_k}, -1, scores.options().dtype(at::kLong));
  auto out_score = at::zeros({b, top_k}, scores.options());
  if (b == 0 || n == 0) return {out_index, out_score};
  const int64_t* valid_ptr = valid.defined() ? valid.data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "batched_soft_nms_cuda", [&] {
    if (method == kGaussian) {
      launch<scalar_t, kGaussian>(seg, sc, valid_ptr, sigma, top_k, iou_threshold, high_threshold, out_index,
                                  out_score);
    } else if (method == kLinear) {
      launch<scalar_t, kLinear>(seg, sc, valid_ptr, sigma, top_k, iou_threshold, high_threshold, out_index, out_score);
    } else if (method == kHard) {
      launch<scalar_t, kHard>(seg, sc, valid_ptr, sigma, top_k, iou_threshold, high_threshold, out_index, out_score);
    } else {
      launch<scalar_t, kBmn>(seg, sc, valid_ptr, sigma, top_k, iou_threshold, high_threshold, out_index, out_score);
    }
  });
  return {out_index, out_score};
}

}  // namespace

TORCH_LIBRARY_IMPL(lofi, CUDA, m) { m.impl("batched_soft_nms", &batched_soft_nms_cuda); }

}  // namespace lofi
