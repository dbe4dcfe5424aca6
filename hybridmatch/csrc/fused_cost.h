// hybridmatch's fused detection cost on the CPU: class + L1 + GIoU in one pass over the
// (query, target) pairs of a batch, float32 throughout, no (B, N, M, 4) intermediates.
//
// out[i, n, m] = table_i[n, labels[b, m]] + w_l1 * L1(p, t) + w_giou * (-GIoU(p, t))
//
// for image i = l * B + b: layer l's image b (Matcher.match_layers passes several decoder
// layers, each read where it lies) against targets b. table_i (N, C) holds the weighted
// class cost of every query and class (computed by the caller with the same formula as
// the pairwise class costs, so this is a gather; focal: the raw logits, the focal term
// computed here), p = pred_i[n] and t = target[b, m] are cxcywh boxes. The GIoU follows
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

// The pass below is compiled three times where the toolchain can dispatch at load time
// (GCC on x86-64 ELF): for x86-64-v4 (AVX-512), for x86-64-v3 (AVX2) and for the
// baseline (SSE2); the loader picks the best the CPU has. Its loops then run on 8 or 16
// float lanes instead of 4: the focal term about 2x (v3) and 3.5x (v4) faster. The
// helpers are forced inline so that they are compiled into each version; with no
// floating-point contraction (CMakeLists.txt) every version gives the same bits.
// GCC 11 names the x86-64-v3/v4 levels; the load-time choice is an ifunc, which glibc has
// (musl does not).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && defined(__x86_64__) && defined(__ELF__) && \
    defined(__GLIBC__) && !defined(HYBRIDMATCH_NO_SIMD_CLONES)
#define HYBRIDMATCH_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HYBRIDMATCH_SIMD_CLONES
#endif
#if defined(__GNUC__)
#define HYBRIDMATCH_INLINE inline __attribute__((always_inline))
#else
#define HYBRIDMATCH_INLINE inline
#endif

// values[i] = w_class * focal(logits[i]) for i < count; vectorised for gamma = 2.
HYBRIDMATCH_INLINE void focal_values(const float* logits, int64_t count, float alpha, float gamma, float w_class,
                                     float* values) {
  if (gamma == 2.0f) {
    for (int64_t i = 0; i < count; ++i) values[i] = w_class * focal_of(logits[i], alpha, 2.0f);
  } else {
    for (int64_t i = 0; i < count; ++i) values[i] = w_class * focal_of(logits[i], alpha, gamma);
  }
}

// Boxes one array per coordinate (the targets of an image, or the queries of a run of
// rows), so that a loop over them runs on SIMD lanes.
struct BoxColumns {
  std::vector<float> cx, cy, w, h, x0, y0, x1, y1, area;
  std::vector<uint8_t> bad;
  bool any_bad = false;

  HYBRIDMATCH_INLINE void load(const float* boxes, int64_t count) {
    for (auto* v : {&cx, &cy, &w, &h, &x0, &y0, &x1, &y1, &area}) v->resize(static_cast<size_t>(count));
    bad.resize(static_cast<size_t>(count));
    any_bad = false;
    for (int64_t j = 0; j < count; ++j) {
      const float* t = boxes + j * 4;
      const XYXY r = to_xyxy(t);
      cx[j] = t[0], cy[j] = t[1], w[j] = t[2], h[j] = t[3];
      x0[j] = r.x0, y0[j] = r.y0, x1[j] = r.x1, y1[j] = r.y1, area[j] = r.area;
      bad[j] = !(std::isfinite(t[0]) && std::isfinite(t[1]) && std::isfinite(t[2]) && std::isfinite(t[3]));
      any_bad = any_bad || bad[j];
    }
  }
};

