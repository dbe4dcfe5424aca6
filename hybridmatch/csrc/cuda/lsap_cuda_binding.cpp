// hybridmatch CUDA target, Python binding (hybridmatch._lsap_cuda, nanobind): launches
// csrc/cuda/lsap_cuda.cu on the stream it is given. Tensors arrive through DLPack, so
// the module does not link libtorch; the Python side (hybridmatch/solvers/_native.py)
// allocates the outputs and the workspace on the cost's device, and passes torch's
// current stream. Nothing here waits for the GPU.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>

#include <cuda_runtime.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

namespace nb = nanobind;

extern "C" int64_t hybridmatch_workspace_bytes(int64_t n, int64_t m, int64_t capacity, int64_t* shared_bytes);
extern "C" int hybridmatch_launch_lsap(int dtype, const void* cost, const void* cost_t, const int64_t* num_targets,
                                       int64_t batch, int64_t n, int64_t m, int64_t capacity, int maximize,
                                       int64_t* assignment, int64_t* status, void* workspace,
                                       int64_t workspace_stride, int64_t shared_limit, cudaStream_t stream);

namespace {

using Cost = nb::ndarray<nb::ro, nb::ndim<3>, nb::c_contig, nb::device::cuda>;
using Counts = nb::ndarray<nb::ro, const int64_t, nb::ndim<1>, nb::c_contig, nb::device::cuda>;
using Rows = nb::ndarray<int64_t, nb::ndim<2>, nb::c_contig, nb::device::cuda>;
using Bytes = nb::ndarray<uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cuda>;

// (global bytes per problem, a multiple of 256; shared bytes of its column state).
std::pair<int64_t, int64_t> workspace_bytes(int64_t n, int64_t m, int64_t capacity) {
  int64_t shared = 0;
  const int64_t stride = hybridmatch_workspace_bytes(n, m, capacity, &shared);
  return {stride, shared};
}

// cost (B, N, M) float32/float64 on the GPU; cost_t (B, M, N) its transpose, or None
// when no problem is solved targets-side; num_targets (B,) int64 on the same GPU (the
// kernel reports one outside [0, M] as status 4); assignment (B, N), status (B, 3)
// int64 and workspace (>= B * stride bytes) on the GPU; stream: a cudaStream_t as an
// integer (torch.cuda.current_stream().cuda_stream).
void launch(Cost cost, std::optional<Cost> cost_t, Counts num_targets, int64_t capacity, bool maximize,
            Rows assignment, Rows status, Bytes workspace, int64_t workspace_stride, int64_t shared_limit,
            uintptr_t stream) {
  const int64_t batch = cost.shape(0), n = cost.shape(1), m = cost.shape(2);
  const nb::dlpack::dtype dtype = cost.dtype();
  const bool is_float = dtype == nb::dtype<float>();
  if (!is_float && dtype != nb::dtype<double>()) throw std::invalid_argument("cost must be float32 or float64");
  if (cost_t && cost_t->dtype() != dtype) throw std::invalid_argument("cost_t must have the cost's dtype");
  if (capacity < 1) throw std::invalid_argument("capacity must be >= 1");
  if (n > INT32_MAX || m * capacity > INT32_MAX)
    throw std::invalid_argument("problem too large for the CUDA solver: N and M * capacity must fit in int32");
  if (static_cast<int64_t>(num_targets.shape(0)) != batch || static_cast<int64_t>(assignment.shape(0)) != batch ||
      static_cast<int64_t>(assignment.shape(1)) != n || static_cast<int64_t>(status.shape(0)) != batch ||
      status.shape(1) != 3)
    throw std::invalid_argument("num_targets, assignment and status must be (B,), (B, N) and (B, 3)");
  if (static_cast<int64_t>(workspace.shape(0)) < batch * workspace_stride)
    throw std::invalid_argument("workspace is smaller than B * workspace_stride bytes");
  const int device = cost.device_id();
  int current = -1;
  cudaError_t error = cudaGetDevice(&current);
  if (error == cudaSuccess && current != device) error = cudaSetDevice(device);
  if (error == cudaSuccess) {
    error = static_cast<cudaError_t>(hybridmatch_launch_lsap(
        is_float ? 0 : 1, cost.data(), cost_t ? cost_t->data() : nullptr, num_targets.data(), batch, n, m,
        capacity, maximize ? 1 : 0, assignment.data(), status.data(), workspace.data(), workspace_stride,
        shared_limit, reinterpret_cast<cudaStream_t>(stream)));
  }
  if (error != cudaSuccess)
    throw std::runtime_error(std::string("hybridmatch CUDA solver failed to launch: ") + cudaGetErrorString(error));
}

}  // namespace

NB_MODULE(_lsap_cuda, m) {
  m.doc() = "hybridmatch's batched assignment solver on the GPU (csrc/cuda/lsap_cuda.cu).";
  m.def("workspace_bytes", &workspace_bytes, nb::arg("n"), nb::arg("m"), nb::arg("capacity"),
        "(global bytes per problem, shared bytes of its column state) of a (N, M, capacity) problem.");
  m.def("launch", &launch, nb::arg("cost"), nb::arg("cost_t").none(), nb::arg("num_targets"), nb::arg("capacity"),
        nb::arg("maximize"), nb::arg("assignment"), nb::arg("status"), nb::arg("workspace"),
        nb::arg("workspace_stride"), nb::arg("shared_limit"), nb::arg("stream"),
        nb::call_guard<nb::gil_scoped_release>(), "Launch one block per problem on `stream`; never waits.");
}
