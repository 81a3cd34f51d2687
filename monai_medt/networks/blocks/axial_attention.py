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
"""Axial self-attention along one image axis, with relative positions and optional gates (MedT, Axial-DeepLab)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Norm, Pool
from monai.utils import look_up_option

__all__ = ["AxialAttention", "GatedAxialAttention", "AxialAttentionNoPos", "AXES", "GATE_POSITIONS", "GATE_NAMES"]

AXES = ("height", "width")
GATE_POSITIONS = ("before_norm", "after_norm")
# order of the scalars in ``AxialAttention.gates``; the official names are f_qr, f_kr, f_sv, f_sve
GATE_NAMES = ("query_position", "key_position", "value_content", "value_position")
# official initial values (query-pos, key-pos, value content, value-pos)
DEFAULT_GATE_INIT = (0.1, 0.1, 1.0, 0.1)


class _AxialAttentionBase(nn.Module):
    """Shared projection and layout handling of the axial attention layers.

    The input ``(B, C, H, W)`` is projected per pixel to ``2 * out_channels`` channels (1x1 conv + batch norm), split per
    head into query and key (``head_dim // 2`` channels each) and value (``head_dim`` channels), and every column
    (``axis="height"``) or row (``axis="width"``) becomes one sequence of length ``L``. Sequences of all images, all
    other-axis positions and all heads are stacked into one batch so that each attention product is a single matmul.
    """

    def __init__(self, in_channels: int, out_channels: int, num_heads: int, axis: str, stride: int) -> None:
        super().__init__()
        if in_channels <= 0:
            raise ValueError(f"in_channels must be positive, got {in_channels}.")
        if num_heads <= 0:
            raise ValueError(f"num_heads must be positive, got {num_heads}.")
        if out_channels <= 0 or out_channels % (2 * num_heads) != 0:
            raise ValueError(
                f"out_channels ({out_channels}) must be a positive multiple of 2 * num_heads ({2 * num_heads}) so that "
                "every head has at least one query/key channel."
            )
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}.")
        self.axis = look_up_option(axis, AXES)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_heads = num_heads
        self.head_dim = out_channels // num_heads
        self.qk_dim = self.head_dim // 2
        self.stride = stride
        # the projection is a 1D conv over each sequence in the reference code; a 1x1 2D conv on the map is the same
        # per-pixel linear map, and batch statistics over (B, H, W) equal those over (B * W, L)
        self.qkv = Conv[Conv.CONV, 2](in_channels, 2 * out_channels, kernel_size=1, bias=False)
        self.qkv_norm = Norm[Norm.BATCH, 2](2 * out_channels)
        self.pool = Pool[Pool.AVG, 2](kernel_size=stride, stride=stride) if stride > 1 else nn.Identity()
        nn.init.normal_(self.qkv.weight, 0.0, (1.0 / in_channels) ** 0.5)

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return q, k of shape (B*O*G, L, qk_dim) and v of shape (B*O*G, L, head_dim); O is the other axis."""
        b, _, h, w = x.shape
        qkv = self.qkv_norm(self.qkv(x)).view(b, self.num_heads, 2 * self.head_dim, h, w)
        if self.axis == "height":
            qkv = qkv.permute(0, 4, 1, 3, 2)  # (B, W, G, H, 2d)
            length = h
        else:
            qkv = qkv.permute(0, 3, 1, 4, 2)  # (B, H, G, W, 2d)
            length = w
        qkv = qkv.reshape(-1, length, 2 * self.head_dim)
        q, k, v = torch.split(qkv, [self.qk_dim, self.qk_dim, self.head_dim], dim=-1)
        return q, k, v

    def _to_map(self, out: torch.Tensor, b: int, h: int, w: int, terms: int) -> torch.Tensor:
        """(B*O*G, L, d, terms) -> (B, out_channels * terms, H, W) with channel index (g * d + c) * terms + t."""
        if self.axis == "height":
            out = out.view(b, w, self.num_heads, h, self.head_dim, terms).permute(0, 2, 4, 5, 3, 1)
        else:
            out = out.view(b, h, self.num_heads, w, self.head_dim, terms).permute(0, 2, 4, 5, 1, 3)
        return out.reshape(b, self.out_channels * terms, h, w)

    def _check_length(self, x: torch.Tensor, length: int) -> None:
        size = x.shape[2] if self.axis == "height" else x.shape[3]
        if size != length:
            raise ValueError(
                "AxialAttention along "
                + self.axis
                + " was built for length "
                + str(length)
                + " but got an input of spatial shape "
                + str(list(x.shape[2:]))
                + "."
            )


class AxialAttention(_AxialAttentionBase):
    """
    Axial self-attention with query, key and value relative-position terms, as used by Axial-DeepLab and by the
    global branch of MedT, with optional gates (the "gated axial attention" of MedT).

    For every head, query position ``i`` and key position ``j`` along the axis, the logits are the content term
    ``q_i . k_j`` plus the relative terms ``q_i . r^q(i - j)`` and ``k_j . r^k(j - i)``. The three maps are batch-normalised
    per term and head (this replaces the usual 1/sqrt(d) scaling), summed, and soft-maxed over ``j``. The output is the
    attention-weighted sum of the values plus that of the value position embeddings ``r^v(i - j)``; the two are batch
    normalised per channel and summed. The relative table of shape ``(2 * head_dim, 2 * kernel_size - 1)`` is shared by
    all heads. Attention is global along the axis, so ``kernel_size`` must equal the axis length of the input.

    Gates are four scalars (query-position, key-position, value-content, value-position). With
    ``gate_position="before_norm"`` they scale each term before its batch norm, as the official MedT code does (BN then
    removes most of their effect); ``"after_norm"`` scales the normalised terms, as the paper describes.

    Args:
        in_channels: number of input channels.
        out_channels: number of output channels; a multiple of ``2 * num_heads``.
        kernel_size: length of the attended axis (the spatial size of the input along ``axis``).
        num_heads: number of attention heads. Defaults to 8.
        axis: ``"height"`` or ``"width"``. Defaults to ``"height"``.
        stride: 1, or 2 to average-pool the output by 2 in both axes (as the official code does after the width
            attention of a strided block). Defaults to 1.
        gated: whether to use the four gates. Defaults to False.
        gate_position: ``"before_norm"`` (official code) or ``"after_norm"`` (paper). Defaults to ``"before_norm"``.
        learnable_gates: whether the gates receive gradients from the start. The official training freezes them
            for the first epochs (see :func:`monai_medt.networks.set_gates_trainable`). Defaults to False.
        gate_init: initial gate values (query-position, key-position, value-content, value-position).
            Defaults to the official ``(0.1, 0.1, 1.0, 0.1)``.

    Examples::

        >>> attn = AxialAttention(16, 16, kernel_size=64, axis="width")
        >>> attn(torch.rand(2, 16, 64, 64)).shape
        torch.Size([2, 16, 64, 64])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        num_heads: int = 8,
        axis: str = "height",
        stride: int = 1,
        gated: bool = False,
        gate_position: str = "before_norm",
        learnable_gates: bool = False,
        gate_init: tuple[float, float, float, float] = DEFAULT_GATE_INIT,
    ) -> None:
        super().__init__(in_channels, out_channels, num_heads, axis, stride)
        if kernel_size <= 0:
            raise ValueError(f"kernel_size must be positive, got {kernel_size}.")
        if len(gate_init) != 4:
            raise ValueError(f"gate_init must hold 4 values {GATE_NAMES}, got {gate_init}.")
        self.kernel_size = kernel_size
        self.gated = gated
        self.gate_after_norm = look_up_option(gate_position, GATE_POSITIONS) == "after_norm"
        self.logit_norm = Norm[Norm.BATCH, 2](3 * num_heads)
        self.out_norm = Norm[Norm.BATCH, 2](2 * out_channels)
        self.relative = nn.Parameter(torch.randn(2 * self.head_dim, 2 * kernel_size - 1) * (1.0 / self.head_dim) ** 0.5)
        if gated:
            self.gates = nn.Parameter(torch.tensor(gate_init, dtype=torch.float32), requires_grad=learnable_gates)
        else:
            # a buffer of ones keeps one code path for TorchScript; it is not saved in the state dict
            self.register_buffer("gates", torch.ones(4), persistent=False)
        idx = torch.arange(kernel_size)
        # table column for (row a, column b) is a - b + K - 1
        self.register_buffer("rel_index", (idx[:, None] - idx[None, :] + kernel_size - 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_length(x, self.kernel_size)
        b, _, h, w = x.shape
        q, k, v = self._project(x)
        n, length, _ = q.shape
        emb = self.relative[:, self.rel_index]  # (2d, L, L): emb[c, a, b] = table[c, a - b + L - 1]
        r_q, r_k, r_v = torch.split(emb, [self.qk_dim, self.qk_dim, self.head_dim], dim=0)
        gates = self.gates.to(q.dtype)
        if not self.gate_after_norm:
            # scaling the small operand equals scaling the (N, L, L) term it produces
            r_q = r_q * gates[0]
            r_k = r_k * gates[1]
            v = v * gates[2]
            r_v = r_v * gates[3]
        qk = torch.matmul(q, k.transpose(1, 2))
        # qr[n, i, j] = sum_c q[n, i, c] r_q[c, i, j]: one matmul batched over i
        qr = torch.matmul(q.transpose(0, 1), r_q.permute(1, 0, 2)).transpose(0, 1)
        # kr[n, i, j] = sum_c k[n, j, c] r_k[c, j, i]
        kr = torch.matmul(k.transpose(0, 1), r_k.permute(1, 0, 2)).permute(1, 2, 0)
        rows = n // self.num_heads
        logits = torch.stack(
            [
                qk.view(rows, self.num_heads, length, length),
                qr.reshape(rows, self.num_heads, length, length),
                kr.reshape(rows, self.num_heads, length, length),
            ],
            dim=1,
        ).view(rows, 3 * self.num_heads, length, length)
        logits = self.logit_norm(logits).view(rows, 3, self.num_heads, length, length)
        if self.gate_after_norm:
            logits = logits * torch.stack([torch.ones_like(gates[0]), gates[0], gates[1]]).view(1, 3, 1, 1, 1)
        attn = torch.softmax(logits.sum(dim=1), dim=-1).view(n, length, length)
        sv = torch.matmul(attn, v)
        # sve[n, i, c] = sum_j attn[n, i, j] r_v[c, i, j]
        sve = torch.matmul(attn.transpose(0, 1), r_v.permute(1, 2, 0)).transpose(0, 1)
        out = self.out_norm(self._to_map(torch.stack([sv, sve], dim=-1), b, h, w, 2))
        out = out.view(b, self.out_channels, 2, h, w)
        if self.gate_after_norm:
            out = out * gates[2:].view(1, 1, 2, 1, 1)
        return self.pool(out.sum(dim=2))


class GatedAxialAttention(AxialAttention):
    """
    Gated axial attention of MedT: :class:`AxialAttention` with ``gated=True``.

    Args:
        in_channels: number of input channels.
        out_channels: number of output channels; a multiple of ``2 * num_heads``.
        kernel_size: length of the attended axis.
        num_heads: number of attention heads. Defaults to 8.
        axis: ``"height"`` or ``"width"``. Defaults to ``"height"``.
        stride: 1, or 2 to average-pool the output by 2. Defaults to 1.
        gate_position: ``"before_norm"`` (official code) or ``"after_norm"`` (paper). Defaults to ``"before_norm"``.
        learnable_gates: whether the gates receive gradients from the start. Defaults to False (official warm-up).
        gate_init: initial gate values. Defaults to ``(0.1, 0.1, 1.0, 0.1)``.

    Examples::

        >>> attn = GatedAxialAttention(16, 16, kernel_size=32, axis="height", gate_position="after_norm")
        >>> attn(torch.rand(1, 16, 32, 8)).shape
        torch.Size([1, 16, 32, 8])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        num_heads: int = 8,
        axis: str = "height",
        stride: int = 1,
        gate_position: str = "before_norm",
        learnable_gates: bool = False,
        gate_init: tuple[float, float, float, float] = DEFAULT_GATE_INIT,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            num_heads=num_heads,
            axis=axis,
            stride=stride,
            gated=True,
            gate_position=gate_position,
            learnable_gates=learnable_gates,
            gate_init=gate_init,
        )