// The box terms of one pair, added to the class term `total`: w_l1 * L1(p, t) and then
// w_giou * -GIoU(p, t), the GIoU of hybridmatch/boxes.py (_overlaps, _giou). p is the
// query's box, t the target's; both loops below call this, so both give the same bits.
template <bool kL1, bool kGiou>
HYBRIDMATCH_INLINE float with_box_terms(float total, float pcx, float pcy, float pw, float ph, float px0,
                                        float py0, float px1, float py1, float parea, float tcx, float tcy,
                                        float tw, float th, float tx0, float ty0, float tx1, float ty1,
                                        float tarea, float w_l1, float w_giou) {
  if (kL1) {
    const float l1 = std::fabs(pcx - tcx) + std::fabs(pcy - tcy) + std::fabs(pw - tw) + std::fabs(ph - th);
    total = total + w_l1 * l1;
  }
  if (kGiou) {
    const float iw = std::max(std::min(px1, tx1) - std::max(px0, tx0), 0.0f);
    const float ih = std::max(std::min(py1, ty1) - std::max(py0, ty0), 0.0f);
    const float inter = iw * ih;
    const float uni = parea + tarea - inter;
    // A select on both operands rather than around the division: the division never
    // traps, so the compiler vectorises it (0 where the denominator is not positive).
    const float iou = (uni > 0.0f ? inter : 0.0f) / (uni > 0.0f ? uni : 1.0f);
    const float ew = std::max(std::max(px1, tx1) - std::min(px0, tx0), 0.0f);
    const float eh = std::max(std::max(py1, ty1) - std::min(py0, ty0), 0.0f);
    const float enclosing = ew * eh;
    const float empty = std::max(enclosing - uni, 0.0f);
    const float penalty = (enclosing > 0.0f ? empty : 0.0f) / (enclosing > 0.0f ? enclosing : 1.0f);
    total = total + w_giou * -(iou - penalty);
  }
  return total;
}

// One query against every target j: o[j] = with_box_terms(o[j], query, target j), over SIMD lanes of targets.
template <bool kL1, bool kGiou>
HYBRIDMATCH_INLINE void box_terms_of_query(const float* p, const XYXY& q, const BoxColumns& t, int64_t m,
                                           float w_l1, float w_giou, float* __restrict o) {
  const float *__restrict cx = t.cx.data(), *__restrict cy = t.cy.data(), *__restrict tw = t.w.data(),
                          *__restrict th = t.h.data(), *__restrict x0 = t.x0.data(), *__restrict y0 = t.y0.data(),
                          *__restrict x1 = t.x1.data(), *__restrict y1 = t.y1.data(), *__restrict area = t.area.data();
  for (int64_t j = 0; j < m; ++j) {
    o[j] = with_box_terms<kL1, kGiou>(o[j], p[0], p[1], p[2], p[3], q.x0, q.y0, q.x1, q.y1, q.area, cx[j], cy[j],
                                      tw[j], th[j], x0[j], y0[j], x1[j], y1[j], area[j], w_l1, w_giou);
  }
}

// One target (column j of t) against every query r of q: o[r] = with_box_terms(o[r], query r, target j), over
// SIMD lanes of queries.
template <bool kL1, bool kGiou>
HYBRIDMATCH_INLINE void box_terms_of_target(const BoxColumns& q, int64_t len, const BoxColumns& t, int64_t j,
                                            float w_l1, float w_giou, float* __restrict o) {
  const float *__restrict cx = q.cx.data(), *__restrict cy = q.cy.data(), *__restrict pw = q.w.data(),
                          *__restrict ph = q.h.data(), *__restrict x0 = q.x0.data(), *__restrict y0 = q.y0.data(),
                          *__restrict x1 = q.x1.data(), *__restrict y1 = q.y1.data(), *__restrict area = q.area.data();
  const float tcx = t.cx[j], tcy = t.cy[j], tw = t.w[j], th = t.h[j], tx0 = t.x0[j], ty0 = t.y0[j], tx1 = t.x1[j],
              ty1 = t.y1[j], tarea = t.area[j];
  for (int64_t r = 0; r < len; ++r) {
    o[r] = with_box_terms<kL1, kGiou>(o[r], cx[r], cy[r], pw[r], ph[r], x0[r], y0[r], x1[r], y1[r], area[r], tcx,
                                      tcy, tw, th, tx0, ty0, tx1, ty1, tarea, w_l1, w_giou);
  }
}

// Everything one pass reads and writes (see fused_cost_all). Image i of the output
// reads its queries from tables[i] (N, C) and preds[i] (N, 4), which may lie in different
// tensors (the decoder layers of Matcher.match_layers), and the targets of image
// i % target_batch.
struct FusedProblem {
  const float* const* tables;
  int64_t num_classes;
  const int64_t* labels;
  const float* const* preds;
  const float* target;
  int64_t batch, target_batch, n, m;
  float w_l1, w_giou;
  bool has_class, has_l1, has_giou, focal;
  float alpha, gamma, w_class;
  int64_t column_max_targets;
  float* out;
};

// A worker's scratch space, kept across the images of its rows.
struct FusedScratch {
  BoxColumns targets, queries;
  std::vector<int64_t> present, slot, where;
  std::vector<float> gathered, values, columns;
  std::vector<uint8_t> row_bad;
};

