// hybridmatch CUDA target, torch binding: allocates the outputs and the workspace on
// the cost's device and launches csrc/cuda/lsap_cuda.cu on the current stream.
// Nothing here waits for the GPU.
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <vector>

extern "C" int64_t hybridmatch_workspace_bytes(int64_t n, int64_t m, int64_t capacity, int64_t* shared_bytes);
extern "C" int hybridmatch_launch_lsap(int dtype, const void* cost, const void* cost_t, const int64_t* num_targets,
                                       int64_t batch, int64_t n, int64_t m, int64_t capacity, int maximize,
                                       int64_t* assignment, int64_t* status, void* workspace,
                                       int64_t workspace_stride, int64_t shared_limit, cudaStream_t stream);

namespace {

// cost (B, N, M) floating CUDA; num_targets (B,) int64, on the host (checked here, then
// copied pinned and non-blocking) or already on the cost's device (then the kernel
// checks it and reports status 4 = kBadCount) -> (assignment (B, N) int64 on the
// device, status (B, 3) int64 on the device [code, query, target]).
std::vector<torch::Tensor> solve_batch(torch::Tensor cost, torch::Tensor num_targets, int64_t capacity,
                                       bool maximize) {
  TORCH_CHECK(cost.is_cuda(), "the CUDA solver needs a CUDA tensor");
  TORCH_CHECK(cost.dim() == 3, "cost must be (B, N, M)");
  TORCH_CHECK(capacity >= 1, "capacity must be >= 1");
  const c10::cuda::CUDAGuard guard(cost.device());
  // No autograd graph for the copies below. float16 / bfloat16 widen exactly to
  // float32; the algorithm works in double.
  cost = cost.detach();
  if (cost.scalar_type() != torch::kFloat && cost.scalar_type() != torch::kDouble) cost = cost.to(torch::kFloat);
  cost = cost.contiguous();
  const int64_t batch = cost.size(0), n = cost.size(1), m = cost.size(2);
  TORCH_CHECK(num_targets.dim() == 1 && num_targets.numel() == batch, "num_targets must be (B,) with B = ", batch,
              ", got shape ", num_targets.sizes());
  TORCH_CHECK(n <= INT32_MAX && m * capacity <= INT32_MAX,
              "problem too large for the CUDA solver: N and M * capacity must fit in int32");
  // The targets x queries copy is read only by problems solved targets-side
  // (num_targets[b] * capacity <= N); with host counts it is built only if one is.
  bool need_transpose = true;
  if (!num_targets.is_cuda()) {
    auto counts = num_targets.to(torch::kInt64).contiguous();
    const int64_t* c = counts.data_ptr<int64_t>();
    need_transpose = false;
    for (int64_t b = 0; b < batch; ++b) {
      TORCH_CHECK(c[b] >= 0 && c[b] <= m, "num_targets[", b, "] = ", c[b], " is outside [0, M = ", m, "]");
      need_transpose |= c[b] > 0 && n > 0 && c[b] * capacity <= n;
    }
    num_targets = counts.pin_memory().to(cost.device(), /*non_blocking=*/true);
  } else {
    TORCH_CHECK(num_targets.device() == cost.device(), "num_targets is on ", num_targets.device(),
                ", the cost on ", cost.device());
    num_targets = num_targets.to(torch::kInt64).contiguous();
  }
  torch::Tensor cost_t;
  if (need_transpose) cost_t = cost.transpose(1, 2).contiguous();

  int64_t shared_bytes = 0;
  const int64_t stride = hybridmatch_workspace_bytes(n, m, capacity, &shared_bytes);
  auto options = cost.options();
  auto workspace = torch::empty({std::max<int64_t>(batch * stride, 1)}, options.dtype(torch::kUInt8));
  auto assignment = torch::empty({batch, n}, options.dtype(torch::kInt64));
  auto status = torch::empty({batch, 3}, options.dtype(torch::kInt64));
  const int dtype = cost.scalar_type() == torch::kFloat ? 0 : 1;
  const int error = hybridmatch_launch_lsap(
      dtype, cost.data_ptr(), need_transpose ? cost_t.data_ptr() : nullptr, num_targets.data_ptr<int64_t>(), batch,
      n, m, capacity, maximize ? 1 : 0, assignment.data_ptr<int64_t>(), status.data_ptr<int64_t>(),
      workspace.data_ptr(), stride, /*shared_limit=*/-1, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(error == 0, "hybridmatch CUDA solver failed to launch: ",
              cudaGetErrorString(static_cast<cudaError_t>(error)));
  return {assignment, status};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("solve_batch", &solve_batch, "Batched assignment (CUDA, one block per problem)", py::arg("cost"),
        py::arg("num_targets"), py::arg("capacity"), py::arg("maximize"));
}