class AxialAttentionNoPos(_AxialAttentionBase):
    """
    Axial self-attention without positional terms or gates (the local branch of MedT).

    Logits are the content term only, batch-normalised per head; the output is the attention-weighted sum of the values,
    batch-normalised per channel. It has no relative table, so it accepts any axis length.

    Args:
        in_channels: number of input channels.
        out_channels: number of output channels; a multiple of ``2 * num_heads``.
        num_heads: number of attention heads. Defaults to 8.
        axis: ``"height"`` or ``"width"``. Defaults to ``"height"``.
        stride: 1, or 2 to average-pool the output by 2. Defaults to 1.

    Examples::

        >>> attn = AxialAttentionNoPos(16, 16, axis="width")
        >>> attn(torch.rand(2, 16, 24, 40)).shape
        torch.Size([2, 16, 24, 40])
    """

    def __init__(
        self, in_channels: int, out_channels: int, num_heads: int = 8, axis: str = "height", stride: int = 1
    ) -> None:
        super().__init__(in_channels, out_channels, num_heads, axis, stride)
        self.logit_norm = Norm[Norm.BATCH, 2](num_heads)
        self.out_norm = Norm[Norm.BATCH, 2](out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = self._project(x)
        n, length, _ = q.shape
        logits = torch.matmul(q, k.transpose(1, 2)).view(n // self.num_heads, self.num_heads, length, length)
        attn = torch.softmax(self.logit_norm(logits), dim=-1).view(n, length, length)
        out = self.out_norm(self._to_map(torch.matmul(attn, v).unsqueeze(-1), b, h, w, 1))
        return self.pool(out)
