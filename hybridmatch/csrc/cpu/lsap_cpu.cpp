// hybridmatch CPU target: the shared algorithm (lsap_core.h, in the CPU's rendering of
// lsap_cpu_search.h) run one problem per thread, with the GIL released, as a nanobind
// extension (hybridmatch._lsap).
//
// Tensors arrive through DLPack (nanobind's ndarray), so the module does not link
// libtorch: one build serves every torch version. The Python side
// (hybridmatch/solvers/_native.py) allocates the outputs, makes the cost contiguous
// float32 or float64, and turns the status rows into errors.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <exception>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "../fused_cost.h"
#include "../lsap_core.h"
#include "lsap_cpu_search.h"

namespace nb = nanobind;

namespace hybridmatch {
namespace {

struct Buffers {
  std::vector<double> cost, dist, v, u;
  std::vector<int32_t> pred, owner, seen, entry, assigned;
  std::vector<uint8_t> settled;
  SearchSolver solver;

  Workspace reserve(int32_t rows, int32_t cols, int32_t demand) {
    dist.resize(cols);
    v.resize(cols);
    pred.resize(cols);
    owner.resize(cols);
    settled.resize(cols);
    u.resize(rows);
    seen.resize(rows);
    entry.resize(rows);
    assigned.resize(static_cast<size_t>(rows) * demand);
    return Workspace{dist.data(), v.data(), pred.data(), owner.data(), settled.data(),
                     u.data(),    seen.data(), entry.data(), assigned.data()};
  }
};

// Copy one problem's real columns into the row-major double buffer of the chosen
// orientation, in minimisation form, and check every entry on the way.
template <typename scalar_t>
Result load(const scalar_t* cost, int64_t n, int64_t m, int64_t m_real, bool transpose, bool maximize,
            std::vector<double>& out) {
  out.resize(static_cast<size_t>(n) * m_real);
  const double sign = maximize ? -1.0 : 1.0;
  for (int64_t q = 0; q < n; ++q) {
    const scalar_t* row = cost + q * m;
    for (int64_t t = 0; t < m_real; ++t) {
      const double x = static_cast<double>(row[t]);
      if (std::isnan(x)) return Result{kNaN, q, t};
      const double y = sign * x;
      if (y == -kInf) return Result{kBadInfinity, q, t};
      out[transpose ? t * n + q : q * m_real + t] = y;
    }
  }
  return Result{kOk, -1, -1};
}

template <typename scalar_t>
Result solve_one(const scalar_t* cost, int64_t n, int64_t m, int64_t m_real, int64_t capacity, bool maximize,
                 int64_t* out, Buffers& buffers) {
  for (int64_t q = 0; q < n; ++q) out[q] = -1;
  if (n == 0 || m_real == 0) return Result{kOk, -1, -1};
  const bool by_targets = targets_are_rows(n, m_real, capacity);
  Result status = load(cost, n, m, m_real, by_targets, maximize, buffers.cost);
  if (status.status != kOk) return status;
  const Problem<double> p = orient(buffers.cost.data(), n, m_real, m_real, capacity, by_targets, 1.0);
  Workspace w = buffers.reserve(p.rows, p.cols, p.demand);
  if (!buffers.solver.solve(p, w)) return Result{kInfeasible, -1, -1};
  if (by_targets) {
    for (int64_t q = 0; q < n; ++q) out[q] = w.owner[q];
  } else {
    for (int64_t q = 0; q < n; ++q) out[q] = w.assigned[q] % m_real;
  }
  return Result{kOk, -1, -1};
}

template <typename scalar_t>
void solve_all(const scalar_t* data, const int64_t* counts, int64_t batch, int64_t n, int64_t m, int64_t capacity,
               bool maximize, int64_t workers, int64_t* out, int64_t* codes) {
  // Problems of a batch differ in size: threads take the next unsolved one from a
  // shared counter.
  std::atomic<int64_t> next{0};
  // An exception (e.g. out of memory) must not escape a thread: keep the first, stop
  // the others, join everyone, then rethrow on the calling thread.
  std::exception_ptr failure;
  std::mutex failure_mutex;
  auto work = [&] {
    try {
      Buffers buffers;
      for (int64_t b = next++; b < batch; b = next++) {
        const Result r =
            solve_one<scalar_t>(data + b * n * m, n, m, counts[b], capacity, maximize, out + b * n, buffers);
        codes[b * 3 + 0] = r.status;
        codes[b * 3 + 1] = r.query;
        codes[b * 3 + 2] = r.target;
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(failure_mutex);
      if (!failure) failure = std::current_exception();
      next = batch;
    }
  };
  std::vector<std::thread> threads;
  for (int64_t t = 1; t < workers; ++t) threads.emplace_back(work);
  work();
  for (auto& thread : threads) thread.join();
  if (failure) std::rethrow_exception(failure);
}

using Cost = nb::ndarray<nb::ro, nb::ndim<3>, nb::c_contig, nb::device::cpu>;
using Counts = nb::ndarray<nb::ro, const int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Rows = nb::ndarray<int64_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

// cost (B, N, M) float32 or float64; num_targets (B,) int64 in [0, M] (checked by the
// caller); assignment (B, N) and status (B, 3) int64, written here:
// assignment[b, q] = target or -1, status[b] = (code, query, target).
void solve_batch(Cost cost, Counts num_targets, int64_t capacity, bool maximize, int64_t num_threads,
                 Rows assignment, Rows status) {
  const int64_t batch = cost.shape(0), n = cost.shape(1), m = cost.shape(2);
  if (capacity < 1) throw std::invalid_argument("capacity must be >= 1");
  if (static_cast<int64_t>(num_targets.shape(0)) != batch) throw std::invalid_argument("num_targets must be (B,)");
  if (static_cast<int64_t>(assignment.shape(0)) != batch || static_cast<int64_t>(assignment.shape(1)) != n)
    throw std::invalid_argument("assignment must be (B, N)");
  if (static_cast<int64_t>(status.shape(0)) != batch || status.shape(1) != 3)
    throw std::invalid_argument("status must be (B, 3)");
  if (n > std::numeric_limits<int32_t>::max() || m * capacity > std::numeric_limits<int32_t>::max())
    throw std::invalid_argument("problem too large for the native solver: N and M * capacity must fit in int32");
  const int64_t* counts = num_targets.data();
  for (int64_t b = 0; b < batch; ++b) {
    if (counts[b] < 0 || counts[b] > m)
      throw std::invalid_argument("num_targets[" + std::to_string(b) + "] is outside [0, M]");
  }
  // Threading by problem size: a thread costs tens of microseconds to start, about what
  // 20k (query, target copy) pairs take to solve, so small batches run on this thread
  // alone and 2 threads are never slower than 1.
  int64_t units = 0;
  for (int64_t b = 0; b < batch; ++b) units += n * std::max<int64_t>(counts[b], 1) * capacity;
  const int64_t by_size = std::max<int64_t>(1, units / 20000);
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>({num_threads, batch, by_size}));
  const nb::dlpack::dtype dtype = cost.dtype();
  if (dtype == nb::dtype<float>()) {
    solve_all(static_cast<const float*>(cost.data()), counts, batch, n, m, capacity, maximize, workers,
              assignment.data(), status.data());
  } else if (dtype == nb::dtype<double>()) {
    solve_all(static_cast<const double*>(cost.data()), counts, batch, n, m, capacity, maximize, workers,
              assignment.data(), status.data());
  } else {
    throw std::invalid_argument("cost must be float32 or float64");
  }
}

using Table = nb::ndarray<nb::ro, const float, nb::ndim<3>, nb::c_contig, nb::device::cpu>;
using Labels = nb::ndarray<nb::ro, const int64_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using Boxes = nb::ndarray<nb::ro, const float, nb::ndim<3>, nb::c_contig, nb::device::cpu>;
using Out = nb::ndarray<float, nb::ndim<3>, nb::c_contig, nb::device::cpu>;

// tables: L arrays (B, N, C) float32, the weighted class cost per query and class (focal:
// the raw logits, and the class term w_class * focal(alpha, gamma) computed here), one per
// decoder layer; labels (B, M) int64 in [0, C) (clamped by the caller); preds: L arrays
// (B, N, 4) and target (B, M, 4) float32 cxcywh; out (L * B, N, M) float32, written here
// (see csrc/fused_cost.h): image l * B + b is layer l's image b against targets b. Images
// with at most column_max_targets targets are computed target by target (same values).
void fused_detection_cost(const std::vector<Table>& tables, Labels labels, const std::vector<Boxes>& preds,
                          Boxes target, double w_l1, double w_giou, bool has_class, bool has_l1, bool has_giou,
                          bool focal, double alpha, double gamma, double w_class, int64_t column_max_targets,
                          int64_t num_threads, Out out) {
  const int64_t layers = static_cast<int64_t>(preds.size());
  const int64_t batch = target.shape(0), m = target.shape(1);
  if (layers < 1 || target.shape(2) != 4) throw std::invalid_argument("preds must hold one (B, N, 4) per layer");
  const int64_t n = preds[0].shape(1);
  for (const Boxes& pred : preds) {
    if (static_cast<int64_t>(pred.shape(0)) != batch || static_cast<int64_t>(pred.shape(1)) != n || pred.shape(2) != 4)
      throw std::invalid_argument("pred and target must be (B, N, 4) and (B, M, 4)");
  }
  if (static_cast<int64_t>(out.shape(0)) != layers * batch || static_cast<int64_t>(out.shape(1)) != n ||
      static_cast<int64_t>(out.shape(2)) != m)
    throw std::invalid_argument("out must be (L * B, N, M)");
  if (has_class && static_cast<int64_t>(tables.size()) != layers)
    throw std::invalid_argument("tables must hold one (B, N, C) per layer");
  const int64_t num_classes = has_class ? static_cast<int64_t>(tables[0].shape(2)) : 1;
  if (has_class) {
    for (const Table& table : tables) {
      if (static_cast<int64_t>(table.shape(0)) != batch || static_cast<int64_t>(table.shape(1)) != n ||
          static_cast<int64_t>(table.shape(2)) != num_classes || num_classes < 1)
        throw std::invalid_argument("table must be (B, N, C) with C >= 1");
    }
    if (static_cast<int64_t>(labels.shape(0)) != batch || static_cast<int64_t>(labels.shape(1)) != m)
      throw std::invalid_argument("labels must be (B, M)");
    const int64_t* lab = labels.data();
    for (int64_t i = 0; i < batch * m; ++i) {
      if (lab[i] < 0 || lab[i] >= num_classes) throw std::invalid_argument("labels must lie in [0, C)");
    }
  }
  // Image i = l * B + b reads layer l's image b.
  std::vector<const float*> table_of(static_cast<size_t>(layers * batch), nullptr);
  std::vector<const float*> pred_of(static_cast<size_t>(layers * batch));
  for (int64_t l = 0; l < layers; ++l) {
    for (int64_t b = 0; b < batch; ++b) {
      pred_of[l * batch + b] = preds[l].data() + b * n * 4;
      if (has_class) table_of[l * batch + b] = tables[l].data() + b * n * num_classes;
    }
  }
  // A thread is worth starting for about 50k pairs (tens of microseconds of work); the
  // focal term costs about as much per query and class present as four pairs.
  const int64_t pairs = layers * batch * n * m;
  const int64_t work = focal && has_class ? 5 * pairs : pairs;
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(num_threads, work / 50000));
  const FusedProblem problem{table_of.data(),
                             num_classes,
                             labels.data(),
                             pred_of.data(),
                             target.data(),
                             layers * batch,
                             batch,
                             n,
                             m,
                             static_cast<float>(w_l1),
                             static_cast<float>(w_giou),
                             has_class,
                             has_l1,
                             has_giou,
                             focal,
                             static_cast<float>(alpha),
                             static_cast<float>(gamma),
                             static_cast<float>(w_class),
                             column_max_targets,
                             out.data()};
  fused_cost_all(problem, workers);
}

}  // namespace
}  // namespace hybridmatch

