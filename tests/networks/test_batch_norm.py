# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""The fused training-mode batch norm (+ ReLU) of the CPU kernel against torch.nn.BatchNorm2d."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn as nn

from monai_medt.networks.blocks import batch_norm as batch_norm_module
from monai_medt.networks.blocks.batch_norm import batch_norm
from monai_medt.networks.blocks.cpu_kernel import KERNEL_ENV, cpu_kernel
from tests.conftest import count_applies


@pytest.fixture
def kernel_calls(monkeypatch):
    """The number of fused calls, counted while the test runs (skips where the kernel is off)."""
    if os.environ.get(KERNEL_ENV) == "0" or cpu_kernel() is None:
        pytest.skip("the fused CPU kernel is disabled or did not build")
    return count_applies(monkeypatch, batch_norm_module.BatchNormFunction)


def _norm(channels: int, momentum: float | None) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels, momentum=momentum).train()
    with torch.no_grad():
        norm.weight.uniform_(-1.0, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    return norm


# odd plane sizes exercise the kernel's vector tails; (64, 8, 4, 4) has many short planes
@pytest.mark.parametrize("shape", [(4, 8, 16, 16), (64, 8, 4, 4), (3, 5, 7, 9), (2, 3, 1, 17)])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_matches_module(kernel_calls, shape, relu, momentum):
    """Outputs, gradients and running statistics over three steps equal the module's (and its ReLU's)."""
    torch.manual_seed(0)
    fused_norm = _norm(shape[1], momentum)
    module_norm = copy.deepcopy(fused_norm)
    for step in range(3):
        # an offset mean: the variance must not come from cancelling sums
        x = torch.randn(shape) * (step + 1) + 3.0
        grad = torch.randn(shape)
        x_fused, x_module = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_fused = batch_norm(fused_norm, x_fused, relu)
        y_module = module_norm(x_module)
        y_module = torch.relu(y_module) if relu else y_module
        y_fused.backward(grad)
        y_module.backward(grad)
        torch.testing.assert_close(y_fused, y_module, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x_fused.grad, x_module.grad, rtol=1e-4, atol=1e-5)
        for got, want in zip(fused_norm.parameters(), module_norm.parameters()):
            torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-4)
        for got, want in zip(fused_norm.buffers(), module_norm.buffers()):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert len(kernel_calls) == 3
    if relu:
        assert (y_fused == 0).any() and (y_fused > 0).any()


def test_other_cases_run_the_module(kernel_calls):
    """Eval mode, channels-last and float64 maps run the module; a single value per channel raises its error."""
    norm = _norm(4, 0.1)
    x = torch.randn(2, 4, 5, 5)
    for case_norm, case_x in (
        (copy.deepcopy(norm).eval(), x),
        (norm, x.contiguous(memory_format=torch.channels_last)),
        (copy.deepcopy(norm).double(), x.double()),
    ):
        torch.testing.assert_close(batch_norm(case_norm, case_x, relu=True), torch.relu(case_norm(case_x)))
    assert kernel_calls == []
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        batch_norm(norm, torch.randn(1, 4, 1, 1))


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("scaled", [False, True])
def test_term_sums_match_module(kernel_calls, relu, scaled):
    """terms=2 (the attention's output norm): the normalised channel pairs summed, each scaled by its term factor."""
    torch.manual_seed(1)
    shape = (3, 8, 6, 10)
    fused_norm = _norm(8, 0.1)
    module_norm = copy.deepcopy(fused_norm)
    x = torch.randn(shape) + 1.0
    grad = torch.randn(3, 4, 6, 10)
    scales = [torch.tensor([0.7, -1.3], requires_grad=True) for _ in range(2)] if scaled else [None, None]
    x_fused, x_module = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_fused = batch_norm(fused_norm, x_fused, relu, terms=2, term_scales=scales[0])
    y_module = module_norm(x_module).view(3, 4, 2, 6, 10)
    if scaled:
        y_module = y_module * scales[1].view(1, 1, 2, 1, 1)
    y_module = y_module.sum(2)
    y_module = torch.relu(y_module) if relu else y_module
    y_fused.backward(grad)
    y_module.backward(grad)
    assert y_fused.shape == (3, 4, 6, 10) and len(kernel_calls) == 1
    torch.testing.assert_close(y_fused, y_module, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_fused.grad, x_module.grad, rtol=1e-4, atol=1e-5)
    for got, want in zip(fused_norm.parameters(), module_norm.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-4)
    if scaled:
        torch.testing.assert_close(scales[0].grad, scales[1].grad, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="multiple of terms"):
        batch_norm(fused_norm, x, terms=3)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("terms", [1, 2])
