// Copyright (c) monai-medt contributors
// Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
//
// Fused CPU kernel of MedT's relative-position axial attention (see attention_core.py for the math). One pass per
// block of query rows (float32: one row per vector lane; float64: one row) computes the logits, the softmax and both
// weighted sums in registers and L1 cache; the backward recomputes the rows' attention from their saved max and
// 1 / sum. The (N, L, L) maps are never materialised, which is what bounds the unfused formulation: its matmuls have
// inner sizes of 1-8 channels and stream the maps through memory a dozen times per layer.
//
// Layouts (all contiguous): q1, q2: (N, L, D); kt, k3t: (N, D, L); vt: (N, E, L); rq, wk: (D, L, L); rv: (E, L, L),
// indexed [c, i, j]. Sequences are independent, so the work is split over n; the position-table gradients, which sum
// over n, go to one buffer per chunk of sequences. The map entry points (inference_map, forward_map, backward_map)
// gather each group of sequences from the layer's projected map into thread buffers in these layouts instead, and
// write outputs (and gradients) straight into maps.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "batch_norm_cpu.h"
#include "winograd_conv_cpu.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

inline double exp_nonpositive(double x) { return std::exp(x); }

// One query row per lane: sixteen float lanes (one register) where the build targets AVX-512, else eight (one AVX2
// register, or two SSE registers).
#if defined(__AVX512F__)
constexpr int64_t kLanes = 16;
#else
constexpr int64_t kLanes = 8;
#endif
typedef float fv __attribute__((vector_size(kLanes * 4)));
typedef int32_t iv __attribute__((vector_size(kLanes * 4)));

inline fv loadv(const float* p) {
  fv v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void storev(float* p, fv v) { std::memcpy(p, &v, sizeof(v)); }

// exp(x) for x <= 0 on every lane (Cephes' single-precision polynomial, ~1 ulp). Below -87 the result stays at
// 2^-126 * p(r) instead of underflowing: irrelevant next to the row maximum's exp(0) = 1.
inline fv exp_nonpositive(fv x) {
  const fv n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const fv r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  fv p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  iv e = __builtin_convertvector(n, iv);
  e = e < -126 ? -126 : e;
  return p * reinterpret_cast<fv>((e + 127) << 23);
}

template <typename T>
struct Inputs {
  const T *q1, *kt, *q2, *k3t, *vt, *rq, *wk, *rv;
  int64_t L, D, E;
  bool positional;
};

// logits of row i of sequence n into s[0..L)
template <typename T>
inline void row_logits(const Inputs<T>& in, int64_t n, int64_t i, T* s) {
  const int64_t L = in.L, D = in.D;
  const T* q1 = in.q1 + (n * L + i) * D;
  const T* kt = in.kt + n * D * L;
  // the first channel assigns (a zero fill would become a memset call, slow at these lengths)
  {
    const T a = q1[0];
#pragma omp simd
    for (int64_t j = 0; j < L; ++j) s[j] = a * kt[j];
  }
  for (int64_t c = 1; c < D; ++c) {
    const T a = q1[c];
    const T* kc = kt + c * L;
#pragma omp simd
    for (int64_t j = 0; j < L; ++j) s[j] += a * kc[j];
  }
  if (!in.positional) return;
  const T* q2 = in.q2 + (n * L + i) * D;
  const T* k3t = in.k3t + n * D * L;
  for (int64_t c = 0; c < D; ++c) {
    const T b = q2[c];
    const T* r = in.rq + (c * L + i) * L;
    const T* w = in.wk + (c * L + i) * L;
    const T* kc = k3t + c * L;
#pragma omp simd
    for (int64_t j = 0; j < L; ++j) {
      s[j] += b * r[j];
      s[j] += kc[j] * w[j];
    }
  }
}

template <typename T>
inline T dot(const T* a, const T* b, int64_t L) {
  T acc = T(0);
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < L; ++j) acc += a[j] * b[j];
  return acc;
}

template <typename T>
Inputs<T> make_inputs(const torch::Tensor& q1, const torch::Tensor& kt, const torch::Tensor& q2,
                      const torch::Tensor& k3t, const torch::Tensor& vt, const torch::Tensor& rq,
                      const torch::Tensor& wk, const torch::Tensor& rv, bool positional) {
  Inputs<T> in;
  in.q1 = q1.data_ptr<T>();
  in.kt = kt.data_ptr<T>();
  in.vt = vt.data_ptr<T>();
  in.q2 = positional ? q2.data_ptr<T>() : nullptr;
  in.k3t = positional ? k3t.data_ptr<T>() : nullptr;
  in.rq = positional ? rq.data_ptr<T>() : nullptr;
  in.wk = positional ? wk.data_ptr<T>() : nullptr;
  in.rv = positional ? rv.data_ptr<T>() : nullptr;
  in.L = q1.size(1);
  in.D = q1.size(2);
  in.E = vt.size(1);
  in.positional = positional;
  return in;
}

template <typename T>
void forward_impl(const Inputs<T>& in, int64_t N, T* sv, T* sve, T* stats) {
  const int64_t L = in.L, E = in.E;
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> s(L);
    for (int64_t n = begin; n < end; ++n) {
      const T* vt = in.vt + n * E * L;
      for (int64_t i = 0; i < L; ++i) {
        row_logits(in, n, i, s.data());
        T m = s[0];
#pragma omp simd reduction(max : m)
        for (int64_t j = 0; j < L; ++j) m = s[j] > m ? s[j] : m;
        T* sp = s.data();
#pragma omp simd
        for (int64_t j = 0; j < L; ++j) sp[j] = exp_nonpositive(sp[j] - m);
        T z = T(0);
#pragma omp simd reduction(+ : z)
        for (int64_t j = 0; j < L; ++j) z += sp[j];
        const T inv = T(1) / z;
        // the row's max and 1 / sum let the backward recompute exactly the forward's probabilities
        stats[2 * (n * L + i)] = m;
        stats[2 * (n * L + i) + 1] = inv;
        T* out = sv + (n * L + i) * E;
        for (int64_t e = 0; e < E; ++e) out[e] = dot(s.data(), vt + e * L, L) * inv;
        if (in.positional) {
          T* oute = sve + (n * L + i) * E;
          for (int64_t e = 0; e < E; ++e) oute[e] = dot(s.data(), in.rv + (e * L + i) * L, L) * inv;
        }
      }
    }
  });
}

// Float inference forward, kLanes query rows at a time (one lane each): the logits of a block are built in registers
// over the key positions j, the softmax max and sum run down the lanes, and the weighted sums accumulate in registers,
// so the row-wise form's per-row horizontal reductions (2 E dot products per row) disappear: about twice as fast on
// MedT's layer shapes. Training uses it too, keeping each row's max and 1 / sum: the backward recomputes each
// block's probabilities with the same code (block_probabilities), so it reproduces the forward's. Float64 runs the
// row-wise forward_impl and backward.
template <int G>
inline void weighted_sums(const float* S, const float* vt, const float* rvt, int64_t L, int64_t rstride,
                          fv inv, float* sv_out, float* sve_out, int64_t rows, int64_t E) {
  fv acc[G], acce[G];
  for (int g = 0; g < G; ++g) acc[g] = acce[g] = fv{};
  for (int64_t j = 0; j < L; ++j) {
    const fv p = loadv(S + j * kLanes);
    for (int g = 0; g < G; ++g) {
      acc[g] += p * vt[g * L + j];
      if (rvt) acce[g] += p * loadv(rvt + j * rstride + g * kLanes);
    }
  }
  for (int g = 0; g < G; ++g) {
    const fv a = acc[g] * inv, b = acce[g] * inv;
    for (int64_t r = 0; r < rows; ++r) {
      sv_out[r * E + g] = a[r];
      if (rvt) sve_out[r * E + g] = b[r];
    }
  }
}

// Logits of the rows i0..i0+kLanes-1 into S[j, lane] and their maximum over j: the sums of row_logits, vectorised
// over the rows instead of the key positions. DD is the channel count D of the positional form known at compile time
// (its query lanes then stay in registers); 0 takes D at run time, and covers the non-positional form.
template <int DD>
inline fv block_logits(const float* q1t, const float* q2t, const float* kt, const float* k3t, const float* rqt,
                       const float* wkt, int64_t L, int64_t Lp, int64_t D, int64_t i0, float* S) {
  constexpr int R = DD > 0 ? DD : 1;
  const int64_t C = DD > 0 ? DD : D;
  rqt += i0 * L * C;  // the row block's slices (see BlockedInputs)
  wkt += i0 * L * C;
  fv a[R], b[R];
  if (DD > 0) {
    for (int c = 0; c < DD; ++c) {
      a[c] = loadv(q1t + c * Lp + i0);
      b[c] = loadv(q2t + c * Lp + i0);
    }
  }
  fv m = fv{};
  for (int64_t j = 0; j < L; ++j) {
    fv s;
    if (DD > 0) {
      s = a[0] * kt[j];
      for (int c = 1; c < DD; ++c) s += a[c] * kt[c * L + j];
      for (int c = 0; c < DD; ++c) {
        const int64_t t = (j * C + c) * kLanes;
        s += b[c] * loadv(rqt + t);
        s += k3t[c * L + j] * loadv(wkt + t);
      }
    } else {
      s = loadv(q1t + i0) * kt[j];
      for (int64_t c = 1; c < D; ++c) s += loadv(q1t + c * Lp + i0) * kt[c * L + j];
      if (k3t) {
        for (int64_t c = 0; c < D; ++c) {
          const int64_t t = (j * C + c) * kLanes;
          s += loadv(q2t + c * Lp + i0) * loadv(rqt + t);
          s += k3t[c * L + j] * loadv(wkt + t);
        }
      }
    }
    storev(S + j * kLanes, s);
    m = j == 0 ? s : (s > m ? s : m);
  }
  return m;
}

