# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""Winograd F(4x4, 3x3) convolutions of CPU training against float64 convolutions and oneDNN."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_medt.networks.blocks import winograd
from monai_medt.networks.blocks.cpu_kernel import KERNEL_ENV, cpu_kernel
from monai_medt.networks.blocks.stem import ConvStem
from tests.conftest import count_applies


@pytest.fixture
def winograd_calls(monkeypatch):
    """The number of Winograd convolutions, counted while the test runs (skips where the kernel is off)."""
    if os.environ.get(KERNEL_ENV) == "0" or cpu_kernel() is None:
        pytest.skip("the fused CPU kernel is disabled or did not build")
    return count_applies(monkeypatch, winograd.WinogradConv3x3Function)


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.detach().double() - want.detach()).abs().max() / want.detach().abs().max())


# (N, C, O, H, W): MedT's local stem in small, a partial block of 16 tiles per map (3x5 tiles), several chunks of
# 64 tiles (40 maps of 2 tiles), one tile per map, and C != O
@pytest.mark.parametrize(
    "shape", [(8, 64, 128, 16, 16), (3, 32, 40, 12, 20), (40, 33, 32, 4, 8), (5, 32, 48, 4, 4), (1, 48, 32, 32, 32)]
)
def test_matches_float64_convolution(winograd_calls, shape):
    """Output, input gradient and weight gradient within 5e-5 of the float64 convolution's scale (measured ~5e-6)."""
    n, c, o, h, w = shape
    torch.manual_seed(0)
    conv = nn.Conv2d(c, o, 3, padding=1, bias=False)
    x = torch.randn(n, c, h, w, requires_grad=True)
    y = winograd.winograd_conv(conv, x)
    grad = torch.randn_like(y)
    y.backward(grad)
    x64, w64 = x.detach().double().requires_grad_(), conv.weight.detach().double().requires_grad_()
    y64 = F.conv2d(x64, w64, padding=1)
    y64.backward(grad.double())
    assert y.shape == (n, o, h, w) and len(winograd_calls) == 1
    assert _relative_error(y, y64) < 5e-5
    assert _relative_error(x.grad, x64.grad) < 5e-5
    assert _relative_error(conv.weight.grad, w64.grad) < 5e-5


def test_gradients_only_where_needed(winograd_calls):
    """A frozen weight gets no gradient and a constant input none either; the other gradient is still right."""
    torch.manual_seed(1)
    conv = nn.Conv2d(32, 32, 3, padding=1, bias=False)
    x = torch.randn(2, 32, 8, 8)
    winograd.winograd_conv(conv, x).square().sum().backward()
    x64, w64 = x.double(), conv.weight.detach().double().requires_grad_()
    F.conv2d(x64, w64, padding=1).square().sum().backward()
    assert _relative_error(conv.weight.grad, w64.grad) < 5e-5
    conv.weight.requires_grad_(False)
    weight_grad = conv.weight.grad.clone()
    x_grad = x.clone().requires_grad_()
    winograd.winograd_conv(conv, x_grad).sum().backward()
    assert torch.equal(conv.weight.grad, weight_grad)
    x64 = x.double().requires_grad_()
    F.conv2d(x64, conv.weight.double(), padding=1).sum().backward()
    assert _relative_error(x_grad.grad, x64.grad) < 5e-5
    assert len(winograd_calls) == 2


def test_other_cases_run_the_convolution(winograd_calls):
    """Without autograd, with a bias, stride, other kernel sizes, narrow channels, sizes not multiples of 4, float64 or
    channels-last maps, the convolution module itself runs (bit-identical output)."""
    torch.manual_seed(2)
    wide = nn.Conv2d(32, 32, 3, padding=1, bias=False)
    x = torch.randn(2, 32, 8, 8)
    cases = [
        (wide, x, False),
        (nn.Conv2d(32, 32, 3, padding=1), x, True),
        (nn.Conv2d(32, 32, 3, stride=2, padding=1, bias=False), x, True),
        (nn.Conv2d(32, 32, 5, padding=2, bias=False), x, True),
        (nn.Conv2d(8, 32, 3, padding=1, bias=False), torch.randn(2, 8, 8, 8), True),
        (nn.Conv2d(32, 16, 3, padding=1, bias=False), x, True),
        (wide, torch.randn(2, 32, 10, 8), True),
        (copy.deepcopy(wide).double(), x.double(), True),
        (wide, x.contiguous(memory_format=torch.channels_last), True),
    ]
    for conv, case_x, grad in cases:
        with torch.set_grad_enabled(grad):
            assert not winograd.winograd_applies(conv, case_x)
            assert torch.equal(winograd.winograd_conv(conv, case_x), conv(case_x))
    assert winograd_calls == []


def test_stem_training_matches_direct_convolution(winograd_calls, monkeypatch):
    """MedT's local stem (64 -> 128 -> 64) in training runs its two 3x3 convolutions on the transforms, with the
    outputs, gradients and running statistics of the stem on oneDNN's convolution to float32 rounding."""
    torch.manual_seed(3)
    stem = ConvStem(3, 64).train()
    direct = copy.deepcopy(stem)
    x = torch.rand(4, 3, 32, 32)
    y = stem(x)
    y.square().mean().backward()
    assert len(winograd_calls) == 2
    monkeypatch.setattr(winograd, "winograd_applies", lambda conv, x: False)
    y_direct = direct(x)
    y_direct.square().mean().backward()
    assert len(winograd_calls) == 2
    torch.testing.assert_close(y, y_direct, rtol=1e-4, atol=1e-4)
    for (name, got), want in zip(stem.named_parameters(), direct.parameters()):
        scale = float(want.grad.abs().max())
        assert float((got.grad - want.grad).abs().max()) <= 1e-3 * scale, name
    for got, want in zip(stem.buffers(), direct.buffers()):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_transforms_name_a_bad_shape():
    """The kernel's transforms reject maps whose sizes are not multiples of 4 and buffers of the wrong shape."""
    if os.environ.get(KERNEL_ENV) == "0" or cpu_kernel() is None:
        pytest.skip("the fused CPU kernel is disabled or did not build")
    kernel = cpu_kernel()
    with pytest.raises(RuntimeError, match="multiples of 4, got 6x8"):
        kernel.winograd_input(torch.zeros(1, 2, 6, 8), torch.zeros(36, 2, 3))
    with pytest.raises(RuntimeError, match=r"expected a contiguous float32 \(36, 2, 4\) tensor"):
        kernel.winograd_input(torch.zeros(1, 2, 8, 8), torch.zeros(36, 2, 3))
