// A small SIMT emulation of the CUDA runtime, for running hybridmatch's kernel source
// (csrc/cuda/lsap_cuda.cu) on the CPU in CI. tests/test_kernel_emulation.py puts this
// folder first on the include path, so `#include <cuda_runtime.h>` lands here, and
// rewrites the two constructs C++ cannot parse: `kernel<<<grid, block, shmem, stream>>>(...)`
// becomes `hm_emu::launch(kernel, grid, block, shmem, stream)(...)`, and
// `extern __shared__ ... name[];` a pointer to this block's dynamic shared memory.
//
// Semantics emulated (what the kernel relies on):
// - One block at a time; its blockDim.x threads are std::threads.
// - __syncthreads(): a std::barrier over the block's threads.
// - __shfl_down_sync(full mask, v, offset) and __shfl_sync(full mask, v, lane): every lane of the warp publishes v, a
//   barrier of the warp, each lane reads lane + offset (its own value past lane 31)
//   or the given lane;
//   two slot sets alternate, so a set is rewritten only after the next barrier. All
//   32 lanes must take part, as on the GPU with a full mask.
// - A thread that returns leaves every barrier (as exited threads do on the GPU).
// - atomicMin on unsigned long long: a compare-and-swap loop on std::atomic_ref.
// - A launch whose dynamic shared memory exceeds what the kernel may take is refused
//   (cudaErrorInvalidConfiguration): 48 KiB minus its static shared memory, unless
//   cudaFuncSetAttribute raised that kernel's limit, as on the GPU.
// - `__shared__` variables: function statics, shared by the block's threads (blocks
//   run one after another). Dynamic shared memory is filled with 0xFF (NaN doubles,
//   -1 ints) before each block, so a read before a write shows.
// Threads run truly concurrently, so a missing barrier shows up as a wrong or
// changing result, as on the GPU (less reliably: the OS schedules the threads).
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <atomic>
#include <barrier>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using uint3 = dim3;

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
};
using cudaStream_t = void*;
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
struct cudaFuncAttributes {
  size_t sharedSizeBytes;
};

// Internal linkage: several emulated kernels load into one test process, and shared
// (GNU unique) inline variables would be one object across them.
namespace hm_emu {
namespace {

struct Block {
  unsigned threads = 0;
  std::unique_ptr<std::barrier<>> block_barrier;
  std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
  std::vector<uint64_t> lanes;  // two sets of one 8-byte slot per thread, for shuffles
  std::vector<unsigned char> dynamic_shared;
};

inline Block* current = nullptr;       // the block running now
inline thread_local dim3 thread_index;  // this thread's threadIdx
inline dim3 block_index;               // the running block's blockIdx
inline dim3 block_dim;
inline cudaError_t last_error = cudaSuccess;
// What the emulated device offers as its opt-in shared memory per block (H100/H200).
inline int optin_shared = 232448;
inline int max_dynamic_set = -1;
// Without cudaFuncSetAttribute a kernel may take 48 KiB of shared memory, its static
// shared memory included: the limit a launch is checked against, per kernel.
constexpr int kDefaultShared = 48 * 1024;
constexpr int kStaticShared = 512;  // what cudaFuncGetAttributes reports (launch::kStaticSharedBytes)
inline std::vector<std::pair<const void*, int>> raised_limits;
inline int dynamic_limit(const void* kernel) {
  for (const auto& [function, limit] : raised_limits)
    if (function == kernel) return limit;
  return kDefaultShared - kStaticShared;
}  // the last cudaFuncSetAttribute value, for tests
inline int set_attribute_calls = 0;

inline unsigned char* dynamic_shared() { return current->dynamic_shared.data(); }

inline thread_local unsigned shuffle_parity = 0;  // which of the two slot sets this lane uses next

// Every lane publishes `value` and reads lane `source(lane)`'s (its own when that is
// past the warp).
template <typename T, typename Source>
inline T shuffle(T value, Source source_of) {
  static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
  const unsigned tid = thread_index.x;
  const unsigned warp = tid / 32, lane = tid % 32;
  Block& block = *current;
  // Two slot sets used in turn: a set is written again only after the next shuffle's
  // barrier, which every lane reaches after reading this one. One barrier per shuffle.
  uint64_t* slots = block.lanes.data() + shuffle_parity * block.threads;
  shuffle_parity ^= 1u;
  uint64_t slot = 0;
  memcpy(&slot, &value, sizeof(T));
  slots[tid] = slot;
  block.warp_barriers[warp]->arrive_and_wait();
  const unsigned source = source_of(lane);
  T out = value;
  if (source < 32 && warp * 32 + source < block.threads) memcpy(&out, &slots[warp * 32 + source], sizeof(T));
  return out;
}

template <typename T>
inline T shuffle_down(T value, int offset) {
  return shuffle(value, [offset](unsigned lane) { return lane + static_cast<unsigned>(offset); });
}

template <typename T>
inline T shuffle_from(T value, int source) {
  return shuffle(value, [source](unsigned) { return static_cast<unsigned>(source) % 32u; });
}

// kernel<<<grid, block, shmem, stream>>>(args...) -> launch(kernel, grid, block, shmem, stream)(args...)
template <typename... Params>
struct Launch {
  void (*kernel)(Params...);
  dim3 grid, block;
  size_t shared_bytes;