NB_MODULE(_lsap, m) {
  m.doc() = "hybridmatch's batched assignment solver on the CPU (csrc/lsap_core.h).";
  // The one definition of the status codes (csrc/lsap_core.h); Python reads them here.
  nb::enum_<hybridmatch::Status>(m, "Status", nb::is_arithmetic(),
                                 "Per-problem outcome of a native solve: status[b, 0] of solve_batch.")
      .value("OK", hybridmatch::kOk, "solved")
      .value("NAN", hybridmatch::kNaN, "a NaN cost; detail (query, target) of the first")
      .value("BAD_INFINITY", hybridmatch::kBadInfinity,
             "-inf when minimising, +inf when maximising; detail (query, target) of the first")
      .value("INFEASIBLE", hybridmatch::kInfeasible, "the +inf pairs leave no complete assignment")
      .value("BAD_COUNT", hybridmatch::kBadCount, "CUDA only: num_targets[b] outside [0, M]; detail (count, M)");
  m.def("solve_batch", &hybridmatch::solve_batch, nb::arg("cost"), nb::arg("num_targets"), nb::arg("capacity"),
        nb::arg("maximize"), nb::arg("num_threads"), nb::arg("assignment"), nb::arg("status"),
        nb::call_guard<nb::gil_scoped_release>(),
        "Solve a (B, N, M) batch into assignment (B, N) and status (B, 3), threads over the batch.");
  m.def("fused_detection_cost", &hybridmatch::fused_detection_cost, nb::arg("tables"), nb::arg("labels"),
        nb::arg("preds"), nb::arg("target"), nb::arg("w_l1"), nb::arg("w_giou"), nb::arg("has_class"),
        nb::arg("has_l1"), nb::arg("has_giou"), nb::arg("focal"), nb::arg("alpha"), nb::arg("gamma"),
        nb::arg("w_class"), nb::arg("column_max_targets"), nb::arg("num_threads"), nb::arg("out"),
        nb::call_guard<nb::gil_scoped_release>(),
        "Class gather + weighted L1 + weighted -GIoU of every (query, target) pair of every layer into out (L * B, N, M).");
}