// The float path's view of the inputs for row blocks: the position tables rearranged so that each row block's slice
// is one contiguous run read in the order of its loop over key positions (see slot; once per call, a few hundred KiB
// at most, shared by the threads), and per sequence the query rows transposed to (D, Lp) in a thread's buffers.
struct BlockedInputs {
  const Inputs<float>& in;
  int64_t Lp;
  std::vector<float> rqt, wkt, rvt;

  // where entry (c, i, j) of a table with C channels lies: [i / kLanes][j][c][i % kLanes]. Each row block's slice is
  // contiguous and read (for gradients, written) in order; with the rows of a block strided across the table (one
  // vector per (c, j), Lp floats apart), the slices of a 64-position layer fell into a quarter of L1's sets
  int64_t slot(int64_t i, int64_t j, int64_t c, int64_t C) const {
    return i / kLanes * kLanes * in.L * C + (j * C + c) * kLanes + i % kLanes;
  }

  explicit BlockedInputs(const Inputs<float>& inputs)
      : in(inputs), Lp((inputs.L + kLanes - 1) / kLanes * kLanes) {
    if (!in.positional) return;
    const int64_t L = in.L, D = in.D, E = in.E;
    rqt.assign(Lp * L * D, 0.0f);
    wkt.assign(Lp * L * D, 0.0f);
    for (int64_t c = 0; c < D; ++c)
      for (int64_t i = 0; i < L; ++i)
        for (int64_t j = 0; j < L; ++j) {
          rqt[slot(i, j, c, D)] = in.rq[(c * L + i) * L + j];
          wkt[slot(i, j, c, D)] = in.wk[(c * L + i) * L + j];
        }
    rvt.assign(Lp * L * E, 0.0f);
    for (int64_t e = 0; e < E; ++e)
      for (int64_t i = 0; i < L; ++i)
        for (int64_t j = 0; j < L; ++j) rvt[slot(i, j, e, E)] = in.rv[(e * L + i) * L + j];
  }

  // thread buffers: per sequence of a group q1t and q2t, (D, Lp) each (zero padding), then S, (L, kLanes)
  std::vector<float> buffers(int64_t group = 1) const {
    return std::vector<float>(group * 2 * in.D * Lp + in.L * kLanes, 0.0f);
  }
  float* queries(float* buf, int64_t s) const { return buf + s * 2 * in.D * Lp; }
  float* scores(float* buf, int64_t group) const { return buf + group * 2 * in.D * Lp; }

  void load_queries(int64_t n, float* q) const {
    float* q1t = q;
    float* q2t = q + in.D * Lp;
    for (int64_t i = 0; i < in.L; ++i)
      for (int64_t c = 0; c < in.D; ++c) {
        q1t[c * Lp + i] = in.q1[(n * in.L + i) * in.D + c];
        if (in.positional) q2t[c * Lp + i] = in.q2[(n * in.L + i) * in.D + c];
      }
  }

  // logits of rows i0..i0+kLanes-1 of one sequence into S, from its queries q (see load_queries) and its keys kt,
  // k3t (D, L); returns their maximum over j
  fv logits(const float* kt, const float* k3t, int64_t i0, const float* q, float* S) const {
    const int64_t L = in.L, D = in.D;
    const float* q1t = q;
    const float* q2t = q + D * Lp;
    switch (in.positional ? D : 0) {
      case 1: return block_logits<1>(q1t, q2t, kt, k3t, rqt.data(), wkt.data(), L, Lp, D, i0, S);
      case 2: return block_logits<2>(q1t, q2t, kt, k3t, rqt.data(), wkt.data(), L, Lp, D, i0, S);
      case 4: return block_logits<4>(q1t, q2t, kt, k3t, rqt.data(), wkt.data(), L, Lp, D, i0, S);
      default: return block_logits<0>(q1t, q2t, kt, k3t, rqt.data(), wkt.data(), L, Lp, D, i0, S);
    }
  }
};

// Row block i0 of one sequence: queries q (see load_queries), keys kt, k3t (D, L), values vt (E, L), S a thread's
// (L, kLanes) scratch; the weighted sums go to sv and sve, (L, E) each (sve unused without positions), and where stats
// is given, each row's max and 1 / sum to stats, (L, 2)
void row_block(const BlockedInputs& blocked, const float* kt, const float* k3t, const float* vt, const float* q,
               float* S, int64_t i0, float* sv, float* sve, float* stats) {
  const Inputs<float>& in = blocked.in;
  const int64_t L = in.L, E = in.E, Lp = blocked.Lp;
  const fv m = blocked.logits(kt, k3t, i0, q, S);
  fv z = fv{};
  if (stats) {
    // for a backward, a compensated (Kahan) sum: its softmax gradient assumes that the probabilities sum to one
    fv carry = fv{};
    for (int64_t j = 0; j < L; ++j) {
      const fv p = exp_nonpositive(loadv(S + j * kLanes) - m);
      storev(S + j * kLanes, p);
      const fv y = p - carry, t = z + y;
      carry = (t - z) - y;
      z = t;
    }
  } else {
    for (int64_t j = 0; j < L; ++j) {
      const fv p = exp_nonpositive(loadv(S + j * kLanes) - m);
      storev(S + j * kLanes, p);
      z += p;
    }
  }
  const fv inv = 1.0f / z;
  const int64_t rows = std::min(kLanes, L - i0);
  if (stats) {
    for (int64_t r = 0; r < rows; ++r) {
      stats[2 * (i0 + r)] = m[r];
      stats[2 * (i0 + r) + 1] = inv[r];
    }
  }
  float* sv_out = sv + i0 * E;
  float* sve_out = in.positional ? sve + i0 * E : nullptr;
  for (int64_t e0 = 0; e0 < E; e0 += 4) {
    const float* rv_e = in.positional ? blocked.rvt.data() + i0 * L * E + e0 * kLanes : nullptr;
    float* sve_e = in.positional ? sve_out + e0 : nullptr;
    switch (std::min<int64_t>(4, E - e0)) {
      case 4: weighted_sums<4>(S, vt + e0 * L, rv_e, L, E * kLanes, inv, sv_out + e0, sve_e, rows, E); break;
      case 3: weighted_sums<3>(S, vt + e0 * L, rv_e, L, E * kLanes, inv, sv_out + e0, sve_e, rows, E); break;
      case 2: weighted_sums<2>(S, vt + e0 * L, rv_e, L, E * kLanes, inv, sv_out + e0, sve_e, rows, E); break;
      default: weighted_sums<1>(S, vt + e0 * L, rv_e, L, E * kLanes, inv, sv_out + e0, sve_e, rows, E);
    }
  }
}

// Sequences per group: each row block runs over all sequences of a group in turn, so that the slices of the position
// tables it reads ((2 D + E) L kLanes floats) stay in L1 for the group instead of returning from L2 per sequence
constexpr int64_t kGroup = 4;

void forward_blocked(const Inputs<float>& in, int64_t N, float* sv, float* sve, float* stats) {
  const int64_t L = in.L, D = in.D, E = in.E;
  const BlockedInputs blocked(in);
  at::parallel_for(0, N, kGroup, [&](int64_t begin, int64_t end) {
    std::vector<float> buf = blocked.buffers(kGroup);
    float* S = blocked.scores(buf.data(), kGroup);
    for (int64_t n0 = begin; n0 < end; n0 += kGroup) {
      const int64_t count = std::min(kGroup, end - n0);
      for (int64_t s = 0; s < count; ++s) blocked.load_queries(n0 + s, blocked.queries(buf.data(), s));
      for (int64_t i0 = 0; i0 < blocked.Lp; i0 += kLanes) {
        for (int64_t s = 0; s < count; ++s) {
          const int64_t n = n0 + s;
          row_block(blocked, in.kt + n * D * L, in.positional ? in.k3t + n * D * L : nullptr, in.vt + n * E * L,
                    blocked.queries(buf.data(), s), S, i0, sv + n * L * E, in.positional ? sve + n * L * E : nullptr,
                    stats ? stats + n * L * 2 : nullptr);
        }
      }
    }
  });
}

// A layer's projected map qkv (B, G * (2 D + E), H, W; per head D query, D key and E value channels) as its B G O
// sequences (O: the other axis). Maps are addressed through their strides (batch, channel, row, column), so that
// contiguous and channels-last maps work alike.
struct MapLayout {
  const float* qkv;
  const int64_t* qs;
  int64_t B, G, O, D, E;
  bool height;
  // neighbouring sequences share cache lines: in a contiguous map those of one head along the other axis (order
  // b, g, o), in a channels-last map those of the heads at one position (order b, o, g)
  bool heads_inner;

  MapLayout(const float* map, const int64_t* strides, int64_t batch, int64_t heads, int64_t H, int64_t W,
            int64_t qk_dim, int64_t head_dim, bool along_height)
      : qkv(map),
        qs(strides),
        B(batch),
        G(heads),
        O(along_height ? W : H),
        D(qk_dim),
        E(head_dim),
        height(along_height),
        heads_inner(strides[1] == 1) {}

  int64_t sequences() const { return B * G * O; }

  // sequence n's image, head and position along the other axis
  void locate(int64_t n, int64_t& b, int64_t& g, int64_t& o) const {
    b = n / (G * O);
    g = heads_inner ? n % G : (n / O) % G;
    o = heads_inner ? (n / G) % O : n % O;
  }

  // offset of (image b, channel c, position i along the axis, o along the other) in a map with strides st
  int64_t offset(const int64_t* st, int64_t b, int64_t c, int64_t i, int64_t o) const {
    return b * st[0] + c * st[1] + (height ? i * st[2] + o * st[3] : o * st[2] + i * st[3]);
  }
};

