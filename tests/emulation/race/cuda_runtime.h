// An adversarial SIMT emulation of the CUDA runtime with a race detector, for running
// hybridmatch's kernel source (csrc/cuda/lsap_cuda.cu) on the CPU in CI
// (tests/test_kernel_races.py). Same launch/shared-memory rewrite as ../cuda_runtime.h,
// plus one more: `__shared__ T name;` becomes a static that is registered as watched.
//
// - Each CUDA thread of a block is a fiber (ucontext) on one OS thread; a seeded random
//   scheduler picks the next fiber at every barrier, every shuffle and, with probability
//   1/kSwitchEvery, at every access to watched memory. So interleavings no OS scheduler
//   would produce are tried, and a run is reproducible from its seed.
// - Memory accesses are seen through GCC's ThreadSanitizer instrumentation: the kernel is
//   compiled with -fsanitize=thread (and linked without its runtime), and the
//   __tsan_read/write callbacks below record every access to watched memory: dynamic and
//   static shared memory, and the ranges the test registers (the global workspace and the
//   outputs).
// - Race detector: two threads touching the same byte between the same pair of block
//   barriers (__syncthreads), at least one of them writing, is a race; atomics conflict
//   only with plain accesses. Warp shuffles exchange registers, not memory: they order
//   nothing here.
// - Barrier sites: the threads released by a barrier must all have arrived through the
//   same __syncthreads (or, for a shuffle, the same __shfl_*_sync), else "divergence".
// - No fiber runnable and no barrier complete: "deadlock". A run past kStepLimit watched
//   accesses: "step limit" (a thread searching forever).
// The first findings are kept in a report the test reads (hm_emu_report); a launch with
// a finding stops and returns an error.
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <ucontext.h>

#include <algorithm>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static

#define HM_EMU_PLAIN __attribute__((no_sanitize_thread, noinline))

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using uint3 = dim3;

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
  cudaErrorInvalidDevice = 101,
};
using cudaStream_t = void*;
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
struct cudaFuncAttributes {
  size_t sharedSizeBytes;
};

namespace hm_emu {
namespace {

constexpr unsigned kSwitchEvery = 3;         // a random switch at 1 in 3 watched accesses
constexpr uint64_t kStepLimit = 200000000;   // watched accesses per launch
constexpr size_t kStackBytes = 256 * 1024;
constexpr int kMaxFindings = 8;

enum State { kRunnable, kAtBlock, kAtWarp, kDone };

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  dim3 index;
  State state = kRunnable;
  int site = 0;            // the barrier or shuffle line it waits at
  unsigned parity = 0;     // which of the two shuffle slot sets it uses next
};

// One access record per watched byte, for the current barrier interval.
struct Record {
  uint64_t epoch = ~0ull;
  int writer = -1;         // a plain write's thread
  int reader = -1;         // the first plain reader's thread
  bool readers = false;    // more than one thread read it
  int atomic = -1;         // the first atomic user's thread
  bool atomics = false;    // more than one thread used it atomically
};

struct Region {
  const unsigned char* begin;
  size_t bytes;
  std::string name;
  std::vector<Record> records;
};

struct Scheduler {
  std::vector<Fiber> fibers;
  ucontext_t main;
  Fiber* current = nullptr;
  std::mt19937_64 random;
  uint64_t epoch = 0;       // completed block barriers since the launch started
  uint64_t steps = 0;
  bool running = false;     // fibers are executing (accesses are recorded)
  bool stop = false;        // a finding ends the launch
  int in_hook = 0;          // the callbacks' own accesses are not recorded
  std::vector<uint64_t> lanes;  // two sets of one 8-byte slot per thread, for shuffles
  std::vector<unsigned char> dynamic_shared;
  std::vector<Region> regions;         // watched memory, the block's shared memory first
  std::vector<std::string> findings;
  uint64_t seed = 1;
};

inline Scheduler sched;
inline dim3 block_index;
inline dim3 block_dim;
inline cudaError_t last_error = cudaSuccess;
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
}
inline int set_attribute_calls = 0;

HM_EMU_PLAIN void finding(const std::string& text) {
  if (static_cast<int>(sched.findings.size()) < kMaxFindings) sched.findings.push_back(text);
  sched.stop = true;
}

HM_EMU_PLAIN unsigned char* dynamic_shared() { return sched.dynamic_shared.data(); }

