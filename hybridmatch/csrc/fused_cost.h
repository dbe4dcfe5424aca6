// hybridmatch's fused detection cost on the CPU: class + L1 + GIoU in one pass over the
// (query, target) pairs of a batch, float32 throughout, no (B, N, M, 4) intermediates.
//
// out[b, n, m] = table[b, n, labels[b, m]] + w_l1 * L1(p, t) + w_giou * (-GIoU(p, t))
//
// where table (B, N, C) holds the weighted class cost of every query and class (computed
// by the caller with the same formula as the pairwise class costs, so this is a gather),
// p = pred[b, n] and t = target[b, m] are cxcywh boxes. The GIoU follows
// hybridmatch/boxes.py (_overlaps, _giou): clamped widths, 0 where a ratio's denominator
// is not positive, the empty part clamped at 0. Non-finite boxes (and focal logits) give NaN
// in their rows and columns, as the torch path's nan_where_nonfinite.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <limits>
#include <mutex>
#include <thread>
#include <vector>

namespace hybridmatch {

struct XYXY {
  float x0, y0, x1, y1, area;
};

inline XYXY to_xyxy(const float* box) {
  XYXY r;
  r.x0 = box[0] - 0.5f * box[2];
  r.y0 = box[1] - 0.5f * box[3];
  r.x1 = box[0] + 0.5f * box[2];
  r.y1 = box[1] + 0.5f * box[3];
  r.area = std::max(r.x1 - r.x0, 0.0f) * std::max(r.y1 - r.y0, 0.0f);
  return r;
}

// The focal class cost of one logit, as hybridmatch/costs/classes.py's focal_class_cost:
// 1 - p evaluated as sigmoid(-logit).
inline float focal_of(float logit, float alpha, float gamma) {
  // One exponential: e = exp(-|logit|) <= 1 gives the larger of p, q as 1 / (1 + e) and
  // the smaller as e times it (no overflow at either end).
  const float e = std::exp(-std::fabs(logit));
  const float large = 1.0f / (1.0f + e), small = e * large;
  const float p = logit >= 0.0f ? large : small;
  const float q = logit >= 0.0f ? small : large;
  const float qg = gamma == 2.0f ? q * q : std::pow(q, gamma);
  const float pg = gamma == 2.0f ? p * p : std::pow(p, gamma);
  // log(large + 1e-8) = log(large) to float precision (large >= 1/2), and while the
  // smaller probability is well above 1e-8, log(small + 1e-8) = log(large) - |logit|
  // up to 1e-8 / small (< 3e-7 for small > 0.04, |logit| < 3.2): one logarithm.
  const float log_large = std::log(large + 1e-8f);
  const float log_small = small > 0.04f ? log_large - std::fabs(logit) : std::log(small + 1e-8f);
  const float log_p = logit >= 0.0f ? log_large : log_small;
  const float log_q = logit >= 0.0f ? log_small : log_large;
  const float pos = alpha * qg * -log_p;
  const float neg = (1.0f - alpha) * pg * -log_q;
  return pos - neg;
}

// The target boxes of one image, one array per coordinate, so that the loop over the
// targets of a query runs on SIMD lanes.
struct TargetColumns {
  std::vector<float> cx, cy, w, h, x0, y0, x1, y1, area;
  bool any_bad = false;
  std::vector<uint8_t> bad;

