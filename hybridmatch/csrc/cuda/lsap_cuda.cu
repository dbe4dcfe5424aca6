// hybridmatch CUDA target: the shared algorithm (lsap_core.h), one thread block per
// problem. Column loops are strided over the block's threads and the next column is
// found with a block-wide argmin; per-column state lives in shared memory when it
// fits. No host synchronisation: each problem writes a status row that the Python
// entry point reads once after the launch. Plain CUDA (no torch headers), so that it
// compiles stand-alone for a syntax check.
#include <cuda_runtime.h>
#include <stdint.h>

#include "../lsap_core.h"

namespace hybridmatch {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

struct Candidate {
  double value;
  int32_t index;
  int32_t is_free;
};

// (value, not free, index), lexicographically: the CPU target's tie rule.
__device__ __forceinline__ bool better(const Candidate& a, const Candidate& b) {
  if (a.index < 0) return false;
  if (b.index < 0) return true;
  if (a.value != b.value) return a.value < b.value;
  if (a.is_free != b.is_free) return a.is_free > b.is_free;
  return a.index < b.index;
}

__device__ __forceinline__ Candidate shuffle_down(const Candidate& c, int offset) {
  Candidate out;
  out.value = __shfl_down_sync(0xffffffffu, c.value, offset);
  out.index = __shfl_down_sync(0xffffffffu, c.index, offset);
  out.is_free = __shfl_down_sync(0xffffffffu, c.is_free, offset);
  return out;
}

struct BlockExec {
  int32_t* ints;        // 2 shared scalars
  double* doubles;      // 1 shared scalar
  Candidate* partial;   // kWarps, then the block's winner at [kWarps]

  template <typename F>
  __device__ void for_each(int32_t n, F f) {
    for (int32_t j = threadIdx.x; j < n; j += blockDim.x) f(j);
    __syncthreads();
  }

  template <typename Key, typename Free>
  __device__ int32_t argmin_cols(int32_t n, Key key, Free is_free) {
    Candidate best{kInf, -1, 0};
    for (int32_t j = threadIdx.x; j < n; j += blockDim.x) {
      const double value = key(j);
      if (value < kInf) {
        Candidate c{value, j, is_free(j) ? 1 : 0};
        if (better(c, best)) best = c;
      }
    }
    for (int offset = 16; offset > 0; offset /= 2) {
      const Candidate other = shuffle_down(best, offset);
      if (better(other, best)) best = other;
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) partial[warp] = best;
    __syncthreads();
    if (warp == 0) {
      best = lane < kWarps ? partial[lane] : Candidate{kInf, -1, 0};
      for (int offset = 16; offset > 0; offset /= 2) {
        const Candidate other = shuffle_down(best, offset);
        if (better(other, best)) best = other;
      }
      if (lane == 0) partial[kWarps] = best;
    }
    __syncthreads();
    return partial[kWarps].index;
  }

  template <typename F>
  __device__ void single(F f) {
    if (threadIdx.x == 0) f();
    __syncthreads();
  }

