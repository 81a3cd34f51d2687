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
"""Convolutional stem of the MedT networks."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Norm

from monai_medt.networks.blocks.checkpoint import checkpoint_module
from monai_medt.networks.blocks.conv_norm import conv_norm

__all__ = ["ConvStem"]


class ConvStem(nn.Module):
    """
    Three conv-BN-ReLU layers that halve the resolution: 7x7 stride-2 conv to ``out_channels``, 3x3 conv to
    ``hidden_channels``, 3x3 conv back to ``out_channels`` (all without bias). There is no max-pool.

    Args:
        in_channels: number of input channels.
        out_channels: number of output channels (8 in the global branches, 64 in MedT's local branch).
        hidden_channels: channels of the middle conv. Defaults to 128.
        use_checkpoint: in training, recompute the layers' activations in the backward pass instead of storing them
            (activation checkpointing; the running statistics are still updated once per step). Defaults to False.

    Examples::

        >>> ConvStem(3, 8)(torch.rand(1, 3, 128, 128)).shape
        torch.Size([1, 8, 64, 64])
    """

    def __init__(
        self, in_channels: int, out_channels: int, hidden_channels: int = 128, use_checkpoint: bool = False
    ) -> None:
        super().__init__()
        self.use_checkpoint = use_checkpoint
        conv = Conv[Conv.CONV, 2]
        norm = Norm[Norm.BATCH, 2]
        self.conv1 = conv(in_channels, out_channels, kernel_size=7, stride=2, padding=3, bias=False)
        self.norm1 = norm(out_channels)
        self.conv2 = conv(out_channels, hidden_channels, kernel_size=3, padding=1, bias=False)
        self.norm2 = norm(hidden_channels)
        self.conv3 = conv(hidden_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm3 = norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return self._checkpointed(x)
        if x.device.type != "cpu" or torch.is_grad_enabled():
            return self.layers(x)
        # inference on the CPU: oneDNN runs these convs' forward on channels-last tensors without reordering them into
        # its blocked layout and back (MedT's local 64->128->64 convs ~25 % faster); their backward gains nothing, so
        # training keeps the layout. The output stays channels-last: the layers after it keep that layout (the
        # attention kernel reads and writes through strides; 1x1 and 3x3 convs run faster on it).
        return self.layers(x.contiguous(memory_format=torch.channels_last))

    @torch.jit.unused
    def _checkpointed(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint_module(self.layers, self, x)

    def layers(self, x: torch.Tensor) -> torch.Tensor:
        """The three conv-BN-ReLU layers, in the memory format of ``x``."""
        # ReLUs in place here and in the blocks and decoders: their inputs are fresh outputs whose producers' backward
        # does not read them, and every new activation-sized buffer costs page faults with glibc's default malloc
        if not torch.jit.is_scripting():
            return self._folded_layers(x)
        x = F.relu(self.norm1(self.conv1(x)), inplace=True)
        x = F.relu(self.norm2(self.conv2(x)), inplace=True)
        return F.relu(self.norm3(self.conv3(x)), inplace=True)

    @torch.jit.unused
    def _folded_layers(self, x: torch.Tensor) -> torch.Tensor:
        # eager: in eval mode each batch norm is folded into its conv, in training norm and ReLU are one fused call on
        # the CPU (TorchScript cannot pass modules to a function)
        x = conv_norm(self.conv1, self.norm1, x, relu=True)
        x = conv_norm(self.conv2, self.norm2, x, relu=True)
        return conv_norm(self.conv3, self.norm3, x, relu=True)