HM_EMU_PLAIN void watch(const void* begin, size_t bytes, const char* name) {
  ++sched.in_hook;  // the vector below may move while it is searched
  bool known = false;
  for (const Region& r : sched.regions) known |= r.begin == begin;
  if (!known) {
    Region region{static_cast<const unsigned char*>(begin), bytes, name, {}};
    region.records.resize(bytes);
    sched.regions.push_back(std::move(region));
  }
  --sched.in_hook;
}

// Back to the scheduler; returns when this fiber is picked again.
HM_EMU_PLAIN void yield(State state, int site) {
  Fiber* self = sched.current;
  self->state = state;
  self->site = site;
  swapcontext(&self->context, &sched.main);
  if (sched.stop) {  // abandon this fiber: never resumed again
    self->state = kDone;
    swapcontext(&self->context, &sched.main);
  }
}

HM_EMU_PLAIN void record(const void* address, size_t size, bool write, bool atomic) {
  if (!sched.running || sched.in_hook) return;
  ++sched.in_hook;  // from here, accesses made by this function itself are not recorded
  const unsigned char* p = static_cast<const unsigned char*>(address);
  Region* region = nullptr;
  for (Region& r : sched.regions) {
    if (p >= r.begin && p < r.begin + r.bytes) {
      region = &r;
      break;
    }
  }
  if (region == nullptr) {
    --sched.in_hook;
    return;
  }
  const int thread = static_cast<int>(sched.current->index.x);
  for (size_t k = 0; k < size && p + k < region->begin + region->bytes; ++k) {
    Record& r = region->records[p + k - region->begin];
    if (r.epoch != sched.epoch) r = Record{sched.epoch};
    const char* kind = nullptr;
    int other = -1;
    if (atomic) {
      if (r.writer >= 0 && r.writer != thread) kind = "plain write / atomic", other = r.writer;
      else if (r.reader >= 0 && (r.readers || r.reader != thread)) kind = "plain read / atomic", other = r.reader;
      if (r.atomic < 0) r.atomic = thread;
      else if (r.atomic != thread) r.atomics = true;
    } else if (write) {
      if (r.writer >= 0 && r.writer != thread) kind = "write / write", other = r.writer;
      else if (r.reader >= 0 && (r.readers || r.reader != thread)) kind = "read / write", other = r.reader;
      else if (r.atomic >= 0 && (r.atomics || r.atomic != thread)) kind = "atomic / write", other = r.atomic;
      r.writer = thread;
    } else {
      if (r.writer >= 0 && r.writer != thread) kind = "write / read", other = r.writer;
      else if (r.atomic >= 0 && (r.atomics || r.atomic != thread)) kind = "atomic / read", other = r.atomic;
      if (r.reader < 0) r.reader = thread;
      else if (r.reader != thread) r.readers = true;
    }
    if (kind != nullptr) {
      char text[256];
      snprintf(text, sizeof text, "race (%s) on %s byte %zu between threads %d and %d of block %u, barrier interval %llu",
               kind, region->name.c_str(), static_cast<size_t>(p + k - region->begin), other, thread, block_index.x,
               static_cast<unsigned long long>(sched.epoch));
      finding(text);
      break;
    }
  }
  if (++sched.steps > kStepLimit) finding("step limit: a thread ran past the watched-access budget (a search that never ends?)");
  const bool switch_now = sched.stop || sched.random() % kSwitchEvery == 0;
  --sched.in_hook;
  if (switch_now) yield(kRunnable, 0);
}

