// hybridmatch CPU target: lsap_core.h's algorithm with less work per search step.
//
// The same searches in the same order (demand round-robin, rows in index order), the
// same tie-breaking (smallest distance; among equals a free column, then the lowest
// index) and the same double arithmetic, so the same duals and the same assignment as
// `solve` in lsap_core.h, which the CUDA target and the emulation tests run. What
// changes is only which columns a search step visits:
//
//   - A search's first step is one pass over the columns (most searches end there: the
//     row's cheapest column is free). Only a search that goes on builds the list of its
//     unsettled columns (as scipy's solver keeps one) and then visits only those; the
//     columns a row already holds are settled from the row's own list instead of by
//     testing every column's owner.
//   - Queries side (`slot_width` M > 0, column s = copy s / M of target s % M): a free
//     slot's dual is always 0 (a search settles a free column only as its sink, at the
//     final distance, where the dual update is 0), so the free slots of one target have
//     equal distances and the lowest of them wins every tie among them. A search visits
//     one free slot per target (the lowest; slots fill in copy order) besides the held
//     ones: at most N + M columns instead of M * K, and no division per column.
#pragma once

#include <stdint.h>

#include <vector>

#include "../lsap_core.h"

namespace hybridmatch {

class SearchSolver {
 public:
  // Solve `p` (minimisation form, `p.sign` 1) into `w` (u, v, owner, assigned as
  // lsap_core's `solve` leaves them). Returns false if infeasible.
  bool solve(const Problem<double>& p, Workspace& w) {
    p_ = &p;
    w_ = &w;
    const int32_t rows = p.rows, cols = p.cols;
    remaining_.resize(cols);
    position_.resize(cols);
    done_.resize(cols);
    visited_.resize(rows);
    for (int32_t j = 0; j < cols; ++j) {
      w.v[j] = 0.0;
      w.owner[j] = -1;
    }
    for (int32_t r = 0; r < rows; ++r) w.u[r] = 0.0;
    for (int64_t s = 0; s < static_cast<int64_t>(rows) * p.demand; ++s) w.assigned[s] = -1;
    if (p.slot_width > 0) {
      target_.resize(cols);
      for (int32_t j = 0; j < cols; ++j) target_[j] = j % p.slot_width;
      filled_.assign(p.slot_width, 0);
    }
    for (int32_t unit = 0; unit < p.demand; ++unit) {
      for (int32_t r = 0; r < rows; ++r) {
        if (!augment(r)) return false;
      }
    }
    return true;
  }

 private:
  void settle(int32_t j) {
    const int32_t at = position_[j];
    const int32_t last = remaining_[--count_];
    remaining_[at] = last;
    position_[last] = at;
    done_[settled_++] = j;
  }

  // Among equal distances: a free column first, then the lowest index.
  bool wins_tie(int32_t j, int32_t best) const {
    const bool free_j = w_->owner[j] < 0, free_best = w_->owner[best] < 0;
    return free_j != free_best ? free_j : j < best;
  }

  // f(j) for every column a search starts with: every column, or (queries side) every
  // held slot and the lowest free slot of each target that has one.
  template <typename F>
  void for_each_candidate(F f) const {
    const Problem<double>& p = *p_;
    if (p.slot_width == 0) {
      for (int32_t j = 0; j < p.cols; ++j) f(j);
      return;
    }
    const int32_t m = p.slot_width;
    const int32_t copies = p.cols / m;
    for (int32_t t = 0; t < m; ++t) {
      for (int32_t c = 0; c < filled_[t]; ++c) f(c * m + t);
      if (filled_[t] < copies) f(filled_[t] * m + t);
    }
  }

  // The first step of a search from `start`, in one pass over the columns (most searches
  // end here: the row's cheapest column is free). Returns the column settled, or -1.
  int32_t first_step(int32_t start) {
    const Problem<double>& p = *p_;
    Workspace& w = *w_;
    const int32_t* held = w.assigned + static_cast<int64_t>(start) * p.demand;
    for (int32_t s = 0; s < p.demand; ++s) {  // at distance 0 (reduced cost zero)
      const int32_t j = held[s];
      if (j < 0) continue;
      w.dist[j] = 0.0;
      w.pred[j] = start;
      done_[settled_++] = j;
    }
    const double base = -w.u[start];
    const double* cost_row = p.cost + static_cast<int64_t>(start) * p.row_stride;
    const int32_t* target = p.slot_width > 0 ? target_.data() : nullptr;
    double* dist = w.dist;
    const double* v = w.v;
    int32_t* pred = w.pred;
    const int32_t* owner = w.owner;
    double lowest = kInf;
    int32_t best = -1;
    for_each_candidate([&](int32_t j) {
      if (owner[j] == start) return;
      const double c = target ? cost_row[target[j]] : cost_row[j];
      const double d = base + c - v[j];
      dist[j] = d;
      pred[j] = start;
      if (d < lowest) {
        lowest = d;
        best = j;
      } else if (d == lowest && d < kInf && wins_tie(j, best)) {
        best = j;
      }
    });
    if (best >= 0) done_[settled_++] = best;
    return best;
  }

