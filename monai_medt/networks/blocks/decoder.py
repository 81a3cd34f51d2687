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

__all__ = ["AdditiveSkipDecoder"]


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
            x = F.relu(F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False), inplace=True)
            if i < len(skips):
                x = x + skips[i]
        return x