// Release the barriers that are complete; false when nothing can run (deadlock).
HM_EMU_PLAIN bool release() {
  std::vector<Fiber>& fibers = sched.fibers;
  bool any_runnable = false, any_live = false, all_at_block = true;
  for (const Fiber& f : fibers) {
    if (f.state == kDone) continue;
    any_live = true;
    if (f.state == kRunnable) any_runnable = true;
    if (f.state != kAtBlock) all_at_block = false;
  }
  if (any_runnable || !any_live) return true;
  if (all_at_block) {
    int site = -1;
    for (const Fiber& f : fibers) {
      if (f.state != kAtBlock) continue;
      if (site < 0) site = f.site;
      if (f.site != site) {
        finding("divergence: threads of block " + std::to_string(block_index.x) + " meet at __syncthreads on lines " +
                std::to_string(site) + " and " + std::to_string(f.site));
        return true;
      }
    }
    ++sched.epoch;
    for (Fiber& f : fibers)
      if (f.state == kAtBlock) f.state = kRunnable;
    return true;
  }
  bool released = false;
  for (size_t warp = 0; warp * 32 < fibers.size(); ++warp) {
    bool complete = true, live = false;
    int site = -1;
    for (size_t t = warp * 32; t < warp * 32 + 32 && t < fibers.size(); ++t) {
      if (fibers[t].state == kDone) continue;
      live = true;
      if (fibers[t].state != kAtWarp) complete = false;
      else if (site < 0) site = fibers[t].site;
      else if (fibers[t].site != site) {
        finding("divergence: lanes of warp " + std::to_string(warp) + " meet at shuffles on lines " +
                std::to_string(site) + " and " + std::to_string(fibers[t].site));
        return true;
      }
    }
    if (live && complete) {
      for (size_t t = warp * 32; t < warp * 32 + 32 && t < fibers.size(); ++t)
        if (fibers[t].state == kAtWarp) fibers[t].state = kRunnable;
      released = true;
    }
  }
  if (!released) finding("deadlock: threads of block " + std::to_string(block_index.x) + " wait at barriers that never complete");
  return released;
}

HM_EMU_PLAIN void block_sync(int site) { yield(kAtBlock, site); }

template <typename T, typename Source>
HM_EMU_PLAIN T shuffle(T value, Source source_of, int site) {
  static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
  Fiber* self = sched.current;
  const unsigned tid = self->index.x, warp = tid / 32, lane = tid % 32;
  const unsigned threads = static_cast<unsigned>(sched.fibers.size());
  // Two slot sets used in turn: a set is written again only after the next shuffle's
  // barrier, which every lane reaches after reading this one.
  uint64_t* slots = sched.lanes.data() + self->parity * threads;
  self->parity ^= 1u;
  uint64_t slot = 0;
  memcpy(&slot, &value, sizeof(T));
  slots[tid] = slot;
  yield(kAtWarp, site);
  const unsigned source = source_of(lane);
  T out = value;
  if (source < 32 && warp * 32 + source < threads) memcpy(&out, &slots[warp * 32 + source], sizeof(T));
  return out;
}

template <typename... Params>
struct Launch {
  void (*kernel)(Params...);
  dim3 grid, block;
  size_t shared_bytes;

  template <typename... Args>
  HM_EMU_PLAIN void operator()(Args... args) const {
    if (block.x == 0 || block.x % 32 != 0 || block.x > 1024 || block.y != 1 || block.z != 1 || grid.y != 1 ||
        grid.z != 1 || static_cast<int64_t>(shared_bytes) > dynamic_limit(reinterpret_cast<const void*>(kernel))) {
      last_error = cudaErrorInvalidConfiguration;
      return;
    }
    block_dim = block;
    sched.random.seed(sched.seed);
    sched.stop = false;
    sched.steps = 0;
    for (unsigned b = 0; b < grid.x && !sched.stop; ++b) {
      block_index = dim3(b);
      sched.dynamic_shared.assign(shared_bytes + 16, 0xFF);
      sched.lanes.assign(2 * block.x, 0);
      // Shared memory is the block's own: watched afresh, poisoned like uninitialised memory.
      std::vector<Region> kept;
      for (Region& r : sched.regions) {
        if (r.name.rfind("static shared", 0) == 0) memset(const_cast<unsigned char*>(r.begin), 0xFF, r.bytes);
        if (r.name != "dynamic shared") kept.push_back(std::move(r));
      }
      sched.regions = std::move(kept);
      watch(sched.dynamic_shared.data(), shared_bytes, "dynamic shared");
      for (Region& r : sched.regions) std::fill(r.records.begin(), r.records.end(), Record{});
      ++sched.epoch;
      sched.fibers.clear();
      sched.fibers.resize(block.x);
      // makecontext passes int arguments: the launch is reached through a global.
      static const Launch* self;
      static std::tuple<Args...>* arguments;
      std::tuple<Args...> packed(args...);
      self = this;
      arguments = &packed;
      for (unsigned t = 0; t < block.x; ++t) {
        Fiber& f = sched.fibers[t];
        f.index = dim3(t);
        f.stack.reset(new char[kStackBytes]);
        getcontext(&f.context);
        f.context.uc_stack.ss_sp = f.stack.get();
        f.context.uc_stack.ss_size = kStackBytes;
        f.context.uc_link = &sched.main;
        makecontext(&f.context, reinterpret_cast<void (*)()>(+[] {
                      std::apply([](auto... a) { self->kernel(static_cast<Params>(a)...); }, *arguments);
                      sched.current->state = kDone;  // returns to uc_link (the scheduler)
                    }),
                    0);
      }
      while (!sched.stop) {
        if (!release()) break;
        std::vector<Fiber*> runnable;
        for (Fiber& f : sched.fibers)
          if (f.state == kRunnable) runnable.push_back(&f);
        if (runnable.empty()) break;  // every thread returned
        sched.current = runnable[sched.random() % runnable.size()];
        sched.running = true;  // accesses are recorded while a fiber runs
        swapcontext(&sched.main, &sched.current->context);
        sched.running = false;
      }
      // After a finding, the fibers still waiting are abandoned (their stacks freed with them).
      sched.current = nullptr;
    }
    if (!sched.findings.empty()) last_error = cudaErrorLaunchFailure;
  }
};