// Sequence (b, g, o)'s operands into a thread's buffers: the queries scaled by the logit-norm scales (q1 = q s[0, g],
// q2 = q s[1, g]), transposed to (D, Lp) at q (see BlockedInputs::queries), the keys kt and k3t = k s[2, g] (D, L)
// and the values vt (E, L), times s[rows, g] where value_scale (rows: 3 logit scales with positions, else 1)
void gather(const MapLayout& m, const BlockedInputs& blocked, const float* s, bool value_scale, int64_t b, int64_t g,
            int64_t o, float* q, float* kt, float* k3t, float* vt) {
  const int64_t L = blocked.in.L, Lp = blocked.Lp, D = m.D, E = m.E, G = m.G;
  const bool positional = blocked.in.positional;
  const float s0 = s[g], s1 = positional ? s[G + g] : 0.0f, s2 = positional ? s[2 * G + g] : 0.0f;
  const float s3 = value_scale ? s[(positional ? 3 : 1) * G + g] : 1.0f;
  const int64_t cs = m.qs[1];
  float* q1t = q;
  float* q2t = q + D * Lp;
  // position-major: the channels of one position share cache lines in a channels-last map, and a strided walk along
  // one channel would meet the same cache set at every position where the map's row stride is a multiple of 4 KiB
  for (int64_t i = 0; i < L; ++i) {
    const float* at = m.qkv + m.offset(m.qs, b, g * (2 * D + E), i, o);
    for (int64_t c = 0; c < D; ++c) {
      const float qi = at[c * cs], ki = at[(D + c) * cs];
      q1t[c * Lp + i] = qi * s0;
      kt[c * L + i] = ki;
      if (positional) {
        q2t[c * Lp + i] = qi * s1;
        k3t[c * L + i] = ki * s2;
      }
    }
    for (int64_t e = 0; e < E; ++e) vt[e * L + i] = at[(2 * D + e) * cs] * s3;
  }
}

// Float forward from the projected map: per group of sequences, their operands gathered (see gather), the row blocks
// run, and write(b, g, o, sv, sve) given each sequence's weighted sums (Lp, E); where stats is given, each row's max
// and 1 / sum go to stats (B G O, L, 2), in the order of MapLayout::locate. Replaces the layout copies of the
// projection and the passes around the kernel: one read of the projection, one write of the output per layer.
template <typename Write>
void map_forward(const MapLayout& m, const Inputs<float>& in, const float* scales, bool value_scale, float* stats,
                 Write write) {
  const int64_t L = in.L, D = in.D, E = in.E;
  const BlockedInputs blocked(in);
  const int64_t Lp = blocked.Lp;
  const int64_t per_sequence = (2 * D + E) * L + (in.positional ? 2 : 1) * Lp * E;
  at::parallel_for(0, m.sequences(), kGroup, [&](int64_t begin, int64_t end) {
    std::vector<float> buf = blocked.buffers(kGroup);
    float* S = blocked.scores(buf.data(), kGroup);
    // per sequence of a group: kt, k3t (D, L), vt (E, L), sv (Lp, E) and, with positions, sve (Lp, E)
    std::vector<float> local(kGroup * per_sequence);
    for (int64_t n0 = begin; n0 < end; n0 += kGroup) {
      const int64_t count = std::min(kGroup, end - n0);
      int64_t b[kGroup], g[kGroup], o[kGroup];
      for (int64_t s = 0; s < count; ++s) {
        m.locate(n0 + s, b[s], g[s], o[s]);
        float* kt = local.data() + s * per_sequence;
        gather(m, blocked, scales, value_scale, b[s], g[s], o[s], blocked.queries(buf.data(), s), kt, kt + D * L,
               kt + 2 * D * L);
      }
      for (int64_t i0 = 0; i0 < Lp; i0 += kLanes) {
        for (int64_t s = 0; s < count; ++s) {
          const float* kt = local.data() + s * per_sequence;
          float* sv = local.data() + s * per_sequence + (2 * D + E) * L;
          row_block(blocked, kt, in.positional ? kt + D * L : nullptr, kt + 2 * D * L, blocked.queries(buf.data(), s),
                    S, i0, sv, sv + Lp * E, stats ? stats + (n0 + s) * L * 2 : nullptr);
        }
      }
      for (int64_t s = 0; s < count; ++s) {
        const float* sv = local.data() + s * per_sequence + (2 * D + E) * L;
        write(b[s], g[s], o[s], sv, sv + Lp * E);
      }
    }
  });
}

// The probabilities of rows i0..i0+kLanes-1 of one sequence (its queries q, see load_queries; keys kt, k3t) into
// S[j, lane], recomputed as the blocked forward computed them (same logits, same exp) from the sequence's saved max
// and 1 / sum, stats (L, 2)
void block_probabilities(const BlockedInputs& blocked, const float* kt, const float* k3t, int64_t i0,
                         const float* stats, const float* q, float* S) {
  const int64_t L = blocked.in.L;
  blocked.logits(kt, k3t, i0, q, S);
  fv m = fv{}, inv = fv{};
  for (int64_t r = 0; r < std::min(kLanes, L - i0); ++r) {
    m[r] = stats[2 * (i0 + r)];
    inv[r] = stats[2 * (i0 + r) + 1];
  }
  for (int64_t j = 0; j < L; ++j) storev(S + j * kLanes, exp_nonpositive(loadv(S + j * kLanes) - m) * inv);
}

// Lane sums of kLanes vectors at once: lane t of the result is the sum of the lanes of v[t]. Each stage adds the two
// halves of every group of lanes of two vectors into one (two shuffles and one add), halving the vector count; taking
// the inputs in bit-reversed order puts the sums in order. About 3 operations per sum, against ~2 log2(kLanes) for
// a horizontal sum of one vector.
constexpr int kLaneCount = static_cast<int>(kLanes);

// lane l of the first (lower) halves: lanes of a (indices below kLaneCount) in the lower half of l's group of 2 h,
// lanes of b shifted down by h in its upper half
constexpr int lower_lane(int h, int l) { return l % (2 * h) < h ? l : kLaneCount + l - h; }
constexpr int upper_lane(int h, int l) { return lower_lane(h, l) + h; }

// the lane-sum helpers must be inlined and their loops unrolled, so that lane indices and the vectors stay
// compile-time constants and registers (a loop left rolled kept them in memory and computed bit reversals at run time)
#if defined(__clang__)
#define MEDT_UNROLL _Pragma("unroll")
#else
#define MEDT_UNROLL _Pragma("GCC unroll 16")
#endif
#define MEDT_INLINE inline __attribute__((always_inline))

template <int H, int... I>
MEDT_INLINE fv add_halves(fv a, fv b, std::integer_sequence<int, I...>) {
#if defined(__clang__)
  const fv lo = __builtin_shufflevector(a, b, lower_lane(H, I)...);
  const fv hi = __builtin_shufflevector(a, b, upper_lane(H, I)...);
#else
  const fv lo = __builtin_shuffle(a, b, iv{lower_lane(H, I)...});
  const fv hi = __builtin_shuffle(a, b, iv{upper_lane(H, I)...});
#endif
  return lo + hi;
}

template <int H>
MEDT_INLINE void add_stage(fv* v) {
  const auto lanes = std::make_integer_sequence<int, kLaneCount>{};
  MEDT_UNROLL
  for (int p = 0; p < H; ++p) v[p] = add_halves<H>(v[2 * p], v[2 * p + 1], lanes);
  if constexpr (H > 1) add_stage<H / 2>(v);
}

constexpr int bit_reversed(int t) {
  int r = 0;
  for (int b = 1; b < kLaneCount; b <<= 1) r = (r << 1) | ((t & b) ? 1 : 0);
  return r;
}

// Adds to dst[t], t < count, the lane sums of term(t) for t < kLanes (terms from count on are not evaluated); first:
// assign instead
template <typename Term>
MEDT_INLINE void add_lane_sums(float* dst, int64_t count, bool first, Term term) {
  fv v[kLaneCount];
  MEDT_UNROLL
  for (int t = 0; t < kLaneCount; ++t) v[bit_reversed(t)] = t < count ? term(t) : fv{};
  add_stage<kLaneCount / 2>(v);
  for (int64_t t = 0; t < count; ++t) dst[t] = first ? v[0][t] : dst[t] + v[0][t];
}

// The float backward, on the forward's row blocks (one query row per lane). Per block, after its probabilities p
// (block_probabilities): a first pass over the key positions j forms da = dL/dp from the output gradients, its row
// sums delta = sum_j p da and the value-table gradient; a second pass forms ds = p (da - delta), the query gradients
// (sums over j, in registers) and the logit-table gradients. The table gradients are per (c, i, j) and sum over the
// sequences, in one buffer per chunk laid out as the tables (see BlockedInputs::slot). dv, dk and dk3 sum over the
// rows, i.e. across lanes: per block, kLanes key positions at a time (add_lane_sums). (Accumulating them in lanes over
// a sequence's blocks and summing once per sequence held kLanes times the gradients' size and ran from L2: slower.)
struct BackwardBuffers {
  const BlockedInputs& blocked;
  std::vector<float> queries;  // a group's queries and the scores S, see BlockedInputs::buffers
  std::vector<float> da, g, gp;  // (L, kLanes), (E, kLanes), (E, kLanes)
  std::vector<fv> dq;  // the query gradients' accumulators where D is only known at run time: 2 D

  explicit BackwardBuffers(const BlockedInputs& b)
      : blocked(b),
        queries(b.buffers(kGroup)),
        da(b.in.L * kLanes),
        g(b.in.E * kLanes),
        gp(b.in.E * kLanes),
        dq(2 * b.in.D) {}
};

