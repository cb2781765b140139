// The `lofi` op library: every op's schema, whatever the device, and the Python module lofi._C.
// Kernels register per backend: csrc/cpu/ (CPU) and csrc/cuda/ (CUDA, when built). Fake (meta) kernels, for
// torch.compile and torch.library.opcheck, and autograd formulas are registered in Python next to each op's API
// (lofi/ops/sg_align.py, lofi/ops/soft_nms.py).
#include <torch/extension.h>
#include <torch/library.h>

TORCH_LIBRARY(lofi, m) {
  // SGAlign (csrc/sg_align.h): the sampling plan of a set of ROIs in CSR form, its application to an input
  // (B, S, T, D) and the transpose of that application.
  m.def("sg_align_plan(Tensor rois, int length, int num_batches, int[] bins, bool double_precision)"
        " -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("sg_align_gather(Tensor input, Tensor batch, Tensor row_ptr, Tensor start, Tensor weight, int bins,"
        " bool sum_bins) -> Tensor");
  m.def("sg_align_scatter(Tensor grad, Tensor batch, Tensor row_ptr, Tensor start, Tensor weight, Tensor t_ptr,"
        " Tensor t_row, Tensor t_weight, int bins, int num_batches, int sources, int length) -> Tensor");
  // Soft-NMS of a batch of videos (csrc/soft_nms.h).
  m.def(
      "batched_soft_nms(Tensor segments, Tensor scores, Tensor? num_valid, float sigma, int top_k, int method, "
      "float iou_threshold, float high_threshold=0.9) -> (Tensor, Tensor)");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("cuda_compiled", []() {
#ifdef WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "True when the CUDA kernels were compiled into this extension.");
}
