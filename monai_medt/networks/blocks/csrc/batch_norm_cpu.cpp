// Copyright (c) monai-medt contributors
// Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
//
// Training-mode batch norm of contiguous (N, C, H, W) float32 maps, with an optional ReLU fused in, optionally the
// sum of each group of T consecutive normalised channels (the axial attention's output terms) and optionally a
// residual map added before the ReLU (the axial block's shortcut) (batch_norm.py).
// PyTorch's CPU kernel for this layout runs a Welford pass per channel and a separate transform, and the ReLU after
// it another pass each way. Here every pass streams through the map in memory order (plane by plane; a channel's
// planes lie C H W floats apart, so walking a channel at a time meets short strided runs): the statistics are one pass
// of float64 sums per plane, the transform and ReLU one pass, and the backward two (the ReLU's mask from the output).

#include "batch_norm_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

// the per-position terms must inline into channel_sums' loops, so that their per-plane parts leave the loops
#define MEDT_BN_INLINE __attribute__((always_inline))

namespace {

typedef float f8 __attribute__((vector_size(32)));
typedef double d8 __attribute__((vector_size(64)));

inline d8 load_d8(const float* p) {
  f8 v;
  std::memcpy(&v, p, sizeof(v));
  return __builtin_convertvector(v, d8);
}

inline double lane_sum(d8 v) {
  double s = 0.0;
  for (int i = 0; i < 8; ++i) s += v[i];
  return s;
}

// Sets sums[c * 2 + k], k < 2, per channel c, to the float64 sums over the planes' positions of term(k, plane, plane
// offset plane HW, position) (evaluated on 8 positions at once as d8, or on one as double), over all N C planes
// (plane = n C + c). The planes are split over the threads in memory order, each with its own partial sums.
template <typename Term8, typename Term1>
void channel_sums(int64_t N, int64_t C, int64_t HW, double* sums, Term8 term8, Term1 term1) {
  const int64_t planes = N * C;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), planes));
  std::vector<double> partial(chunks * C * 2, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      double* part = partial.data() + chunk * C * 2;
      for (int64_t plane = planes * chunk / chunks; plane < planes * (chunk + 1) / chunks; ++plane) {
        const int64_t off = plane * HW;
        d8 a0 = d8{}, a1 = d8{}, b0 = d8{}, b1 = d8{};  // two accumulators per term: the adds' latency
        int64_t i = 0;
        for (; i + 16 <= HW; i += 16) {
          a0 += term8(0, plane, off, i);
          b0 += term8(1, plane, off, i);
          a1 += term8(0, plane, off, i + 8);
          b1 += term8(1, plane, off, i + 8);
        }
        for (; i + 8 <= HW; i += 8) {
          a0 += term8(0, plane, off, i);
          b0 += term8(1, plane, off, i);
        }
        double s0 = lane_sum(a0 + a1), s1 = lane_sum(b0 + b1);
        for (; i < HW; ++i) {
          s0 += term1(0, plane, off, i);
          s1 += term1(1, plane, off, i);
        }
        part[plane % C * 2] += s0;
        part[plane % C * 2 + 1] += s1;
      }
    }
  });
  for (int64_t t = 0; t < C * 2; ++t) {
    double s = 0.0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) s += partial[chunk * C * 2 + t];
    sums[t] = s;
  }
}

void check_map(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat && t.dim() == 4 && t.is_contiguous(), name,
              " must be a contiguous float32 (N, C, H, W) CPU tensor");
}

void check_channels(const torch::Tensor& t, int64_t C, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat && t.dim() == 1 && t.size(0) == C &&
                  t.is_contiguous(),
              name, " must be a contiguous float32 vector of ", C, " entries");
}

}  // namespace

