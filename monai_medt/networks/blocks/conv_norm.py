# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""A convolution followed by a batch norm (and optionally a ReLU), folded into one convolution in eval mode."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monai_medt.networks.blocks.batch_norm import batch_norm
from monai_medt.networks.blocks.winograd import winograd_conv

__all__ = ["conv_norm", "folds_norms", "norm_affine"]


def folds_norms(x: torch.Tensor) -> bool:
    """
    Whether eval-mode batch norms that act on ``x``'s device are folded into the layer before them: on the CPU, where
    folding saves a pass over the output; not on accelerators, where the folding's half-dozen small ops per norm are
    each a kernel launch, against one for the norm itself, and an eager step of these networks is bound by launches.
    """
    return x.device.type == "cpu"


def norm_affine(norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """
    ``(scale, shift)`` per channel of a batch norm that uses its running statistics (eval mode), so that
    ``norm(x) == x * scale + shift``. The caller checks that the running statistics and affine parameters exist.

    Args:
        norm: a batch norm in eval mode with ``track_running_stats`` and ``affine``.

    Examples::

        >>> norm = nn.BatchNorm2d(4).eval()
        >>> scale, shift = norm_affine(norm)
        >>> scale.shape, shift.shape
        (torch.Size([4]), torch.Size([4]))
    """
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    return scale, norm.bias - norm.running_mean * scale


def conv_norm(
    conv: nn.Conv2d,
    norm: nn.BatchNorm2d,
    x: torch.Tensor,
    relu: bool = False,
    residual: torch.Tensor | None = None,
    output_kept: bool = False,
) -> torch.Tensor:
    """
    ``norm(conv(x))``, plus ``residual`` where given, followed by a ReLU where ``relu``. Where the norm uses its
    running statistics (eval mode) it is an affine map per channel, so on the CPU it is folded into the convolution's
    weight and bias: one pass over the output instead of two (see :func:`folds_norms`). The folded weights are computed
    on every call (a few thousand values), so they always follow the current parameters. In training, and on
    accelerators, the norm (with the residual and ReLU) runs as
    :func:`~monai_medt.networks.blocks.batch_norm.batch_norm`, after the convolution (in CPU training, wide 3x3
    convolutions on :func:`~monai_medt.networks.blocks.winograd.winograd_conv`).

    Args:
        conv: a 2D convolution (zero padding).
        norm: the batch norm of its output channels.
        x: the convolution's input.
        relu: apply a ReLU (in place) to the output.
        residual: a map of the output's shape added before the ReLU (a residual block's shortcut), or None.
        output_kept: the next layer saves the output for its backward (see
            :func:`~monai_medt.networks.blocks.batch_norm.batch_norm`).

    Examples::

        >>> conv, norm = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8).eval()
        >>> conv_norm(conv, norm, torch.rand(1, 3, 16, 16)).shape
        torch.Size([1, 8, 16, 16])
    """
    if (
        norm.training
        or any(t is None for t in (norm.running_mean, norm.running_var, norm.weight, norm.bias))
        or not folds_norms(x)
    ):
        return batch_norm(norm, winograd_conv(conv, x), relu, residual=residual, output_kept=output_kept)
    scale, shift = norm_affine(norm)
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    folded = conv.weight * scale.reshape(-1, 1, 1, 1)
    out = F.conv2d(x, folded, shift, conv.stride, conv.padding, conv.dilation, conv.groups)
    # in place: a fresh output whose producer's backward does not read it
    if residual is not None:
        out = out.add_(residual)
    return F.relu(out, inplace=True) if relu else out