  __device__ int32_t& shared_int(int index) { return ints[index]; }
  __device__ double& shared_double(int index) { return doubles[index]; }
};

// First bad entry of one problem's real block (in query-major order), or -1.
template <typename T>
__device__ int64_t first_bad(const T* cost, int64_t n, int64_t m, int64_t m_real, double sign, int64_t* kind,
                             long long* shared_min) {
  if (threadIdx.x == 0) *shared_min = -1;
  __syncthreads();
  long long found = -1;
  const long long total = n * m_real;
  for (long long e = threadIdx.x; e < total; e += blockDim.x) {
    const double x = sign * static_cast<double>(cost[(e / m_real) * m + e % m_real]);
    if (x != x || x == -kInf) {
      found = e;
      break;  // the first bad entry of this thread's stride
    }
  }
  // Block-wide minimum of the found positions (as unsigned: -1 is the largest).
  if (found >= 0) atomicMin(reinterpret_cast<unsigned long long*>(shared_min), static_cast<unsigned long long>(found));
  __syncthreads();
  const long long first = *shared_min;
  if (first >= 0 && threadIdx.x == 0) {
    const double x = static_cast<double>(cost[(first / m_real) * m + first % m_real]);
    *kind = x != x ? kNaN : kBadInfinity;
  }
  __syncthreads();
  return first;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    lsap_kernel(const T* cost, const T* cost_t, const int64_t* num_targets, int64_t n, int64_t m, int64_t capacity,
                double sign, int64_t* assignment, int64_t* status, uint8_t* global_workspace,
                int64_t workspace_stride, int shared_columns) {
  const int64_t b = blockIdx.x;
  const int64_t m_real = num_targets[b];
  int64_t* out = assignment + b * n;
  int64_t* st = status + b * 3;

  extern __shared__ __align__(16) uint8_t shared[];
  __shared__ int32_t ints[2];
  __shared__ double doubles[1];
  __shared__ Candidate partial[kWarps + 1];
  __shared__ long long shared_min;
  __shared__ int64_t bad_kind;

  for (int64_t q = threadIdx.x; q < n; q += blockDim.x) out[q] = -1;
  if (threadIdx.x == 0) {
    st[0] = kOk;
    st[1] = -1;
    st[2] = -1;
  }
  __syncthreads();
  if (n == 0 || m_real == 0) return;

  const T* problem = cost + b * n * m;
  // Validation in the kernel: no host round trip, the status row reports it.
  // (The sign is folded in: when maximising, +inf is the bad infinity.)
  const int64_t bad = first_bad(problem, n, m, m_real, sign, &bad_kind, &shared_min);
  if (bad >= 0) {
    if (threadIdx.x == 0) {
      st[0] = bad_kind;
      st[1] = bad / m_real;
      st[2] = bad % m_real;
    }
    return;
  }

  const bool by_targets = targets_are_rows(n, m_real, capacity);
  const Problem<T> p = orient(by_targets ? cost_t + b * m * n : problem, n, m_real, m, capacity, by_targets, sign);

  // Columns: in shared memory when they fit, else in this problem's global slice.
  uint8_t* column_base = shared_columns ? shared : global_workspace + b * workspace_stride;
  uint8_t* row_base = global_workspace + b * workspace_stride;
  Workspace w;
  // Layout: doubles first (8-byte aligned), then int32, then bytes.
  size_t offset = 0;
  int64_t max_cols = n > m * capacity ? n : m * capacity;
  w.dist = reinterpret_cast<double*>(column_base + offset);
  offset += sizeof(double) * max_cols;
  w.v = reinterpret_cast<double*>(column_base + offset);
  offset += sizeof(double) * max_cols;
  w.pred = reinterpret_cast<int32_t*>(column_base + offset);
  offset += sizeof(int32_t) * max_cols;
  w.owner = reinterpret_cast<int32_t*>(column_base + offset);
  offset += sizeof(int32_t) * max_cols;
  w.settled = column_base + offset;
  offset += max_cols;
  // Rows always live in global memory, after the (possibly unused) column slice.
  size_t row_offset = shared_columns ? 0 : ((offset + 7) / 8) * 8;
  const int64_t max_rows = n > m ? n : m;
  w.u = reinterpret_cast<double*>(row_base + row_offset);
  row_offset += sizeof(double) * max_rows;
  w.seen = reinterpret_cast<int32_t*>(row_base + row_offset);
  row_offset += sizeof(int32_t) * max_rows;
  w.entry = reinterpret_cast<int32_t*>(row_base + row_offset);
  row_offset += sizeof(int32_t) * max_rows;
  w.assigned = reinterpret_cast<int32_t*>(row_base + row_offset);

  BlockExec exec{ints, doubles, partial};
  if (!solve(exec, p, w)) {
    if (threadIdx.x == 0) st[0] = kInfeasible;
    return;
  }
  if (by_targets) {
    for (int64_t q = threadIdx.x; q < n; q += blockDim.x) out[q] = w.owner[q];
  } else {
    for (int64_t q = threadIdx.x; q < n; q += blockDim.x) out[q] = w.assigned[q] % m_real;
  }
}

}  // namespace

// Bytes of global workspace one problem needs, and of shared memory for its columns.
extern "C" int64_t hybridmatch_workspace_bytes(int64_t n, int64_t m, int64_t capacity, int64_t* shared_bytes) {
  const int64_t max_cols = n > m * capacity ? n : m * capacity;
  const int64_t max_rows = n > m ? n : m;
  const int64_t assigned = max_cols;  // rows * demand <= max(N, M * K)
  const int64_t columns = (2 * sizeof(double) + 2 * sizeof(int32_t) + 1) * max_cols;
  const int64_t rows = (sizeof(double) + 2 * sizeof(int32_t)) * max_rows + sizeof(int32_t) * assigned;
  *shared_bytes = columns;
  return ((columns + 7) / 8) * 8 + rows + 16;
}

// Launch one block per problem on `stream`. dtype: 0 float32, 1 float64.
// Returns a cudaError_t value (0 = launched).
extern "C" int hybridmatch_launch_lsap(int dtype, const void* cost, const void* cost_t, const int64_t* num_targets,
                                       int64_t batch, int64_t n, int64_t m, int64_t capacity, int maximize,
                                       int64_t* assignment, int64_t* status, void* workspace,
                                       int64_t workspace_stride, int64_t shared_bytes, int use_shared,
                                       cudaStream_t stream) {
  if (batch == 0) return 0;
  const double sign = maximize ? -1.0 : 1.0;
  const size_t dynamic = use_shared ? static_cast<size_t>(shared_bytes) : 0;
  cudaError_t error;
  if (dtype == 0) {
    error = cudaFuncSetAttribute(lsap_kernel<float>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(dynamic));
    if (error != cudaSuccess) return error;
    lsap_kernel<float><<<static_cast<unsigned>(batch), kThreads, dynamic, stream>>>(
        static_cast<const float*>(cost), static_cast<const float*>(cost_t), num_targets, n, m, capacity, sign,
        assignment, status, static_cast<uint8_t*>(workspace), workspace_stride, use_shared);
  } else {
    error = cudaFuncSetAttribute(lsap_kernel<double>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(dynamic));
    if (error != cudaSuccess) return error;
    lsap_kernel<double><<<static_cast<unsigned>(batch), kThreads, dynamic, stream>>>(
        static_cast<const double*>(cost), static_cast<const double*>(cost_t), num_targets, n, m, capacity, sign,
        assignment, status, static_cast<uint8_t*>(workspace), workspace_stride, use_shared);
  }
  return cudaGetLastError();
}

}  // namespace hybridmatch