// One sequence's operands and gradients in the float backward: keys kt, k3t (D, L), values vt (E, L), the forward's
// stats (L, 2) and the output gradients dsv, dsve (L, E) in; the gradients dq1, dq2 (L, D), dkt, dk3t (D, L) and
// dvt (E, L) out (k3t, dsve, dq2 and dk3t unused without positions)
struct SequenceGrads {
  const float *kt, *k3t, *vt, *stats, *dsv, *dsve;
  float *dq1, *dq2, *dkt, *dk3t, *dvt;
};

// DD, EE: the query and value channel counts known at compile time (0: at run time); POS: the positional form
template <int DD, int EE, bool POS>
void backward_block(BackwardBuffers& w, const SequenceGrads& sq, int64_t i0, const float* q, float* tables) {
  const BlockedInputs& blocked = w.blocked;
  const Inputs<float>& in = blocked.in;
  const int64_t L = in.L, D = DD > 0 ? DD : in.D, E = EE > 0 ? EE : in.E, Lp = blocked.Lp;
  constexpr bool positional = POS;
  float* S = blocked.scores(w.queries.data(), kGroup);
  const float* kt = sq.kt;
  const float* k3t = positional ? sq.k3t : nullptr;
  const float* vt = sq.vt;
  block_probabilities(blocked, kt, k3t, i0, sq.stats, q, S);
  // the row block's slices of the tables and of their gradients (see BlockedInputs::slot)
  const float* __restrict__ rqt = positional ? blocked.rqt.data() + i0 * L * D : nullptr;
  const float* __restrict__ wkt = positional ? blocked.wkt.data() + i0 * L * D : nullptr;
  const float* __restrict__ rvt = positional ? blocked.rvt.data() + i0 * L * E : nullptr;
  float* __restrict__ drqt = positional ? tables + i0 * L * D : nullptr;
  float* __restrict__ dwkt = positional ? tables + Lp * L * D + i0 * L * D : nullptr;
  float* __restrict__ drvt = positional ? tables + 2 * Lp * L * D + i0 * L * E : nullptr;
  float* __restrict__ da = w.da.data();
  float* __restrict__ g = w.g.data();
  float* __restrict__ gp = w.gp.data();
  const int64_t rows = std::min(kLanes, L - i0);
  for (int64_t e = 0; e < E; ++e)
    for (int64_t r = 0; r < kLanes; ++r) {
      g[e * kLanes + r] = r < rows ? sq.dsv[(i0 + r) * E + e] : 0.0f;
      if (positional) gp[e * kLanes + r] = r < rows ? sq.dsve[(i0 + r) * E + e] : 0.0f;
    }
  // the output gradients (and below, the second queries) in registers where the channel counts are compile-time
  constexpr int ER = EE > 0 ? EE : 1, DR = DD > 0 ? DD : 1;
  fv g_reg[ER], gp_reg[ER], q2_reg[DR];
  if constexpr (EE > 0) {
    for (int e = 0; e < EE; ++e) {
      g_reg[e] = loadv(g + e * kLanes);
      gp_reg[e] = positional ? loadv(gp + e * kLanes) : fv{};
    }
  }
  auto g_of = [&](int64_t e) { return EE > 0 ? g_reg[e] : loadv(g + e * kLanes); };
  auto gp_of = [&](int64_t e) { return EE > 0 ? gp_reg[e] : loadv(gp + e * kLanes); };
  // first pass: da, delta and drv (padding lanes have p = 0 and contribute nothing)
  fv delta = fv{};
  for (int64_t j = 0; j < L; ++j) {
    const fv p = loadv(S + j * kLanes);
    fv d = fv{};
    for (int64_t e = 0; e < E; ++e) d += g_of(e) * vt[e * L + j];
    if (positional) {
      for (int64_t e = 0; e < E; ++e) {
        const fv ge = gp_of(e);
        const int64_t t = (j * E + e) * kLanes;
        d += ge * loadv(rvt + t);
        storev(drvt + t, loadv(drvt + t) + p * ge);
      }
    }
    storev(da + j * kLanes, d);
    delta += p * d;
  }
  // the rows' sums: dv[e, j] = sum_i p[i, j] g[i, e], a group of kLanes key positions at a time
  float* dvt = sq.dvt;
  for (int64_t e = 0; e < E; ++e) {
    const fv ge = g_of(e);
    for (int64_t j0 = 0; j0 < L; j0 += kLanes)
      add_lane_sums(dvt + e * L + j0, std::min(kLanes, L - j0), i0 == 0,
                    [&](int64_t t) { return loadv(S + (j0 + t) * kLanes) * ge; });
  }
  // second pass: ds and the query, key and logit-table gradients
  fv local[2 * DR];
  fv* a1 = DD > 0 ? local : w.dq.data();
  fv* a2 = a1 + D;
  for (int64_t c = 0; c < 2 * D; ++c) a1[c] = fv{};
  const float* q1t = q;
  const float* q2t = q + D * Lp;
  if constexpr (DD > 0 && POS) {
    for (int c = 0; c < DD; ++c) q2_reg[c] = loadv(q2t + c * Lp + i0);
  }
  auto q2_of = [&](int64_t c) { return DD > 0 ? q2_reg[c] : loadv(q2t + c * Lp + i0); };
  for (int64_t j = 0; j < L; ++j) {
    const fv ds = loadv(S + j * kLanes) * (loadv(da + j * kLanes) - delta);
    storev(da + j * kLanes, ds);
    for (int64_t c = 0; c < D; ++c) a1[c] += ds * kt[c * L + j];
    if (positional) {
      for (int64_t c = 0; c < D; ++c) {
        const int64_t t = (j * D + c) * kLanes;
        a2[c] += ds * loadv(rqt + t);
        storev(drqt + t, loadv(drqt + t) + ds * q2_of(c));
        storev(dwkt + t, loadv(dwkt + t) + ds * k3t[c * L + j]);
      }
    }
  }
  // the rows' sums: dk[c, j] = sum_i ds[i, j] q1[i, c], dk3[c, j] = sum_i ds[i, j] wk[c, i, j]
  const float* dsb = da;
  float* dkt = sq.dkt;
  float* dk3t = positional ? sq.dk3t : nullptr;
  for (int64_t c = 0; c < D; ++c) {
    const fv q1c = loadv(q1t + c * Lp + i0);
    for (int64_t j0 = 0; j0 < L; j0 += kLanes) {
      const int64_t count = std::min(kLanes, L - j0);
      add_lane_sums(dkt + c * L + j0, count, i0 == 0, [&](int64_t t) { return loadv(dsb + (j0 + t) * kLanes) * q1c; });
      if (positional) {
        const float* wkc = wkt + (j0 * D + c) * kLanes;
        add_lane_sums(dk3t + c * L + j0, count, i0 == 0,
                      [&](int64_t t) { return loadv(dsb + (j0 + t) * kLanes) * loadv(wkc + t * D * kLanes); });
      }
    }
  }
  for (int64_t c = 0; c < D; ++c)
    for (int64_t r = 0; r < rows; ++r) {
      sq.dq1[(i0 + r) * D + c] = a1[c][r];
      if (positional) sq.dq2[(i0 + r) * D + c] = a2[c][r];
    }
}

template <int DD, int EE>
void backward_block_any(BackwardBuffers& w, const SequenceGrads& sq, int64_t i0, const float* q, float* tables) {
  if (w.blocked.in.positional)
    backward_block<DD, EE, true>(w, sq, i0, q, tables);
  else
    backward_block<DD, EE, false>(w, sq, i0, q, tables);
}

// Row block i0 of one sequence (see backward_block), with the networks' shapes (value channels twice the query
// channels) compiled for both counts
void backward_block_dispatch(BackwardBuffers& w, const SequenceGrads& sq, int64_t i0, const float* q, float* tables) {
  const Inputs<float>& in = w.blocked.in;
  switch (in.E == 2 * in.D ? in.D : 0) {
    case 1: backward_block_any<1, 2>(w, sq, i0, q, tables); break;
    case 2: backward_block_any<2, 4>(w, sq, i0, q, tables); break;
    case 4: backward_block_any<4, 8>(w, sq, i0, q, tables); break;
    case 8: backward_block_any<8, 16>(w, sq, i0, q, tables); break;
    default: backward_block_any<0, 0>(w, sq, i0, q, tables);
  }
}

// Sequences [begin, end) of one chunk; tables: the chunk's table gradients (rq, wk, rv in the slot layout), zeroed
void backward_chunk(const BlockedInputs& blocked, int64_t begin, int64_t end, const float* stats, const float* dsv,
                    const float* dsve, float* dq1, float* dkt, float* dq2, float* dk3t, float* dvt, float* tables) {
  const Inputs<float>& in = blocked.in;
  const int64_t L = in.L, D = in.D, E = in.E;
  const bool pos = in.positional;
  BackwardBuffers w(blocked);
  // row blocks over a group of sequences in turn, as in the forward: the group shares the block's table slices and
  // the slices of the chunk's table gradients, which then stay in L1 between the sequences
  for (int64_t n0 = begin; n0 < end; n0 += kGroup) {
    const int64_t count = std::min(kGroup, end - n0);
    SequenceGrads seq[kGroup];
    for (int64_t s = 0; s < count; ++s) {
      const int64_t n = n0 + s;
      blocked.load_queries(n, blocked.queries(w.queries.data(), s));
      seq[s] = {in.kt + n * D * L, pos ? in.k3t + n * D * L : nullptr, in.vt + n * E * L, stats + n * L * 2,
                dsv + n * L * E, pos ? dsve + n * L * E : nullptr, dq1 + n * L * D, pos ? dq2 + n * L * D : nullptr,
                dkt + n * D * L, pos ? dk3t + n * D * L : nullptr, dvt + n * E * L};
    }
    for (int64_t i0 = 0; i0 < blocked.Lp; i0 += kLanes)
      for (int64_t s = 0; s < count; ++s)
        backward_block_dispatch(w, seq[s], i0, blocked.queries(w.queries.data(), s), tables);
  }
}