  void load(const float* boxes, int64_t m) {
    for (auto* v : {&cx, &cy, &w, &h, &x0, &y0, &x1, &y1, &area}) v->resize(static_cast<size_t>(m));
    bad.resize(static_cast<size_t>(m));
    any_bad = false;
    for (int64_t j = 0; j < m; ++j) {
      const float* t = boxes + j * 4;
      const XYXY r = to_xyxy(t);
      cx[j] = t[0], cy[j] = t[1], w[j] = t[2], h[j] = t[3];
      x0[j] = r.x0, y0[j] = r.y0, x1[j] = r.x1, y1[j] = r.y1, area[j] = r.area;
      bad[j] = !(std::isfinite(t[0]) && std::isfinite(t[1]) && std::isfinite(t[2]) && std::isfinite(t[3]));
      any_bad = any_bad || bad[j];
    }
  }
};

// o[j] += w_l1 * L1(p, t_j) and then += w_giou * -GIoU(p, t_j) for every target j: the
// GIoU of hybridmatch/boxes.py (_overlaps, _giou), written over the columns so that the compiler vectorises it.
template <bool kL1, bool kGiou>
inline void add_box_terms(const float* p, const XYXY& pb, const TargetColumns& t, int64_t m, float w_l1,
                          float w_giou, float* __restrict o) {
  const float* __restrict cx = t.cx.data();
  const float* __restrict cy = t.cy.data();
  const float* __restrict tw = t.w.data();
  const float* __restrict th = t.h.data();
  const float* __restrict x0 = t.x0.data();
  const float* __restrict y0 = t.y0.data();
  const float* __restrict x1 = t.x1.data();
  const float* __restrict y1 = t.y1.data();
  const float* __restrict area = t.area.data();
  for (int64_t j = 0; j < m; ++j) {
    float total = o[j];
    if (kL1) {
      const float l1 = std::fabs(p[0] - cx[j]) + std::fabs(p[1] - cy[j]) + std::fabs(p[2] - tw[j]) +
                       std::fabs(p[3] - th[j]);
      total = total + w_l1 * l1;
    }
    if (kGiou) {
      const float iw = std::max(std::min(pb.x1, x1[j]) - std::max(pb.x0, x0[j]), 0.0f);
      const float ih = std::max(std::min(pb.y1, y1[j]) - std::max(pb.y0, y0[j]), 0.0f);
      const float inter = iw * ih;
      const float uni = pb.area + area[j] - inter;
      // A select on both operands rather than around the division: the division never
      // traps, so the compiler vectorises it (0 where the denominator is not positive).
      const float iou = (uni > 0.0f ? inter : 0.0f) / (uni > 0.0f ? uni : 1.0f);
      const float ew = std::max(std::max(pb.x1, x1[j]) - std::min(pb.x0, x0[j]), 0.0f);
      const float eh = std::max(std::max(pb.y1, y1[j]) - std::min(pb.y0, y0[j]), 0.0f);
      const float enclosing = ew * eh;
      const float empty = std::max(enclosing - uni, 0.0f);
      const float penalty = (enclosing > 0.0f ? empty : 0.0f) / (enclosing > 0.0f ? enclosing : 1.0f);
      total = total + w_giou * -(iou - penalty);
    }
    o[j] = total;
  }
}

// Rows (b, n) of the batch are split into contiguous chunks, one per worker; workers > 1
// only when the caller found the problem large enough.
//
// focal: table holds raw logits and the class term is w_class * focal(logit); the focal
// value of each class present in image b is computed once per query (slot[] maps a target
// to its class's place in that short list). Otherwise table holds the weighted class cost.
inline void fused_cost_all(const float* table, int64_t num_classes, const int64_t* labels, const float* pred,
                           const float* target, int64_t batch, int64_t n, int64_t m, float w_l1, float w_giou,
                           bool has_class, bool has_l1, bool has_giou, bool focal, float alpha, float gamma,
                           float w_class, int64_t workers, float* out) {
  const int64_t rows = batch * n;
  auto run = [&](int64_t begin, int64_t end) {
    TargetColumns columns;
    std::vector<int64_t> present, slot(static_cast<size_t>(m)), where;
    std::vector<float> values;
    int64_t current = -1;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / n;
      if (b != current) {
        current = b;
        columns.load(target + b * m * 4, m);
        if (focal && has_class) {
          present.clear();
          where.assign(static_cast<size_t>(num_classes), -1);
          for (int64_t j = 0; j < m; ++j) {
            const int64_t c = labels[b * m + j];
            if (where[c] < 0) {
              where[c] = static_cast<int64_t>(present.size());
              present.push_back(c);
            }
            slot[j] = where[c];
          }
          values.resize(present.size());
        }
      }
      const float* p = pred + row * 4;
      const XYXY pb = to_xyxy(p);
      const float* cls = table + row * num_classes;
      const int64_t* lab = labels + b * m;
      // As nan_where_nonfinite: NaN in the rows of non-finite predictions (boxes, focal
      // logits) and the columns of non-finite target boxes.
      bool row_bad = !(std::isfinite(p[0]) && std::isfinite(p[1]) && std::isfinite(p[2]) && std::isfinite(p[3]));
      if (focal && has_class && !row_bad) {
        int bad = 0;  // a comparison per logit (false for NaN), vectorised
        for (int64_t c = 0; c < num_classes; ++c) bad |= !(std::fabs(cls[c]) <= std::numeric_limits<float>::max());
        row_bad = bad != 0;
      }
      float* o = out + row * m;
      if (row_bad) {
        std::fill(o, o + m, std::numeric_limits<float>::quiet_NaN());
        continue;
      }
      if (focal && has_class) {
        for (size_t u = 0; u < present.size(); ++u) values[u] = w_class * focal_of(cls[present[u]], alpha, gamma);
        cls = values.data();
        lab = slot.data();
      }
      if (has_class) {
        for (int64_t j = 0; j < m; ++j) o[j] = cls[lab[j]];
      } else {
        std::fill(o, o + m, 0.0f);
      }
      if (has_l1 && has_giou) {
        add_box_terms<true, true>(p, pb, columns, m, w_l1, w_giou, o);
      } else if (has_l1) {
        add_box_terms<true, false>(p, pb, columns, m, w_l1, w_giou, o);
      } else if (has_giou) {
        add_box_terms<false, true>(p, pb, columns, m, w_l1, w_giou, o);
      }
      if (columns.any_bad) {
        for (int64_t j = 0; j < m; ++j) {
          if (columns.bad[j]) o[j] = std::numeric_limits<float>::quiet_NaN();
        }
      }
    }
  };
  if (workers <= 1 || rows < 2) {
    run(0, rows);
    return;
  }
  std::exception_ptr failure;
  std::mutex failure_mutex;
  std::vector<std::thread> threads;
  const int64_t chunk = (rows + workers - 1) / workers;
  auto guarded = [&](int64_t begin, int64_t end) {
    try {
      run(begin, end);
    } catch (...) {
      std::lock_guard<std::mutex> lock(failure_mutex);
      if (!failure) failure = std::current_exception();
    }
  };
  for (int64_t w = 1; w < workers; ++w) {
    const int64_t begin = std::min(rows, w * chunk), end = std::min(rows, (w + 1) * chunk);
    if (begin < end) threads.emplace_back(guarded, begin, end);
  }
  guarded(0, std::min(rows, chunk));
  for (auto& thread : threads) thread.join();
  if (failure) std::rethrow_exception(failure);
}

}  // namespace hybridmatch
