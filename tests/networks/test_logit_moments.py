# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""The analytic logit moments against the materialised logit maps, and their hand-written backward."""

from __future__ import annotations

import os

import pytest
import torch

from monai_medt.networks.blocks.cpu_kernel import KERNEL_ENV, cpu_kernel
from monai_medt.networks.blocks.logit_moments import (
    logit_moments,
    logit_moments_reference,
    logit_norm_scale,
    logit_norm_scale_reference,
    map_logit_moments,
)


def _inputs(channels: int, length: int = 5, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(channels)
    shapes = [(3, 2, length, channels)] * 2 + [(channels, length, length)] * 2
    # a shared offset makes the mean large next to the spread, where E[X^2] - E[X]^2 cancels
    return [(torch.randn(s, generator=g) + 1.5).to(dtype).requires_grad_() for s in shapes]


@pytest.mark.parametrize("channels", [1, 3])
def test_moments_equal_materialised_maps(channels):
    q, k, rq, wk = _inputs(channels)
    maps = torch.stack(
        [
            torch.einsum("rgic,rgjc->rgij", q, k),
            torch.einsum("rgic,cij->rgij", q, rq),
            torch.einsum("rgjc,cij->rgij", k, wk),
        ]
    )  # (term, R, G, L, L)
    means, squares = logit_moments(q, k, rq, wk)
    torch.testing.assert_close(means, maps.mean((1, 3, 4)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(squares, (maps**2).mean((1, 3, 4)), rtol=1e-12, atol=1e-12)
    content_mean, content_square = logit_moments(q, k)
    assert content_mean.shape == (1, 2)
    torch.testing.assert_close(content_square[0], squares[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels", [1, 3])
def test_backward_is_the_derivative(channels):
    q, k, rq, wk = _inputs(channels)
    assert torch.autograd.gradcheck(logit_moments, (q, k, rq, wk))
    assert torch.autograd.gradcheck(logit_moments, (q, k))


def test_float32_inputs_match_autograd_reference():
    # the network passes float32 tensors: same values and float32 gradients as autograd through the float64 formula
    inputs = _inputs(2, length=7, dtype=torch.float32)
    weights = torch.randn(2, 3, 2, dtype=torch.float64)  # an arbitrary upstream gradient for each output
    grads = []
    for fn in (logit_moments, logit_moments_reference):
        means, squares = fn(*inputs)
        grads.append(torch.autograd.grad((means * weights[0] + squares * weights[1]).sum(), inputs))
        assert means.dtype == torch.float64
    for fused, reference in zip(*grads):
        assert fused.dtype == torch.float32
        torch.testing.assert_close(fused, reference, rtol=1e-6, atol=1e-6)


def test_position_tables_given_together():
    q, k, rq, _ = _inputs(1)
    with pytest.raises(ValueError, match="rq and wk"):
        logit_moments(q, k, rq, None)


@pytest.mark.parametrize("channels", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_kernel_matches_pytorch_form(channels, dtype, monkeypatch):
    """
    The kernel's one-pass sums and gradient (used on the CPU) against the PyTorch form (the kernel switched off), with
    k a transposed view as the attention layers pass it; compiled channel counts 1, 2, 4, 8 and the general form.
    """
    if os.environ.get(KERNEL_ENV) == "0" or cpu_kernel() is None:
        pytest.skip("the fused CPU kernel is disabled or did not build")
    g = torch.Generator().manual_seed(channels)
    q = (torch.randn(5, 3, 7, channels, generator=g) + 1.5).to(dtype)
    k = (torch.randn(15, channels, 7, generator=g) + 1.5).to(dtype).transpose(1, 2).reshape(5, 3, 7, channels)
    rq, wk = [(torch.randn(channels, 7, 7, generator=g) + 1.5).to(dtype) for _ in range(2)]
    weights = torch.randn(2, 3, 3, dtype=torch.float64, generator=g)
    results = []
    for enabled in ("1", "0"):
        monkeypatch.setenv(KERNEL_ENV, enabled)
        for tables in ((rq, wk), (None, None)):
            inputs = [t.detach().requires_grad_() for t in (q, k)] + [
                None if t is None else t.detach().requires_grad_() for t in tables
            ]
            means, squares = logit_moments(*inputs)
            terms = means.shape[0]
            loss = (means * weights[0, :terms] + squares * weights[1, :terms]).sum()
            grads = torch.autograd.grad(loss, [t for t in inputs if t is not None])
            results.append([means, squares, *grads])
    kernel_results, pytorch_results = results[:2], results[2:]
    for got_all, want_all in zip(kernel_results, pytorch_results):
        for got, want in zip(got_all, want_all):
            assert got.dtype == want.dtype
            # both accumulate in float64; only the summation order differs
            torch.testing.assert_close(got, want, rtol=1e-12 if dtype == torch.float64 else 1e-6, atol=1e-12)


@pytest.mark.parametrize("height", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("channels", [1, 3])
def test_map_moments_equal_sequence_moments(height, channels_last, channels):
    """
    map_logit_moments (q and k read in place from a projected map, its gradient returned as one map) against
    logit_moments of the same queries and keys copied out in the sequence layout; zero gradient in the value channels.
    """
    if os.environ.get(KERNEL_ENV) == "0" or cpu_kernel() is None:
        pytest.skip("the fused CPU kernel is disabled or did not build")
    g = torch.Generator().manual_seed(channels)
    heads, value = 2, 2 * channels
    qkv = torch.randn(2, heads * (2 * channels + value), 5, 6, generator=g) + 1.5
    if channels_last:
        qkv = qkv.contiguous(memory_format=torch.channels_last)
    length = 5 if height else 6
    rq, wk = [torch.randn(channels, length, length, generator=g) + 1.5 for _ in range(2)]
    weights = torch.randn(2, 3, heads, dtype=torch.float64, generator=g)
    results = []
    for via_map in (True, False):
        x = qkv.detach().requires_grad_()
        tables = [t.detach().requires_grad_() for t in (rq, wk)]
        if via_map:
            means, squares = map_logit_moments(x, heads, channels, height, *tables)
        else:
            # the sequence layout of the attention layers: (B * O, G, L, c)
            per_head = x.view(2, heads, -1, 5, 6)
            order = (0, 4, 1, 3, 2) if height else (0, 3, 1, 4, 2)
            q = per_head[:, :, :channels].permute(order).reshape(-1, heads, length, channels)
            k = per_head[:, :, channels : 2 * channels].permute(order).reshape(-1, heads, length, channels)
            means, squares = logit_moments(q, k, *tables)
        loss = (means * weights[0] + squares * weights[1]).sum()
        results.append([means, squares, *torch.autograd.grad(loss, [x, *tables])])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
    dqkv = results[0][2].view(2, heads, -1, 5, 6)
    assert dqkv[:, :, 2 * channels :].abs().max() == 0
    assert dqkv[:, :, : 2 * channels].abs().max() > 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_norm_scale_matches_autograd_of_the_formula(dtype):
    """
    The logit norm's scale and its written backward against autograd through the plain formula, including a term whose
    rounded variance is negative (clamped to zero: no gradient to its moments through the variance).
    """
    g = torch.Generator().manual_seed(7)
    means = (torch.randn(3, 4, generator=g, dtype=torch.float64) + 2.0).requires_grad_()
    squares = (means.detach() ** 2 + torch.rand(3, 4, generator=g, dtype=torch.float64) + 0.1).requires_grad_()
    with torch.no_grad():
        squares[1, 2] = means[1, 2] ** 2 - 1e-9  # E[X^2] - E[X]^2 < 0 by rounding
    weight = (torch.randn(12, generator=g) + 1.0).to(dtype if dtype == torch.float64 else torch.float32)
    weight.requires_grad_()
    upstream = torch.randn(12, generator=g, dtype=torch.float64).to(dtype)
    results = []
    for fn in (logit_norm_scale, logit_norm_scale_reference):
        scale, var = fn(means, squares, weight, 1e-5, dtype)
        assert scale.dtype == dtype and var.dtype == torch.float64 and not var.requires_grad
        grads = torch.autograd.grad((scale * upstream).sum(), (means, squares, weight))
        results.append([scale, var, *grads])
    assert results[0][1][6] == 0.0  # the clamped term
    assert results[0][3][1, 2] == 0.0 and results[0][2][1, 2] == 0.0  # no gradient through the clamp
    assert results[0][3].abs().max() > 1e-3  # and gradients elsewhere
    for name, got, want in zip(["scale", "var", "means", "squares", "weight"], *results):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0, msg=lambda m, name=name: f"{name}: {m}")


def test_norm_scale_gradcheck():
    g = torch.Generator().manual_seed(8)
    means = (torch.randn(3, 2, generator=g, dtype=torch.float64)).requires_grad_()
    squares = (means.detach() ** 2 + torch.rand(3, 2, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    weight = torch.randn(6, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: logit_norm_scale(*a, 1e-5, torch.float64)[0], (means, squares, weight))