// A row's focal logits must all be finite (the torch path's nan_where_nonfinite): one
// comparison per logit (false for NaN), vectorised.
HYBRIDMATCH_INLINE bool logits_bad(const float* logits, int64_t count) {
  int bad = 0;
  for (int64_t c = 0; c < count; ++c) bad |= !(std::fabs(logits[c]) <= std::numeric_limits<float>::max());
  return bad != 0;
}

// Rows [first, last) of image b, one query at a time, each over SIMD lanes of the
// targets: the layout for many targets.
HYBRIDMATCH_INLINE void segment_by_rows(const FusedProblem& a, int64_t b, int64_t first, int64_t last,
                                        FusedScratch& s) {
  const int64_t m = a.m, num_classes = a.num_classes;
  const bool focal = a.focal && a.has_class;
  const int64_t width = static_cast<int64_t>(s.present.size());
  const int64_t base = b * a.n;  // the image's first row
  const float* table = a.tables[b] - base * num_classes;
  const float* pred = a.preds[b] - base * 4;
  if (focal) {  // the focal value of each (query, class present), in one loop
    s.gathered.resize(static_cast<size_t>((last - first) * width));
    s.values.resize(s.gathered.size());
    s.row_bad.resize(static_cast<size_t>(last - first));
    for (int64_t r = first; r < last; ++r) {  // with each row's check, while the row is in cache
      const float* logits = table + r * num_classes;
      float* into = s.gathered.data() + (r - first) * width;
      for (int64_t u = 0; u < width; ++u) into[u] = logits[s.present[u]];
      s.row_bad[r - first] = logits_bad(logits, num_classes);
    }
    focal_values(s.gathered.data(), static_cast<int64_t>(s.gathered.size()), a.alpha, a.gamma, a.w_class,
                 s.values.data());
  }
  for (int64_t row = first; row < last; ++row) {
    const float* p = pred + row * 4;
    const XYXY q = to_xyxy(p);
    float* o = a.out + row * m;
    // As nan_where_nonfinite: NaN in the rows of non-finite predictions (boxes, focal
    // logits) and the columns of non-finite target boxes.
    bool bad = !(std::isfinite(p[0]) && std::isfinite(p[1]) && std::isfinite(p[2]) && std::isfinite(p[3]));
    if (focal) bad = bad || s.row_bad[row - first];
    if (bad) {
      std::fill(o, o + m, std::numeric_limits<float>::quiet_NaN());
      continue;
    }
    if (focal) {
      const float* cls = s.values.data() + (row - first) * width;
      for (int64_t j = 0; j < m; ++j) o[j] = cls[s.slot[j]];
    } else if (a.has_class) {
      const float* cls = table + row * num_classes;
      const int64_t* lab = a.labels + (b % a.target_batch) * m;
      for (int64_t j = 0; j < m; ++j) o[j] = cls[lab[j]];
    } else {
      std::fill(o, o + m, 0.0f);
    }
    if (a.has_l1 && a.has_giou) {
      box_terms_of_query<true, true>(p, q, s.targets, m, a.w_l1, a.w_giou, o);
    } else if (a.has_l1) {
      box_terms_of_query<true, false>(p, q, s.targets, m, a.w_l1, a.w_giou, o);
    } else if (a.has_giou) {
      box_terms_of_query<false, true>(p, q, s.targets, m, a.w_l1, a.w_giou, o);
    }
    if (s.targets.any_bad) {
      for (int64_t j = 0; j < m; ++j) {
        if (s.targets.bad[j]) o[j] = std::numeric_limits<float>::quiet_NaN();
      }
    }
  }
}

