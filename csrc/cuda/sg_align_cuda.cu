// SGAlign sampling plan and its application on CUDA (float32/float64, and float16/bfloat16 accumulating in fp32).
//
// Same plan and op semantics as csrc/cpu/sg_align_cpu.cpp. One thread per output element, grid-stride loops:
//   sg_align_plan:    one thread per (ROI, bin) row: count its snippets, cumsum, then fill its weights.
//                     Allocating the weights needs nnz on the host: one device->host sync per plan (plans are cached).
//   sg_align_gather:  one thread per output (r, d[, p]); reads the input through its strides.
//   sg_align_scatter: the backward, and the only one (deterministic by construction): one thread per input-gradient
//                     element (b, s, t, d) sums over the transposed plan's entries in a fixed order. No atomics, so
//                     gradients are bitwise reproducible run to run.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "../sg_align.h"

namespace lofi {
namespace sgalign {
namespace {

using at::Tensor;

constexpr int kThreads = 256;
constexpr int kMaxGroups = 8;

struct Groups {
  int64_t n;
  int64_t size[kMaxGroups];
};

int blocks_for(int64_t total) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, 1 << 22)));
}

#define GRID_STRIDE(i, total)                                                                         \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (total);         \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

template <typename acc_t>
__global__ void plan_count_kernel(const acc_t* rois, int64_t R, int64_t P, Groups groups, int64_t length,
                                  int64_t num_batches, int64_t* batch, int64_t* counts, int64_t* start) {
  GRID_STRIDE(row, R * P) {
    const int64_t r = row / P, p = row % P;
    const acc_t* roi = rois + 3 * r;
    const int64_t b = roi_batch<acc_t>(roi[0], roi[1], roi[2], num_batches);
    if (p == 0) batch[r] = b;
    int64_t local = 0, first = 0, extent = 0;
    const int64_t group = group_of(groups.size, groups.n, p, &local);
    if (b >= 0) extent = row_extent<acc_t>(roi[1], roi[2], group, local, length, &first);
    counts[row] = extent;
    start[row] = first;
  }
}

