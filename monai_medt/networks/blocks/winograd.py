# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""
3x3 convolutions of CPU training as Winograd F(4x4, 3x3) (Lavin and Gray, 2016): each 4x4 output block of a 6x6 input
tile is ``A^T [(G w G^T) * (B^T d B)] A``, 36 products per input and output channel pair instead of 144
multiply-adds; summed over input channels, the 36 products are 36 matrix products (``torch.bmm``), and the kernel's
transforms (``csrc/winograd_conv_cpu.cpp``) move the maps into and out of that layout. The backward runs the adjoint
transforms: ``d(input)`` from ``U^T d(M)``, ``d(weight)`` from ``d(M) V^T``.

MedT's local stem (3x3 convolutions 64 -> 128 -> 64 on 16x16 maps) is where oneDNN spent most of a CPU training step's
convolution time. Inference keeps oneDNN's direct convolution with the batch norm folded into it: the reference logits
are checked against that path, and float32 Winograd rounds outputs and input gradients 7-20x more coarsely (the
transforms' coefficients reach 8): ~5e-6 of their scale instead of 1e-6 or less on the local stem's shapes.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

from monai_medt.networks.blocks.cpu_kernel import cpu_kernel

__all__ = ["MIN_CHANNELS", "WinogradConv3x3Function", "winograd_applies", "winograd_conv"]

# narrower convolutions (the global stems' 8 <-> 128) make thin matrix products that gain nothing over oneDNN
MIN_CHANNELS = 32
# tiles per chunk, so that a chunk's transformed input and products stay in the cache between the transforms and the
# products (MedT's local stem: 4 of its 16x16 maps; in a training step on a 2-core Zen 3, 2026-12-02, one profile of
# five steps each, chunks of 2, 4, 8, 16 and 64 maps took 16.0, 14.9-16.6, 19.0, 17.5 and 21.1 ms per forward call
# and 35.8, 30.1-32.6, 40.2, 36.9 and 37.5 ms per backward call)
_CHUNK_TILES = 64

# the weight transform G (6x3) for the interpolation points 0, 1, -1, 2, -2 and infinity, as kron(G, G): (36, 9)
_G = torch.tensor(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    dtype=torch.float64,
)
_KRON_G = torch.kron(_G, _G).float()


def _chunks(x: torch.Tensor, out_channels: int) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """
    For each chunk of ``x``'s maps (``_CHUNK_TILES`` tiles, at least one map): the maps' slice and (36, C, tiles) and
    (36, O, tiles) views of two scratch buffers that all chunks share.
    """
    n, c, h, w = x.shape
    tiles = (h // 4) * (w // 4)
    step = max(1, _CHUNK_TILES // tiles)
    inputs, products = x.new_empty(36 * c * step * tiles), x.new_empty(36 * out_channels * step * tiles)
    for n0 in range(0, n, step):
        count = (min(n, n0 + step) - n0) * tiles
        points = inputs[: 36 * c * count].view(36, c, count)
        yield slice(n0, n0 + step), points, products[: 36 * out_channels * count].view(36, out_channels, count)


class WinogradConv3x3Function(torch.autograd.Function):
    """
    Autograd function of a bias-free 3x3 convolution with stride 1 and zero padding 1 of a contiguous float32
    (N, C, H, W) CPU map, H and W multiples of 4, on the Winograd transforms. It saves the input (which the layer before
    keeps anyway) and the transformed weight; the input's transform is recomputed in the backward.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        kernel = cpu_kernel()
        o, c = weight.shape[:2]
        u = (_KRON_G @ weight.reshape(o * c, 9).t()).view(36, o, c)
        y = x.new_empty(x.shape[0], o, x.shape[2], x.shape[3])
        for maps, v, m in _chunks(x, o):
            kernel.winograd_input(x[maps], v)
            torch.bmm(u, v, out=m)
            kernel.winograd_output(m, y[maps])
        ctx.save_for_backward(x, u)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # type: ignore[override]
        kernel = cpu_kernel()
        x, u = ctx.saved_tensors
        dy = dy.contiguous()
        o, c = u.shape[1:]
        dx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        du = x.new_zeros(36, o, c) if ctx.needs_input_grad[1] else None
        for maps, v, dm in _chunks(x, o):
            kernel.winograd_output_adjoint(dy[maps], dm)
            if dx is not None:
                kernel.winograd_input_adjoint(torch.bmm(u.transpose(1, 2), dm, out=v), dx[maps])
            if du is not None:
                kernel.winograd_input(x[maps], v)
                du.baddbmm_(dm, v.transpose(1, 2))
        dweight = None if du is None else (_KRON_G.t() @ du.view(36, o * c)).t().reshape(o, c, 3, 3)
        return dx, dweight


def winograd_applies(conv: nn.Module, x: torch.Tensor) -> bool:
    """
    Whether :func:`winograd_conv` runs ``conv`` on ``x`` on the Winograd transforms: a bias-free ``nn.Conv2d`` with a
    3x3 kernel, stride 1, zero padding 1, no dilation or groups, at least :data:`MIN_CHANNELS` input and output
    channels; ``x`` a contiguous float32 CPU map whose height and width are multiples of 4; autograd on (training);
    no tracing, compilation or autocast; and the CPU kernel built.
    """
    if type(conv) is not nn.Conv2d or conv.bias is not None or conv.padding_mode != "zeros":
        return False
    if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1) or conv.dilation != (1, 1):
        return False
    if conv.groups != 1 or min(conv.in_channels, conv.out_channels) < MIN_CHANNELS:
        return False
    if x.device.type != "cpu" or x.dtype != torch.float32 or conv.weight.dtype != torch.float32 or x.dim() != 4:
        return False
    if x.shape[2] % 4 or x.shape[3] % 4 or not x.is_contiguous() or not torch.is_grad_enabled():
        return False
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.is_autocast_enabled("cpu"):
        return False
    return cpu_kernel() is not None


def winograd_conv(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """
    ``conv(x)``; in CPU training, where :func:`winograd_applies`, on the Winograd transforms (same values to float32
    rounding: ~5e-6 of the output's scale).

    Args:
        conv: a 2D convolution.
        x: its input.

    Examples::

        >>> conv = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        >>> winograd_conv(conv, torch.rand(2, 32, 8, 8)).shape
        torch.Size([2, 32, 8, 8])
    """
    if winograd_applies(conv, x):
        return WinogradConv3x3Function.apply(x, conv.weight)
    return conv(x)
