// hybridmatch: the shortest-augmenting-path assignment algorithm, written once.
//
// Compiled twice: by the C++ compiler for the CPU target (csrc/cpu), one thread per
// problem, and by nvcc for the CUDA target (csrc/cuda), one thread block per problem.
// The control flow below is shared; the two targets differ only in the `Exec` policy
// that runs a loop over columns (sequentially, or strided over the threads of a block
// with a block-wide argmin) and in where the workspace lives.
//
// The problem. `rows` rows, each of which must take `demand` columns; `cols` columns,
// each taken by at most one row; rows * demand <= cols. With the batch's queries x
// targets cost C (N x M) and capacity K:
//   - M * K <= N ("targets side"): rows are the M targets (demand K), columns the N
//     queries. Each target is one node of capacity K: the K copies of H-DETR's repeated
//     ground truth are never materialised, and a target reached by a shortest-path
//     search settles all of its matched queries at once.
//   - M * K > N ("queries side"): rows are the N queries (demand 1), columns the M * K
//     target slots (slot s is target s % M); every query is matched.
//
// The algorithm is the Jonker-Volgenant / Crouse shortest augmenting path method
// (as in scipy's rectangular solver): for each unit of demand, a Dijkstra search in
// the residual graph with reduced costs c - u - v, then an augmentation along the
// path and a dual update. Distances and duals are double whatever the input dtype.
//
// Tie-breaking, deterministic: the next column settled is the one with the smallest
// distance; among equal distances a free column first, then the lowest column index.
// Demand is served round-robin: every row's first unit, then every row's second, ...
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define HM_HD __host__ __device__
#else
#define HM_HD
#endif

