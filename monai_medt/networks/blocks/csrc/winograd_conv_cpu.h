// Copyright (c) monai-medt contributors
// Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
//
// Winograd F(4x4, 3x3) transforms of 3x3, stride-1, zero-padding-1 convolutions of contiguous float32 (N, C, H, W)
// maps on the CPU (winograd_conv_cpu.cpp); the products between them are batched matrix products (winograd.py).
// H and W must be multiples of 4. Tile t = (n H/4 + ty) W/4 + tx covers the 6x6 input rows 4 ty - 1 .. 4 ty + 4 and
// columns 4 tx - 1 .. 4 tx + 4 (zero outside the map) and the 4x4 output block at (4 ty, 4 tx).
#pragma once

#include <torch/extension.h>

// v (36, C, T) = B^T d B of each input tile d, written into v (contiguous, 36 * C * T floats)
void winograd_input(const torch::Tensor& x, torch::Tensor& v);

// adjoint of winograd_input: dx (N, C, H, W), contiguous, = the sum of B dv B^T over the tiles covering each pixel
void winograd_input_adjoint(const torch::Tensor& dv, torch::Tensor& dx);

// y (N, O, H, W), contiguous, = A^T m A of each tile of m (36, O, T)
void winograd_output(const torch::Tensor& m, torch::Tensor& y);

// adjoint of winograd_output: dm (36, O, T), contiguous, = A g A^T of each 4x4 block g of dy
void winograd_output_adjoint(const torch::Tensor& dy, torch::Tensor& dm);