std::vector<torch::Tensor> batch_norm_forward(torch::Tensor x, torch::Tensor weight, torch::Tensor bias,
                                              torch::Tensor residual, double eps, bool relu, int64_t terms,
                                              torch::Tensor running_mean, torch::Tensor running_var, double factor) {
  check_map(x, "x");
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), T = terms;
  TORCH_CHECK(N * HW > 0, "batch norm needs at least one value per channel");
  TORCH_CHECK(T >= 1 && C % T == 0, "the channels (", C, ") must be a multiple of terms (", T, ")");
  check_channels(weight, C, "weight");
  check_channels(bias, C, "bias");
  auto y = torch::empty({N, C / T, x.size(2), x.size(3)}, x.options());
  const bool has_residual = residual.numel() > 0;
  if (has_residual) {
    check_map(residual, "residual");
    TORCH_CHECK(residual.sizes() == y.sizes(), "residual must have the output's shape");
  }
  const bool running = running_mean.numel() > 0;
  if (running) {
    check_channels(running_mean, C, "running_mean");
    check_channels(running_var, C, "running_var");
  }
  auto mean = torch::empty({C}, x.options()), invstd = torch::empty({C}, x.options());
  const float* xp = x.data_ptr<float>();
  // float64 sums of x and x^2 (exact products of float32 values): E[x^2] - E[x]^2 keeps ~1e-16 of E[x^2]
  std::vector<double> sums(C * 2);
  channel_sums(
      N, C, HW, sums.data(),
      [&](int k, int64_t, int64_t off, int64_t i) MEDT_BN_INLINE {
        const d8 v = load_d8(xp + off + i);
        return k == 0 ? v : v * v;
      },
      [&](int k, int64_t, int64_t off, int64_t i) MEDT_BN_INLINE {
        const double v = xp[off + i];
        return k == 0 ? v : v * v;
      });
  const double count = static_cast<double>(N * HW);
  // the running statistics as torch.nn.BatchNorm2d updates them: (1 - factor) old + factor new, the variance unbiased
  const double unbias = count / std::max(count - 1.0, 1.0);
  float* rm = running ? running_mean.data_ptr<float>() : nullptr;
  float* rv = running ? running_var.data_ptr<float>() : nullptr;
  std::vector<float> mf(C), scale(C);
  for (int64_t c = 0; c < C; ++c) {
    const double m = sums[c * 2] / count;
    const double v = std::max(sums[c * 2 + 1] / count - m * m, 0.0);  // biased, as the normalisation uses
    mf[c] = static_cast<float>(m);
    invstd.data_ptr<float>()[c] = static_cast<float>(1.0 / std::sqrt(v + eps));
    scale[c] = weight.data_ptr<float>()[c] * invstd.data_ptr<float>()[c];
    if (running) {
      rm[c] = static_cast<float>((1.0 - factor) * rm[c] + factor * m);
      rv[c] = static_cast<float>((1.0 - factor) * rv[c] + factor * v * unbias);
    }
  }
  std::copy(mf.begin(), mf.end(), mean.data_ptr<float>());
  const float* b = bias.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const float* rp = has_residual ? residual.data_ptr<float>() : nullptr;
  // per output plane: the sum of its T normalised input planes, then the residual, then the ReLU
  at::parallel_for(0, N * C / T, 1, [&](int64_t begin, int64_t end) {
    for (int64_t out_plane = begin; out_plane < end; ++out_plane) {
      float* __restrict__ q = yp + out_plane * HW;
      const float* __restrict__ r = has_residual ? rp + out_plane * HW : nullptr;
      for (int64_t t = 0; t < T; ++t) {
        const int64_t plane = out_plane * T + t, c = plane % C;
        const float m = mf[c], a = scale[c], shift = b[c];
        const float* __restrict__ p = xp + plane * HW;
        const bool last = t == T - 1;
        const float floor = relu && last ? 0.0f : -INFINITY;  // the ReLU with the last term
        if (last && r != nullptr) {
          if (t == 0) {
#pragma omp simd
            for (int64_t i = 0; i < HW; ++i) q[i] = std::max(((p[i] - m) * a + shift) + r[i], floor);
          } else {
#pragma omp simd
            for (int64_t i = 0; i < HW; ++i) q[i] = std::max((q[i] + ((p[i] - m) * a + shift)) + r[i], floor);
          }
        } else if (t == 0) {
#pragma omp simd
          for (int64_t i = 0; i < HW; ++i) q[i] = std::max((p[i] - m) * a + shift, floor);
        } else {
#pragma omp simd
          for (int64_t i = 0; i < HW; ++i) q[i] = std::max(q[i] + ((p[i] - m) * a + shift), floor);
        }
      }
    }
  });
  return {y, mean, invstd};
}

