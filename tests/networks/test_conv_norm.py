# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""The eval-mode folding of a batch norm into the convolution before it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from monai_medt.networks.blocks.conv_norm import conv_norm


def _pair(bias: bool, stride: int) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=stride, padding=1, bias=bias)
    norm = nn.BatchNorm2d(6)
    with torch.no_grad():  # statistics and affine parameters far from the identity
        norm.running_mean.uniform_(-2.0, 2.0)
        norm.running_var.uniform_(0.1, 4.0)
        norm.weight.uniform_(-1.5, 1.5)
        norm.bias.uniform_(-1.0, 1.0)
    return conv, norm


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
def test_folded_eval_matches_conv_then_norm(bias, stride):
    conv, norm = _pair(bias, stride)
    norm.eval()
    x = torch.randn(2, 4, 12, 10)
    calls = []
    norm.register_forward_hook(lambda *args: calls.append(1))
    out = conv_norm(conv, norm, x)
    assert not calls  # the norm module itself did not run: its affine map went into the convolution
    torch.testing.assert_close(out, norm(conv(x)), atol=1e-5, rtol=1e-5)


def test_training_mode_uses_batch_statistics_and_updates_running_ones():
    conv, norm = _pair(False, 1)
    x = torch.randn(4, 4, 8, 8) * 3.0 + 1.0
    before = norm.running_mean.clone()
    out = conv_norm(conv, norm, x)
    flat = out.transpose(0, 1).reshape(6, -1)
    torch.testing.assert_close(flat.mean(1), norm.bias.detach(), atol=1e-5, rtol=0)
    assert not torch.equal(norm.running_mean, before)


def test_folded_gradients_match_in_eval():
    conv, norm = _pair(True, 1)
    norm.eval()
    x = torch.randn(2, 4, 8, 8)
    grads = []
    for fn in (conv_norm, lambda c, n, t: n(c(t))):
        conv.zero_grad()
        norm.zero_grad()
        fn(conv, norm, x).square().sum().backward()
        grads.append([p.grad.clone() for p in (conv.weight, conv.bias, norm.weight, norm.bias)])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
