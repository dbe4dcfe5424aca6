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
#include <cstring>
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

// exp and log in float without a library call, so that a loop over them vectorises
// (std::exp and std::log are calls). Cephes' single-precision polynomials (range
// reduction by powers of 2), within a few ulp of the library functions.
inline float bits_to_float(int32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

inline int32_t float_to_bits(float value) {
  int32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

// exp(x) for x <= 0 (NaN read as 0); below -87 it returns exp(-87) (about 1.6e-38,
// which no caller tells from a smaller number).
inline float exp_nonpositive(float x) {
  x = x == x ? x : 0.0f;
  x = x < -87.0f ? -87.0f : x;
  const int32_t n = static_cast<int32_t>(x * 1.44269504088896341f - 0.5f);  // round(x / ln 2), x <= 0
  const float k = static_cast<float>(n);
  const float r = (x - k * 0.693359375f) - k * -2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  return y * bits_to_float((n + 127) << 23);
}

// log(x) for a positive normal x.
inline float log_positive(float x) {
  const int32_t bits = float_to_bits(x);
  int32_t exponent = ((bits >> 23) & 0xff) - 126;
  float m = bits_to_float((bits & 0x007fffff) | 0x3f000000);  // [0.5, 1)
  const bool low = m < 0.707106781186547524f;
  exponent -= low ? 1 : 0;
  m = (low ? m + m : m) - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  const float e = static_cast<float>(exponent);
  y += e * -2.12194440e-4f;
  y += -0.5f * z;
  return m + y + e * 0.693359375f;
}

// The focal class cost of one logit, as hybridmatch/costs/classes.py's focal_class_cost
// (1 - p evaluated as sigmoid(-logit)): one exponential, e = exp(-|logit|) <= 1, gives
// the larger of p, q as 1 / (1 + e) and the smaller as e times it (no overflow at either
// end). Branch-free for gamma = 2, so that a loop of it vectorises.
inline float focal_of(float logit, float alpha, float gamma) {
  const float e = exp_nonpositive(-std::fabs(logit));
  const float large = 1.0f / (1.0f + e), small = e * large;
  const float p = logit >= 0.0f ? large : small;
  const float q = logit >= 0.0f ? small : large;
  const float qg = gamma == 2.0f ? q * q : std::pow(q, gamma);
  const float pg = gamma == 2.0f ? p * p : std::pow(p, gamma);
  const float pos = alpha * qg * -log_positive(p + 1e-8f);
  const float neg = (1.0f - alpha) * pg * -log_positive(q + 1e-8f);
  return pos - neg;
}

// values[i] = w_class * focal(logits[i]) for i < count; vectorised for gamma = 2.
inline void focal_values(const float* logits, int64_t count, float alpha, float gamma, float w_class, float* values) {
  if (gamma == 2.0f) {
    for (int64_t i = 0; i < count; ++i) values[i] = w_class * focal_of(logits[i], alpha, 2.0f);
  } else {
    for (int64_t i = 0; i < count; ++i) values[i] = w_class * focal_of(logits[i], alpha, gamma);
  }
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
    std::vector<float> gathered, values;  // focal: (rows of this image in the chunk) x (classes present)
    int64_t current = -1, first_row = 0;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / n;
      if (b != current) {
        current = b;
        first_row = row;
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
          // The focal value of each (query, class present) of this image, in one loop.
          const int64_t last = std::min(end, (b + 1) * n);
          const int64_t width = static_cast<int64_t>(present.size());
          gathered.resize(static_cast<size_t>((last - row) * width));
          values.resize(gathered.size());
          for (int64_t r = row; r < last; ++r) {
            const float* logits = table + r * num_classes;
            float* into = gathered.data() + (r - row) * width;
            for (int64_t u = 0; u < width; ++u) into[u] = logits[present[u]];
          }
          focal_values(gathered.data(), static_cast<int64_t>(gathered.size()), alpha, gamma, w_class, values.data());
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
        cls = values.data() + (row - first_row) * static_cast<int64_t>(present.size());
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