// Rows [first, last) of image b, one target at a time, each over SIMD lanes of the
// queries, then transposed into place: the layout for few targets (a loop over 7
// targets would barely fill a vector).
HYBRIDMATCH_INLINE void segment_by_columns(const FusedProblem& a, int64_t b, int64_t first, int64_t last,
                                           FusedScratch& s) {
  const int64_t m = a.m, num_classes = a.num_classes, len = last - first;
  const bool focal = a.focal && a.has_class;
  const int64_t width = static_cast<int64_t>(s.present.size());
  const float* table = a.tables[b] + (first - b * a.n) * num_classes;  // row `first`
  s.queries.load(a.preds[b] + (first - b * a.n) * 4, len);
  s.row_bad.resize(static_cast<size_t>(len));
  s.columns.resize(static_cast<size_t>(m * len));
  if (focal) {
    s.gathered.resize(static_cast<size_t>(width * len));
    s.values.resize(s.gathered.size());
  }
  // One pass over the rows of the table: each row's check and the entries the targets
  // read, laid out (class present or target, query), while the row is in cache.
  const int64_t* labels = a.labels + (b % a.target_batch) * m;
  for (int64_t r = 0; r < len; ++r) {
    const float* row = table + r * num_classes;
    s.row_bad[r] = s.queries.bad[r] || (focal && logits_bad(row, num_classes));
    if (focal) {
      for (int64_t u = 0; u < width; ++u) s.gathered[u * len + r] = row[s.present[u]];
    } else if (a.has_class) {
      for (int64_t j = 0; j < m; ++j) s.columns[j * len + r] = row[labels[j]];
    }
  }
  if (focal) {  // the focal value of each (class present, query), in one loop
    focal_values(s.gathered.data(), static_cast<int64_t>(s.gathered.size()), a.alpha, a.gamma, a.w_class,
                 s.values.data());
  }
  for (int64_t j = 0; j < m; ++j) {
    float* o = s.columns.data() + j * len;
    if (focal) {
      std::copy_n(s.values.data() + s.slot[j] * len, len, o);
    } else if (!a.has_class) {
      std::fill(o, o + len, 0.0f);
    }
    if (a.has_l1 && a.has_giou) {
      box_terms_of_target<true, true>(s.queries, len, s.targets, j, a.w_l1, a.w_giou, o);
    } else if (a.has_l1) {
      box_terms_of_target<true, false>(s.queries, len, s.targets, j, a.w_l1, a.w_giou, o);
    } else if (a.has_giou) {
      box_terms_of_target<false, true>(s.queries, len, s.targets, j, a.w_l1, a.w_giou, o);
    }
    if (s.targets.bad[j]) std::fill(o, o + len, std::numeric_limits<float>::quiet_NaN());
  }
  const float* columns = s.columns.data();
  for (int64_t r = 0; r < len; ++r) {
    float* o = a.out + (first + r) * m;
    if (s.row_bad[r]) {
      std::fill(o, o + m, std::numeric_limits<float>::quiet_NaN());
    } else {
      for (int64_t j = 0; j < m; ++j) o[j] = columns[j * len + r];
    }
  }
}

// Rows [begin, end) of the flattened (B * N) queries, image by image.
HYBRIDMATCH_SIMD_CLONES
static void fused_rows(const FusedProblem& a, int64_t begin, int64_t end) {
  FusedScratch s;
  s.slot.resize(static_cast<size_t>(a.m));
  for (int64_t first = begin; first < end;) {
    const int64_t b = first / a.n;
    const int64_t last = std::min(end, (b + 1) * a.n);
    const int64_t t = b % a.target_batch;  // the image's targets
    s.targets.load(a.target + t * a.m * 4, a.m);
    if (a.focal && a.has_class) {  // the classes present in image b, and each target's place among them
      s.present.clear();
      s.where.assign(static_cast<size_t>(a.num_classes), -1);
      for (int64_t j = 0; j < a.m; ++j) {
        const int64_t c = a.labels[t * a.m + j];
        if (s.where[c] < 0) {
          s.where[c] = static_cast<int64_t>(s.present.size());
          s.present.push_back(c);
        }
        s.slot[j] = s.where[c];
      }
    }
    if (a.m <= a.column_max_targets) {
      segment_by_columns(a, b, first, last, s);
    } else {
      segment_by_rows(a, b, first, last, s);
    }
    first = last;
  }
}

// out[b, n, m] for the whole batch. Rows (b, n) are split into contiguous chunks, one per
// worker; workers > 1 only when the caller found the problem large enough.
//
// focal: table holds raw logits and the class term is w_class * focal(logit), computed
// once per query and class present in its image. Otherwise table holds the weighted
// class cost. Images with at most column_max_targets targets are computed target by
// target over the queries, the others query by query over the targets; both give the
// same bits.
inline void fused_cost_all(const FusedProblem& problem, int64_t workers) {
  const int64_t rows = problem.batch * problem.n;
  if (workers <= 1 || rows < 2) {
    fused_rows(problem, 0, rows);
    return;
  }
  std::exception_ptr failure;
  std::mutex failure_mutex;
  std::vector<std::thread> threads;
  const int64_t chunk = (rows + workers - 1) / workers;
  auto guarded = [&](int64_t begin, int64_t end) {
    try {
      fused_rows(problem, begin, end);
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