std::vector<torch::Tensor> batch_norm_backward(torch::Tensor dy, torch::Tensor x, torch::Tensor y, torch::Tensor mean,
                                               torch::Tensor invstd, torch::Tensor weight, bool relu, int64_t terms,
                                               bool residual_grad) {
  check_map(dy, "dy");
  check_map(x, "x");
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), T = terms;
  TORCH_CHECK(T >= 1 && C % T == 0, "the channels (", C, ") must be a multiple of terms (", T, ")");
  const std::vector<int64_t> out_shape = {N, C / T, x.size(2), x.size(3)};
  TORCH_CHECK(dy.sizes() == out_shape, "dy must have the output's shape");
  if (relu) {
    check_map(y, "y");
    TORCH_CHECK(y.sizes() == out_shape, "y must have the output's shape");
  }
  check_channels(mean, C, "mean");
  check_channels(invstd, C, "invstd");
  check_channels(weight, C, "weight");
  const float* gp = dy.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  const float* yp = relu ? y.data_ptr<float>() : nullptr;
  const float* mp = mean.data_ptr<float>();
  const float* ip = invstd.data_ptr<float>();
  // the gradient at the norm's output (plane p's share of its output plane p / T): zero where the ReLU cut
  auto grad8 = [&](int64_t at) {
    f8 g;
    std::memcpy(&g, gp + at, sizeof(g));
    if (!relu) return g;
    f8 q;
    std::memcpy(&q, yp + at, sizeof(q));
    return q > 0.0f ? g : f8{};
  };
  auto grad1 = [&](int64_t at) { return !relu || yp[at] > 0.0f ? gp[at] : 0.0f; };
  // sums per channel of g and of g x_hat, x_hat = (x - mean) invstd
  std::vector<double> sums(C * 2);
  channel_sums(
      N, C, HW, sums.data(),
      [&](int k, int64_t plane, int64_t off, int64_t i) MEDT_BN_INLINE {
        const d8 g = __builtin_convertvector(grad8(plane / T * HW + i), d8);
        if (k == 0) return g;
        const int64_t c = plane % C;
        f8 p;
        std::memcpy(&p, xp + off + i, sizeof(p));
        return g * __builtin_convertvector((p - mp[c]) * ip[c], d8);
      },
      [&](int k, int64_t plane, int64_t off, int64_t i) MEDT_BN_INLINE {
        const double g = grad1(plane / T * HW + i);
        const int64_t c = plane % C;
        return k == 0 ? g : g * ((xp[off + i] - mp[c]) * ip[c]);
      });
  auto dx = torch::empty_like(x);
  auto dweight = torch::empty({C}, x.options()), dbias = torch::empty({C}, x.options());
  const double count = static_cast<double>(N * HW);
  std::vector<float> mg(C), mgx(C);
  for (int64_t c = 0; c < C; ++c) {
    mg[c] = static_cast<float>(sums[c * 2] / count);
    mgx[c] = static_cast<float>(sums[c * 2 + 1] / count);
    dbias.data_ptr<float>()[c] = static_cast<float>(sums[c * 2]);
    dweight.data_ptr<float>()[c] = static_cast<float>(sums[c * 2 + 1]);
  }
  // the residual's gradient is dy masked by the ReLU (without a ReLU it is dy itself: the caller passes that on)
  const bool write_residual = residual_grad && relu;
  auto dresidual = write_residual ? torch::empty_like(dy) : torch::empty({0}, dy.options());
  float* drp = write_residual ? dresidual.data_ptr<float>() : nullptr;
  const float* w = weight.data_ptr<float>();
  float* dp = dx.data_ptr<float>();
  at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t c = plane % C, off = plane * HW, out_off = plane / T * HW;
      const float m = mp[c], is = ip[c], a = w[c] * is, g0 = mg[c], gx = mgx[c];
      const float* g = gp + out_off;
      const float* p = xp + off;
      float* d = dp + off;
      if (relu) {
        const float* q = yp + out_off;
#pragma omp simd
        for (int64_t i = 0; i < HW; ++i) d[i] = a * ((q[i] > 0.0f ? g[i] : 0.0f) - g0 - (p[i] - m) * is * gx);
        if (write_residual && plane % T == 0) {
          float* __restrict__ dr = drp + out_off;
#pragma omp simd
          for (int64_t i = 0; i < HW; ++i) dr[i] = q[i] > 0.0f ? g[i] : 0.0f;
        }
      } else {
#pragma omp simd
        for (int64_t i = 0; i < HW; ++i) d[i] = a * (g[i] - g0 - (p[i] - m) * is * gx);
      }
    }
  });
  return {dx, dweight, dbias, dresidual};
}