namespace hybridmatch {

// Status codes shared by both targets and turned into Python errors by the binding.
enum Status : int64_t {
  kOk = 0,
  kNaN = 1,          // detail: (query, target) of the first NaN
  kBadInfinity = 2,  // -inf when minimising, +inf when maximising; detail as above
  kInfeasible = 3,   // detail: (-1, -1)
  kBadCount = 4,     // CUDA target only: num_targets[b] outside [0, M]; detail: (count, M)
};

struct Result {
  int64_t status;
  int64_t query;
  int64_t target;
};

// Per-problem workspace. Columns: distance, dual v, predecessor row, owner row,
// settled flag. Rows: dual u, the augmentation that last reached the row, the column
// it was entered by, and its `demand` assigned columns.
struct Workspace {
  double* dist;
  double* v;
  int32_t* pred;
  int32_t* owner;
  uint8_t* settled;
  double* u;
  int32_t* seen;
  int32_t* entry;
  int32_t* assigned;  // rows * demand, -1 = not yet
};

// The view of one problem that the algorithm reads: sign * cost(row, col), the
// minimisation form (sign -1 when maximising); +inf = forbidden.
template <typename T>
struct Problem {
  const T* cost;  // rows x row_stride, row-contiguous
  int64_t row_stride;
  int32_t rows;
  int32_t cols;
  int32_t demand;
  int32_t slot_width;  // queries side: M (column s reads cost[row, s % M]); else 0
  double sign;
};

// Orient one real problem (N queries, M targets, capacity K) for the algorithm.
// `by_targets`: cost points at the targets x queries layout (row stride N), else at
// the queries x targets layout (row stride `stride`, the padded M).
template <typename T>
HM_HD Problem<T> orient(const T* cost, int64_t n, int64_t m, int64_t stride, int64_t k, bool by_targets,
                         double sign) {
  Problem<T> p;
  p.cost = cost;
  p.sign = sign;
  if (by_targets) {
    p.rows = static_cast<int32_t>(m);
    p.cols = static_cast<int32_t>(n);
    p.row_stride = n;
    p.demand = static_cast<int32_t>(k);
    p.slot_width = 0;
  } else {
    p.rows = static_cast<int32_t>(n);
    p.cols = static_cast<int32_t>(m * k);
    p.row_stride = stride;
    p.demand = 1;
    p.slot_width = static_cast<int32_t>(m);
  }
  return p;
}

constexpr double kInf = __builtin_huge_val();

// The column settled by one search step: its index (-1 when none is reachable), its
// distance, and whether it is free (no owner).
struct Pick {
  int32_t index;
  double value;
  bool is_free;
};

// The `Exec` policy runs the loops. On the CPU everything is one thread; on the GPU
// a block of threads, where column j is always visited by the same thread (so a
// thread reads back its own columns without a barrier) and only argmin_cols and sync
// are barriers:
//   exec.for_each(n, f)               f(j) for j in [0, n); no barrier
//   exec.argmin_cols(n, key, free)    calls key(j) once for every j in [0, n) (key may
//                                     update column j) and returns the Pick of smallest
//                                     key(j) < +inf; ties: free(j) first, then lowest j.
//                                     Every thread gets the same Pick; one barrier.
//   exec.once(f)                      f() on one thread (always the same one); no barrier
//   exec.on_column(j, f)              f() on the thread that visits column j; no barrier
//   exec.sync()                       a barrier
// The scalars of a search (row, level) are per thread: every thread computes them from
// the same Pick, so they agree without shared copies.

// One augmentation from `start`. Returns false when the residual graph has no path
// (the problem is infeasible). Expects a barrier since the last change of owner, u,
// seen or assigned; ends with one.
template <typename Exec, typename T>
HM_HD bool augment(Exec& exec, const Problem<T>& p, Workspace& w, int32_t start, int32_t stamp) {
  const int32_t cols = p.cols;
  // seen and entry are written by the `once` thread only; every other thread reads
  // them after the loop, behind at least one argmin barrier since their last write.
  exec.once([&] {
    w.seen[start] = stamp;
    w.entry[start] = -1;
  });
  int32_t row = start;
  double min_val = 0.0;
  int32_t sink = -1;
  bool first = true;
  while (true) {
    const int32_t i = row;
    const double level = min_val;
    const double base = level - w.u[i];
    // One pass over the columns: relax from row i and find the next column to settle.
    // The first pass also clears the previous search's state. A column already matched
    // to row i lies at distance `level` (its reduced cost is zero): it is settled on the
    // spot instead of being popped one search step at a time (with capacity K, a row
    // holds up to K such columns).
    const T* cost_row = p.cost + static_cast<int64_t>(i) * p.row_stride;
    const double sign = p.sign;
    auto relax = [&](int32_t j, double c) -> double {
      if (first) {
        w.settled[j] = 0;
        w.dist[j] = kInf;
      } else if (w.settled[j]) {
        return kInf;
      }
      if (w.owner[j] == i) {
        w.settled[j] = 1;
        w.dist[j] = level;
        w.pred[j] = i;
        return kInf;
      }
      const double reduced = base + sign * c - w.v[j];
      if (reduced < w.dist[j]) {
        w.dist[j] = reduced;
        w.pred[j] = i;
      }
      return w.dist[j];
    };
    auto is_free = [&](int32_t j) { return w.owner[j] < 0; };
    const int32_t width = p.slot_width;
    const Pick next =
        width > 0
            ? exec.argmin_cols(cols, [&](int32_t j) { return relax(j, static_cast<double>(cost_row[j % width])); },
                               is_free)
            : exec.argmin_cols(cols, [&](int32_t j) { return relax(j, static_cast<double>(cost_row[j])); }, is_free);
    first = false;
    if (next.index < 0) return false;
    const int32_t j = next.index;
    min_val = next.value;  // dist[j]
    exec.on_column(j, [&] { w.settled[j] = 1; });
    // Free or not comes with the pick: owner[j] may be rewritten below (by the `once`
    // thread, augmenting) while another thread is still here.
    if (next.is_free) {
      sink = j;
      break;
    }
    const int32_t owner = w.owner[j];
    exec.once([&] {
      w.seen[owner] = stamp;
      w.entry[owner] = j;
    });
    row = owner;
  }
  // Duals: rows reached at distance dist[entry] move by min_val - that distance,
  // settled columns by the opposite; matched edges keep reduced cost zero. These two
  // loops and the augmentation touch disjoint data: one barrier after all three.
  const double final_val = min_val;
  exec.for_each(cols, [&](int32_t c) {
    if (w.settled[c]) w.v[c] -= final_val - w.dist[c];
  });
  exec.for_each(p.rows, [&](int32_t r) {
    if (w.seen[r] == stamp) w.u[r] += r == start ? final_val : final_val - w.dist[w.entry[r]];
  });
  exec.once([&] {
    // Augment along the path: each row on it trades its entry column for the next.
    int32_t c = sink;
    while (true) {
      const int32_t r = w.pred[c];
      w.owner[c] = r;
      int32_t* slots = w.assigned + r * p.demand;
      if (r == start) {
        for (int32_t s = 0; s < p.demand; ++s) {
          if (slots[s] < 0) {
            slots[s] = c;
            break;
          }
        }
        break;
      }
      const int32_t previous = w.entry[r];
      for (int32_t s = 0; s < p.demand; ++s) {
        if (slots[s] == previous) {
          slots[s] = c;
          break;
        }
      }
      c = previous;
    }
  });
  exec.sync();
  return true;
}

// Solve one problem: every row takes `demand` columns. Returns false if infeasible.
template <typename Exec, typename T>
HM_HD bool solve(Exec& exec, const Problem<T>& p, Workspace& w) {
  exec.for_each(p.cols, [&](int32_t j) {
    w.v[j] = 0.0;
    w.owner[j] = -1;
  });
  exec.for_each(p.rows, [&](int32_t r) {
    w.u[r] = 0.0;
    w.seen[r] = -1;
  });
  exec.for_each(p.rows * p.demand, [&](int32_t s) { w.assigned[s] = -1; });
  exec.sync();
  int32_t stamp = 0;
  for (int32_t unit = 0; unit < p.demand; ++unit) {
    for (int32_t r = 0; r < p.rows; ++r) {
      if (!augment(exec, p, w, r, stamp++)) return false;
    }
  }
  return true;
}

// Which side becomes the rows, for a real problem of N queries, M targets, capacity K.
HM_HD inline bool targets_are_rows(int64_t n, int64_t m, int64_t k) { return m * k <= n; }

}  // namespace hybridmatch