// The float backward of map_forward's training form (scales with a value-scale row, output map out (B, G E T, H, W)
// with channel (g E + e) T + t for the T terms). Per chunk of sequences, per group: the operands gathered again, the
// output gradients dout gathered to (L, E) per term, the row blocks' backward run (backward_block), and the gradients
// written to dqkv (every entry once): dq = dq1 s0 + dq2 s1, dk = dk + dk3 s2, dv = dv s3. The scales' gradients
// (sum q dq1, sum q dq2, sum k dk3, sum v dv per head) go to dscales (chunks, rows, G), float64, zeroed; the table
// gradients to tables, per chunk in the slot layout, zeroed.
void map_backward(const MapLayout& m, const BlockedInputs& blocked, const float* scales, const float* stats,
                  const float* dout, const int64_t* ds, float* dqkv, const int64_t* dqs, int64_t chunks,
                  double* dscales, float* tables) {
  const Inputs<float>& in = blocked.in;
  const int64_t L = in.L, D = in.D, E = in.E, G = m.G, Lp = blocked.Lp, N = m.sequences();
  const bool pos = in.positional;
  const int64_t terms = pos ? 2 : 1, rows = pos ? 4 : 1, per_chunk = (2 * D + E) * L * Lp;
  // per sequence: kt, k3t, vt, then dkt, dk3t, dvt ((2 D + E) L each), dsv, dsve (L, E), dq1, dq2 (L, D)
  const int64_t per_sequence = 2 * (2 * D + E) * L + 2 * L * E + 2 * L * D;
  at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    BackwardBuffers w(blocked);
    std::vector<float> local(kGroup * per_sequence);
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      double* dsc = dscales + chunk * rows * G;
      float* tab = pos ? tables + chunk * per_chunk : nullptr;
      const int64_t end = N * (chunk + 1) / chunks;
      for (int64_t n0 = N * chunk / chunks; n0 < end; n0 += kGroup) {
        const int64_t count = std::min(kGroup, end - n0);
        int64_t b[kGroup], g[kGroup], o[kGroup];
        SequenceGrads seq[kGroup];
        for (int64_t s = 0; s < count; ++s) {
          m.locate(n0 + s, b[s], g[s], o[s]);
          float* kt = local.data() + s * per_sequence;
          float* dkt = kt + (2 * D + E) * L;
          float* dsv = dkt + (2 * D + E) * L;
          float* dq1 = dsv + 2 * L * E;
          gather(m, blocked, scales, pos, b[s], g[s], o[s], blocked.queries(w.queries.data(), s), kt, kt + D * L,
                 kt + 2 * D * L);
          for (int64_t i = 0; i < L; ++i) {
            const float* at = dout + m.offset(ds, b[s], g[s] * E * terms, i, o[s]);
            for (int64_t e = 0; e < E; ++e) {
              dsv[i * E + e] = at[e * terms * ds[1]];
              if (pos) dsv[L * E + i * E + e] = at[(e * terms + 1) * ds[1]];
            }
          }
          seq[s] = {kt, pos ? kt + D * L : nullptr, kt + 2 * D * L, stats + (n0 + s) * L * 2, dsv,
                    pos ? dsv + L * E : nullptr, dq1, pos ? dq1 + L * D : nullptr, dkt, pos ? dkt + D * L : nullptr,
                    dkt + 2 * D * L};
        }
        for (int64_t i0 = 0; i0 < Lp; i0 += kLanes)
          for (int64_t s = 0; s < count; ++s)
            backward_block_dispatch(w, seq[s], i0, blocked.queries(w.queries.data(), s), tab);
        for (int64_t s = 0; s < count; ++s) {
          const SequenceGrads& sq = seq[s];
          const int64_t gs = g[s];
          const float s0 = scales[gs], s1 = pos ? scales[G + gs] : 0.0f, s2 = pos ? scales[2 * G + gs] : 0.0f;
          const float s3 = pos ? scales[3 * G + gs] : 1.0f;
          double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
          for (int64_t i = 0; i < L; ++i) {
            const float* at = m.qkv + m.offset(m.qs, b[s], gs * (2 * D + E), i, o[s]);
            float* dst = dqkv + m.offset(dqs, b[s], gs * (2 * D + E), i, o[s]);
            for (int64_t c = 0; c < D; ++c) {
              const float qi = at[c * m.qs[1]], ki = at[(D + c) * m.qs[1]];
              const float g1 = sq.dq1[i * D + c], g2 = pos ? sq.dq2[i * D + c] : 0.0f;
              const float gk = sq.dkt[c * L + i], gk3 = pos ? sq.dk3t[c * L + i] : 0.0f;
              dst[c * dqs[1]] = g1 * s0 + g2 * s1;
              dst[(D + c) * dqs[1]] = gk + gk3 * s2;
              a0 += static_cast<double>(g1) * qi;
              a1 += static_cast<double>(g2) * qi;
              a2 += static_cast<double>(gk3) * ki;
            }
            for (int64_t e = 0; e < E; ++e) {
              const float gv = sq.dvt[e * L + i];
              dst[(2 * D + e) * dqs[1]] = gv * s3;
              a3 += static_cast<double>(gv) * at[(2 * D + e) * m.qs[1]];
            }
          }
          dsc[gs] += a0;
          if (pos) {
            dsc[G + gs] += a1;
            dsc[2 * G + gs] += a2;
            dsc[3 * G + gs] += a3;
          }
        }
      }
    }
  });
}

// The float64 backward, row by row (the reference precision path; float32 runs backward_chunk)
template <typename T>
void backward_impl(const Inputs<T>& in, int64_t N, const T* stats, const T* dsv, const T* dsve, T* dq1, T* dkt,
                   T* dq2, T* dk3t, T* dvt, T* drq, T* dwk, T* drv, int64_t chunks) {
  const int64_t L = in.L, D = in.D, E = in.E;
  const int64_t table = L * L;
  // one chunk of sequences per table-gradient buffer (not per thread id, which nested or inline calls do not bound)
  at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      T* drq_t = in.positional ? drq + chunk * D * table : nullptr;
      T* dwk_t = in.positional ? dwk + chunk * D * table : nullptr;
      T* drv_t = in.positional ? drv + chunk * E * table : nullptr;
      std::vector<T> p(L), da(L);
      const int64_t begin = N * chunk / chunks, end = N * (chunk + 1) / chunks;
      for (int64_t n = begin; n < end; ++n) {
        const T* vt = in.vt + n * E * L;
        const T* kt = in.kt + n * D * L;
        const T* q1 = in.q1 + n * L * D;
        T* dkt_n = dkt + n * D * L;
        T* dvt_n = dvt + n * E * L;
        for (int64_t i = 0; i < L; ++i) {
          T* pp = p.data();
          row_logits(in, n, i, pp);
          const T m = stats[2 * (n * L + i)], inv = stats[2 * (n * L + i) + 1];
#pragma omp simd
          for (int64_t j = 0; j < L; ++j) pp[j] = exp_nonpositive(pp[j] - m) * inv;
          const T* g = dsv + (n * L + i) * E;
          for (int64_t e = 0; e < E; ++e) {
            const T ge = g[e];
            const T* ve = vt + e * L;
            T* dve = dvt_n + e * L;
            T* dap = da.data();
            if (e == 0) {  // assign rather than zero-fill first (see row_logits)
#pragma omp simd
              for (int64_t j = 0; j < L; ++j) {
                dap[j] = ge * ve[j];
                dve[j] += pp[j] * ge;
              }
            } else {
#pragma omp simd
              for (int64_t j = 0; j < L; ++j) {
                dap[j] += ge * ve[j];
                dve[j] += pp[j] * ge;
              }
            }
          }
          if (in.positional) {
            const T* ge_pos = dsve + (n * L + i) * E;
            for (int64_t e = 0; e < E; ++e) {
              const T ge = ge_pos[e];
              const T* r = in.rv + (e * L + i) * L;
              T* dr = drv_t + (e * L + i) * L;
#pragma omp simd
              for (int64_t j = 0; j < L; ++j) {
                da[j] += ge * r[j];
                dr[j] += p[j] * ge;
              }
            }
          }
          // softmax backward: ds = p * (da - sum_j p da), kept in da
          const T delta = dot(p.data(), da.data(), L);
#pragma omp simd
          for (int64_t j = 0; j < L; ++j) da[j] = p[j] * (da[j] - delta);
          const T* ds = da.data();
          for (int64_t c = 0; c < D; ++c) {
            const T* kc = kt + c * L;
            dq1[(n * L + i) * D + c] = dot(ds, kc, L);
            const T a = q1[i * D + c];
            T* dkc = dkt_n + c * L;
#pragma omp simd
            for (int64_t j = 0; j < L; ++j) dkc[j] += ds[j] * a;
          }
          if (in.positional) {
            const T* q2 = in.q2 + (n * L + i) * D;
            const T* k3t = in.k3t + n * D * L;
            T* dk3t_n = dk3t + n * D * L;
            for (int64_t c = 0; c < D; ++c) {
              const T* r = in.rq + (c * L + i) * L;
              const T* w = in.wk + (c * L + i) * L;
              const T* kc = k3t + c * L;
              dq2[(n * L + i) * D + c] = dot(ds, r, L);
              const T b = q2[c];
              T* dr = drq_t + (c * L + i) * L;
              T* dw = dwk_t + (c * L + i) * L;
              T* dkc = dk3t_n + c * L;
#pragma omp simd
              for (int64_t j = 0; j < L; ++j) {
                dr[j] += ds[j] * b;
                dw[j] += ds[j] * kc[j];
                dkc[j] += ds[j] * w[j];
              }
            }
          }
        }
      }
    }
  });
}

void check(const torch::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.dim() == dim, name, " must have ", dim, " dimensions, got ", t.dim());
}

