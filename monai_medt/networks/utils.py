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
"""Argument checks shared by the MedT networks, and gate helpers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from monai_medt.networks.blocks.axial_attention import AxialAttention

__all__ = ["check_network_args", "check_input", "plain_input", "set_gates_trainable", "gate_values"]


def check_network_args(
    in_channels: int,
    out_channels: int,
    img_size: Sequence[int],
    channels: Sequence[int],
    depths: Sequence[int],
    num_heads: int,
    dropout: float,
) -> None:
    """Raise ``ValueError`` naming the first ill argument of a MedT-family constructor."""
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}.")
    if out_channels < 1:
        raise ValueError(f"out_channels must be >= 1, got {out_channels}.")
    if len(img_size) != 2 or any(int(s) < 1 for s in img_size):
        raise ValueError(f"img_size must be a positive int or a pair (H, W), got {tuple(img_size)}.")
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}.")
    if len(channels) != len(depths) or len(depths) == 0:
        raise ValueError(f"channels {tuple(channels)} and depths {tuple(depths)} must have the same, non-zero length.")
    for c in channels:
        # each stage's attention width is channels // 2 and needs at least one query/key channel per head
        if c < 1 or c % (4 * num_heads) != 0:
            raise ValueError(
                f"every entry of channels must be a multiple of 4 * num_heads = {4 * num_heads} "
                f"(attention width channels // 2 split into {num_heads} heads with query, key and value), "
                f"got channels {tuple(channels)}."
            )
    if any(d < 1 for d in depths):
        raise ValueError(f"every entry of depths must be >= 1, got {tuple(depths)}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}.")


def check_input(x: torch.Tensor, in_channels: int, img_size: list[int], name: str) -> None:
    """Raise ``ValueError`` unless ``x`` is (B, in_channels, *img_size); the attention tables fix the size."""
    if x.dim() != 4 or x.shape[1] != in_channels or x.shape[2] != img_size[0] or x.shape[3] != img_size[1]:
        raise ValueError(
            name
            + " expects input of shape (B, "
            + str(in_channels)
            + ", "
            + str(img_size[0])
            + ", "
            + str(img_size[1])
            + ") (in_channels and img_size it was built with), got "
            + str(list(x.shape))
            + "; use a sliding-window inferer with roi_size=img_size for other sizes."
        )


def plain_input(x: torch.Tensor) -> torch.Tensor:
    """
    Drop tensor subclasses (MONAI MetaTensor) from the network input: the networks fold image tiles into the batch,
    which a batched MetaTensor's per-item metadata cannot follow. Engines and inverters keep the metadata of the data
    dict, so predictions need none.
    """
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return x
    return _strip_subclass(x)


@torch.jit.unused
def _strip_subclass(x: torch.Tensor) -> torch.Tensor:
    from monai.data import MetaTensor

    return x.as_tensor() if isinstance(x, MetaTensor) else x


def set_gates_trainable(network: nn.Module, trainable: bool = True) -> int:
    """
    Switch ``requires_grad`` of every gate in ``network`` (the official recipe freezes gates for the first 10 epochs,
    then trains them). Returns the number of gate tensors changed.

    Example::

        >>> net = MedT(3, 2)
        >>> set_gates_trainable(net, True)
        6
    """
    count = 0
    for module in network.modules():
        if isinstance(module, AxialAttention) and module.gated:
            module.gates.requires_grad_(trainable)
            count += 1
    return count


def gate_values(network: nn.Module) -> dict[str, list[float]]:
    """Current gate values per gated attention layer, keyed by module name (for logging)."""
    return {
        name: [float(v) for v in module.gates.detach().cpu()]
        for name, module in network.named_modules()
        if isinstance(module, AxialAttention) and module.gated
    }