template <typename... Params>
Launch<Params...> launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes = 0,
                         cudaStream_t = nullptr) {
  return Launch<Params...>{kernel, grid, block, shared_bytes};
}

}  // namespace
}  // namespace hm_emu

#define threadIdx (::hm_emu::sched.current->index)
#define blockIdx (::hm_emu::block_index)
#define blockDim (::hm_emu::block_dim)
#define __syncthreads() ::hm_emu::block_sync(__LINE__)
#define __shfl_down_sync(mask, value, offset) \
  ::hm_emu::shuffle((value), [&](unsigned lane) { return lane + static_cast<unsigned>(offset); }, __LINE__)
#define __shfl_sync(mask, value, source) \
  ::hm_emu::shuffle((value), [&](unsigned) { return static_cast<unsigned>(source) % 32u; }, __LINE__)

HM_EMU_PLAIN static unsigned long long atomicMin(unsigned long long* address, unsigned long long value) {
  ::hm_emu::record(address, sizeof *address, true, true);  // may switch threads before the update
  const unsigned long long old = *address;                // one OS thread: indivisible from here
  if (value < old) *address = value;
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
  attributes->sharedSizeBytes = hm_emu::kStaticShared;
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

// ThreadSanitizer's instrumentation calls, implemented here (no tsan runtime is linked).
#define HM_EMU_TSAN(size)                                                                              \
  extern "C" HM_EMU_PLAIN void __tsan_read##size(void* p) { ::hm_emu::record(p, size, false, false); } \
  extern "C" HM_EMU_PLAIN void __tsan_write##size(void* p) { ::hm_emu::record(p, size, true, false); } \
  extern "C" HM_EMU_PLAIN void __tsan_unaligned_read##size(void* p) { ::hm_emu::record(p, size, false, false); } \
  extern "C" HM_EMU_PLAIN void __tsan_unaligned_write##size(void* p) { ::hm_emu::record(p, size, true, false); }
HM_EMU_TSAN(1)
HM_EMU_TSAN(2)
HM_EMU_TSAN(4)
HM_EMU_TSAN(8)
HM_EMU_TSAN(16)
extern "C" HM_EMU_PLAIN void __tsan_read_range(void* p, unsigned long size) { ::hm_emu::record(p, size, false, false); }
extern "C" HM_EMU_PLAIN void __tsan_write_range(void* p, unsigned long size) { ::hm_emu::record(p, size, true, false); }
extern "C" HM_EMU_PLAIN void __tsan_func_entry(void*) {}
extern "C" HM_EMU_PLAIN void __tsan_func_exit() {}
extern "C" HM_EMU_PLAIN void __tsan_init() {}
extern "C" HM_EMU_PLAIN void __tsan_vptr_update(void**, void*) {}
extern "C" HM_EMU_PLAIN void __tsan_vptr_read(void**) {}

// For the test (ctypes): watch a range of global memory; seed the scheduler; read the findings.
extern "C" HM_EMU_PLAIN void hm_emu_watch(const void* begin, size_t bytes, const char* name) {
  ::hm_emu::watch(begin, bytes, name);
}
extern "C" HM_EMU_PLAIN void hm_emu_reset(unsigned long long seed) {
  ::hm_emu::sched.regions.clear();
  ::hm_emu::sched.findings.clear();
  ::hm_emu::sched.seed = seed;
}
extern "C" HM_EMU_PLAIN const char* hm_emu_report() {
  static std::string text;
  text.clear();
  for (const std::string& f : ::hm_emu::sched.findings) text += f + "\n";
  return text.c_str();
}
