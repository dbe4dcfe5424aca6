// hybridmatch CUDA target: the shared algorithm (lsap_core.h), one thread block per
// problem. Column loops are strided over the block's threads and the next column is
// found with a block-wide argmin; per-column state lives in shared memory when it
// fits. No host synchronisation: each problem writes a status row that the Python
// entry point reads once after the launch. Plain CUDA (no torch headers), so that it
// compiles stand-alone for a syntax check, and on the CPU under the SIMT emulation of
// tests/emulation (which runs this file's kernel with std::threads).
#include <cuda_runtime.h>
#include <stdint.h>

#include <mutex>

#include "../lsap_core.h"
#include "../lsap_launch.h"

namespace hybridmatch {
namespace {

using launch::kThreads;
using launch::kWarps;

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

__device__ __forceinline__ Candidate shuffle_from(const Candidate& c, int lane) {
  Candidate out;
  out.value = __shfl_sync(0xffffffffu, c.value, lane);
  out.index = __shfl_sync(0xffffffffu, c.index, lane);
  out.is_free = __shfl_sync(0xffffffffu, c.is_free, lane);
  return out;
}

// Column j is visited by thread j % blockDim.x in every loop. The argmin's warp
// minima go through shared memory in two alternating sets: a set is rewritten two
// calls later, after the next call's barrier, which every thread reaches only once
// it has read this set. So one barrier per search step.
struct BlockExec {
  Candidate* partial;  // 2 * kWarps
  int parity;

  // Column loops count in uint32: `j += blockDim.x` past n < 2^31 stays below 2^32,
  // where an int32 counter would overflow for n within blockDim.x of 2^31.
  template <typename F>
  __device__ void for_each(int32_t n, F f) {
    for (uint32_t j = threadIdx.x; j < static_cast<uint32_t>(n); j += blockDim.x) f(static_cast<int32_t>(j));
  }

