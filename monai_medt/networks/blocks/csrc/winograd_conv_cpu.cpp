// Copyright (c) monai-medt contributors
// Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
//
// Winograd F(4x4, 3x3) transforms (interpolation points 0, 1, -1, 2, -2 and infinity) for the training path of 3x3
// convolutions (winograd.py): a 3x3 convolution of a 6x6 tile is A^T [(G w G^T) * (B^T d B)] A, a 4x4 output block
// from 36 products instead of 144 multiply-adds, and summed over input channels the 36 products are 36 matrix
// products. These functions move maps into and out of that (36, channels, tiles) layout. Each processes 16 tiles of
// one channel plane at a time, one tile per lane, so that each of the 36 points is written or read as one 64-byte
// line and the arithmetic runs on whole vectors.

#include "winograd_conv_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace {

constexpr int kLanes = 16;

// B^T of six points (SI: stride between the points read, SO: between those written, in rows of kLanes)
template <int SI, int SO>
inline void input_1d(const float (*d)[kLanes], float (*o)[kLanes]) {
  for (int l = 0; l < kLanes; ++l) {
    const float d0 = d[0][l], d1 = d[SI][l], d2 = d[2 * SI][l], d3 = d[3 * SI][l], d4 = d[4 * SI][l],
                d5 = d[5 * SI][l];
    o[0][l] = 4.f * d0 - 5.f * d2 + d4;
    o[SO][l] = -4.f * (d1 + d2) + d3 + d4;
    o[2 * SO][l] = 4.f * (d1 - d2) - d3 + d4;
    o[3 * SO][l] = 2.f * (d3 - d1) - d2 + d4;
    o[4 * SO][l] = 2.f * (d1 - d3) - d2 + d4;
    o[5 * SO][l] = 4.f * d1 - 5.f * d3 + d5;
  }
}

// B: the adjoint of input_1d
template <int SI, int SO>
inline void input_1d_adjoint(const float (*g)[kLanes], float (*o)[kLanes]) {
  for (int l = 0; l < kLanes; ++l) {
    const float g0 = g[0][l], g1 = g[SI][l], g2 = g[2 * SI][l], g3 = g[3 * SI][l], g4 = g[4 * SI][l],
                g5 = g[5 * SI][l];
    o[0][l] = 4.f * g0;
    o[SO][l] = 4.f * (g2 - g1 + g5) + 2.f * (g4 - g3);
    o[2 * SO][l] = -5.f * g0 - 4.f * (g1 + g2) - g3 - g4;
    o[3 * SO][l] = g1 - g2 + 2.f * (g3 - g4) - 5.f * g5;
    o[4 * SO][l] = g0 + g1 + g2 + g3 + g4;
    o[5 * SO][l] = g5;
  }
}

// A^T: four outputs from six points
template <int SI, int SO>
inline void output_1d(const float (*m)[kLanes], float (*y)[kLanes]) {
  for (int l = 0; l < kLanes; ++l) {
    const float m0 = m[0][l], m1 = m[SI][l], m2 = m[2 * SI][l], m3 = m[3 * SI][l], m4 = m[4 * SI][l],
                m5 = m[5 * SI][l];
    const float a = m1 + m2, b = m1 - m2, c = m3 + m4, d = m3 - m4;
    y[0][l] = m0 + a + c;
    y[SO][l] = b + 2.f * d;
    y[2 * SO][l] = a + 4.f * c;
    y[3 * SO][l] = b + 8.f * d + m5;
  }
}

// A: the adjoint of output_1d, six points from four
template <int SI, int SO>
inline void output_1d_adjoint(const float (*g)[kLanes], float (*m)[kLanes]) {
  for (int l = 0; l < kLanes; ++l) {
    const float g0 = g[0][l], g1 = g[SI][l], g2 = g[2 * SI][l], g3 = g[3 * SI][l];
    const float even = g0 + g2, odd = g1 + g3, even4 = g0 + 4.f * g2, odd8 = 2.f * g1 + 8.f * g3;
    m[0][l] = g0;
    m[SO][l] = even + odd;
    m[2 * SO][l] = even - odd;
    m[3 * SO][l] = even4 + odd8;
    m[4 * SO][l] = even4 - odd8;
    m[5 * SO][l] = g3;
  }
}

// the 36 points of kLanes consecutive tiles from / to (36, C, T) (`lanes` of them real; full blocks take the
// branch whose loops the compiler turns into whole-vector moves)
inline void load_points(const float* src, int64_t point_stride, int lanes, float (*g)[kLanes]) {
  if (lanes == kLanes) {
    for (int e = 0; e < 36; ++e)
      for (int l = 0; l < kLanes; ++l) g[e][l] = src[e * point_stride + l];
    return;
  }
  for (int e = 0; e < 36; ++e)
    for (int l = 0; l < kLanes; ++l) g[e][l] = l < lanes ? src[e * point_stride + l] : 0.f;
}