  template <typename... Args>
  void operator()(Args... args) const {
    if (block.x == 0 || block.x % 32 != 0 || block.x > 1024 || block.y != 1 || block.z != 1 || grid.y != 1 ||
        grid.z != 1 || static_cast<int64_t>(shared_bytes) > dynamic_limit(reinterpret_cast<const void*>(kernel))) {
      last_error = cudaErrorInvalidConfiguration;
      return;
    }
    block_dim = block;
    for (unsigned b = 0; b < grid.x; ++b) {
      Block state;
      state.threads = block.x;
      state.block_barrier = std::make_unique<std::barrier<>>(block.x);
      for (unsigned w = 0; w < block.x / 32; ++w) state.warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
      state.lanes.assign(2 * block.x, 0);
      state.dynamic_shared.assign(shared_bytes + 16, 0xFF);
      current = &state;
      block_index = dim3(b);
      std::vector<std::thread> threads;
      threads.reserve(block.x);
      for (unsigned t = 0; t < block.x; ++t) {
        threads.emplace_back([&, t] {
          thread_index = dim3(t);
          shuffle_parity = 0;
          kernel(static_cast<Params>(args)...);
          // An exited thread no longer takes part in barriers (as on sm_70 and later).
          state.warp_barriers[t / 32]->arrive_and_drop();
          state.block_barrier->arrive_and_drop();
        });
      }
      for (auto& thread : threads) thread.join();
      current = nullptr;
    }
  }
};

template <typename... Params>
Launch<Params...> launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes = 0,
                         cudaStream_t = nullptr) {
  return Launch<Params...>{kernel, grid, block, shared_bytes};
}

}  // namespace
}  // namespace hm_emu

#define threadIdx (::hm_emu::thread_index)
#define blockIdx (::hm_emu::block_index)
#define blockDim (::hm_emu::block_dim)

static inline void __syncthreads() { hm_emu::current->block_barrier->arrive_and_wait(); }

template <typename T>
static inline T __shfl_down_sync(unsigned mask, T value, int offset) {
  (void)mask;
  return hm_emu::shuffle_down(value, offset);
}

template <typename T>
static inline T __shfl_sync(unsigned mask, T value, int source) {
  (void)mask;
  return hm_emu::shuffle_from(value, source);
}

static inline unsigned long long atomicMin(unsigned long long* address, unsigned long long value) {
  std::atomic_ref<unsigned long long> target(*address);
  unsigned long long old = target.load();
  while (value < old && !target.compare_exchange_weak(old, value)) {
  }
  return old;
}

static inline cudaError_t cudaGetLastError() {
  const cudaError_t error = hm_emu::last_error;
  hm_emu::last_error = cudaSuccess;
  return error;
}
static inline const char* cudaGetErrorString(cudaError_t error) { return error == cudaSuccess ? "no error" : "emulated error"; }
static inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
static inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr, int) {
  *value = hm_emu::optin_shared;
  return cudaSuccess;
}
template <typename F>
static cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attributes, F) {
  attributes->sharedSizeBytes = hm_emu::kStaticShared;  // launch::kStaticSharedBytes, the bound the kernel asserts
  return cudaSuccess;
}
template <typename F>
static cudaError_t cudaFuncSetAttribute(F function, cudaFuncAttribute, int value) {
  if (value < 0 || value + hm_emu::kStaticShared > hm_emu::optin_shared) return cudaErrorInvalidValue;
  hm_emu::raised_limits.emplace_back(reinterpret_cast<const void*>(function), value);
  hm_emu::max_dynamic_set = value;
  ++hm_emu::set_attribute_calls;
  return cudaSuccess;
}
