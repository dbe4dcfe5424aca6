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
                                       int64_t workspace_stride, int64_t shared_bytes, int use_shared,
                                       cudaStream_t stream);

namespace {

// Static shared memory of the kernel (scalars, warp partials), with room to spare.
constexpr int64_t kStaticShared = 1024;

std::vector<torch::Tensor> solve_batch(torch::Tensor cost, torch::Tensor num_targets, int64_t capacity,
                                       bool maximize) {
  TORCH_CHECK(cost.is_cuda(), "the CUDA solver needs a CUDA tensor");
  TORCH_CHECK(cost.dim() == 3, "cost must be (B, N, M)");
  TORCH_CHECK(capacity >= 1, "capacity must be >= 1");
  const c10::cuda::CUDAGuard guard(cost.device());
  // float16 / bfloat16 widen exactly to float32; the algorithm works in double.
  if (cost.scalar_type() != torch::kFloat && cost.scalar_type() != torch::kDouble) cost = cost.to(torch::kFloat);
  cost = cost.contiguous();
  const int64_t batch = cost.size(0), n = cost.size(1), m = cost.size(2);
  TORCH_CHECK(num_targets.numel() == batch, "num_targets must have B entries");
  TORCH_CHECK(n <= INT32_MAX && m * capacity <= INT32_MAX,
              "problem too large for the CUDA solver: N and M * capacity must fit in int32");
  // Targets x queries: the layout the targets-side orientation reads row by row.
  auto cost_t = cost.transpose(1, 2).contiguous();
  num_targets = num_targets.to(cost.device(), torch::kInt64).contiguous();

  int64_t shared_bytes = 0;
  int64_t stride = hybridmatch_workspace_bytes(n, m, capacity, &shared_bytes);
  stride = (stride + 255) / 256 * 256;
  int max_shared = 0;
  cudaDeviceGetAttribute(&max_shared, cudaDevAttrMaxSharedMemoryPerBlockOptin, cost.device().index());
  const int use_shared = shared_bytes + kStaticShared <= max_shared ? 1 : 0;

  auto options = cost.options();
  auto workspace = torch::empty({std::max<int64_t>(batch * stride, 1)}, options.dtype(torch::kUInt8));
  auto assignment = torch::empty({batch, n}, options.dtype(torch::kInt64));
  auto status = torch::empty({batch, 3}, options.dtype(torch::kInt64));
  const int dtype = cost.scalar_type() == torch::kFloat ? 0 : 1;
  const int error = hybridmatch_launch_lsap(
      dtype, cost.data_ptr(), cost_t.data_ptr(), num_targets.data_ptr<int64_t>(), batch, n, m, capacity,
      maximize ? 1 : 0, assignment.data_ptr<int64_t>(), status.data_ptr<int64_t>(), workspace.data_ptr(), stride,
      shared_bytes, use_shared, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(error == 0, "hybridmatch CUDA solver failed to launch: ",
              cudaGetErrorString(static_cast<cudaError_t>(error)));
  return {assignment, status};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("solve_batch", &solve_batch, "Batched assignment (CUDA, one block per problem)", py::arg("cost"),
        py::arg("num_targets"), py::arg("capacity"), py::arg("maximize"));
}
