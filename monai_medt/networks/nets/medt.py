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
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Dropout
from monai.utils import ensure_tuple_rep, look_up_option

from monai_medt.networks.blocks.axial_block import ATTENTION_TYPES, make_axial_stage, set_checkpointing
from monai_medt.networks.blocks.decoder import AdditiveSkipDecoder
from monai_medt.networks.blocks.stem import ConvStem
from monai_medt.networks.utils import check_input, check_network_args, plain_input

__all__ = ["MedT", "LoGo", "MAX_DERIVED_GRID"]

# the paper cuts the image into 4 x 4 tiles
MAX_DERIVED_GRID = 4


class MedT(nn.Module):
    """
    Medical Transformer (Local-Global network with gated axial attention), based on: "Valanarasu et al., Medical
    Transformer: Gated Axial-Attention for Medical Image Segmentation <https://arxiv.org/abs/2102.10662>", MICCAI 2021.

    Two branches whose 16-channel maps are added:

    - global: conv stem on the whole image, the first ``global_stages`` stages of gated axial-attention blocks and an
      additive-skip decoder;
    - local: the image cut into a ``patch_grid`` of non-overlapping tiles, all tiles in one batched pass through a
      64-wide conv stem, all stages of axial-attention blocks without positional terms, and a five-conv decoder.

    The sum goes through a 3x3 conv + ReLU (``fusion_conv``) and a 1x1 output conv. With the defaults it computes
    exactly the official ``MedT`` model (use :func:`monai_medt.networks.load_official` to port weights). In training
    mode batch-norm statistics of the local branch are taken over all tiles at once (the official code loops over the
    tiles and normalises each on its own); in eval mode the two are identical.

    Spatial Shape Constraints:
        Inputs must be exactly ``img_size``. Each side of ``img_size`` must be divisible by ``2 ** global_stages``, and
        the tile size ``img_size // patch_grid`` by ``2 ** (len(depths) + 1)`` (32 with the defaults): 128 and 256
        work with ``patch_grid=4``, 64 with ``patch_grid=2``.

    Args:
        in_channels: number of input channels.
        out_channels: number of output channels (classes); the network returns logits.
        img_size: input size, an int or (H, W). Defaults to 128.
        patch_grid: tiles per side of the local branch, an int or (rows, cols). Defaults to None: per side, the largest
            grid up to 4 (the paper's 4x4) whose tiles are multiples of ``2 ** (len(depths) + 1)`` px (4 at 128 and
            256, 2 at 64).
        channels: output channels of each local stage; the global branch uses the first ``global_stages``.
            Defaults to (32, 64, 128, 256).
        depths: blocks per local stage; the global branch uses the first ``global_stages``. Defaults to (1, 2, 4, 1).
        global_stages: number of encoder stages of the global branch. Defaults to 2.
        num_heads: attention heads in every layer. Defaults to 8.
        stem_channels: output channels of the global stem. Defaults to 8.
        local_stem_channels: output channels of the local stem (64 in the official code). Defaults to 64.
        stem_hidden_channels: channels of the stems' middle convs. Defaults to 128.
        head_channels: channels of both branch outputs and of the fusion conv. Defaults to 16.
        global_attention: attention of the global branch, ``"gated"``, ``"axial"`` or ``"nopos"``. Defaults to
            ``"gated"``.
        local_attention: attention of the local branch. Defaults to ``"nopos"``.
        gate_position: ``"before_norm"`` (official code) or ``"after_norm"`` (paper). Defaults to ``"before_norm"``.
        learnable_gates: whether gates receive gradients from the first step. The official recipe freezes them for 10
            epochs (:func:`monai_medt.networks.set_gates_trainable`). Defaults to False.
        fusion_conv: apply the official 3x3 conv + ReLU after adding the branches; False gives the paper's
            "add, then 1x1 conv". Defaults to True.
        dropout: dropout rate before the output conv (0 disables it). Defaults to 0.0.
        use_checkpoint: recompute the activations of each axial block and conv stem in the backward pass instead of
            storing them (activation checkpointing, for large inputs or little memory; the running statistics are
            still updated once per step). Defaults to False.

    Raises:
        ValueError: when an argument is out of range or the sizes do not divide.

    Examples::

        # the official MedT for 128x128 RGB images and 2 classes
        >>> net = MedT(in_channels=3, out_channels=2, img_size=128)
        >>> net(torch.rand(1, 3, 128, 128)).shape
        torch.Size([1, 2, 128, 128])

        # grayscale CT slices, 3 classes, 64x64 inputs (2x2 tiles of 32 px), paper-style gates
        >>> net = MedT(1, 3, img_size=64, gate_position="after_norm", learnable_gates=True)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        img_size: Sequence[int] | int = 128,
        patch_grid: Sequence[int] | int | None = None,
        channels: Sequence[int] = (32, 64, 128, 256),
        depths: Sequence[int] = (1, 2, 4, 1),
        global_stages: int = 2,
        num_heads: int = 8,
        stem_channels: int = 8,
        local_stem_channels: int = 64,
        stem_hidden_channels: int = 128,
        head_channels: int = 16,
        global_attention: str = "gated",
        local_attention: str = "nopos",
        gate_position: str = "before_norm",
        learnable_gates: bool = False,
        fusion_conv: bool = True,
        dropout: float = 0.0,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        size = ensure_tuple_rep(img_size, 2)
        check_network_args(in_channels, out_channels, size, channels, depths, num_heads, dropout)
        local_stride = 2 ** (len(depths) + 1)
        if patch_grid is None:
            # the paper's 4x4 grid where the sizes allow it, else the largest grid (<= 4) whose tiles fit the stride
            grid = tuple(
                max([g for g in range(1, MAX_DERIVED_GRID + 1) if int(s) % (g * local_stride) == 0] or [1])
                for s in size
            )
        else:
            grid = ensure_tuple_rep(patch_grid, 2)
        look_up_option(global_attention, ATTENTION_TYPES)
        look_up_option(local_attention, ATTENTION_TYPES)
        if not 1 <= global_stages <= len(depths):
            raise ValueError(f"global_stages must be in [1, {len(depths)}] (len(depths)), got {global_stages}.")
        if any(g < 1 for g in grid):
            raise ValueError(f"patch_grid must be positive, got {tuple(grid)}.")
        global_stride = 2**global_stages
        if size[0] % global_stride != 0 or size[1] % global_stride != 0:
            raise ValueError(
                f"img_size {tuple(size)} must be divisible by the global branch's stride {global_stride}."
            )
        if size[0] % (grid[0] * local_stride) != 0 or size[1] % (grid[1] * local_stride) != 0:
            raise ValueError(
                f"img_size {tuple(size)} with patch_grid {tuple(grid)} gives tiles of "
                f"{size[0] / grid[0]:g}x{size[1] / grid[1]:g} px, but tiles must be divisible by the local branch's "
                f"stride {local_stride}: choose patch_grid so that img_size // patch_grid is a multiple of "
                f"{local_stride}."
            )
        self.in_channels = in_channels
        self.img_size = [int(s) for s in size]
        self.grid = [int(g) for g in grid]
        self.tile = [self.img_size[0] // self.grid[0], self.img_size[1] // self.grid[1]]

        self.global_stem = ConvStem(in_channels, stem_channels, stem_hidden_channels)
        self.global_stages = self._make_stages(
            stem_channels,
            channels[:global_stages],
            depths[:global_stages],
            (size[0] // 2, size[1] // 2),
            num_heads,
            global_attention,
            gate_position,
            learnable_gates,
        )
        self.global_decoder = AdditiveSkipDecoder([*reversed(list(channels[:global_stages])), head_channels])

        self.local_stem = ConvStem(in_channels, local_stem_channels, stem_hidden_channels)
        self.local_stages = self._make_stages(
            local_stem_channels,
            channels,
            depths,
            (self.tile[0] // 2, self.tile[1] // 2),
            num_heads,
            local_attention,
            gate_position,
            learnable_gates,
        )
        self.local_decoder = AdditiveSkipDecoder([channels[-1], *reversed(list(channels)), head_channels], True)

        conv = Conv[Conv.CONV, 2]
        self.fusion: nn.Module = (
            conv(head_channels, head_channels, kernel_size=3, padding=1) if fusion_conv else nn.Identity()
        )
        self.dropout = Dropout[Dropout.DROPOUT, 1](dropout)
        self.head = conv(head_channels, out_channels, kernel_size=1)
        set_checkpointing(self, use_checkpoint)

    @staticmethod
    def _make_stages(
        in_channels: int,
        channels: Sequence[int],
        depths: Sequence[int],
        spatial: tuple[int, int],
        num_heads: int,
        attention: str,
        gate_position: str,
        learnable_gates: bool,
    ) -> nn.ModuleList:
        stages = []
        for i, (c_out, depth) in enumerate(zip(channels, depths)):
            stride = 1 if i == 0 else 2
            stages.append(
                make_axial_stage(
                    in_channels, c_out, depth, spatial, num_heads, stride, attention, gate_position, learnable_gates
                )
            )
            in_channels, spatial = c_out, (spatial[0] // stride, spatial[1] // stride)
        return nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, self.img_size, "MedT")
        x = plain_input(x)
        b, c, h, w = x.shape
        gh, gw = self.grid[0], self.grid[1]
        th, tw = self.tile[0], self.tile[1]

        y = self.global_stem(x)
        features: list[torch.Tensor] = []
        for stage in self.global_stages:
            y = stage(y)
            features.insert(0, y)
        y_global = self.global_decoder(y, features[1:])

        # all tiles of all images form one batch: (B * gh * gw, C, th, tw), row-major tile order
        tiles = x.view(b, c, gh, th, gw, tw).permute(0, 2, 4, 1, 3, 5).reshape(b * gh * gw, c, th, tw)
        y = self.local_stem(tiles)
        features = []
        for stage in self.local_stages:
            y = stage(y)
            features.insert(0, y)
        y = self.local_decoder(y, features)
        oc = y.shape[1]
        y_local = y.view(b, gh, gw, oc, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(b, oc, h, w)

        y = F.relu(self.fusion(y_global + y_local), inplace=True)
        # CPU inference runs channels-last after the stems; callers get the usual contiguous logits
        return self.head(self.dropout(y)).contiguous()


class LoGo(MedT):
    """
    Local-Global network without gates (the "LoGo" ablation of MedT, official factory ``logo``): both branches use
    axial attention with relative positions and no gates. See :class:`MedT` for the layout and the size constraints.

    Args:
        in_channels: number of input channels.
        out_channels: number of output channels (classes).
        img_size: input size, an int or (H, W). Defaults to 128.
        patch_grid: tiles per side of the local branch. Defaults to None (derived from ``img_size`` as in MedT).
        channels: output channels of each local stage. Defaults to (32, 64, 128, 256).
        depths: blocks per local stage. Defaults to (1, 2, 4, 1).
        global_stages: encoder stages of the global branch. Defaults to 2.
        num_heads: attention heads. Defaults to 8.
        stem_channels: output channels of the global stem. Defaults to 8.
        local_stem_channels: output channels of the local stem. Defaults to 64.
        stem_hidden_channels: channels of the stems' middle convs. Defaults to 128.
        head_channels: channels of the branch outputs and fusion conv. Defaults to 16.
        fusion_conv: apply the 3x3 conv + ReLU after adding the branches. Defaults to True.
        dropout: dropout rate before the output conv. Defaults to 0.0.
        use_checkpoint: activation checkpointing of the axial blocks and conv stems in training. Defaults to False.

    Examples::

        >>> net = LoGo(in_channels=3, out_channels=2, img_size=128)
        >>> net(torch.rand(1, 3, 128, 128)).shape
        torch.Size([1, 2, 128, 128])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        img_size: Sequence[int] | int = 128,
        patch_grid: Sequence[int] | int | None = None,
        channels: Sequence[int] = (32, 64, 128, 256),
        depths: Sequence[int] = (1, 2, 4, 1),
        global_stages: int = 2,
        num_heads: int = 8,
        stem_channels: int = 8,
        local_stem_channels: int = 64,
        stem_hidden_channels: int = 128,
        head_channels: int = 16,
        fusion_conv: bool = True,
        dropout: float = 0.0,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            img_size=img_size,
            patch_grid=patch_grid,
            channels=channels,
            depths=depths,
            global_stages=global_stages,
            num_heads=num_heads,
            stem_channels=stem_channels,
            local_stem_channels=local_stem_channels,
            stem_hidden_channels=stem_hidden_channels,
            head_channels=head_channels,
            global_attention="axial",
            local_attention="axial",
            fusion_conv=fusion_conv,
            dropout=dropout,
            use_checkpoint=use_checkpoint,
        )
