// SGAlign sampling plan and its application on the CPU (op schemas: csrc/lofi.cpp).
//
// A plan (see csrc/sg_align.h) is a CSR matrix whose row r*P + p (ROI r, bin p of P) holds the averaged interpolation
// weights of a contiguous run of snippets: batch (R,) int64 (-1: invalid ROI, no entries), row_ptr (R*P+1,) int64,
// start (R*P,) int64, weight (nnz,) float32 or float64.
//   sg_align_gather:  out[r, d, p] (or, summed over bins, out[r, d]) = sum_k w * input[b, s(p), start + k, d]
//                     with input (B, S, T, D) and s(p) = p when S == P, 0 when S == 1.
//   sg_align_scatter: its transpose, grad (R, Q, D) (Q = P, or 1 for summed rows) -> (B, S, T, D).
// The CPU scatter splits the D channels across threads and walks the rows in order, so it is deterministic and needs
// no transposed plan (the t_* arguments are used by the CUDA kernel only).
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "../sg_align.h"

namespace lofi {
namespace sgalign {
namespace {

using at::Tensor;

int64_t total_bins(at::IntArrayRef bins) {
  TORCH_CHECK(!bins.empty(), "sg_align_plan: at least one bin group");
  int64_t P = 0;
  for (int64_t b : bins) {
    TORCH_CHECK(b >= 1, "sg_align_plan: bins must be >= 1, got ", b);
    P += b;
  }
  return P;
}

template <typename acc_t>
void plan_rows(const acc_t* rois, int64_t R, int64_t length, int64_t num_batches, const std::vector<int64_t>& groups,
               int64_t* batch, int64_t* row_ptr, int64_t* start) {
  const int64_t bins = std::accumulate(groups.begin(), groups.end(), int64_t(0));
  at::parallel_for(0, R, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const acc_t* roi = rois + 3 * r;
      batch[r] = roi_batch<acc_t>(roi[0], roi[1], roi[2], num_batches);
      for (int64_t p = 0; p < bins; ++p) {
        int64_t local = 0, first = 0, extent = 0;
        const int64_t group = group_of(groups.data(), static_cast<int64_t>(groups.size()), p, &local);
        if (batch[r] >= 0) extent = row_extent<acc_t>(roi[1], roi[2], group, local, length, &first);
        row_ptr[r * bins + p + 1] = extent;
        start[r * bins + p] = first;
      }
    }
  });
}

std::tuple<Tensor, Tensor, Tensor, Tensor> plan_cpu(const Tensor& rois, int64_t length, int64_t num_batches,
                                                    at::IntArrayRef bins, bool double_precision) {
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 3, "sg_align_plan: rois must be (R, 3)");
  TORCH_CHECK(length >= 1, "sg_align_plan: length must be >= 1");
  const int64_t P = total_bins(bins);
  const std::vector<int64_t> groups(bins.begin(), bins.end());
  const auto acc_type = double_precision ? at::kDouble : at::kFloat;
  const Tensor r = rois.to(acc_type).contiguous();
  const int64_t R = r.size(0);
  auto longs = rois.options().dtype(at::kLong);
  Tensor batch = at::empty({R}, longs), row_ptr = at::empty({R * P + 1}, longs), start = at::empty({R * P}, longs);
  Tensor weight;
  AT_DISPATCH_FLOATING_TYPES(acc_type, "sg_align_plan_cpu", [&] {
    using acc_t = scalar_t;
    const acc_t* rp = r.data_ptr<acc_t>();
    int64_t* ptr = row_ptr.data_ptr<int64_t>();
    int64_t* st = start.data_ptr<int64_t>();
    int64_t* bt = batch.data_ptr<int64_t>();
    plan_rows<acc_t>(rp, R, length, num_batches, groups, bt, ptr, st);
    ptr[0] = 0;
    for (int64_t i = 0; i < R * P; ++i) ptr[i + 1] += ptr[i];
    weight = at::zeros({ptr[R * P]}, rois.options().dtype(acc_type));
    acc_t* w = weight.data_ptr<acc_t>();
    at::parallel_for(0, R, 64, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        if (bt[i] < 0) continue;
        for (int64_t p = 0; p < P; ++p) {
          int64_t local = 0;
          const int64_t group = group_of(groups.data(), static_cast<int64_t>(groups.size()), p, &local);
          row_weights<acc_t>(rp[3 * i + 1], rp[3 * i + 2], group, local, length, st[i * P + p], w + ptr[i * P + p]);
        }
      }
    });
  });
  return {batch, row_ptr, start, weight};
}

