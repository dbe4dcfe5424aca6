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

inline float neg_giou(const XYXY& a, const XYXY& b) {
  const float iw = std::max(std::min(a.x1, b.x1) - std::max(a.x0, b.x0), 0.0f);
  const float ih = std::max(std::min(a.y1, b.y1) - std::max(a.y0, b.y0), 0.0f);
  const float inter = iw * ih;
  const float uni = a.area + b.area - inter;
  const float iou = uni > 0.0f ? inter / uni : 0.0f;
  const float ew = std::max(std::max(a.x1, b.x1) - std::min(a.x0, b.x0), 0.0f);
  const float eh = std::max(std::max(a.y1, b.y1) - std::min(a.y0, b.y0), 0.0f);
  const float enclosing = ew * eh;
  const float empty = std::max(enclosing - uni, 0.0f);
  const float penalty = enclosing > 0.0f ? empty / enclosing : 0.0f;
  return -(iou - penalty);
}

// The focal class cost of one logit, as hybridmatch/costs/classes.py's focal_class_cost:
// 1 - p evaluated as sigmoid(-logit).
inline float focal_of(float logit, float alpha, float gamma) {
  const float p = 1.0f / (1.0f + std::exp(-logit));
  const float q = 1.0f / (1.0f + std::exp(logit));
  const float qg = gamma == 2.0f ? q * q : std::pow(q, gamma);
  const float pg = gamma == 2.0f ? p * p : std::pow(p, gamma);
  const float pos = alpha * qg * -std::log(p + 1e-8f);
  const float neg = (1.0f - alpha) * pg * -std::log(q + 1e-8f);
  return pos - neg;
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
    std::vector<XYXY> tboxes(static_cast<size_t>(m));
    std::vector<uint8_t> tbad(static_cast<size_t>(m));
    std::vector<int64_t> present, slot(static_cast<size_t>(m)), where;
    std::vector<float> values;
    int64_t current = -1;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / n;
      if (b != current) {
        current = b;
        for (int64_t j = 0; j < m; ++j) {
          const float* tj = target + (b * m + j) * 4;
          tboxes[j] = to_xyxy(tj);
          tbad[j] = !(std::isfinite(tj[0]) && std::isfinite(tj[1]) && std::isfinite(tj[2]) && std::isfinite(tj[3]));
        }
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
      if (focal && has_class) {
        for (int64_t c = 0; c < num_classes && !row_bad; ++c) row_bad = !std::isfinite(cls[c]);
      }
      if (row_bad) {
        std::fill(out + row * m, out + (row + 1) * m, std::numeric_limits<float>::quiet_NaN());
        continue;
      }
      if (focal && has_class) {
        for (size_t u = 0; u < present.size(); ++u) values[u] = w_class * focal_of(cls[present[u]], alpha, gamma);
        cls = values.data();
        lab = slot.data();
      }
      const float* t = target + b * m * 4;
      float* o = out + row * m;
      for (int64_t j = 0; j < m; ++j) {
        float total = has_class ? cls[lab[j]] : 0.0f;
        if (has_l1) {
          const float* tj = t + j * 4;
          const float l1 = std::fabs(p[0] - tj[0]) + std::fabs(p[1] - tj[1]) + std::fabs(p[2] - tj[2]) +
                           std::fabs(p[3] - tj[3]);
          total = total + w_l1 * l1;
        }
        if (has_giou) total = total + w_giou * neg_giou(pb, tboxes[j]);
        o[j] = tbad[j] ? std::numeric_limits<float>::quiet_NaN() : total;
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