inline void store_points(const float (*out)[kLanes], int64_t point_stride, int lanes, float* dst) {
  if (lanes == kLanes) {
    for (int e = 0; e < 36; ++e)
      for (int l = 0; l < kLanes; ++l) dst[e * point_stride + l] = out[e][l];
    return;
  }
  for (int e = 0; e < 36; ++e)
    for (int l = 0; l < lanes; ++l) dst[e * point_stride + l] = out[e][l];
}

struct Tiling {
  int64_t n, c, h, w, tw, per_image, tiles;

  // real tiles in the block that starts at tile t0 of a plane
  int lanes(int64_t t0) const { return static_cast<int>(std::min<int64_t>(kLanes, per_image - t0)); }
  // offset of tile t's top-left element in a plane whose rows are `row` floats apart
  int64_t origin(int64_t t, int64_t row) const { return 4 * (t / tw) * row + 4 * (t % tw); }
  // offset of the (channel, image) plane in an (N, C, H, W) map
  int64_t plane(int64_t channel, int64_t image) const { return (image * c + channel) * h * w; }
  // in (36, C, T): the distance between two points of a tile, and where tile t0 of image n's channel-c plane starts
  int64_t point_stride() const { return c * tiles; }
  int64_t points(int64_t channel, int64_t image, int64_t t0) const { return channel * tiles + image * per_image + t0; }
};

// the K x K blocks at the tiles t0 .. t0 + kLanes - 1 of a plane (rows `row` floats apart) into lanes; lanes past the
// last real tile repeat it (their results are not stored)
template <int K>
inline void gather_tiles(const Tiling& s, const float* plane, int64_t row, int64_t t0, int lanes, float (*g)[kLanes]) {
  for (int l = 0; l < kLanes; ++l) {
    const float* src = plane + s.origin(t0 + std::min(l, lanes - 1), row);
    for (int i = 0; i < K; ++i)
      for (int j = 0; j < K; ++j) g[i * K + j][l] = src[i * row + j];
  }
}

// the lanes' K x K blocks back into the plane at their tiles, written or (Add: where tiles overlap) summed
template <int K, bool Add>
inline void scatter_tiles(const Tiling& s, const float (*out)[kLanes], int64_t t0, int lanes, float* plane,
                          int64_t row) {
  for (int l = 0; l < lanes; ++l) {
    float* dst = plane + s.origin(t0 + l, row);
    for (int i = 0; i < K; ++i)
      for (int j = 0; j < K; ++j) {
        if (Add)
          dst[i * row + j] += out[i * K + j][l];
        else
          dst[i * row + j] = out[i * K + j][l];
      }
  }
}

Tiling tiling(const char* name, int64_t n, int64_t c, int64_t h, int64_t w) {
  TORCH_CHECK(h % 4 == 0 && w % 4 == 0, name, ": height and width must be multiples of 4, got ", h, "x", w);
  return {n, c, h, w, w / 4, (h / 4) * (w / 4), n * (h / 4) * (w / 4)};
}

void check_map(const char* name, const torch::Tensor& t) {
  TORCH_CHECK(t.dim() == 4 && t.scalar_type() == torch::kFloat && t.is_contiguous() && t.is_cpu(), name,
              ": expected a contiguous float32 (N, C, H, W) CPU tensor, got ", t.sizes());
}

void check_points(const char* name, const torch::Tensor& t, const Tiling& s) {
  TORCH_CHECK(t.dim() == 3 && t.size(0) == 36 && t.size(1) == s.c && t.size(2) == s.tiles &&
                  t.scalar_type() == torch::kFloat && t.is_contiguous(),
              name, ": expected a contiguous float32 (36, ", s.c, ", ", s.tiles, ") tensor, got ", t.sizes());
}

// the tiling of `map` (N, C, H, W), after checking it and `points` (36, C, T)
Tiling checked(const char* name, const torch::Tensor& map, const torch::Tensor& points) {
  check_map(name, map);
  const Tiling s = tiling(name, map.size(0), map.size(1), map.size(2), map.size(3));
  check_points(name, points, s);
  return s;
}

// fn(c, n, pad) for every (channel, image) plane, channels split across threads; `pad` is the thread's zeroed
// (H + 2) x (W + 2) scratch plane (its border stays zero unless fn writes it)
template <typename F>
void for_each_plane(const Tiling& s, F fn) {
  at::parallel_for(0, s.c, 1, [&](int64_t c0, int64_t c1) {
    std::vector<float> pad((s.h + 2) * (s.w + 2), 0.f);
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t n = 0; n < s.n; ++n) fn(c, n, pad.data());
  });
}

}  // namespace

