// hybridmatch CUDA target: the launch plan and workspace layout, in plain C++.
//
// Arithmetic shared by the kernel file (cuda/lsap_cuda.cu) and the CPU-side
// launch guard test (tests/test_kernel_launch.py compiles this header with g++ and
// checks every benchmark shape against the H100/H200 limits). No CUDA headers.
//
// One thread block of kThreads threads per problem. Per-column state (distance, dual,
// predecessor, owner, settled flag) lives in dynamic shared memory when it fits in
// the device's opt-in limit, else in the problem's slice of a global workspace; the
// per-row state always lives in that slice, after room for the columns.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define HM_LAUNCH_HD __host__ __device__
#else
#define HM_LAUNCH_HD
#endif

namespace hybridmatch {
namespace launch {

// Threads per block. Only the SIMT emulation test changes it (a smaller block runs
// faster on a CPU); the kernel is written for any multiple of 32 up to 1024.
#ifndef HYBRIDMATCH_CUDA_THREADS
#define HYBRIDMATCH_CUDA_THREADS 256
#endif
constexpr int kThreads = HYBRIDMATCH_CUDA_THREADS;
static_assert(kThreads % 32 == 0 && kThreads >= 32 && kThreads <= 1024, "a block is 1 to 32 whole warps");
constexpr int kWarps = kThreads / 32;
// Upper bound of the kernel's static shared memory (scalars and warp partials);
// lsap_cuda.cu static_asserts its struct fits, the launch guard test reads ptxas.
constexpr int64_t kStaticSharedBytes = 512;
// The most blocks of one launch (gridDim.x): a larger batch is refused, not truncated.
constexpr int64_t kMaxGrid = 2147483647;
// Global workspace slices start at this alignment.
constexpr int64_t kSliceAlign = 256;

HM_LAUNCH_HD constexpr int64_t max_columns(int64_t n, int64_t m, int64_t capacity) {
  return n > m * capacity ? n : m * capacity;
}

// Byte offsets of the column arrays inside a block of `cols` columns (doubles first,
// 8-byte aligned, then int32, then bytes), and the block's size.
struct ColumnLayout {
  int64_t dist, v, pred, owner, settled, bytes;
};

HM_LAUNCH_HD constexpr ColumnLayout column_layout(int64_t cols) {
  ColumnLayout c{};
  c.dist = 0;
  c.v = c.dist + 8 * cols;
  c.pred = c.v + 8 * cols;
  c.owner = c.pred + 4 * cols;
  c.settled = c.owner + 4 * cols;
  c.bytes = c.settled + cols;
  return c;
}

// Byte offsets of the row arrays, from `start` (8-byte aligned), for `rows` rows and
// `slots` assigned slots (rows * demand <= max(N, M * K)).
struct RowLayout {
  int64_t u, seen, entry, assigned, end;
};

HM_LAUNCH_HD constexpr RowLayout row_layout(int64_t start, int64_t rows, int64_t slots) {
  RowLayout r{};
  r.u = (start + 7) / 8 * 8;
  r.seen = r.u + 8 * rows;
  r.entry = r.seen + 4 * rows;
  r.assigned = r.entry + 4 * rows;
  r.end = r.assigned + 4 * slots;
  return r;
}

// What one launch of a (B, N, M) batch with capacity K needs.
struct Plan {
  int64_t grid;              // blocks: one per problem
  int threads;               // per block
  int64_t shared_bytes;      // dynamic shared memory per block (0 in the fallback)
  bool shared_columns;       // columns in shared memory (else the global fallback)
  int64_t workspace_stride;  // global bytes per problem, a multiple of kSliceAlign
  int64_t column_bytes;      // the per-column state of one problem
};

// `max_dynamic_shared`: the most dynamic shared memory one block may take on the
// device (its opt-in per-block limit minus the kernel's static shared memory).
HM_LAUNCH_HD constexpr Plan plan(int64_t batch, int64_t n, int64_t m, int64_t capacity, int64_t max_dynamic_shared) {
  const int64_t cols = max_columns(n, m, capacity);
  const int64_t rows = n > m ? n : m;
  const ColumnLayout columns = column_layout(cols);
  Plan p{};
  p.grid = batch;
  p.threads = kThreads;
  p.column_bytes = columns.bytes;
  p.shared_columns = columns.bytes <= max_dynamic_shared;
  p.shared_bytes = p.shared_columns ? columns.bytes : 0;
  // Sized for the fallback either way (the row arrays follow the column room).
  const int64_t global = row_layout(columns.bytes, rows, cols).end;
  p.workspace_stride = (global + kSliceAlign - 1) / kSliceAlign * kSliceAlign;
  return p;
}

}  // namespace launch
}  // namespace hybridmatch
