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

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv, Dropout
from monai.utils import ensure_tuple_rep

from monai_medt.networks.blocks.axial_block import make_axial_stage, set_checkpointing
from monai_medt.networks.blocks.decoder import AdditiveSkipDecoder
from monai_medt.networks.blocks.stem import ConvStem
from monai_medt.networks.utils import check_input, check_network_args, plain_input

__all__ = ["AxialUNet", "GatedAxialUNet"]


class AxialUNet(nn.Module):
    """
    Axial-attention U-Net of MedT (the "axial U-Net" and, with ``gated=True``, the "gated axial U-Net" baselines),
    based on: "Valanarasu et al., Medical Transformer: Gated Axial-Attention for Medical Image Segmentation
    <https://arxiv.org/abs/2102.10662>", MICCAI 2021.

    A stride-2 conv stem, four stages of axial-attention bottleneck blocks (strides 1, 2, 2, 2), and a decoder of five
    3x3 convs with bilinear upsampling whose skips are added. With the defaults it computes exactly the official
    ``axialunet`` / ``gated`` models (use :func:`monai_medt.networks.load_official` to port their weights).

    Spatial Shape Constraints:
        The attention is global along each axis and its relative-position tables are sized from ``img_size``, so the
        network accepts only inputs of exactly ``img_size``. Each side must be divisible by
        ``2 ** (len(depths) + 1)`` (32 with the defaults). Use a sliding-window inferer for larger images.

    Args:
        in_channels: number of input channels.
        out_channels: number of output channels (classes); the network returns logits.
        img_size: input size, an int or (H, W). Defaults to 128.
        channels: output channels of each stage; the attention width is half of it. Defaults to (32, 64, 128, 256).
        depths: blocks per stage. Defaults to (1, 2, 4, 1).
        num_heads: attention heads in every layer. Defaults to 8.
        stem_channels: output channels of the conv stem. Defaults to 8.
        stem_hidden_channels: channels of the stem's middle conv. Defaults to 128.
        head_channels: channels of the last decoder conv, before the 1x1 output conv. Defaults to 16.
        gated: use gated axial attention. Defaults to False.
        gate_position: ``"before_norm"`` (official code) or ``"after_norm"`` (paper). Defaults to ``"before_norm"``.
        learnable_gates: whether gates receive gradients from the first step. The official recipe freezes them for 10
            epochs (:func:`monai_medt.networks.set_gates_trainable`). Defaults to False.
        dropout: dropout rate before the output conv (0 disables it). Defaults to 0.0.
        use_checkpoint: recompute the activations of each axial block and conv stem in the backward pass instead of
            storing them (activation checkpointing, for large inputs or little memory; the running statistics are
            still updated once per step). Defaults to False.

    Raises:
        ValueError: when an argument is out of range or the sizes do not divide.

    Examples::

        # the official axial U-Net for 128x128 RGB images and 2 classes
        >>> net = AxialUNet(in_channels=3, out_channels=2, img_size=128)

        # gated, grayscale, 4 classes, 256x192 inputs
        >>> net = GatedAxialUNet(in_channels=1, out_channels=4, img_size=(256, 192))
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        img_size: Sequence[int] | int = 128,
        channels: Sequence[int] = (32, 64, 128, 256),
        depths: Sequence[int] = (1, 2, 4, 1),
        num_heads: int = 8,
        stem_channels: int = 8,
        stem_hidden_channels: int = 128,
        head_channels: int = 16,
        gated: bool = False,
        gate_position: str = "before_norm",
        learnable_gates: bool = False,
        dropout: float = 0.0,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        size = ensure_tuple_rep(img_size, 2)
        check_network_args(in_channels, out_channels, size, channels, depths, num_heads, dropout)
        stride = 2 ** (len(depths) + 1)
        if size[0] % stride != 0 or size[1] % stride != 0:
            raise ValueError(
                f"img_size {tuple(size)} must be divisible by the network's total stride {stride} "
                f"(stem 2 x {len(depths) - 1} strided stages x strided bottom conv)."
            )
        self.in_channels = in_channels
        self.img_size = [int(s) for s in size]
        self.stem = ConvStem(in_channels, stem_channels, stem_hidden_channels)
        stages = []
        c_in, spatial = stem_channels, (size[0] // 2, size[1] // 2)
        for i, (c_out, depth) in enumerate(zip(channels, depths)):
            stage_stride = 1 if i == 0 else 2
            stages.append(
                make_axial_stage(
                    c_in,
                    c_out,
                    depth,
                    spatial,
                    num_heads,
                    stage_stride,
                    attention="gated" if gated else "axial",
                    gate_position=gate_position,
                    learnable_gates=learnable_gates,
                )
            )
            c_in, spatial = c_out, (spatial[0] // stage_stride, spatial[1] // stage_stride)
        self.stages = nn.ModuleList(stages)
        self.decoder = AdditiveSkipDecoder(
            [channels[-1], *reversed(list(channels)), head_channels], strided_first=True
        )
        self.dropout = Dropout[Dropout.DROPOUT, 1](dropout)
        self.head = Conv[Conv.CONV, 2](head_channels, out_channels, kernel_size=1)
        set_checkpointing(self, use_checkpoint)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, self.img_size, "AxialUNet")
        x = plain_input(x)
        x = self.stem(x)
        features: list[torch.Tensor] = []
        for stage in self.stages:
            x = stage(x)
            features.insert(0, x)
        x = self.decoder(x, features)
        # CPU inference runs channels-last after the stem; callers get the usual contiguous logits
        return self.head(self.dropout(x)).contiguous()


class GatedAxialUNet(AxialUNet):
    """
    Gated axial-attention U-Net of MedT: :class:`AxialUNet` with ``gated=True``
    (official factory ``gated``, model name ``gatedaxialunet``).

    Args:
        in_channels: number of input channels.
        out_channels: number of output channels (classes).
        img_size: input size, an int or (H, W); each side divisible by ``2 ** (len(depths) + 1)``. Defaults to 128.
        channels: output channels of each stage. Defaults to (32, 64, 128, 256).
        depths: blocks per stage. Defaults to (1, 2, 4, 1).
        num_heads: attention heads. Defaults to 8.
        stem_channels: output channels of the conv stem. Defaults to 8.
        stem_hidden_channels: channels of the stem's middle conv. Defaults to 128.
        head_channels: channels before the output conv. Defaults to 16.
        gate_position: ``"before_norm"`` (official code) or ``"after_norm"`` (paper). Defaults to ``"before_norm"``.
        learnable_gates: whether gates receive gradients from the first step. Defaults to False.
        dropout: dropout rate before the output conv. Defaults to 0.0.
        use_checkpoint: activation checkpointing of the axial blocks and conv stems in training. Defaults to False.

    Examples::

        >>> net = GatedAxialUNet(in_channels=3, out_channels=2, img_size=128)
        >>> net(torch.rand(1, 3, 128, 128)).shape
        torch.Size([1, 2, 128, 128])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        img_size: Sequence[int] | int = 128,
        channels: Sequence[int] = (32, 64, 128, 256),
        depths: Sequence[int] = (1, 2, 4, 1),
        num_heads: int = 8,
        stem_channels: int = 8,
        stem_hidden_channels: int = 128,
        head_channels: int = 16,
        gate_position: str = "before_norm",
        learnable_gates: bool = False,
        dropout: float = 0.0,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            img_size=img_size,
            channels=channels,
            depths=depths,
            num_heads=num_heads,
            stem_channels=stem_channels,
            stem_hidden_channels=stem_hidden_channels,
            head_channels=head_channels,
            gated=True,
            gate_position=gate_position,
            learnable_gates=learnable_gates,
            dropout=dropout,
            use_checkpoint=use_checkpoint,
        )