// The internal ops trust the plan's layout; this O(R*P) pass makes sure that no row reaches outside the input.
void check_plan_bounds(const Tensor& batch, const Tensor& row_ptr, const Tensor& start, int64_t nnz, int64_t bins,
                       int64_t num_batches, int64_t length) {
  const int64_t R = batch.numel();
  const int64_t* b = batch.data_ptr<int64_t>();
  const int64_t* ptr = row_ptr.data_ptr<int64_t>();
  const int64_t* first = start.data_ptr<int64_t>();
  TORCH_CHECK(ptr[0] == 0 && ptr[R * bins] == nnz, "sg_align: row_ptr does not match the plan weights");
  for (int64_t r = 0; r < R; ++r) {
    TORCH_CHECK(b[r] >= -1 && b[r] < num_batches, "sg_align: plan batch index ", b[r], " out of range");
    for (int64_t row = r * bins; row < (r + 1) * bins; ++row) {
      const int64_t len = ptr[row + 1] - ptr[row];
      TORCH_CHECK(len >= 0 && (len == 0 || (b[r] >= 0 && first[row] >= 0 && first[row] + len <= length)),
                  "sg_align: plan row ", row, " reaches outside the input");
    }
  }
}

Tensor gather_cpu(const Tensor& input, const Tensor& batch, const Tensor& row_ptr, const Tensor& start,
                  const Tensor& weight, int64_t bins, bool sum_bins) {
  TORCH_CHECK(input.dim() == 4, "sg_align_gather: input must be (B, S, T, D)");
  check_plan(batch, row_ptr, start, weight, bins, input.scalar_type());
  // Channels must be contiguous (vectorized inner loop); the other dimensions may be strided (e.g. a permuted Z).
  const Tensor in = input.stride(3) == 1 ? input : input.contiguous();
  const int64_t S = in.size(1), D = in.size(3), R = batch.size(0), P = bins;
  const int64_t sb = in.stride(0), ss = in.stride(1), st = in.stride(2);
  TORCH_CHECK(S == 1 || S == P, "sg_align_gather: input must have 1 or ", P, " sources, got ", S);
  const int64_t Q = sum_bins ? 1 : P;
  Tensor out = sum_bins ? at::empty({R, D}, in.options()) : at::empty({R, D, P}, in.options());
  const Tensor bt = batch.contiguous(), ptr_t = row_ptr.contiguous();
  const Tensor st_t = start.contiguous(), w_t = weight.contiguous();
  check_plan_bounds(bt, ptr_t, st_t, w_t.numel(), P, in.size(0), in.size(2));
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "sg_align_gather_cpu", [&] {
    using acc_t = scalar_t;  // float or double on the CPU
    const scalar_t* x = in.data_ptr<scalar_t>();
    const int64_t* b_of = bt.data_ptr<int64_t>();
    const int64_t* ptr = ptr_t.data_ptr<int64_t>();
    const int64_t* first = st_t.data_ptr<int64_t>();
    const acc_t* w = w_t.data_ptr<acc_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, R, 16, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(Q * D);
      for (int64_t r = begin; r < end; ++r) {
        std::fill(acc.begin(), acc.end(), acc_t(0));
        const int64_t b = b_of[r];
        for (int64_t p = 0; b >= 0 && p < P; ++p) {
          const int64_t row = r * P + p;
          const scalar_t* src = x + b * sb + (S == 1 ? 0 : p) * ss + first[row] * st;
          acc_t* __restrict__ dst = acc.data() + (sum_bins ? 0 : p) * D;
          for (int64_t j = ptr[row]; j < ptr[row + 1]; ++j, src += st) {
            const acc_t wj = w[j];
            for (int64_t d = 0; d < D; ++d) dst[d] += wj * src[d];
          }
        }
        scalar_t* dst = o + r * D * Q;
        for (int64_t d = 0; d < D; ++d)
          for (int64_t q = 0; q < Q; ++q) dst[d * Q + q] = acc[q * D + d];
      }
    });
  });
  return out;
}

