# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""
Training-mode batch norm, optionally followed by a ReLU, on the fused CPU kernel (``csrc/batch_norm_cpu.cpp``).

PyTorch's CPU batch norm of contiguous (N, C, H, W) maps computes the batch statistics with a Welford pass per channel
and is ~3x slower than its channels-last kernel; the ReLU after it costs another pass each way. Here the statistics
are one pass of float64 sums, normalisation and ReLU one pass, and the backward two (the ReLU's mask read from the
saved output). The axial attention's output norm also sums its two normalised terms per channel in the same pass, and
the axial block's last norm adds the shortcut before its ReLU.
The module's running statistics are updated as :class:`torch.nn.BatchNorm2d` updates them. Everywhere else (other
devices, dtypes or layouts, eval mode, autocast, tracing, compilation, no kernel) the module itself runs.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_medt.networks.blocks.cpu_kernel import cpu_kernel

__all__ = ["BatchNormFunction", "batch_norm", "update_running_stats"]


class BatchNormFunction(torch.autograd.Function):
    """
    Autograd function of the kernel's batch norm (+ term sum, + residual, + ReLU). ``residual`` is None or a map of the
    output's shape; ``running`` is None or the (running_mean, running_var, factor) that the kernel updates in place.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x, weight, bias, residual, eps: float, relu: bool, terms: int, running, from_output: bool
    ):
        empty = x.new_empty(0)
        running_mean, running_var, factor = (empty, empty, 0.0) if running is None else running
        weight, bias = weight.contiguous(), bias.contiguous()
        y, mean, invstd = cpu_kernel().batch_norm_forward(
            x, weight, bias, empty if residual is None else residual, eps, relu, terms, running_mean, running_var, factor
        )
        ctx.relu, ctx.terms, ctx.residual = relu, terms, residual is not None
        if from_output:
            # x_hat = (y - bias) / weight: the kernel's backward reads y as its input with bias as the mean and
            # 1 / weight as the inverse deviation, and weight^2 invstd as the weight (its factor weight * invstd)
            ctx.save_for_backward(y, None, bias, 1.0 / weight, weight * weight * invstd)
            return y
        # the ReLU's mask comes from the output, which the next layer keeps for its own backward anyway
        ctx.save_for_backward(x, y if relu else None, mean, invstd, weight)
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, y, mean, invstd, weight = ctx.saved_tensors
        y = x.new_empty(0) if y is None else y
        dy = dy.contiguous()
        residual_grad = ctx.residual and ctx.needs_input_grad[3]
        dx, dweight, dbias, dresidual = cpu_kernel().batch_norm_backward(
            dy, x, y, mean, invstd, weight.contiguous(), ctx.relu, ctx.terms, residual_grad
        )
        if residual_grad and not ctx.relu:
            dresidual = dy
        return dx, dweight, dbias, dresidual if residual_grad else None, None, None, None, None, None


def update_running_stats(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    num_batches_tracked: torch.Tensor,
    momentum: float | None,
    mean: torch.Tensor,
    var: torch.Tensor,
    count: int,
) -> None:
    """
    Update a batch norm's running statistics in place as :class:`torch.nn.BatchNorm2d` does after a training forward:
    a ``momentum`` of None is the cumulative average, and the running variance is unbiased. ``mean`` and ``var`` are
    the batch mean and biased variance over ``count`` values per channel (any dtype; not differentiated).
    """
    num_batches_tracked.add_(1)
    factor = 1.0 / float(num_batches_tracked.item()) if momentum is None else momentum
    unbiased = var.detach() * (count / max(count - 1, 1))
    # (1 - factor) running + factor batch, one op per buffer (each op is a kernel launch on accelerators)
    running_mean.lerp_(mean.detach().to(running_mean.dtype), factor)
    running_var.lerp_(unbiased.to(running_var.dtype), factor)


def _tracks(norm: nn.Module) -> bool:
    """Whether a training-mode ``norm`` updates running statistics (as :class:`torch.nn.BatchNorm2d` decides)."""
    return norm.track_running_stats and norm.running_mean is not None and norm.running_var is not None


# smallest |weight| the output-saving backward inverts: it runs with 1 / weight and weight^2, which overflow or
# underflow in float32 as a channel's weight decays (weight decay takes unused channels' weights through 1e-30 and
# into the denormals, where 1 / weight is inf and the gradients NaN); such channels contribute nothing anyway
_MIN_INVERTIBLE_WEIGHT = 1e-12


def _invertible(weight: torch.Tensor, bias: torch.Tensor) -> bool:
    """
    Whether ``(y - bias) / weight`` recovers a norm's normalised input from its float32 output ``y`` to within ~1e-5
    relative: the error is the output's rounding times ``1 + |bias / weight|``, so every ``|bias|`` must stay below
    100 ``|weight|``, and every ``|weight|`` at least ``_MIN_INVERTIBLE_WEIGHT`` (which also rules out a zero weight).
    """
    with torch.no_grad():
        size = weight.abs()
        return bool(((bias.abs() < 100.0 * size) & (size >= _MIN_INVERTIBLE_WEIGHT)).all())


def _fused(norm: nn.Module, x: torch.Tensor, residual: torch.Tensor | None) -> bool:
    """Whether the kernel runs ``norm`` on ``x`` (and adds ``residual``): see the module docstring."""
    if type(norm) is not nn.BatchNorm2d or not norm.training or norm.weight is None or norm.bias is None:
        return False
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4 or not x.is_contiguous():
        return False
    if residual is not None and (
        residual.device.type != "cpu" or residual.dtype != torch.float32 or not residual.is_contiguous()
    ):
        return False
    if norm.weight.dtype != torch.float32 or x.numel() <= x.shape[1]:  # one value per channel: the module's error
        return False
    if _tracks(norm) and (norm.running_mean.dtype != torch.float32 or norm.running_var.dtype != torch.float32):
        return False
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.is_autocast_enabled("cpu"):
        return False
    return cpu_kernel() is not None


def batch_norm(
    norm: nn.BatchNorm2d,
    x: torch.Tensor,
    relu: bool = False,
    terms: int = 1,
    term_scales: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    output_kept: bool = False,
) -> torch.Tensor:
    """
    ``norm(x)``, with each group of ``terms`` consecutive output channels summed (each term times its entry of
    ``term_scales`` where given), plus ``residual`` where given, followed by a ReLU where ``relu``; in training on the
    CPU, one fused kernel call.

    Args:
        norm: the batch norm.
        x: its input (N, C, H, W); C a multiple of ``terms``.
        relu: apply a ReLU to the output.
        terms: channels summed per output channel: the output is (N, C / terms, H, W).
        term_scales: (terms,) factors of the normalised terms before the sum, or None.
        residual: a map of the output's shape added before the ReLU (a residual block's shortcut), or None.
        output_kept: the layer after the norm saves the output for its own backward (the attention's projection). A
            plain norm (no ReLU, terms, scales or residual) on the kernel then saves the output instead of its input
            and recovers the normalised input as ``(y - bias) / weight``, so that only one of the two maps stays in
            memory until the backward pass; where a weight is too small for that, against its bias or at all (see
            :func:`_invertible`), it saves its input as usual.

    Examples::

        >>> norm = nn.BatchNorm2d(4).train()
        >>> batch_norm(norm, torch.randn(2, 4, 8, 8), relu=True).min() >= 0
        tensor(True)
        >>> batch_norm(norm, torch.randn(2, 4, 8, 8), terms=2).shape
        torch.Size([2, 2, 8, 8])
    """
    n, channels, h, w = x.shape
    if channels % terms != 0:
        raise ValueError(f"the channels ({channels}) must be a multiple of terms ({terms}).")
    if residual is not None and residual.shape != (n, channels // terms, h, w):
        raise ValueError(
            f"the residual's shape {tuple(residual.shape)} differs from the output's {(n, channels // terms, h, w)}."
        )
    if not _fused(norm, x, residual):
        y = norm(x)
        if terms > 1 or term_scales is not None:
            y = y.view(n, channels // terms, terms, h, w)
            if term_scales is not None:
                y = y * term_scales.view(1, 1, terms, 1, 1)
            y = y.sum(dim=2)
        if residual is not None:
            y = y + residual
        return F.relu(y, inplace=True) if relu else y
    weight, bias = norm.weight, norm.bias
    if term_scales is not None:  # scaling a normalised term is scaling its affine parameters
        factors = term_scales.to(weight.dtype).repeat(channels // terms)
        weight, bias = weight * factors, bias * factors
    running = None
    if _tracks(norm):
        norm.num_batches_tracked.add_(1)
        factor = 1.0 / float(norm.num_batches_tracked.item()) if norm.momentum is None else norm.momentum
        running = (norm.running_mean, norm.running_var, factor)
    from_output = (
        output_kept and not relu and terms == 1 and term_scales is None and residual is None and _invertible(weight, bias)
    )
    return BatchNormFunction.apply(x, weight, bias, residual, norm.eps, relu, terms, running, from_output)
