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
"""Axial-attention bottleneck block and stage builder (MedT / Axial-DeepLab)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Norm
from monai.utils import ensure_tuple_rep, look_up_option

from monai_medt.networks.blocks.axial_attention import AxialAttention, AxialAttentionNoPos
from monai_medt.networks.blocks.checkpoint import checkpoint_module
from monai_medt.networks.blocks.conv_norm import conv_norm
from monai_medt.networks.blocks.stem import ConvStem

__all__ = ["AxialBlock", "ATTENTION_TYPES", "make_axial_stage", "set_checkpointing"]

# "gated": relative positions + gates (MedT global branch); "axial": relative positions, no gates;
# "nopos": no positional terms, no gates (MedT local branch)
ATTENTION_TYPES = ("gated", "axial", "nopos")


class AxialBlock(nn.Module):
    """
    Bottleneck block with axial attention: 1x1 conv to ``width`` channels, BN, ReLU, height attention, width attention
    (average-pooled by ``stride``), ReLU, 1x1 conv to ``out_channels``, BN, residual add, ReLU. The shortcut is a strided
    1x1 conv + BN when the stride or the channel count changes.

    Args:
        in_channels: number of input channels.
        out_channels: number of output channels (twice ``width`` in MedT).
        width: bottleneck (attention) channels; a multiple of ``2 * num_heads``.
        spatial_size: (H, W) of the block's input; sets the relative tables of the positional attentions.
        num_heads: number of attention heads. Defaults to 8.
        stride: 1, or 2 to halve the resolution. Defaults to 1.
        attention: ``"gated"``, ``"axial"`` or ``"nopos"``. Defaults to ``"gated"``.
        gate_position: ``"before_norm"`` (official code) or ``"after_norm"`` (paper); only for ``"gated"``.
            Defaults to ``"before_norm"``.
        learnable_gates: whether gates get gradients from the start; only for ``"gated"``. Defaults to False.
        use_checkpoint: in training, recompute the block's activations in the backward pass instead of storing them
            (activation checkpointing; the running statistics are still updated once per step). Defaults to False.

    Examples::

        >>> block = AxialBlock(8, 32, width=16, spatial_size=(64, 64))
        >>> block(torch.rand(2, 8, 64, 64)).shape
        torch.Size([2, 32, 64, 64])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        width: int,
        spatial_size: Sequence[int] | int,
        num_heads: int = 8,
        stride: int = 1,
        attention: str = "gated",
        gate_position: str = "before_norm",
        learnable_gates: bool = False,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.use_checkpoint = use_checkpoint
        attention = look_up_option(attention, ATTENTION_TYPES)
        size_h, size_w = ensure_tuple_rep(spatial_size, 2)
        conv = Conv[Conv.CONV, 2]
        norm = Norm[Norm.BATCH, 2]
        self.conv_in = conv(in_channels, width, kernel_size=1, bias=False)
        self.norm_in = norm(width)
        self.attn_h: nn.Module
        self.attn_w: nn.Module
        if attention == "nopos":
            self.attn_h = AxialAttentionNoPos(width, width, num_heads=num_heads, axis="height")
            self.attn_w = AxialAttentionNoPos(
                width, width, num_heads=num_heads, axis="width", stride=stride, output_relu=True
            )
        else:
            gated = attention == "gated"
            self.attn_h = AxialAttention(
                width,
                width,
                kernel_size=size_h,
                num_heads=num_heads,
                axis="height",
                gated=gated,
                gate_position=gate_position,
                learnable_gates=learnable_gates,
            )
            self.attn_w = AxialAttention(
                width,
                width,
                kernel_size=size_w,
                num_heads=num_heads,
                axis="width",
                stride=stride,
                output_relu=True,
                gated=gated,
                gate_position=gate_position,
                learnable_gates=learnable_gates,
            )
        self.conv_out = conv(width, out_channels, kernel_size=1, bias=False)
        self.norm_out = norm(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                conv(in_channels, out_channels, kernel_size=1, stride=stride, bias=False), norm(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and self.training and not torch.jit.is_scripting():
            return self._checkpointed(x)
        return self._forward(x)

    @torch.jit.unused
    def _checkpointed(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self._forward(x)
        return checkpoint_module(self._forward, self, x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            return self._folded_forward(x)
        out = F.relu(self.norm_in(self.conv_in(x)), inplace=True)
        out = self.attn_w(self.attn_h(out))  # its output ReLU included
        out = self.norm_out(self.conv_out(out))
        return F.relu(out + self.shortcut(x), inplace=True)

    @torch.jit.unused
    def _folded_forward(self, x: torch.Tensor) -> torch.Tensor:
        # eager: in eval mode the 1x1 convs' batch norms are folded into them, in training the norms run fused on the
        # CPU with the ReLUs, the residual addition and the width attention's ReLU in their passes (TorchScript cannot
        # pass modules to a function)
        out = conv_norm(self.conv_in, self.norm_in, x, relu=True)
        out = self.attn_w(self.attn_h(out))
        shortcut = x
        if isinstance(self.shortcut, nn.Sequential):
            shortcut = conv_norm(self.shortcut[0], self.shortcut[1], x)
        return conv_norm(self.conv_out, self.norm_out, out, relu=True, residual=shortcut)


def make_axial_stage(
    in_channels: int,
    out_channels: int,
    depth: int,
    spatial_size: Sequence[int],
    num_heads: int,
    stride: int,
    attention: str,
    gate_position: str = "before_norm",
    learnable_gates: bool = False,
) -> nn.Sequential:
    """
    Build ``depth`` :class:`AxialBlock` s; the first one applies ``stride``, the others see the reduced size.
    The bottleneck width is ``out_channels // 2`` (expansion 2, as in MedT).

    Args:
        in_channels: channels entering the stage.
        out_channels: channels leaving the stage.
        depth: number of blocks (>= 1).
        spatial_size: (H, W) entering the stage.
        num_heads: attention heads.
        stride: 1 or 2 for the first block.
        attention: ``"gated"``, ``"axial"`` or ``"nopos"``.
        gate_position: gate placement for gated blocks.
        learnable_gates: whether gates get gradients from the start.
    """
    if depth < 1:
        raise ValueError(f"every stage needs at least one block, got depth {depth}.")
    size = tuple(int(s) for s in spatial_size)
    blocks = []
    for i in range(depth):
        blocks.append(
            AxialBlock(
                in_channels if i == 0 else out_channels,
                out_channels,
                width=out_channels // 2,
                spatial_size=size,
                num_heads=num_heads,
                stride=stride if i == 0 else 1,
                attention=attention,
                gate_position=gate_position,
                learnable_gates=learnable_gates,
            )
        )
        if i == 0:
            size = (size[0] // stride, size[1] // stride)
    return nn.Sequential(*blocks)


def set_checkpointing(network: nn.Module, enabled: bool) -> int:
    """
    Switch activation checkpointing of every :class:`AxialBlock` and :class:`~monai_medt.networks.blocks.ConvStem` in
    ``network``; returns the number of modules switched.
    """
    modules = [m for m in network.modules() if isinstance(m, (AxialBlock, ConvStem))]
    for module in modules:
        module.use_checkpoint = enabled
    return len(modules)
