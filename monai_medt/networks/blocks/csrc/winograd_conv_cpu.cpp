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
};

Tiling tiling(const char* name, int64_t n, int64_t c, int64_t h, int64_t w) {
  TORCH_CHECK(h % 4 == 0 && w % 4 == 0, name, ": height and width must be multiples of 4, got ", h, "x", w);
  return {n, c, h, w, w / 4, (h / 4) * (w / 4), n * (h / 4) * (w / 4)};
}

void check_map(const char* name, const torch::Tensor& t) {
  TORCH_CHECK(t.dim() == 4 && t.scalar_type() == torch::kFloat && t.is_contiguous() && !t.is_cuda(), name,
              ": expected a contiguous float32 (N, C, H, W) CPU tensor, got ", t.sizes());
}

void check_points(const char* name, const torch::Tensor& t, const Tiling& s) {
  TORCH_CHECK(t.dim() == 3 && t.size(0) == 36 && t.size(1) == s.c && t.size(2) == s.tiles &&
                  t.scalar_type() == torch::kFloat && t.is_contiguous(),
              name, ": expected a contiguous float32 (36, ", s.c, ", ", s.tiles, ") tensor, got ", t.sizes());
}

}  // namespace

void winograd_input(const torch::Tensor& x, torch::Tensor& v) {
  check_map("winograd_input", x);
  const Tiling s = tiling("winograd_input", x.size(0), x.size(1), x.size(2), x.size(3));
  check_points("winograd_input", v, s);
  const float* xp = x.data_ptr<float>();
  float* vp = v.data_ptr<float>();
  const int64_t pw = s.w + 2, point_stride = s.c * s.tiles;
  at::parallel_for(0, s.c, 1, [&](int64_t c0, int64_t c1) {
    std::vector<float> pad((s.h + 2) * pw, 0.f);  // the plane with its zero border (the border is never written)
    alignas(64) float d[36][kLanes], rows[36][kLanes], out[36][kLanes];
    for (int64_t c = c0; c < c1; ++c) {
      for (int64_t n = 0; n < s.n; ++n) {
        const float* plane = xp + (n * s.c + c) * s.h * s.w;
        for (int64_t r = 0; r < s.h; ++r) std::memcpy(&pad[(r + 1) * pw + 1], plane + r * s.w, s.w * sizeof(float));
        for (int64_t t0 = 0; t0 < s.per_image; t0 += kLanes) {
          const int lanes = static_cast<int>(std::min<int64_t>(kLanes, s.per_image - t0));
          for (int l = 0; l < kLanes; ++l) {  // lanes past the last tile repeat it and are not stored
            const int64_t t = t0 + std::min(l, lanes - 1);
            const float* src = &pad[4 * (t / s.tw) * pw + 4 * (t % s.tw)];
            for (int i = 0; i < 6; ++i)
              for (int j = 0; j < 6; ++j) d[i * 6 + j][l] = src[i * pw + j];
          }
          for (int j = 0; j < 6; ++j) input_1d<6, 6>(&d[j], &rows[j]);  // down each column
          for (int i = 0; i < 6; ++i) input_1d<1, 1>(&rows[i * 6], &out[i * 6]);  // along each row
          float* dst = vp + c * s.tiles + n * s.per_image + t0;
          store_points(out, point_stride, lanes, dst);
        }
      }
    }
  });
}

void winograd_input_adjoint(const torch::Tensor& dv, torch::Tensor& dx) {
  check_map("winograd_input_adjoint", dx);
  const Tiling s = tiling("winograd_input_adjoint", dx.size(0), dx.size(1), dx.size(2), dx.size(3));
  check_points("winograd_input_adjoint", dv, s);
  const float* gp = dv.data_ptr<float>();
  float* xp = dx.data_ptr<float>();
  const int64_t pw = s.w + 2, point_stride = s.c * s.tiles;
  at::parallel_for(0, s.c, 1, [&](int64_t c0, int64_t c1) {
    std::vector<float> pad((s.h + 2) * pw);
    alignas(64) float g[36][kLanes], rows[36][kLanes], d[36][kLanes];
    for (int64_t c = c0; c < c1; ++c) {
      for (int64_t n = 0; n < s.n; ++n) {
        std::fill(pad.begin(), pad.end(), 0.f);
        for (int64_t t0 = 0; t0 < s.per_image; t0 += kLanes) {
          const int lanes = static_cast<int>(std::min<int64_t>(kLanes, s.per_image - t0));
          const float* src = gp + c * s.tiles + n * s.per_image + t0;
          load_points(src, point_stride, lanes, g);
          for (int i = 0; i < 6; ++i) input_1d_adjoint<1, 1>(&g[i * 6], &rows[i * 6]);
          for (int j = 0; j < 6; ++j) input_1d_adjoint<6, 6>(&rows[j], &d[j]);
          for (int l = 0; l < lanes; ++l) {  // neighbouring tiles overlap by two rows and columns: summed
            const int64_t t = t0 + l;
            float* dst = &pad[4 * (t / s.tw) * pw + 4 * (t % s.tw)];
            for (int i = 0; i < 6; ++i)
              for (int j = 0; j < 6; ++j) dst[i * pw + j] += d[i * 6 + j][l];
          }
        }
        float* plane = xp + (n * s.c + c) * s.h * s.w;
        for (int64_t r = 0; r < s.h; ++r) std::memcpy(plane + r * s.w, &pad[(r + 1) * pw + 1], s.w * sizeof(float));
      }
    }
  });
}

