# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Additive-skip convolutional decoder of the MedT networks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers.factories import Conv

__all__ = ["AdditiveSkipDecoder", "upsample2x"]


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """
    Bilinear x2 upsampling of a (N, C, H, W) map with ``align_corners=False``, as ``F.interpolate`` computes it.

    Under ``torch.compile`` it takes :func:`_separable_upsample2x` instead, the same values from shifted copies of the
    map: PyTorch 2.13's inductor miscompiles the backward of bilinear upsampling on the CPU (in a whole MedT graph
    it returned all-zero gradients for 254 of 258 parameters; alone, a map one pixel wide fails to compile), and
    2.14.1 computes it right.

    Args:
        x: the map to upsample.

    Examples::

        >>> upsample2x(torch.rand(1, 4, 3, 5)).shape
        torch.Size([1, 4, 6, 10])
    """
    if torch.compiler.is_compiling():
        return _separable_upsample2x(x)
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def _separable_upsample2x(x: torch.Tensor) -> torch.Tensor:
    """
    :func:`upsample2x` as two linear x2 interpolations, along the height and then the width: output ``2k`` is
    ``0.25 x[k - 1] + 0.75 x[k]`` and output ``2k + 1`` is ``0.75 x[k] + 0.25 x[k + 1]``, with the edge values
    repeated beyond the map (where ``align_corners=False`` clamps its source positions). Only elementwise ops,
    concatenations and views, so the compiler differentiates it without bilinear upsampling's backward.
    """
    for dim in (2, 3):
        size = x.shape[dim]
        before = torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 0, size - 1)], dim)
        after = torch.cat([x.narrow(dim, 1, size - 1), x.narrow(dim, size - 1, 1)], dim)
        pairs = torch.stack([0.25 * before + 0.75 * x, 0.75 * x + 0.25 * after], dim + 1)
        x = pairs.flatten(dim, dim + 1)
    return x


class AdditiveSkipDecoder(nn.Module):
    """
    A chain of 3x3 convs (with bias), each followed by bilinear x2 upsampling and ReLU, then the addition of a skip
    feature map (skips are added, not concatenated). ``channels[i] -> channels[i + 1]`` is the i-th conv.
    With ``strided_first=True`` the first conv has stride 2, so the first skip has the resolution of the decoder input
    (the U-Nets add their deepest encoder output there).

    Args:
        channels: channel counts along the decoder, e.g. ``(256, 256, 128, 64, 32, 16)``.
        strided_first: whether the first conv has stride 2. Defaults to False.

    Examples::

        >>> dec = AdditiveSkipDecoder((64, 32, 16))
        >>> dec(torch.rand(1, 64, 32, 32), [torch.rand(1, 32, 64, 64)]).shape
        torch.Size([1, 16, 128, 128])
    """

    def __init__(self, channels: Sequence[int], strided_first: bool = False) -> None:
        super().__init__()
        if len(channels) < 2:
            raise ValueError(f"channels needs at least two entries, got {channels}.")
        conv = Conv[Conv.CONV, 2]
        self.convs = nn.ModuleList(
            [
                conv(c_in, c_out, kernel_size=3, stride=2 if (i == 0 and strided_first) else 1, padding=1)
                for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:]))
            ]
        )

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """Decode ``x``; ``skips[i]`` is added after the i-th conv (fewer skips than convs leave the last ones bare)."""
        for i, conv in enumerate(self.convs):
            y = conv(x)
            if y.device.type == "cpu":
                # PyTorch's CPU bilinear kernel runs several times faster on channels-last maps than on small NCHW maps
                # (there it takes a separable path with a temporary and a copy); eval maps are channels-last already
                y = y.contiguous(memory_format=torch.channels_last)
            x = F.relu(upsample2x(y), inplace=True)
            if i < len(skips):
                x = x + skips[i]
        return x