void check_inputs(const torch::Tensor& q1, const torch::Tensor& kt, const torch::Tensor& q2, const torch::Tensor& k3t,
                  const torch::Tensor& vt, const torch::Tensor& rq, const torch::Tensor& wk, const torch::Tensor& rv,
                  bool positional) {
  check(q1, "q1", 3);
  check(kt, "kt", 3);
  check(vt, "vt", 3);
  if (positional) {
    check(q2, "q2", 3);
    check(k3t, "k3t", 3);
    check(rq, "rq", 3);
    check(wk, "wk", 3);
    check(rv, "rv", 3);
  }
}

}  // namespace

std::vector<torch::Tensor> attention_forward(torch::Tensor q1, torch::Tensor kt, torch::Tensor q2, torch::Tensor k3t,
                                             torch::Tensor vt, torch::Tensor rq, torch::Tensor wk, torch::Tensor rv,
                                             bool positional) {
  check_inputs(q1, kt, q2, k3t, vt, rq, wk, rv, positional);
  const int64_t N = q1.size(0), L = q1.size(1), E = vt.size(1);
  auto sv = torch::empty({N, L, E}, q1.options());
  auto sve = torch::empty({N, L, positional ? E : 0}, q1.options());
  auto stats = torch::empty({N, L, 2}, q1.options());
  if (q1.scalar_type() == torch::kFloat) {
    auto in = make_inputs<float>(q1, kt, q2, k3t, vt, rq, wk, rv, positional);
    forward_blocked(in, N, sv.data_ptr<float>(), positional ? sve.data_ptr<float>() : nullptr, stats.data_ptr<float>());
    return {sv, sve, stats};
  }
  TORCH_CHECK(q1.scalar_type() == torch::kDouble, "medt_attention_forward: float32 or float64 inputs, got ",
              q1.scalar_type());
  auto in = make_inputs<double>(q1, kt, q2, k3t, vt, rq, wk, rv, positional);
  forward_impl<double>(in, N, sv.data_ptr<double>(), positional ? sve.data_ptr<double>() : nullptr,
                       stats.data_ptr<double>());
  return {sv, sve, stats};
}

// The forward without the softmax statistics, for inference: the row-block form for float32
std::vector<torch::Tensor> attention_inference(torch::Tensor q1, torch::Tensor kt, torch::Tensor q2,
                                               torch::Tensor k3t, torch::Tensor vt, torch::Tensor rq,
                                               torch::Tensor wk, torch::Tensor rv, bool positional) {
  if (q1.scalar_type() != torch::kFloat) {
    auto out = attention_forward(q1, kt, q2, k3t, vt, rq, wk, rv, positional);
    return {out[0], out[1]};
  }
  check_inputs(q1, kt, q2, k3t, vt, rq, wk, rv, positional);
  const int64_t N = q1.size(0), L = q1.size(1), E = vt.size(1);
  auto sv = torch::empty({N, L, E}, q1.options());
  auto sve = torch::empty({N, L, positional ? E : 0}, q1.options());
  auto in = make_inputs<float>(q1, kt, q2, k3t, vt, rq, wk, rv, positional);
  forward_blocked(in, N, sv.data_ptr<float>(), positional ? sve.data_ptr<float>() : nullptr, nullptr);
  return {sv, sve};
}

// Checks shared by the map entry points (qkv float32 (B, heads (2 qk_dim + head_dim), H, W) of any strides, scales
// (scale_rows, heads), the (c, L, L) position tables); the kernel's view of the tables and sizes
Inputs<float> map_inputs(const torch::Tensor& qkv, int64_t heads, int64_t qk_dim, int64_t head_dim, bool height,
                         const torch::Tensor& scales, int64_t scale_rows, const torch::Tensor& rq,
                         const torch::Tensor& wk, const torch::Tensor& rv, bool positional) {
  TORCH_CHECK(qkv.device().is_cpu() && qkv.dim() == 4, "qkv must be a 4D CPU tensor (any strides)");
  TORCH_CHECK(qkv.scalar_type() == torch::kFloat, "qkv must be float32");
  TORCH_CHECK(qkv.size(1) == heads * (2 * qk_dim + head_dim), "qkv has ", qkv.size(1), " channels, expected ",
              heads * (2 * qk_dim + head_dim));
  check(scales, "scales", 2);
  TORCH_CHECK(scales.scalar_type() == torch::kFloat, "scales must be float32");
  TORCH_CHECK(scales.size(0) == scale_rows && scales.size(1) == heads, "scales must be (", scale_rows, ", heads)");
  Inputs<float> in{};
  in.L = height ? qkv.size(2) : qkv.size(3);
  in.D = qk_dim;
  in.E = head_dim;
  in.positional = positional;
  if (positional) {
    for (const auto& t : {rq, wk, rv}) {
      check(t, "position table", 3);
      TORCH_CHECK(t.scalar_type() == torch::kFloat && t.size(1) == in.L && t.size(2) == in.L,
                  "tables must be (c, L, L)");
    }
    TORCH_CHECK(rq.size(0) == qk_dim && wk.size(0) == qk_dim && rv.size(0) == head_dim, "table channels");
    in.rq = rq.data_ptr<float>();
    in.wk = wk.data_ptr<float>();
    in.rv = rv.data_ptr<float>();
  }
  return in;
}

// Eval-mode layer from its projected map to its output map (see map_forward): the logit-norm scales applied on the
// way (scales (3 or 1, heads)) and the output norm written into out (B, heads head_dim, H, W) in the projection's
// memory format: out = sv a[0, ch] + sve a[1, ch] + shift[ch]. Float32, no autograd.
torch::Tensor attention_inference_map(torch::Tensor qkv, int64_t heads, int64_t qk_dim, int64_t head_dim, bool height,
                                      torch::Tensor scales, torch::Tensor rq, torch::Tensor wk, torch::Tensor rv,
                                      torch::Tensor out_scale, torch::Tensor out_shift, bool positional) {
  const int64_t terms = positional ? 2 : 1, C = heads * head_dim;
  const Inputs<float> in = map_inputs(qkv, heads, qk_dim, head_dim, height, scales, positional ? 3 : 1, rq, wk, rv,
                                      positional);
  check(out_scale, "out_scale", 2);
  TORCH_CHECK(out_scale.size(0) == terms && out_scale.size(1) == C, "out_scale must be (terms, heads * head_dim)");
  check(out_shift, "out_shift", 1);
  TORCH_CHECK(out_shift.size(0) == C, "out_shift must have heads * head_dim entries");
  for (const auto& t : {out_scale, out_shift}) TORCH_CHECK(t.scalar_type() == torch::kFloat, "float32 only");
  const int64_t B = qkv.size(0), H = qkv.size(2), W = qkv.size(3);
  auto out = torch::empty({B, C, H, W}, qkv.options().memory_format(qkv.suggest_memory_format()));
  const MapLayout m(qkv.data_ptr<float>(), qkv.strides().data(), B, heads, H, W, qk_dim, head_dim, height);
  const float* a0 = out_scale.data_ptr<float>();
  const float* shift = out_shift.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const int64_t* os = out.strides().data();
  const int64_t L = in.L, E = head_dim;
  map_forward(m, in, scales.data_ptr<float>(), false, nullptr,
              [&](int64_t b, int64_t g, int64_t o, const float* sv, const float* sve) {
                for (int64_t i = 0; i < L; ++i) {
                  float* at = dst + m.offset(os, b, g * E, i, o);
                  for (int64_t e = 0; e < E; ++e) {
                    const int64_t ch = g * E + e;
                    const float value = sv[i * E + e] * a0[ch] + shift[ch];
                    at[e * os[1]] = positional ? value + sve[i * E + e] * a0[C + ch] : value;
                  }
                }
              });
  return out;
}

// Training forward from the projected map (see map_forward): scales (4, heads) with positions (the three logit
// scales, then the value scale), else (1, heads). Returns the terms' weighted sums stacked into one map (B, heads
// head_dim T, H, W) in the projection's memory format, channel (g head_dim + e) T + t for the T terms (sv, then sve),
// and the softmax statistics (B heads O, L, 2) for attention_backward_map.
std::vector<torch::Tensor> attention_forward_map(torch::Tensor qkv, int64_t heads, int64_t qk_dim, int64_t head_dim,
                                                 bool height, torch::Tensor scales, torch::Tensor rq,
                                                 torch::Tensor wk, torch::Tensor rv, bool positional) {
  const Inputs<float> in = map_inputs(qkv, heads, qk_dim, head_dim, height, scales, positional ? 4 : 1, rq, wk, rv,
                                      positional);
  const int64_t B = qkv.size(0), H = qkv.size(2), W = qkv.size(3), T = positional ? 2 : 1, L = in.L, E = head_dim;
  const MapLayout m(qkv.data_ptr<float>(), qkv.strides().data(), B, heads, H, W, qk_dim, head_dim, height);
  auto out = torch::empty({B, heads * head_dim * T, H, W}, qkv.options().memory_format(qkv.suggest_memory_format()));
  auto stats = torch::empty({m.sequences(), L, 2}, qkv.options());
  float* dst = out.data_ptr<float>();
  const int64_t* os = out.strides().data();
  map_forward(m, in, scales.data_ptr<float>(), positional, stats.data_ptr<float>(),
              [&](int64_t b, int64_t g, int64_t o, const float* sv, const float* sve) {
                for (int64_t i = 0; i < L; ++i) {
                  float* at = dst + m.offset(os, b, g * E * T, i, o);
                  for (int64_t e = 0; e < E; ++e) {
                    at[e * T * os[1]] = sv[i * E + e];
                    if (positional) at[(e * T + 1) * os[1]] = sve[i * E + e];
                  }
                }
              });
  return {out, stats};
}