  template <typename Key, typename Free>
  __device__ Pick argmin_cols(int32_t n, Key key, Free is_free) {
    Candidate best{kInf, -1, 0};
    for (uint32_t column = threadIdx.x; column < static_cast<uint32_t>(n); column += blockDim.x) {
      const int32_t j = static_cast<int32_t>(column);
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
    Candidate* set = partial + parity * kWarps;
    parity ^= 1;
    if (lane == 0) set[warp] = best;
    __syncthreads();
    // Every warp reduces the warp minima itself: the same values in the same order,
    // so every thread gets the same winner.
    best = lane < kWarps ? set[lane] : Candidate{kInf, -1, 0};
    for (int offset = 16; offset > 0; offset /= 2) {
      const Candidate other = shuffle_down(best, offset);
      if (better(other, best)) best = other;
    }
    best = shuffle_from(best, 0);
    return Pick{best.index, best.value, best.is_free != 0};
  }

  template <typename F>
  __device__ void once(F f) {
    if (threadIdx.x == 0) f();
  }

  template <typename F>
  __device__ void on_column(int32_t j, F f) {
    if (j % static_cast<int32_t>(blockDim.x) == static_cast<int32_t>(threadIdx.x)) f();
  }

  __device__ void sync() { __syncthreads(); }
};

// The kernel's static shared memory: scalars of the algorithm and the warp partials.
struct StaticShared {
  Candidate partial[2 * kWarps];
  long long shared_min;
  int64_t bad_kind;
};
static_assert(sizeof(StaticShared) <= launch::kStaticSharedBytes, "raise launch::kStaticSharedBytes");

// First bad entry of one problem's real block (in query-major order), or -1.
// Thread t visits entries t, t + blockDim, ... : its (query, target) steps by a fixed
// (blockDim / m_real, blockDim % m_real) with one carry, no division per entry.
template <typename T>
__device__ int64_t first_bad(const T* cost, int64_t n, int64_t m, int64_t m_real, double sign, int64_t* kind,
                             long long* shared_min) {
  if (threadIdx.x == 0) *shared_min = -1;
  __syncthreads();
  long long found = -1;
  const long long total = n * m_real;
  const int64_t step_q = blockDim.x / m_real, step_t = blockDim.x % m_real;
  int64_t q = threadIdx.x / m_real, t = threadIdx.x % m_real;
  for (long long e = threadIdx.x; e < total; e += blockDim.x) {
    const double x = sign * static_cast<double>(cost[q * m + t]);
    if (x != x || x == -kInf) {
      found = e;
      break;  // the first bad entry of this thread's stride
    }
    q += step_q;
    t += step_t;
    if (t >= m_real) {
      t -= m_real;
      ++q;
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
  // No barrier here: *kind is read by thread 0 only, and *shared_min is not written
  // again (tests/test_kernel_races.py checks that every barrier left is needed).
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
  __shared__ StaticShared scalars;

  for (int64_t q = threadIdx.x; q < n; q += blockDim.x) out[q] = -1;
  if (threadIdx.x == 0) {
    const bool counted = m_real >= 0 && m_real <= m;
    st[0] = counted ? kOk : kBadCount;
    st[1] = counted ? -1 : m_real;
    st[2] = counted ? -1 : m;
  }
  // Every thread reads the same count and sizes: all leave together, before any barrier.
  // (The status row is written by thread 0 only: no barrier is needed after it.)
  if (m_real < 0 || m_real > m) return;
  if (n == 0 || m_real == 0) return;

  const T* problem = cost + b * n * m;
  // Validation in the kernel: no host round trip, the status row reports it.
  // (The sign is folded in: when maximising, +inf is the bad infinity.)
  const int64_t bad = first_bad(problem, n, m, m_real, sign, &scalars.bad_kind, &scalars.shared_min);
  if (bad >= 0) {
    if (threadIdx.x == 0) {
      st[0] = scalars.bad_kind;
      st[1] = bad / m_real;
      st[2] = bad % m_real;
    }
    return;
  }

  const bool by_targets = targets_are_rows(n, m_real, capacity);
  const Problem<T> p = orient(by_targets ? cost_t + b * m * n : problem, n, m_real, m, capacity, by_targets, sign);

  // Columns: in shared memory when they fit, else in this problem's global slice,
  // whose rows follow the room for the columns (lsap_launch.h).
  uint8_t* slice = global_workspace + b * workspace_stride;
  const int64_t max_cols = launch::max_columns(n, m, capacity);
  const launch::ColumnLayout c = launch::column_layout(max_cols);
  const launch::RowLayout r = launch::row_layout(shared_columns ? 0 : c.bytes, n > m ? n : m, max_cols);
  uint8_t* column_base = shared_columns ? shared : slice;
  Workspace w;
  w.dist = reinterpret_cast<double*>(column_base + c.dist);
  w.v = reinterpret_cast<double*>(column_base + c.v);
  w.pred = reinterpret_cast<int32_t*>(column_base + c.pred);
  w.owner = reinterpret_cast<int32_t*>(column_base + c.owner);
  w.settled = column_base + c.settled;
  w.u = reinterpret_cast<double*>(slice + r.u);
  w.seen = reinterpret_cast<int32_t*>(slice + r.seen);
  w.entry = reinterpret_cast<int32_t*>(slice + r.entry);
  w.assigned = reinterpret_cast<int32_t*>(slice + r.assigned);

  BlockExec exec{scalars.partial, 0};
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

// The most dynamic shared memory a block of each kernel may take, per device: the
// device's opt-in limit minus the kernel's static shared memory. The kernels' limit
// is raised to it once per device (under a lock), never per call: a per-call set
// would race with a launch of another host thread.
constexpr int kMaxDevices = 64;

struct DeviceLimits {
  bool ready = false;
  int64_t max_dynamic[2] = {0, 0};  // float32, float64
};

template <typename T>
cudaError_t raise_limit(int optin, int64_t* max_dynamic) {
  cudaFuncAttributes attributes;
  cudaError_t error = cudaFuncGetAttributes(&attributes, lsap_kernel<T>);
  if (error != cudaSuccess) return error;
  const int64_t room = static_cast<int64_t>(optin) - static_cast<int64_t>(attributes.sharedSizeBytes);
  *max_dynamic = room > 0 ? room : 0;
  return cudaFuncSetAttribute(lsap_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(*max_dynamic));
}

cudaError_t device_limit(int dtype, int64_t* max_dynamic) {
  static std::mutex mutex;
  static DeviceLimits limits[kMaxDevices];
  int device = 0;
  cudaError_t error = cudaGetDevice(&device);
  if (error != cudaSuccess) return error;
  if (device < 0 || device >= kMaxDevices) return cudaErrorInvalidDevice;
  const std::lock_guard<std::mutex> lock(mutex);
  DeviceLimits& limit = limits[device];
  if (!limit.ready) {
    int optin = 0;
    error = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (error == cudaSuccess) error = raise_limit<float>(optin, &limit.max_dynamic[0]);
    if (error == cudaSuccess) error = raise_limit<double>(optin, &limit.max_dynamic[1]);
    if (error != cudaSuccess) return error;
    limit.ready = true;
  }
  *max_dynamic = limit.max_dynamic[dtype == 0 ? 0 : 1];
  return cudaSuccess;
}

}  // namespace

// Bytes of global workspace one problem needs (a multiple of 256), and of shared
// memory for its columns (lsap_launch.h's plan).
extern "C" int64_t hybridmatch_workspace_bytes(int64_t n, int64_t m, int64_t capacity, int64_t* shared_bytes) {
  const launch::Plan plan = launch::plan(1, n, m, capacity, INT64_MAX);
  *shared_bytes = plan.column_bytes;
  return plan.workspace_stride;
}

// Launch one block per problem on `stream`. dtype: 0 float32, 1 float64. `cost_t` (the
// targets x queries copy) may be null when no problem is solved targets-side
// (num_targets[b] * capacity <= n for none of them). `shared_limit`: the most dynamic
// shared memory to use, < 0 for the device's limit (0 forces the global fallback).
// Returns a cudaError_t value (0 = launched): an error of this launch only.
extern "C" int hybridmatch_launch_lsap(int dtype, const void* cost, const void* cost_t, const int64_t* num_targets,
                                       int64_t batch, int64_t n, int64_t m, int64_t capacity, int maximize,
                                       int64_t* assignment, int64_t* status, void* workspace,
                                       int64_t workspace_stride, int64_t shared_limit, cudaStream_t stream) {
  if (batch == 0) return 0;
  int64_t max_dynamic = 0;
  cudaError_t error = device_limit(dtype, &max_dynamic);
  if (error != cudaSuccess) return error;
  if (shared_limit >= 0 && shared_limit < max_dynamic) max_dynamic = shared_limit;
  const launch::Plan plan = launch::plan(batch, n, m, capacity, max_dynamic);
  if (workspace_stride < plan.workspace_stride) return cudaErrorInvalidValue;
  if (plan.grid > launch::kMaxGrid) return cudaErrorInvalidConfiguration;  // one block per problem
  const double sign = maximize ? -1.0 : 1.0;
  const size_t dynamic = static_cast<size_t>(plan.shared_bytes);
  const int use_shared = plan.shared_columns ? 1 : 0;
  // A stale error of earlier work would otherwise be reported as this launch's.
  (void)cudaGetLastError();
  if (dtype == 0) {
    lsap_kernel<float><<<static_cast<unsigned>(plan.grid), plan.threads, dynamic, stream>>>(
        static_cast<const float*>(cost), static_cast<const float*>(cost_t), num_targets, n, m, capacity, sign,
        assignment, status, static_cast<uint8_t*>(workspace), workspace_stride, use_shared);
  } else {
    lsap_kernel<double><<<static_cast<unsigned>(plan.grid), plan.threads, dynamic, stream>>>(
        static_cast<const double*>(cost), static_cast<const double*>(cost_t), num_targets, n, m, capacity, sign,
        assignment, status, static_cast<uint8_t*>(workspace), workspace_stride, use_shared);
  }
  return cudaGetLastError();
}

}  // namespace hybridmatch
