// hybridmatch CPU target: the shared algorithm (lsap_core.h) run one problem per
// thread, as many threads as torch.get_num_threads(), with the GIL released by the
// binding.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <limits>
#include <mutex>
#include <thread>
#include <vector>

#include "../lsap_core.h"

namespace hybridmatch {
namespace {

struct CpuExec {
  template <typename F>
  void for_each(int32_t n, F f) {
    for (int32_t j = 0; j < n; ++j) f(j);
  }
  template <typename Key, typename Free>
  Pick argmin_cols(int32_t n, Key key, Free is_free) {
    int32_t best = -1;
    double lowest = kInf;
    bool best_free = false;
    for (int32_t j = 0; j < n; ++j) {
      const double value = key(j);
      if (value < lowest) {
        lowest = value;
        best = j;
        best_free = is_free(j);
      } else if (value == lowest && best >= 0 && !best_free && value < kInf && is_free(j)) {
        best = j;
        best_free = true;
      }
    }
    return Pick{best, lowest, best_free};
  }
  template <typename F>
  void once(F f) {
    f();
  }
  template <typename F>
  void on_column(int32_t, F f) {
    f();
  }
  void sync() {}
};

struct Buffers {
  std::vector<double> cost, dist, v, u;
  std::vector<int32_t> pred, owner, seen, entry, assigned;
  std::vector<uint8_t> settled;

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
  CpuExec exec;
  if (!solve(exec, p, w)) return Result{kInfeasible, -1, -1};
  if (by_targets) {
    for (int64_t q = 0; q < n; ++q) out[q] = w.owner[q];
  } else {
    for (int64_t q = 0; q < n; ++q) out[q] = w.assigned[q] % m_real;
  }
  return Result{kOk, -1, -1};
}

}  // namespace

// cost (B, N, M) floating CPU, num_targets (B,) int64 -> (assignment (B, N) int64,
// status (B, 3) int64 [code, query, target]).
std::vector<torch::Tensor> solve_batch(torch::Tensor cost, torch::Tensor num_targets, int64_t capacity,
                                       bool maximize) {
  TORCH_CHECK(cost.dim() == 3, "cost must be (B, N, M)");
  TORCH_CHECK(!cost.is_cuda(), "the CPU solver needs a CPU tensor");
  TORCH_CHECK(capacity >= 1, "capacity must be >= 1");
  cost = cost.contiguous();
  num_targets = num_targets.to(torch::kInt64).contiguous();
  const int64_t batch = cost.size(0), n = cost.size(1), m = cost.size(2);
  TORCH_CHECK(num_targets.numel() == batch, "num_targets must have B entries");
  TORCH_CHECK(n <= std::numeric_limits<int32_t>::max() && m * capacity <= std::numeric_limits<int32_t>::max(),
              "problem too large for the native solver: N and M * capacity must fit in int32");
  auto assignment = torch::empty({batch, n}, torch::kInt64);
  auto status = torch::zeros({batch, 3}, torch::kInt64);
  const int64_t* counts = num_targets.data_ptr<int64_t>();
  int64_t* out = assignment.data_ptr<int64_t>();
  int64_t* codes = status.data_ptr<int64_t>();
  // Problems of a batch differ in size: threads take the next unsolved one from a
  // shared counter. std::thread rather than at::parallel_for, whose OpenMP backend
  // would need this extension to be built with -fopenmp.
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), batch));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cost.scalar_type(), "hybridmatch_solve_batch", [&] {
    const scalar_t* data = cost.data_ptr<scalar_t>();
    std::atomic<int64_t> next{0};
    // An exception (e.g. out of memory) must not escape a thread: keep the first, stop
    // the others, join everyone, then rethrow on the calling thread.
    std::exception_ptr failure;
    std::mutex failure_mutex;
    auto work = [&] {
      try {
        Buffers buffers;
        for (int64_t b = next++; b < batch; b = next++) {
          const Result r = solve_one<scalar_t>(data + b * n * m, n, m, counts[b], capacity, maximize,
                                               out + b * n, buffers);
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
  });
  return {assignment, status};
}

}  // namespace hybridmatch

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("solve_batch", &hybridmatch::solve_batch, "Batched assignment (CPU)", py::arg("cost"),
        py::arg("num_targets"), py::arg("capacity"), py::arg("maximize"),
        py::call_guard<py::gil_scoped_release>());
}