// The position tables' gradients (rq, wk, rv as (c, L, L)): the sums of the per-chunk buffers (slot layout)
std::vector<torch::Tensor> table_gradients(const BlockedInputs& blocked, const float* tables, int64_t chunks,
                                           const torch::TensorOptions& options) {
  const int64_t L = blocked.in.L, D = blocked.in.D, E = blocked.in.E, Lp = blocked.Lp;
  const int64_t per_chunk = (2 * D + E) * L * Lp;
  auto drq = torch::empty({D, L, L}, options), dwk = torch::empty({D, L, L}, options);
  auto drv = torch::empty({E, L, L}, options);
  float* out[3] = {drq.data_ptr<float>(), dwk.data_ptr<float>(), drv.data_ptr<float>()};
  const int64_t first[3] = {0, Lp * L * D, 2 * Lp * L * D}, count[3] = {D, D, E};
  for (int t = 0; t < 3; ++t)
    for (int64_t c = 0; c < count[t]; ++c)
      for (int64_t i = 0; i < L; ++i)
        for (int64_t j = 0; j < L; ++j) {
          float sum = 0.0f;
          for (int64_t chunk = 0; chunk < chunks; ++chunk)
            sum += tables[chunk * per_chunk + first[t] + blocked.slot(i, j, c, count[t])];
          out[t][(c * L + i) * L + j] = sum;
        }
  return {drq, dwk, drv};
}

// Backward of attention_forward_map (see map_backward): d(qkv) (in the projection's memory format), d(scales) and,
// with positions, the tables' gradients drq, dwk, drv
std::vector<torch::Tensor> attention_backward_map(torch::Tensor qkv, int64_t heads, int64_t qk_dim, int64_t head_dim,
                                                  bool height, torch::Tensor scales, torch::Tensor rq,
                                                  torch::Tensor wk, torch::Tensor rv, bool positional,
                                                  torch::Tensor stats, torch::Tensor dout) {
  const int64_t rows = positional ? 4 : 1, T = positional ? 2 : 1;
  const Inputs<float> in = map_inputs(qkv, heads, qk_dim, head_dim, height, scales, rows, rq, wk, rv, positional);
  const int64_t B = qkv.size(0), H = qkv.size(2), W = qkv.size(3);
  const MapLayout m(qkv.data_ptr<float>(), qkv.strides().data(), B, heads, H, W, qk_dim, head_dim, height);
  check(stats, "stats", 3);
  TORCH_CHECK(stats.scalar_type() == torch::kFloat && stats.size(0) == m.sequences() && stats.size(1) == in.L,
              "stats must be float32 (sequences, L, 2)");
  TORCH_CHECK(dout.dim() == 4 && dout.scalar_type() == torch::kFloat && dout.size(0) == B &&
                  dout.size(1) == heads * head_dim * T && dout.size(2) == H && dout.size(3) == W,
              "dout must be float32 (B, heads * head_dim * terms, H, W)");
  const BlockedInputs blocked(in);
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), m.sequences()));
  const int64_t per_chunk = (2 * qk_dim + head_dim) * in.L * blocked.Lp;
  auto dqkv = torch::empty({B, qkv.size(1), H, W}, qkv.options().memory_format(qkv.suggest_memory_format()));
  auto dscales = torch::zeros({chunks, rows, heads}, qkv.options().dtype(torch::kDouble));
  std::vector<float> tables(positional ? chunks * per_chunk : 0, 0.0f);
  map_backward(m, blocked, scales.data_ptr<float>(), stats.data_ptr<float>(), dout.data_ptr<float>(),
               dout.strides().data(), dqkv.data_ptr<float>(), dqkv.strides().data(), chunks,
               dscales.data_ptr<double>(), tables.data());
  std::vector<torch::Tensor> result = {dqkv, dscales.sum(0).to(torch::kFloat)};
  if (positional)
    for (auto& t : table_gradients(blocked, tables.data(), chunks, qkv.options())) result.push_back(t);
  return result;
}

std::vector<torch::Tensor> attention_backward(torch::Tensor q1, torch::Tensor kt, torch::Tensor q2,
                                              torch::Tensor k3t, torch::Tensor vt, torch::Tensor rq,
                                              torch::Tensor wk, torch::Tensor rv, bool positional, torch::Tensor stats,
                                              torch::Tensor dsv, torch::Tensor dsve) {
  check(dsv, "dsv", 3);
  check(stats, "stats", 3);
  if (positional) check(dsve, "dsve", 3);
  const int64_t N = q1.size(0), L = q1.size(1), D = q1.size(2), E = vt.size(1);
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), N));
  if (q1.scalar_type() == torch::kFloat) {
    const auto in = make_inputs<float>(q1, kt, q2, k3t, vt, rq, wk, rv, positional);
    const BlockedInputs blocked(in);
    const int64_t Lp = blocked.Lp, per_chunk = (2 * D + E) * L * Lp;
    // every entry of these is written once (the float path assigns each sequence's key and value gradients)
    auto dq1 = torch::empty_like(q1), dkt = torch::empty_like(kt), dvt = torch::empty_like(vt);
    auto dq2 = positional ? torch::empty_like(q2) : q1.new_empty(0);
    auto dk3t = positional ? torch::empty_like(k3t) : q1.new_empty(0);
    std::vector<float> tables(positional ? chunks * per_chunk : 0, 0.0f);
    auto ptr = [&](torch::Tensor& t) { return positional ? t.data_ptr<float>() : nullptr; };
    at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
      for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk)
        backward_chunk(blocked, N * chunk / chunks, N * (chunk + 1) / chunks, stats.data_ptr<float>(),
                       dsv.data_ptr<float>(), positional ? dsve.data_ptr<float>() : nullptr, dq1.data_ptr<float>(),
                       dkt.data_ptr<float>(), ptr(dq2), ptr(dk3t), dvt.data_ptr<float>(),
                       positional ? tables.data() + chunk * per_chunk : nullptr);
    });
    if (!positional) return {dq1, dkt, dvt};
    const auto drq_dwk_drv = table_gradients(blocked, tables.data(), chunks, q1.options());
    return {dq1, dkt, dvt, dq2, dk3t, drq_dwk_drv[0], drq_dwk_drv[1], drq_dwk_drv[2]};
  }
  TORCH_CHECK(q1.scalar_type() == torch::kDouble, "medt_attention_backward: float32 or float64 inputs, got ",
              q1.scalar_type());
  auto dq1 = torch::empty_like(q1);
  auto dkt = torch::zeros_like(kt);
  auto dvt = torch::zeros_like(vt);
  torch::Tensor dq2, dk3t, drq, dwk, drv;
  if (positional) {
    dq2 = torch::empty_like(q2);
    dk3t = torch::zeros_like(k3t);
    drq = torch::zeros({chunks, D, L, L}, q1.options());
    dwk = torch::zeros({chunks, D, L, L}, q1.options());
    drv = torch::zeros({chunks, E, L, L}, q1.options());
  }
  auto in = make_inputs<double>(q1, kt, q2, k3t, vt, rq, wk, rv, positional);
  auto ptr = [&](torch::Tensor& t) { return positional ? t.data_ptr<double>() : nullptr; };
  backward_impl<double>(in, N, stats.data_ptr<double>(), dsv.data_ptr<double>(),
                        positional ? dsve.data_ptr<double>() : nullptr, dq1.data_ptr<double>(), dkt.data_ptr<double>(),
                        ptr(dq2), ptr(dk3t), dvt.data_ptr<double>(), ptr(drq), ptr(dwk), ptr(drv), chunks);
  if (!positional) return {dq1, dkt, dvt};
  return {dq1, dkt, dvt, dq2, dk3t, drq.sum(0), dwk.sum(0), drv.sum(0)};
}

// Logit moments (logit_moments.py): for x (R, G, L, c) of any strides, in float64, the per-(sequence, head) sums over
// positions of x and x x^T, and where per_position, the per-(head, position) sums over sequences of x and x x^T.
// x may also be (B, O, G, L, c), the sequences' two indices apart (views of a projected map): R = B O.
// One read of x in its index order (the per-position sums go to one buffer per chunk of sequences), instead of a
// float64 copy of x and a dozen batched matmuls of 1-8 channels. CC: c known at compile time (0: at run time).
// Calls f(std::integral_constant<int, CC>) with CC = C for the channel counts compiled separately (1, 2, 4, 8), else 0
template <typename F>
void with_channels(int64_t C, F f) {
  switch (C) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 8: f(std::integral_constant<int, 8>{}); break;
    default: f(std::integral_constant<int, 0>{});
  }
}

// x as (R, G, L, c) sequences: sizes, O (sequence r at (r / O, r % O)) and the strides of (r / O, r % O, g, i, a)
struct Sequences {
  int64_t R, O, G, L, C;
  int64_t st[5];

  explicit Sequences(const torch::Tensor& x) {
    TORCH_CHECK(x.device().is_cpu() && (x.dim() == 4 || x.dim() == 5),
                "x must be a 4D (R, G, L, c) or 5D (B, O, G, L, c) CPU tensor");
    const int64_t k = x.dim() - 4;  // 1 for the 5D form
    O = k ? x.size(1) : 1;
    R = x.size(0) * O;
    G = x.size(1 + k);
    L = x.size(2 + k);
    C = x.size(3 + k);
    st[0] = x.stride(0);
    st[1] = k ? x.stride(1) : 0;
    for (int d = 2; d < 5; ++d) st[d] = x.stride(d - 1 + k);
  }

  int64_t offset(int64_t r, int64_t g) const { return r / O * st[0] + r % O * st[1] + g * st[2]; }
};