void winograd_output(const torch::Tensor& m, torch::Tensor& y) {
  check_map("winograd_output", y);
  const Tiling s = tiling("winograd_output", y.size(0), y.size(1), y.size(2), y.size(3));
  check_points("winograd_output", m, s);
  const float* mp = m.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t point_stride = s.c * s.tiles;
  at::parallel_for(0, s.c, 1, [&](int64_t o0, int64_t o1) {
    alignas(64) float g[36][kLanes], rows[24][kLanes], out[16][kLanes];
    for (int64_t o = o0; o < o1; ++o) {
      for (int64_t n = 0; n < s.n; ++n) {
        float* plane = yp + (n * s.c + o) * s.h * s.w;
        for (int64_t t0 = 0; t0 < s.per_image; t0 += kLanes) {
          const int lanes = static_cast<int>(std::min<int64_t>(kLanes, s.per_image - t0));
          const float* src = mp + o * s.tiles + n * s.per_image + t0;
          load_points(src, point_stride, lanes, g);
          for (int j = 0; j < 6; ++j) output_1d<6, 6>(&g[j], &rows[j]);  // (4, 6)
          for (int i = 0; i < 4; ++i) output_1d<1, 1>(&rows[i * 6], &out[i * 4]);  // (4, 4)
          for (int l = 0; l < lanes; ++l) {
            const int64_t t = t0 + l;
            float* dst = plane + 4 * (t / s.tw) * s.w + 4 * (t % s.tw);
            for (int i = 0; i < 4; ++i)
              for (int j = 0; j < 4; ++j) dst[i * s.w + j] = out[i * 4 + j][l];
          }
        }
      }
    }
  });
}

void winograd_output_adjoint(const torch::Tensor& dy, torch::Tensor& dm) {
  check_map("winograd_output_adjoint", dy);
  const Tiling s = tiling("winograd_output_adjoint", dy.size(0), dy.size(1), dy.size(2), dy.size(3));
  check_points("winograd_output_adjoint", dm, s);
  const float* gp = dy.data_ptr<float>();
  float* mp = dm.data_ptr<float>();
  const int64_t point_stride = s.c * s.tiles;
  at::parallel_for(0, s.c, 1, [&](int64_t o0, int64_t o1) {
    alignas(64) float g[16][kLanes], rows[24][kLanes], out[36][kLanes];
    for (int64_t o = o0; o < o1; ++o) {
      for (int64_t n = 0; n < s.n; ++n) {
        const float* plane = gp + (n * s.c + o) * s.h * s.w;
        for (int64_t t0 = 0; t0 < s.per_image; t0 += kLanes) {
          const int lanes = static_cast<int>(std::min<int64_t>(kLanes, s.per_image - t0));
          for (int l = 0; l < kLanes; ++l) {
            const int64_t t = t0 + std::min(l, lanes - 1);
            const float* src = plane + 4 * (t / s.tw) * s.w + 4 * (t % s.tw);
            for (int i = 0; i < 4; ++i)
              for (int j = 0; j < 4; ++j) g[i * 4 + j][l] = src[i * s.w + j];
          }
          for (int i = 0; i < 4; ++i) output_1d_adjoint<1, 1>(&g[i * 4], &rows[i * 6]);  // (4, 6)
          for (int j = 0; j < 6; ++j) output_1d_adjoint<6, 6>(&rows[j], &out[j]);  // (6, 6)
          float* dst = mp + o * s.tiles + n * s.per_image + t0;
          store_points(out, point_stride, lanes, dst);
        }
      }
    }
  });
}