  bool augment(int32_t start) {
    const Problem<double>& p = *p_;
    Workspace& w = *w_;
    settled_ = 0;
    int32_t seen = 0;
    visited_[seen++] = start;
    w.entry[start] = -1;
    const int32_t first = first_step(start);
    if (first < 0) return false;
    double min_val = w.dist[first];
    int32_t sink = -1;
    int32_t row = start;
    if (w.owner[first] < 0) {
      sink = first;
    } else {
      // The search goes on: the list of the columns not settled yet.
      count_ = 0;
      for_each_candidate([&](int32_t j) {
        if (w.owner[j] == start || j == first) return;
        position_[j] = count_;
        remaining_[count_++] = j;
      });
      row = w.owner[first];
      w.entry[row] = first;
      visited_[seen++] = row;
    }
    while (sink < 0) {
      const double level = min_val;
      // The row's held columns lie at distance `level` (reduced cost zero).
      const int32_t* slots = w.assigned + static_cast<int64_t>(row) * p.demand;
      for (int32_t s = 0; s < p.demand; ++s) {
        const int32_t j = slots[s];
        if (j < 0 || j == w.entry[row]) continue;
        w.dist[j] = level;
        w.pred[j] = row;
        settle(j);
      }
      const double base = level - w.u[row];
      const double* cost_row = p.cost + static_cast<int64_t>(row) * p.row_stride;
      double lowest = kInf;
      int32_t best = -1;
      const int32_t* list = remaining_.data();
      const int32_t* target = p.slot_width > 0 ? target_.data() : nullptr;
      double* dist = w.dist;
      const double* v = w.v;
      int32_t* pred = w.pred;
      for (int32_t at = 0, n = count_; at < n; ++at) {
        const int32_t j = list[at];
        const double c = target ? cost_row[target[j]] : cost_row[j];
        const double reduced = base + c - v[j];
        double d = dist[j];
        if (reduced < d) {
          d = reduced;
          dist[j] = d;
          pred[j] = row;
        }
        if (d < lowest) {
          lowest = d;
          best = j;
        } else if (d == lowest && d < kInf && wins_tie(j, best)) {
          best = j;
        }
      }
      if (best < 0) return false;
      min_val = lowest;
      settle(best);
      if (w.owner[best] < 0) {
        sink = best;
        break;
      }
      row = w.owner[best];
      w.entry[row] = best;
      visited_[seen++] = row;
    }
    // Duals, as lsap_core.h: settled columns and reached rows.
    const double final_val = min_val;
    for (int32_t k = 0; k < settled_; ++k) {
      const int32_t c = done_[k];
      w.v[c] -= final_val - w.dist[c];
    }
    for (int32_t k = 0; k < seen; ++k) {
      const int32_t r = visited_[k];
      w.u[r] += r == start ? final_val : final_val - w.dist[w.entry[r]];
    }
    if (p.slot_width > 0) ++filled_[target_[sink]];
    // Augment along the path: each row on it trades its entry column for the next.
    int32_t c = sink;
    while (true) {
      const int32_t r = w.pred[c];
      w.owner[c] = r;
      int32_t* held = w.assigned + static_cast<int64_t>(r) * p.demand;
      if (r == start) {
        for (int32_t s = 0; s < p.demand; ++s) {
          if (held[s] < 0) {
            held[s] = c;
            break;
          }
        }
        break;
      }
      const int32_t previous = w.entry[r];
      for (int32_t s = 0; s < p.demand; ++s) {
        if (held[s] == previous) {
          held[s] = c;
          break;
        }
      }
      c = previous;
    }
    return true;
  }

  const Problem<double>* p_ = nullptr;
  Workspace* w_ = nullptr;
  std::vector<int32_t> remaining_, position_, done_, visited_, target_, filled_;
  int32_t count_ = 0, settled_ = 0;
};

}  // namespace hybridmatch
