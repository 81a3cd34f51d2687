// Copyright (c) monai-medt contributors
// Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
//
// Training-mode batch norm (+ ReLU) of contiguous float32 maps on the CPU (batch_norm_cpu.cpp).
#pragma once

#include <torch/extension.h>

#include <vector>

// (x - mean) * invstd * weight + bias per channel, with the batch's mean and biased variance, summed over each group
// of `terms` consecutive channels into y (N, C / terms, H, W), plus `residual` (y's shape; an empty tensor for none),
// then max(y, 0) where relu. Updates running_mean and running_var (float32 (C); empty tensors for none) in place to
// (1 - factor) old + factor batch (the variance unbiased), as torch.nn.BatchNorm2d does. Returns y, mean, invstd.
std::vector<torch::Tensor> batch_norm_forward(torch::Tensor x, torch::Tensor weight, torch::Tensor bias,
                                              torch::Tensor residual, double eps, bool relu, int64_t terms,
                                              torch::Tensor running_mean, torch::Tensor running_var, double factor);

// dx, dweight, dbias of batch_norm_forward from dy (the gradient at y), and the residual's gradient where
// residual_grad and relu (an empty tensor otherwise: without the ReLU it is dy); y (its output) gives the ReLU's mask
// where relu, unused otherwise.
std::vector<torch::Tensor> batch_norm_backward(torch::Tensor dy, torch::Tensor x, torch::Tensor y, torch::Tensor mean,
                                               torch::Tensor invstd, torch::Tensor weight, bool relu, int64_t terms,
                                               bool residual_grad);