def test_residual_matches_module(kernel_calls, relu, terms):
    """A residual (the axial block's shortcut) is added after the term sum and before the ReLU; it gets the gradient."""
    torch.manual_seed(2)
    shape, out_shape = (3, 8, 6, 10), (3, 8 // terms, 6, 10)
    fused_norm = _norm(8, 0.1)
    module_norm = copy.deepcopy(fused_norm)
    x, r, grad = torch.randn(shape) + 1.0, torch.randn(out_shape), torch.randn(out_shape)
    x_fused, x_module = x.clone().requires_grad_(), x.clone().requires_grad_()
    r_fused, r_module = r.clone().requires_grad_(), r.clone().requires_grad_()
    y_fused = batch_norm(fused_norm, x_fused, relu, terms=terms, residual=r_fused)
    y_module = module_norm(x_module).view(3, 8 // terms, terms, 6, 10).sum(2) + r_module
    y_module = torch.relu(y_module) if relu else y_module
    y_fused.backward(grad)
    y_module.backward(grad)
    assert len(kernel_calls) == 1
    torch.testing.assert_close(y_fused, y_module, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_fused.grad, x_module.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(r_fused.grad, r_module.grad)
    for got, want in zip(fused_norm.parameters(), module_norm.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-4)
    if relu:  # the ReLU cuts some sums, so the residual's gradient differs from grad there
        assert (r_fused.grad == 0).any() and (r_fused.grad != 0).any()
    # a residual without gradient (a frozen input) gets none, and the eval path adds it as well
    y_frozen = batch_norm(fused_norm, x, relu, terms=terms, residual=r)
    assert not r.requires_grad and y_frozen.shape == out_shape and len(kernel_calls) == 2
    eval_norm = copy.deepcopy(module_norm).eval()
    want = eval_norm(x).view(3, 8 // terms, terms, 6, 10).sum(2) + r
    got = batch_norm(eval_norm, x, relu, terms=terms, residual=r)
    torch.testing.assert_close(got, torch.relu(want) if relu else want)
    with pytest.raises(ValueError, match="residual's shape"):
        batch_norm(fused_norm, x, relu, terms=terms, residual=torch.randn(3, 8, 6, 5))


@pytest.mark.parametrize("small_weight", [None, "against bias", "decayed"])
def test_output_kept_saves_the_output(kernel_calls, small_weight):
    """
    ``output_kept``: the norm saves its output instead of its input and recovers the input's gradient from it; where a
    weight is too small against its bias to invert, it saves the input. Gradients equal the module's either way.
    """
    torch.manual_seed(3)
    shape = (4, 6, 9, 7)
    fused_norm = _norm(6, 0.1)
    with torch.no_grad():
        fused_norm.weight.copy_(torch.tensor([0.5, -1.5, 2.0, 0.8, -0.3, 1.1]))
        fused_norm.bias.copy_(torch.tensor([0.2, -0.7, 3.0, 0.0, 0.9, -2.0]))
        if small_weight == "against bias":
            fused_norm.weight[3] = 1e-4
            fused_norm.bias[3] = 0.5
        elif small_weight == "decayed":  # weight decay drove an unused channel into the denormals: 1 / weight is inf
            fused_norm.weight[3] = 1e-39
            fused_norm.bias[3] = 1e-40
    module_norm = copy.deepcopy(fused_norm)
    x = torch.randn(shape) * 2.0 + 3.0
    grad = torch.randn(shape)
    x_fused, x_module = x.clone().requires_grad_(), x.clone().requires_grad_()
    saved: list[int] = []

    def pack(t):  # records the storage of every tensor autograd saves
        saved.append(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y_fused = batch_norm(fused_norm, x_fused, output_kept=True)
    y_module = module_norm(x_module)
    y_fused.backward(grad)
    y_module.backward(grad)
    assert len(kernel_calls) == 1
    input_saved = x_fused.untyped_storage().data_ptr() in saved
    assert input_saved == bool(small_weight)
    assert (y_fused.untyped_storage().data_ptr() in saved) != bool(small_weight)
    assert torch.isfinite(x_fused.grad).all() and all(torch.isfinite(p.grad).all() for p in fused_norm.parameters())
    torch.testing.assert_close(y_fused, y_module, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_fused.grad, x_module.grad, rtol=1e-4, atol=1e-5)
    for got, want in zip(fused_norm.parameters(), module_norm.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-4)
    # with a ReLU the output does not determine the input: the input is saved
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        batch_norm(fused_norm, x_fused, relu=True, output_kept=True)
    assert x_fused.untyped_storage().data_ptr() in saved