void winograd_input(const torch::Tensor& x, torch::Tensor& v) {
  const Tiling s = checked("winograd_input", x, v);
  const float* xp = x.data_ptr<float>();
  float* vp = v.data_ptr<float>();
  const int64_t pw = s.w + 2;
  for_each_plane(s, [&](int64_t c, int64_t n, float* pad) {
    alignas(64) float d[36][kLanes], rows[36][kLanes], out[36][kLanes];
    const float* plane = xp + s.plane(c, n);
    for (int64_t r = 0; r < s.h; ++r) std::memcpy(pad + (r + 1) * pw + 1, plane + r * s.w, s.w * sizeof(float));
    for (int64_t t0 = 0; t0 < s.per_image; t0 += kLanes) {
      const int lanes = s.lanes(t0);
      gather_tiles<6>(s, pad, pw, t0, lanes, d);
      for (int j = 0; j < 6; ++j) input_1d<6, 6>(&d[j], &rows[j]);  // down each column
      for (int i = 0; i < 6; ++i) input_1d<1, 1>(&rows[i * 6], &out[i * 6]);  // along each row
      store_points(out, s.point_stride(), lanes, vp + s.points(c, n, t0));
    }
  });
}

void winograd_input_adjoint(const torch::Tensor& dv, torch::Tensor& dx) {
  const Tiling s = checked("winograd_input_adjoint", dx, dv);
  const float* gp = dv.data_ptr<float>();
  float* xp = dx.data_ptr<float>();
  const int64_t pw = s.w + 2;
  for_each_plane(s, [&](int64_t c, int64_t n, float* pad) {
    alignas(64) float g[36][kLanes], rows[36][kLanes], d[36][kLanes];
    std::fill(pad, pad + (s.h + 2) * pw, 0.f);
    for (int64_t t0 = 0; t0 < s.per_image; t0 += kLanes) {
      const int lanes = s.lanes(t0);
      load_points(gp + s.points(c, n, t0), s.point_stride(), lanes, g);
      for (int i = 0; i < 6; ++i) input_1d_adjoint<1, 1>(&g[i * 6], &rows[i * 6]);
      for (int j = 0; j < 6; ++j) input_1d_adjoint<6, 6>(&rows[j], &d[j]);
      scatter_tiles<6, true>(s, d, t0, lanes, pad, pw);  // neighbouring tiles overlap by two rows and columns
    }
    float* plane = xp + s.plane(c, n);
    for (int64_t r = 0; r < s.h; ++r) std::memcpy(plane + r * s.w, pad + (r + 1) * pw + 1, s.w * sizeof(float));
  });
}

void winograd_output(const torch::Tensor& m, torch::Tensor& y) {
  const Tiling s = checked("winograd_output", y, m);
  const float* mp = m.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for_each_plane(s, [&](int64_t o, int64_t n, float*) {
    alignas(64) float g[36][kLanes], rows[24][kLanes], out[16][kLanes];
    float* plane = yp + s.plane(o, n);
    for (int64_t t0 = 0; t0 < s.per_image; t0 += kLanes) {
      const int lanes = s.lanes(t0);
      load_points(mp + s.points(o, n, t0), s.point_stride(), lanes, g);
      for (int j = 0; j < 6; ++j) output_1d<6, 6>(&g[j], &rows[j]);  // (4, 6)
      for (int i = 0; i < 4; ++i) output_1d<1, 1>(&rows[i * 6], &out[i * 4]);  // (4, 4)
      scatter_tiles<4, false>(s, out, t0, lanes, plane, s.w);
    }
  });
}

void winograd_output_adjoint(const torch::Tensor& dy, torch::Tensor& dm) {
  const Tiling s = checked("winograd_output_adjoint", dy, dm);
  const float* gp = dy.data_ptr<float>();
  float* mp = dm.data_ptr<float>();
  for_each_plane(s, [&](int64_t o, int64_t n, float*) {
    alignas(64) float g[16][kLanes], rows[24][kLanes], out[36][kLanes];
    const float* plane = gp + s.plane(o, n);
    for (int64_t t0 = 0; t0 < s.per_image; t0 += kLanes) {
      const int lanes = s.lanes(t0);
      gather_tiles<4>(s, plane, s.w, t0, lanes, g);
      for (int i = 0; i < 4; ++i) output_1d_adjoint<1, 1>(&g[i * 4], &rows[i * 6]);  // (4, 6)
      for (int j = 0; j < 6; ++j) output_1d_adjoint<6, 6>(&rows[j], &out[j]);  // (6, 6)
      store_points(out, s.point_stride(), lanes, mp + s.points(o, n, t0));
    }
  });
}