// PP: per_position known at compile time. Each (sequence, head)'s sums accumulate in locals (registers where the
// channel count is compile-time), not in the outputs, which the compiler must assume alias the per-position sums.
template <int CC, bool PP, typename scalar_t>
void moment_sums_impl(const scalar_t* p, const Sequences& x_seq, double* xsum, double* gram, double* xpos,
                      double* mom) {
  const int64_t R = x_seq.R, G = x_seq.G, L = x_seq.L, c = x_seq.C;
  const int64_t si = x_seq.st[3], sc = x_seq.st[4];  // strides of the positions and channels
  const int64_t C = CC > 0 ? CC : c;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), R));
  const int64_t per_chunk = PP ? G * L * C * (C + 1) : 0;
  std::vector<double> partial(chunks * per_chunk, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    std::vector<double> heap(CC > 0 ? 0 : C * (C + 2));
    double local[CC > 0 ? CC * (CC + 2) : 1];
    double* __restrict__ x = CC > 0 ? local : heap.data();
    double* __restrict__ s = x + C;  // the (sequence, head)'s sum of x, then of x x^T
    double* __restrict__ m = s + C;
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      double* ppos = partial.data() + chunk * per_chunk;  // (G, L, c) sums, then (G, L, c, c) outer products
      double* pmom = ppos + G * L * C;
      for (int64_t r = R * chunk / chunks; r < R * (chunk + 1) / chunks; ++r)
        for (int64_t g = 0; g < G; ++g) {
          for (int64_t a = 0; a < C * (C + 1); ++a) s[a] = 0.0;
          const scalar_t* base = p + x_seq.offset(r, g);
          for (int64_t i = 0; i < L; ++i) {
            for (int64_t a = 0; a < C; ++a) x[a] = static_cast<double>(base[i * si + a * sc]);
            for (int64_t a = 0; a < C; ++a) {
              s[a] += x[a];
              for (int64_t b = 0; b < C; ++b) m[a * C + b] += x[a] * x[b];
            }
            if (PP) {
              double* __restrict__ ps = ppos + (g * L + i) * C;
              double* __restrict__ pm = pmom + (g * L + i) * C * C;
              for (int64_t a = 0; a < C; ++a) {
                ps[a] += x[a];
                for (int64_t b = 0; b < C; ++b) pm[a * C + b] += x[a] * x[b];
              }
            }
          }
          std::copy(s, s + C, xsum + (r * G + g) * C);
          std::copy(m, m + C * C, gram + (r * G + g) * C * C);
        }
    }
  });
  if (!PP) return;
  for (int64_t t = 0; t < per_chunk; ++t) {
    double sum = 0.0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) sum += partial[chunk * per_chunk + t];
    (t < G * L * C ? xpos[t] : mom[t - G * L * C]) = sum;
  }
}

std::vector<torch::Tensor> moment_sums(torch::Tensor x, bool per_position) {
  const Sequences x_seq(x);
  const int64_t R = x_seq.R, G = x_seq.G, L = x_seq.L, C = x_seq.C;
  const auto opts = x.options().dtype(torch::kDouble);
  const int64_t GP = per_position ? G : 0;
  auto xsum = torch::empty({R, G, C}, opts), gram = torch::empty({R, G, C, C}, opts);
  auto xpos = torch::empty({GP, L, C}, opts), mom = torch::empty({GP, L, C, C}, opts);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "moment_sums", [&] {
    double* xp = per_position ? xpos.data_ptr<double>() : nullptr;
    double* mo = per_position ? mom.data_ptr<double>() : nullptr;
    with_channels(C, [&](auto cc) {
      constexpr int CC = decltype(cc)::value;
      if (per_position)
        moment_sums_impl<CC, true>(x.data_ptr<scalar_t>(), x_seq, xsum.data_ptr<double>(), gram.data_ptr<double>(),
                                   xp, mo);
      else
        moment_sums_impl<CC, false>(x.data_ptr<scalar_t>(), x_seq, xsum.data_ptr<double>(), gram.data_ptr<double>(),
                                    xp, mo);
    });
  });
  return {xsum, gram, xpos, mom};
}

template <int CC, typename scalar_t>
void moment_grad_impl(const scalar_t* p, const Sequences& x_seq, const double* mat, const double* pos,
                      const double* lin, const double* lin_pos, scalar_t* out, const Sequences& out_seq) {
  const int64_t R = x_seq.R, G = x_seq.G, L = x_seq.L, C = CC > 0 ? CC : x_seq.C;
  const int64_t si = x_seq.st[3], sc = x_seq.st[4], osi = out_seq.st[3], osc = out_seq.st[4];
  at::parallel_for(0, R * G, 16, [&](int64_t begin, int64_t end) {
    // x, y and the (sequence, head)'s matrix in locals (restrict: the double inputs may not alias them)
    std::vector<double> heap(CC > 0 ? 0 : C * (C + 2));
    double local[CC > 0 ? CC * (CC + 2) : 1];
    double* __restrict__ x = CC > 0 ? local : heap.data();
    double* __restrict__ y = x + C;
    double* __restrict__ m = y + C;
    for (int64_t rg = begin; rg < end; ++rg) {
      const int64_t g = rg % G;
      const scalar_t* base = p + x_seq.offset(rg / G, g);
      scalar_t* dst = out + out_seq.offset(rg / G, g);
      std::copy(mat + rg * C * C, mat + (rg + 1) * C * C, m);
      for (int64_t i = 0; i < L; ++i) {
        for (int64_t a = 0; a < C; ++a) x[a] = static_cast<double>(base[i * si + a * sc]);
        for (int64_t a = 0; a < C; ++a) {
          double acc = lin[rg * C + a];
          for (int64_t b = 0; b < C; ++b) acc += m[a * C + b] * x[b];
          y[a] = acc;
        }
        if (pos) {
          const double* pg = pos + (g * L + i) * C * C;
          for (int64_t a = 0; a < C; ++a) {
            double acc = lin_pos[(g * L + i) * C + a];
            for (int64_t b = 0; b < C; ++b) acc += pg[a * C + b] * x[b];
            y[a] += acc;
          }
        }
        for (int64_t a = 0; a < C; ++a) dst[i * osi + a * osc] = static_cast<scalar_t>(y[a]);
      }
    }
  });
}

// The moments' gradient with respect to x (R, G, L, c): dx[r, g, i] = (mat[r, g] + pos[g, i]) x[r, g, i] + lin[r, g]
// + lin_pos[g, i], with mat (R, G, c, c), lin (R, G, c) and, optional (empty), pos (G, L, c, c), lin_pos (G, L, c),
// all float64; computed in float64, written in x's dtype into out (x's shape, any strides), or where out is empty,
// into a new contiguous tensor (returned).
torch::Tensor moment_grad(torch::Tensor x, torch::Tensor mat, torch::Tensor pos, torch::Tensor lin,
                          torch::Tensor lin_pos, torch::Tensor out) {
  const Sequences x_seq(x);
  const int64_t R = x_seq.R, G = x_seq.G, L = x_seq.L, C = x_seq.C;
  const bool positional = pos.numel() > 0;
  for (const auto& t : {mat, lin}) TORCH_CHECK(t.scalar_type() == torch::kDouble && t.is_contiguous(), "float64");
  TORCH_CHECK(mat.numel() == R * G * C * C && lin.numel() == R * G * C, "moment_grad: mat (R, G, c, c), lin (R, G, c)");
  if (positional) {
    TORCH_CHECK(pos.scalar_type() == torch::kDouble && pos.is_contiguous() && pos.numel() == G * L * C * C,
                "moment_grad: pos must be float64 (G, L, c, c)");
    TORCH_CHECK(lin_pos.scalar_type() == torch::kDouble && lin_pos.is_contiguous() && lin_pos.numel() == G * L * C,
                "moment_grad: lin_pos must be float64 (G, L, c)");
  }
  auto dx = out.numel() ? out : torch::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  TORCH_CHECK(dx.sizes() == x.sizes() && dx.scalar_type() == x.scalar_type(), "moment_grad: out must be like x");
  const Sequences out_seq(dx);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "moment_grad", [&] {
    const scalar_t* p = x.data_ptr<scalar_t>();
    const double* m = mat.data_ptr<double>();
    const double* l = lin.data_ptr<double>();
    const double* pp = positional ? pos.data_ptr<double>() : nullptr;
    const double* lp = positional ? lin_pos.data_ptr<double>() : nullptr;
    scalar_t* o = dx.data_ptr<scalar_t>();
    with_channels(C, [&](auto cc) { moment_grad_impl<decltype(cc)::value>(p, x_seq, m, pp, l, lp, o, out_seq); });
  });
  return dx;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &attention_forward, "MedT relative axial attention, fused forward (CPU)");
  m.def("inference", &attention_inference, "the same forward without softmax statistics, for inference (CPU)");
  m.def("inference_map", &attention_inference_map, "eval-mode layer from its projected map to its output map (CPU)");
  m.def("forward_map", &attention_forward_map, "training forward from the projected map to the stacked terms (CPU)");
  m.def("backward", &attention_backward, "MedT relative axial attention, fused backward (CPU)");
  m.def("backward_map", &attention_backward_map, "backward of forward_map: d(qkv), d(scales), table gradients (CPU)");
  m.def("moment_sums", &moment_sums, "float64 sums of x and x x^T per (sequence, head) and per (head, position)");
  m.def("moment_grad", &moment_grad, "gradient of the logit moments with respect to q or k");
  m.def("batch_norm_forward", &batch_norm_forward, "training-mode batch norm (+ ReLU) of a contiguous float32 map");
  m.def("batch_norm_backward", &batch_norm_backward, "backward of batch_norm_forward");
  m.def("winograd_input", &winograd_input, "Winograd F(4x4, 3x3) input transform into (36, C, T)");
  m.def("winograd_input_adjoint", &winograd_input_adjoint, "adjoint of winograd_input, back to a map");
  m.def("winograd_output", &winograd_output, "Winograd F(4x4, 3x3) output transform from (36, O, T)");
  m.def("winograd_output_adjoint", &winograd_output_adjoint, "adjoint of winograd_output, into (36, O, T)");
}