Tensor scatter_cpu(const Tensor& grad, const Tensor& batch, const Tensor& row_ptr, const Tensor& start,
                   const Tensor& weight, const Tensor& /*t_ptr*/, const Tensor& /*t_row*/, const Tensor& /*t_weight*/,
                   int64_t bins, int64_t num_batches, int64_t sources, int64_t length) {
  TORCH_CHECK(grad.dim() == 3, "sg_align_scatter: grad must be (R, Q, D)");
  check_plan(batch, row_ptr, start, weight, bins, grad.scalar_type());
  const int64_t R = grad.size(0), Q = grad.size(1), D = grad.size(2), P = bins, S = sources, T = length;
  TORCH_CHECK(R == batch.size(0) && (Q == 1 || Q == P), "sg_align_scatter: grad must be (R, 1 or P, D)");
  TORCH_CHECK(S == 1 || S == P, "sg_align_scatter: sources must be 1 or P");
  Tensor out = at::zeros({num_batches, S, T, D}, grad.options());
  const Tensor bt = batch.contiguous(), ptr_t = row_ptr.contiguous();
  const Tensor st_t = start.contiguous(), w_t = weight.contiguous();
  check_plan_bounds(bt, ptr_t, st_t, w_t.numel(), P, num_batches, T);
  const int64_t g_r = grad.stride(0), g_q = grad.stride(1), g_d = grad.stride(2);
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "sg_align_scatter_cpu", [&] {
    using acc_t = scalar_t;
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const int64_t* b_of = bt.data_ptr<int64_t>();
    const int64_t* ptr = ptr_t.data_ptr<int64_t>();
    const int64_t* first = st_t.data_ptr<int64_t>();
    const acc_t* w = w_t.data_ptr<acc_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    // Each thread owns channels [d0, d1) of the output and walks every row in order: deterministic, no atomics.
    at::parallel_for(0, D, 16, [&](int64_t d0, int64_t d1) {
      const int64_t dc = d1 - d0;
      std::vector<acc_t> buf(Q * dc);
      for (int64_t r = 0; r < R; ++r) {
        const int64_t b = b_of[r];
        if (b < 0 || ptr[r * P] == ptr[(r + 1) * P]) continue;
        const scalar_t* gr = g + r * g_r;
        if (g_q <= g_d) {  // grad (R, D, P) in memory: read each channel's bins contiguously
          for (int64_t d = 0; d < dc; ++d)
            for (int64_t q = 0; q < Q; ++q) buf[q * dc + d] = gr[q * g_q + (d0 + d) * g_d];
        } else {
          for (int64_t q = 0; q < Q; ++q)
            for (int64_t d = 0; d < dc; ++d) buf[q * dc + d] = gr[q * g_q + (d0 + d) * g_d];
        }
        for (int64_t p = 0; p < P; ++p) {
          const int64_t row = r * P + p;
          const acc_t* __restrict__ src = buf.data() + (Q == 1 ? 0 : p) * dc;
          scalar_t* dst = o + ((b * S + (S == 1 ? 0 : p)) * T + first[row]) * D + d0;
          for (int64_t j = ptr[row]; j < ptr[row + 1]; ++j, dst += D) {
            const acc_t wj = w[j];
            for (int64_t d = 0; d < dc; ++d) dst[d] += wj * src[d];
          }
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lofi, CPU, m) {
  m.impl("sg_align_plan", &plan_cpu);
  m.impl("sg_align_gather", &gather_cpu);
  m.impl("sg_align_scatter", &scatter_cpu);
}

}  // namespace sgalign
}  // namespace lofi