template <typename acc_t>
__global__ void plan_fill_kernel(const acc_t* rois, int64_t R, int64_t P, Groups groups, int64_t length,
                                 const int64_t* batch, const int64_t* row_ptr, const int64_t* start, acc_t* weight) {
  GRID_STRIDE(row, R * P) {
    const int64_t r = row / P, p = row % P;
    if (batch[r] < 0) continue;
    int64_t local = 0;
    const int64_t group = group_of(groups.size, groups.n, p, &local);
    row_weights<acc_t>(rois[3 * r + 1], rois[3 * r + 2], group, local, length, start[row], weight + row_ptr[row]);
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor> plan_cuda(const Tensor& rois, int64_t length, int64_t num_batches,
                                                     at::IntArrayRef bins, bool double_precision) {
  TORCH_CHECK(rois.is_cuda() && rois.dim() == 2 && rois.size(1) == 3, "sg_align_plan: rois must be (R, 3) on CUDA");
  TORCH_CHECK(length >= 1, "sg_align_plan: length must be >= 1");
  TORCH_CHECK(!bins.empty() && static_cast<int64_t>(bins.size()) <= kMaxGroups, "sg_align_plan: 1 to ", kMaxGroups,
              " bin groups");
  c10::cuda::CUDAGuard guard(rois.device());
  Groups groups{static_cast<int64_t>(bins.size()), {}};
  int64_t P = 0;
  for (size_t k = 0; k < bins.size(); ++k) {
    TORCH_CHECK(bins[k] >= 1, "sg_align_plan: bins must be >= 1");
    groups.size[k] = bins[k];
    P += bins[k];
  }
  const auto acc_type = double_precision ? at::kDouble : at::kFloat;
  const Tensor r = rois.to(acc_type).contiguous();
  const int64_t R = r.size(0);
  auto longs = rois.options().dtype(at::kLong);
  Tensor batch = at::empty({R}, longs), counts = at::empty({R * P}, longs), start = at::empty({R * P}, longs);
  Tensor row_ptr = at::zeros({R * P + 1}, longs);
  Tensor weight;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc_type, "sg_align_plan_cuda", [&] {
    using acc_t = scalar_t;
    if (R > 0) {
      plan_count_kernel<acc_t><<<blocks_for(R * P), kThreads, 0, stream>>>(
          r.data_ptr<acc_t>(), R, P, groups, length, num_batches, batch.data_ptr<int64_t>(),
          counts.data_ptr<int64_t>(), start.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      Tensor tail = row_ptr.narrow(0, 1, R * P);
      at::cumsum_out(tail, counts, 0);
    }
    const int64_t nnz = row_ptr[R * P].item<int64_t>();  // host sync: sizes the weights
    weight = at::zeros({nnz}, rois.options().dtype(acc_type));
    if (R > 0) {
      plan_fill_kernel<acc_t><<<blocks_for(R * P), kThreads, 0, stream>>>(
          r.data_ptr<acc_t>(), R, P, groups, length, batch.data_ptr<int64_t>(), row_ptr.data_ptr<int64_t>(),
          start.data_ptr<int64_t>(), weight.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {batch, row_ptr, start, weight};
}

void check_cuda_plan(const Tensor& batch, const Tensor& row_ptr, const Tensor& start, const Tensor& weight,
                     int64_t bins, at::ScalarType input_type) {
  TORCH_CHECK(batch.is_cuda() && row_ptr.is_cuda() && start.is_cuda() && weight.is_cuda(),
              "sg_align: the plan must be on CUDA");
  check_plan(batch, row_ptr, start, weight, bins, input_type);
}

// Summed rows and the backward map a thread index onto (row, channel) in tiles of 8 rows x 32 channels: a block's
// 8 warps serve 8 neighbouring rows (overlapping windows, so shared cache lines); a warp reads 32 adjacent channels.
constexpr int64_t kTileRows = 8, kTileCols = 32;
static_assert(kTileRows * kTileCols == kThreads, "one tile per block");

int64_t tiled_total(int64_t rows, int64_t D) {
  return (rows + kTileRows - 1) / kTileRows * ((D + kTileCols - 1) / kTileCols) * kTileRows * kTileCols;
}

__device__ inline bool tile_index(int64_t idx, int64_t rows, int64_t D, int64_t* row, int64_t* d) {
  const int64_t col_tiles = (D + kTileCols - 1) / kTileCols;
  const int64_t tile = idx / (kTileRows * kTileCols), within = idx % (kTileRows * kTileCols);
  *row = (tile / col_tiles) * kTileRows + within / kTileCols;
  *d = (tile % col_tiles) * kTileCols + within % kTileCols;
  return *row < rows && *d < D;
}

// The input's extent, for guards that keep a malformed plan (the ops are internal) from reading out of bounds.
struct Extent {
  int64_t batches, length, nnz;
};

// sum_k w * in[b, s(p), start + k, d] over the plan row r*P + p.
template <typename scalar_t, typename acc_t>
__device__ inline acc_t gather_row(const scalar_t* __restrict__ in, int64_t sb, int64_t ss, int64_t st, int64_t sd,
                                   int64_t S, int64_t P, int64_t b, int64_t r, int64_t p, int64_t d,
                                   const int64_t* __restrict__ row_ptr, const int64_t* __restrict__ start,
                                   const acc_t* __restrict__ weight, Extent ext) {
  const int64_t row = r * P + p;
  const int64_t j0 = row_ptr[row], j1 = row_ptr[row + 1], t0 = start[row];
  if (b >= ext.batches || j0 < 0 || j1 > ext.nnz || t0 < 0 || t0 + (j1 - j0) > ext.length) return acc_t(0);
  const scalar_t* src = in + b * sb + (S == 1 ? 0 : p) * ss + d * sd + t0 * st;
  acc_t acc = acc_t(0);
#pragma unroll 4
  for (int64_t j = j0; j < j1; ++j) acc += weight[j] * static_cast<acc_t>(src[(j - j0) * st]);
  return acc;
}

// out[r, d, p] = gather_row(r, p, d); p is the fastest thread index (the output layout).
template <typename scalar_t, typename acc_t>
__global__ void gather_bins_kernel(const scalar_t* __restrict__ in, int64_t sb, int64_t ss, int64_t st, int64_t sd,
                                   int64_t S, int64_t D, int64_t P, const int64_t* __restrict__ batch,
                                   const int64_t* __restrict__ row_ptr, const int64_t* __restrict__ start,
                                   const acc_t* __restrict__ weight, Extent ext, scalar_t* __restrict__ out,
                                   int64_t total) {
  GRID_STRIDE(idx, total) {
    const int64_t p = idx % P, d = (idx / P) % D, r = idx / (P * D);
    const int64_t b = batch[r];
    const acc_t acc = b < 0 ? acc_t(0) : gather_row(in, sb, ss, st, sd, S, P, b, r, p, d, row_ptr, start, weight, ext);
    out[idx] = static_cast<scalar_t>(acc);
  }
}

// out[r, d] = sum_p gather_row(r, p, d).
template <typename scalar_t, typename acc_t>
__global__ void gather_sum_kernel(const scalar_t* __restrict__ in, int64_t sb, int64_t ss, int64_t st, int64_t sd,
                                  int64_t S, int64_t R, int64_t D, int64_t P, const int64_t* __restrict__ batch,
                                  const int64_t* __restrict__ row_ptr, const int64_t* __restrict__ start,
                                  const acc_t* __restrict__ weight, Extent ext, scalar_t* __restrict__ out,
                                  int64_t total) {
  GRID_STRIDE(idx, total) {
    int64_t r, d;
    if (!tile_index(idx, R, D, &r, &d)) continue;
    const int64_t b = batch[r];
    acc_t acc = acc_t(0);
    for (int64_t p = 0; b >= 0 && p < P; ++p)
      acc += gather_row(in, sb, ss, st, sd, S, P, b, r, p, d, row_ptr, start, weight, ext);
    out[r * D + d] = static_cast<scalar_t>(acc);
  }
}

Tensor gather_cuda(const Tensor& input, const Tensor& batch, const Tensor& row_ptr, const Tensor& start,
                   const Tensor& weight, int64_t bins, bool sum_bins) {
  TORCH_CHECK(input.is_cuda() && input.dim() == 4, "sg_align_gather: input must be (B, S, T, D) on CUDA");
  check_cuda_plan(batch, row_ptr, start, weight, bins, input.scalar_type());
  c10::cuda::CUDAGuard guard(input.device());
  const int64_t S = input.size(1), D = input.size(3), R = batch.size(0), P = bins;
  TORCH_CHECK(S == 1 || S == P, "sg_align_gather: input must have 1 or ", P, " sources, got ", S);
  Tensor out = sum_bins ? at::empty({R, D}, input.options()) : at::empty({R, D, P}, input.options());
  if (out.numel() == 0) return out;
  const Tensor bt = batch.contiguous(), ptr = row_ptr.contiguous(), st = start.contiguous(), w = weight.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "sg_align_gather_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto stream = at::cuda::getCurrentCUDAStream();
    const scalar_t* x = input.data_ptr<scalar_t>();
    const Extent ext{input.size(0), input.size(2), w.numel()};
    const int64_t sb = input.stride(0), ss = input.stride(1), stt = input.stride(2), sd = input.stride(3);
    if (sum_bins) {
      const int64_t total = tiled_total(R, D);
      gather_sum_kernel<scalar_t, acc_t><<<blocks_for(total), kThreads, 0, stream>>>(
          x, sb, ss, stt, sd, S, R, D, P, bt.data_ptr<int64_t>(), ptr.data_ptr<int64_t>(), st.data_ptr<int64_t>(),
          w.data_ptr<acc_t>(), ext, out.data_ptr<scalar_t>(), total);
    } else {
      const int64_t total = out.numel();
      gather_bins_kernel<scalar_t, acc_t><<<blocks_for(total), kThreads, 0, stream>>>(
          x, sb, ss, stt, sd, S, D, P, bt.data_ptr<int64_t>(), ptr.data_ptr<int64_t>(), st.data_ptr<int64_t>(),
          w.data_ptr<acc_t>(), ext, out.data_ptr<scalar_t>(), total);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// out[m, d] = sum over the transposed plan's entries j of row m = (b, s, t): w_j * grad[r_j, q_j, d].
template <typename scalar_t, typename acc_t>
__global__ void scatter_kernel(const scalar_t* __restrict__ grad, int64_t rows, int64_t R, int64_t Q, int64_t D,
                               int64_t P, int64_t nnz,
                               const int64_t* __restrict__ t_ptr, const int64_t* __restrict__ t_row,
                               const acc_t* __restrict__ t_weight, scalar_t* __restrict__ out, int64_t total) {
  GRID_STRIDE(idx, total) {
    int64_t m, d;
    if (!tile_index(idx, rows, D, &m, &d)) continue;
    acc_t acc = acc_t(0);
    const int64_t j0 = t_ptr[m], j1 = t_ptr[m + 1];
    if (j0 >= 0 && j1 <= nnz) {
#pragma unroll 4  // independent loads: keep several in flight (rows of one snippet can number in the thousands)
      for (int64_t j = j0; j < j1; ++j) {
        const int64_t row = t_row[j];
        if (row < 0 || row >= R * P) continue;  // guards a malformed plan (internal op)
        const int64_t q = Q == 1 ? 0 : row % P;
        acc += t_weight[j] * static_cast<acc_t>(grad[((row / P) * Q + q) * D + d]);
      }
    }
    out[m * D + d] = static_cast<scalar_t>(acc);
  }
}

Tensor scatter_cuda(const Tensor& grad, const Tensor& batch, const Tensor& row_ptr, const Tensor& start,
                    const Tensor& weight, const Tensor& t_ptr, const Tensor& t_row, const Tensor& t_weight,
                    int64_t bins, int64_t num_batches, int64_t sources, int64_t length) {
  TORCH_CHECK(grad.is_cuda() && grad.dim() == 3, "sg_align_scatter: grad must be (R, Q, D) on CUDA");
  check_cuda_plan(batch, row_ptr, start, weight, bins, grad.scalar_type());
  c10::cuda::CUDAGuard guard(grad.device());
  const int64_t R = grad.size(0), Q = grad.size(1), D = grad.size(2), P = bins;
  TORCH_CHECK(R == batch.size(0) && (Q == 1 || Q == P), "sg_align_scatter: grad must be (R, 1 or P, D)");
  TORCH_CHECK(sources == 1 || sources == P, "sg_align_scatter: sources must be 1 or P");
  TORCH_CHECK(t_ptr.numel() == num_batches * sources * length + 1 && t_row.numel() == t_weight.numel() &&
                  t_row.numel() == weight.numel() && t_weight.scalar_type() == weight.scalar_type(),
              "sg_align_scatter: the transposed plan does not match the plan");
  Tensor out = at::empty({num_batches, sources, length, D}, grad.options());
  if (out.numel() == 0) return out;
  const int64_t rows = num_batches * sources * length, total = tiled_total(rows, D);
  const Tensor g = grad.contiguous(), tp = t_ptr.contiguous(), tr = t_row.contiguous(), tw = t_weight.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "sg_align_scatter_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scatter_kernel<scalar_t, acc_t><<<blocks_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        g.data_ptr<scalar_t>(), rows, R, Q, D, P, tw.numel(), tp.data_ptr<int64_t>(), tr.data_ptr<int64_t>(),
        tw.data_ptr<acc_t>(), out.data_ptr<scalar_t>(), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lofi, CUDA, m) {
  m.impl("sg_align_plan", &plan_cuda);
  m.impl("sg_align_gather", &gather_cuda);
  m.impl("sg_align_scatter", &scatter_cuda);
}

}  // namespace sgalign
}  // namespace lofi
