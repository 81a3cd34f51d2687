# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""The decoder's x2 upsampling: the form the compiler differentiates, and compiled gradients of the decoder."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from monai_medt.networks.blocks.decoder import AdditiveSkipDecoder, _separable_upsample2x


@pytest.mark.parametrize("size", [(1, 1), (4, 1), (1, 5), (2, 2), (5, 7)])
def test_separable_upsampling_is_bilinear(size):
    """Values and gradients equal ``F.interpolate(..., "bilinear", align_corners=False)``, edges and 1-pixel maps
    included."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    expected = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    actual = _separable_upsample2x(x)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, atol=1e-14, rtol=0.0)
    grad_out = torch.randn(expected.shape, dtype=torch.float64)
    (expected_grad,) = torch.autograd.grad(expected, x, grad_out)
    (actual_grad,) = torch.autograd.grad(actual, x, grad_out)
    torch.testing.assert_close(actual_grad, expected_grad, atol=1e-13, rtol=0.0)


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="inductor needs a C++ compiler")
@pytest.mark.parametrize("size", [1, 2])
def test_compiled_decoder_gradients_match_eager(size):
    """
    ``torch.compile`` (inductor, CPU) of a conv term followed by the decoder gives eager's gradients, for 1x1 inputs
    (MedT's local decoder upsamples a 1x1 map first) and larger ones. With ``F.interpolate`` in the compiled graph,
    torch 2.13 returned all-zero gradients for the decoder's first conv and its input (``size`` 2).
    """
    torch.manual_seed(0)
    stem = nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False).double()
    decoder = AdditiveSkipDecoder((16, 16, 16)).double()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    features = torch.randn(2, 16, size, size, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 16, 4 * size, 4 * size, dtype=torch.float64)
    tensors = [features, stem.weight, *decoder.parameters()]

    def step(x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return stem(x).mean() + decoder(features, [])

    def gradients(fn) -> list[torch.Tensor]:
        out = fn(x, features)
        return list(torch.autograd.grad((out * weights).sum(), tensors))

    eager = gradients(step)
    torch._dynamo.reset()
    compiled = gradients(torch.compile(step, backend="inductor"))
    for got, want in zip(compiled, eager):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)
