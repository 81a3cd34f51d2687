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

import contextlib
from types import ModuleType

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Norm, Pool
from monai.utils import look_up_option

from monai_medt.networks.blocks import attention_core
from monai_medt.networks.blocks.attention_core import RelativeAttentionFunction, chunk_rows, relative_attention
from monai_medt.networks.blocks.batch_norm import batch_norm, update_running_stats
from monai_medt.networks.blocks.conv_norm import conv_norm, folds_norms, norm_affine
from monai_medt.networks.blocks.cpu_kernel import cpu_kernel, fused_map_attention, fused_relative_attention
from monai_medt.networks.blocks.logit_moments import (
    logit_moments,
    logit_moments_reference,
    logit_norm_scale,
    logit_norm_scale_reference,
    map_logit_moments,
)

__all__ = ["AxialAttention", "GatedAxialAttention", "AxialAttentionNoPos", "AXES", "GATE_POSITIONS", "GATE_NAMES"]

AXES = ("height", "width")
GATE_POSITIONS = ("before_norm", "after_norm")
# order of the scalars in ``AxialAttention.gates``; the official names are f_qr, f_kr, f_sv, f_sve
GATE_NAMES = ("query_position", "key_position", "value_content", "value_position")
# official initial values (query-pos, key-pos, value content, value-pos)
DEFAULT_GATE_INIT = (0.1, 0.1, 1.0, 0.1)


def _core_dtype(dtype: torch.dtype) -> torch.dtype:
    """
    Precision of the attention core and of the logit-norm scales: at least float32, so that autocast's half types
    never reach the softmax or the moment algebra, while float64 models stay float64.
    """
    return torch.promote_types(dtype, torch.float32)


class _AxialAttentionBase(nn.Module):
    """Shared projection and layout handling of the axial attention layers.

    The input ``(B, C, H, W)`` is projected per pixel to ``2 * out_channels`` channels (1x1 conv + batch norm), split per
    head into query and key (``head_dim // 2`` channels each) and value (``head_dim`` channels), and every column
    (``axis="height"``) or row (``axis="width"``) becomes one sequence of length ``L``. Sequences of all images, all
    other-axis positions and all heads are stacked into one batch so that each attention product is a single matmul.
    """

    def __init__(
        self, in_channels: int, out_channels: int, num_heads: int, axis: str, stride: int, output_relu: bool
    ) -> None:
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
        self.output_relu = output_relu
        # logits per chunk of the CPU attention kernel (read at construction, so it can be tuned per layer)
        self.chunk_bytes: int = attention_core.CPU_CHUNK_BYTES
        # the projection is a 1D conv over each sequence in the reference code; a 1x1 2D conv on the map is the same
        # per-pixel linear map, and batch statistics over (B, H, W) equal those over (B * W, L)
        self.qkv = Conv[Conv.CONV, 2](in_channels, 2 * out_channels, kernel_size=1, bias=False)
        self.qkv_norm = Norm[Norm.BATCH, 2](2 * out_channels)
        self.pool = Pool[Pool.AVG, 2](kernel_size=stride, stride=stride) if stride > 1 else nn.Identity()
        nn.init.normal_(self.qkv.weight, 0.0, (1.0 / in_channels) ** 0.5)

    def _output(self, out: torch.Tensor, relu_applied: bool = False) -> torch.Tensor:
        """The output map pooled by the stride, then the output ReLU where ``output_relu`` (unless already applied)."""
        out = self.pool(out)
        if self.output_relu and not relu_applied:
            # in place: a fresh map (the norm's, the sum's or the pooling's output) whose producer does not read it
            out = F.relu(out, inplace=True)
        return out

    def _fuse_eval(self, x: torch.Tensor) -> bool:
        """
        Whether the output map's inference-only fusion applies to input ``x``: eval mode with running statistics, eager
        (TorchScript, tracing and ONNX keep the plain modules), where norms are folded (the CPU: see ``folds_norms``).
        The output batch norm is then a per-channel affine map and is folded into the sum of the two terms. (The
        projection's norm is folded by ``conv_norm``.)
        """
        if self.training or torch.jit.is_tracing() or not folds_norms(x):
            return False
        return self.out_norm.running_var is not None

    @torch.jit.unused
    def _project_eager(self, x: torch.Tensor, output_kept: bool = False) -> torch.Tensor:
        # in eval mode the batch norm is folded into the 1x1 convolution (one pass over the map instead of two);
        # ``output_kept``: the attention kernel saves the projected map, so in training the norm saves it too
        return conv_norm(self.qkv, self.qkv_norm, x, output_kept=output_kept)

    @torch.jit.unused
    def _map_kernel(self, x: torch.Tensor) -> ModuleType | None:
        """
        The fused CPU kernel where this layer runs from its projected map straight to its output map: eval-mode float32
        inference on the CPU without autograd or autocast, eager. None elsewhere (the other paths compute the same).
        """
        if x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_grad_enabled():
            return None
        if torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling() or not self._fuse_eval(x):
            return None
        return cpu_kernel()

    @torch.jit.unused
    def _train_map_kernel(self, x: torch.Tensor) -> ModuleType | None:
        """
        The fused CPU kernel where this layer's autograd path runs from its projected map to its stacked terms
        (:func:`fused_map_attention`): float32 on the CPU with autograd on, eager, without autocast. None elsewhere
        (the sequence-layout path computes the same).
        """
        if x.device.type != "cpu" or x.dtype != torch.float32 or not torch.is_grad_enabled():
            return None
        if torch.is_autocast_enabled("cpu") or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return None
        return cpu_kernel()

    @torch.jit.unused
    def _map_moments(
        self, qkv: torch.Tensor, rq: torch.Tensor | None, wk: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_logit_moments` read from the projected map (see :func:`map_logit_moments`)."""
        if not self.training and self.logit_norm.running_var is not None:
            return qkv.new_empty(0), qkv.new_empty(0)
        return map_logit_moments(qkv, self.num_heads, self.qk_dim, self.axis == "height", rq, wk)

    @torch.jit.unused
    def _attend_map(
        self,
        kernel: ModuleType,
        x: torch.Tensor,
        scales: torch.Tensor,
        tables: list[torch.Tensor],
        out_scale: torch.Tensor,
        out_shift: torch.Tensor,
    ) -> torch.Tensor:
        """
        Eval-mode projection, attention and output norm in one kernel call per layer: the kernel gathers each sequence's
        queries, keys and values from the projected map, applies the logit-norm ``scales`` ((terms, heads)) and writes
        ``sum_t term_t * out_scale[t] + out_shift`` (per channel) into the output map; ``tables`` are the (gated) rq,
        wk and rv of the positional form, empty without positions. Saves the layout copies and output passes of
        :meth:`_project` and :meth:`_to_map_eval`.
        """
        qkv = self._project_eager(x)  # any memory format: the kernel reads through the strides
        positional = len(tables) == 3
        rq, wk, rv = [t.contiguous() for t in tables] if positional else [qkv.new_empty(0)] * 3
        height = self.axis == "height"
        return kernel.inference_map(
            qkv, self.num_heads, self.qk_dim, self.head_dim, height, scales.contiguous(), rq, wk, rv,
            out_scale.contiguous(), out_shift.contiguous(), positional,
        )

    @torch.jit.unused
    def _to_map_eval(self, terms: list[torch.Tensor], b: int, h: int, w: int, gates: torch.Tensor | None) -> torch.Tensor:
        """
        Eval-mode ``out_norm`` and sum of the ``terms`` (each (B*O*G, L, d)), written straight into a (B, C, H, W) map:
        one strided pass per term instead of stack, layout copy, batch norm and sum. ``gates`` scale the normalised
        terms (``gate_position="after_norm"``).
        """
        count = len(terms)
        heads, d = self.num_heads, self.head_dim
        scale, shift = norm_affine(self.out_norm)
        scale, shift = scale.view(self.out_channels, count), shift.view(self.out_channels, count)
        if gates is not None:
            scale, shift = scale * gates, shift * gates
        out = terms[0].new_empty((b, self.out_channels, h, w))
        out_view = out.view(b, heads, d, h, w)
        # in-place ops on a fresh map stay differentiable (saliency maps and test-time adaptation take eval gradients)
        out_view.copy_(shift.sum(1).view(1, heads, d, 1, 1).expand_as(out_view))
        for t, term in enumerate(terms):
            out_view.addcmul_(self._term_view(term, b, h, w), scale[:, t].view(1, heads, d, 1, 1))
        return out

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Return q of shape (B*O*G, L, qk_dim), k of shape (B*O*G, L, qk_dim) and v of shape (B*O*G, L, head_dim); O is
        the other axis. q is contiguous; k and v are transposed views of channel-major copies, the layout in which the
        fused kernel reads keys and values, so that each of the three is copied out of the map once.
        """
        b, _, h, w = x.shape
        if torch.jit.is_scripting():  # TorchScript compiles only this branch
            qkv = self.qkv_norm(self.qkv(x))
        else:
            qkv = self._project_eager(x)
        # a channels-last map (the stems' inference output) is copied here, where the layout copies below begin anyway
        qkv = qkv.contiguous().view(b, self.num_heads, 2 * self.head_dim, h, w)
        q, k, v = torch.split(qkv, [self.qk_dim, self.qk_dim, self.head_dim], dim=2)  # each (B, G, c, H, W)
        if self.axis == "height":
            q, k, v = q.permute(0, 4, 1, 3, 2), k.permute(0, 4, 1, 2, 3), v.permute(0, 4, 1, 2, 3)  # (B, W, G, ...)
            length = h
        else:
            q, k, v = q.permute(0, 3, 1, 4, 2), k.permute(0, 3, 1, 2, 4), v.permute(0, 3, 1, 2, 4)  # (B, H, G, ...)
            length = w
        q = q.reshape(-1, length, self.qk_dim)
        k = k.reshape(-1, self.qk_dim, length).transpose(1, 2)
        v = v.reshape(-1, self.head_dim, length).transpose(1, 2)
        return q, k, v

    def _term_view(self, term: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
        """One term (B*O*G, L, d) viewed (no copy) as (B, G, d, H, W): the sequence layout seen in map order."""
        if self.axis == "height":
            return term.view(b, w, self.num_heads, h, self.head_dim).permute(0, 2, 4, 3, 1)
        return term.view(b, h, self.num_heads, w, self.head_dim).permute(0, 2, 4, 1, 3)

    def _to_map(self, terms: list[torch.Tensor], b: int, h: int, w: int) -> torch.Tensor:
        """
        Terms (each (B*O*G, L, d)) -> (B, out_channels * len(terms), H, W) with channel index (g * d + c) * terms + t,
        in one copy: the terms are stacked in map order straight from their sequence layout.
        """
        views = [self._term_view(t, b, h, w) for t in terms]
        return torch.stack(views, dim=3).reshape(b, self.out_channels * len(terms), h, w)

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

    def _attend(
        self,
        q1: torch.Tensor,
        k: torch.Tensor,
        q2: torch.Tensor,
        rq: torch.Tensor,
        k3: torch.Tensor,
        wk: torch.Tensor,
        v: torch.Tensor,
        rv: torch.Tensor,
        positional: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # the inputs are small and the (N, L, L) maps never stored, so the cast costs little
        dtype = _core_dtype(rq.dtype)
        q1, k, q2, k3, v = q1.to(dtype), k.to(dtype), q2.to(dtype), k3.to(dtype), v.to(dtype)
        rq, wk, rv = rq.to(dtype), wk.to(dtype), rv.to(dtype)
        rows = chunk_rows(q1.shape[0], q1.shape[1], q1.device, self.chunk_bytes)
        if torch.jit.is_scripting():
            return relative_attention(q1, k, q2, rq, k3, wk, v, rv, positional, rows)
        return self._attend_eager(q1, k, q2, rq, k3, wk, v, rv, positional, rows)

    @torch.jit.unused
    def _attend_eager(
        self,
        q1: torch.Tensor,
        k: torch.Tensor,
        q2: torch.Tensor,
        rq: torch.Tensor,
        k3: torch.Tensor,
        wk: torch.Tensor,
        v: torch.Tensor,
        rv: torch.Tensor,
        positional: bool,
        rows: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # autocast off: it would run the core's matmuls in half precision, and the hand-written backward (which
        # autocast does not reach) would then meet half-precision gradients beside its fp32 inputs (devices without
        # autocast, such as meta, need no context)
        device = q1.device.type
        no_autocast = torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else None
        with no_autocast or contextlib.nullcontext():
            traced = torch.jit.is_tracing() or torch.compiler.is_compiling()
            tensors = (q1, k, q2, rq, k3, wk, v, rv)
            needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
            if q1.device.type == "cpu" and not traced and cpu_kernel() is not None:
                return fused_relative_attention(*tensors, positional, needs_grad=needs_grad)
            if not needs_grad or traced:
                if torch.compiler.is_compiling():
                    rows = q1.shape[0]  # let the compiler fuse one pass instead of unrolling chunks
                return relative_attention(q1, k, q2, rq, k3, wk, v, rv, positional, rows)
            return RelativeAttentionFunction.apply(q1, k, q2, rq, k3, wk, v, rv, positional, rows)

    def _logit_moments(
        self, q: torch.Tensor, k: torch.Tensor, rq: torch.Tensor | None, wk: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch E[X] and E[X^2] (terms, heads) of the logit terms; empty where the running statistics are used."""
        if not self.training and self.logit_norm.running_var is not None:
            return q.new_empty(0), q.new_empty(0)
        n, length, qk_dim = q.shape
        q4 = q.reshape(n // self.num_heads, self.num_heads, length, qk_dim)
        k4 = k.reshape(n // self.num_heads, self.num_heads, length, qk_dim)
        if torch.jit.is_scripting():
            return logit_moments_reference(q4, k4, rq, wk)
        return self._logit_moments_eager(q4, k4, rq, wk)

    @torch.jit.unused
    def _logit_moments_eager(
        self, q: torch.Tensor, k: torch.Tensor, rq: torch.Tensor | None, wk: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # a saved trace cannot hold a Python autograd Function; the compiler differentiates the plain formula itself
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return logit_moments_reference(q, k, rq, wk)
        return logit_moments(q, k, rq, wk)

    def _fold_logit_norm(self, means: torch.Tensor, squares: torch.Tensor, count: int, terms: int) -> torch.Tensor:
        """
        Per-(term, head) scale of the logit batch norm, (terms, heads). Its shift is constant along each softmax row
        and cancels, so only the scale is needed. In training the batch moments come from the analytic ``means`` and
        ``squares`` (E[X] and E[X^2] of each term and head, float64) and the running statistics are updated as
        BatchNorm does.
        """
        norm = self.logit_norm
        weight = norm.weight
        eps = norm.eps
        dtype = _core_dtype(weight.dtype)
        if self.training or norm.running_var is None:
            if torch.jit.is_scripting():
                scale, var = logit_norm_scale_reference(means, squares, weight, eps, dtype)
            else:
                scale, var = self._batch_scale_eager(means, squares, weight, eps, dtype)
            if self.training and norm.running_mean is not None and norm.running_var is not None:
                update_running_stats(
                    norm.running_mean, norm.running_var, norm.num_batches_tracked, norm.momentum, means.reshape(-1),
                    var, count,
                )
        else:
            # in the core's dtype (a no-op cast for float32 models): three ops, each a kernel launch on accelerators
            scale = weight.to(dtype) * torch.rsqrt(norm.running_var.to(dtype) + eps)
        return scale.view(terms, self.num_heads)

    @torch.jit.unused
    def _batch_scale_eager(
        self, means: torch.Tensor, squares: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The training scale through the autograd function of :func:`logit_norm_scale` (not scriptable)."""
        return logit_norm_scale(means, squares, weight, eps, dtype)


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
        output_relu: follow the (pooled) output with a ReLU, as the axial block does after its width attention; in
            CPU training it runs in the output norm's pass where the stride is 1. Defaults to False.

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
        output_relu: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, num_heads, axis, stride, output_relu)
        if kernel_size <= 0:
            raise ValueError(f"kernel_size must be positive, got {kernel_size}.")
        if len(gate_init) != 4:
            raise ValueError(f"gate_init must hold 4 values {GATE_NAMES}, got {gate_init}.")
        self.kernel_size = kernel_size
        self.gated = gated
        self.gate_after_norm = look_up_option(gate_position, GATE_POSITIONS) == "after_norm"
        self.logit_norm = Norm[Norm.BATCH, 2](3 * num_heads)
        # the logit-norm shift adds one constant per head to every logit of a softmax row, so it cancels exactly:
        # kept for weight compatibility, frozen so that optimisers and DDP see no parameter without a gradient
        self.logit_norm.bias.requires_grad_(False)
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

    def _tables(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The position terms' tables rq, wk (qk_dim, L, L) and rv (head_dim, L, L), gathered from ``relative``."""
        emb = self.relative[:, self.rel_index]  # (2d, L, L): emb[c, a, b] = table[c, a - b + L - 1]
        rq, ek, rv = torch.split(emb, [self.qk_dim, self.qk_dim, self.head_dim], dim=0)
        return rq, ek.transpose(1, 2), rv  # key-position term of (i, j) uses table column j - i + L - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_length(x, self.kernel_size)
        # nested: TorchScript drops a branch only when its condition is is_scripting() alone
        if not torch.jit.is_scripting():
            kernel = self._map_kernel(x)
            if kernel is not None:
                return self._output(self._forward_map(kernel, x))
            if self._train_map_kernel(x) is not None:
                return self._forward_train_map(x)
        b, _, h, w = x.shape
        q, k, v = self._project(x)
        n, length, qk_dim = q.shape
        heads = self.num_heads
        rows = n // heads
        rq, wk, rv = self._tables()
        gates = self.gates.to(q.dtype)
        if not self.gate_after_norm:
            # scaling the small operand equals scaling the (N, L, L) term it produces
            rq = rq * gates[0]
            wk = wk * gates[1]
            v = v * gates[2]
            rv = rv * gates[3]
        means, squares = self._logit_moments(q, k, rq, wk)
        scales = self._fold_logit_norm(means, squares, rows * length * length, 3)
        if self.gate_after_norm:
            scales = scales * torch.stack([torch.ones_like(gates[0]), gates[0], gates[1]]).view(3, 1)
        qh = q.view(rows, heads, length, qk_dim)
        # unbind: one backward op for the three scales (indexing each would zero-fill and copy one gradient each)
        content, query, key = scales.view(3, 1, heads, 1, 1).unbind(0)
        q1 = (qh * content).view(n, length, qk_dim)
        q2 = (qh * query).view(n, length, qk_dim)
        k3 = (k.reshape(rows, heads, length, qk_dim) * key).view(n, length, qk_dim)
        sv, sve = self._attend(q1, k, q2, rq, k3, wk, v, rv, True)
        # nested: TorchScript drops a branch only when its condition is is_scripting() alone
        if not torch.jit.is_scripting():  # noqa: SIM102
            if self._fuse_eval(x):
                after = gates[2:] if self.gate_after_norm else None
                return self._output(self._to_map_eval([sv.to(x.dtype), sve.to(x.dtype)], b, h, w, after))
        out = self.out_norm(self._to_map([sv.to(x.dtype), sve.to(x.dtype)], b, h, w))
        out = out.view(b, self.out_channels, 2, h, w)
        if self.gate_after_norm:
            out = out * gates[2:].view(1, 1, 2, 1, 1)
        return self._output(out.sum(dim=2))

    @torch.jit.unused
    def _forward_train_map(self, x: torch.Tensor) -> torch.Tensor:
        """
        :meth:`forward` with the attention core on the map (:func:`fused_map_attention`): the gates and norms placed as
        there; the value gate of ``gate_position="before_norm"`` becomes the values' scale.
        """
        b, _, h, w = x.shape
        height = self.axis == "height"
        qkv = self._project_eager(x, output_kept=True)
        rq, wk, rv = self._tables()
        gates = self.gates.to(qkv.dtype)
        if self.gate_after_norm:
            value = torch.ones_like(gates[2])
        else:
            rq, wk, rv, value = rq * gates[0], wk * gates[1], rv * gates[3], gates[2]
        means, squares = self._map_moments(qkv, rq, wk)
        sequences = b * (w if height else h)  # per head
        length = h if height else w
        scales = self._fold_logit_norm(means, squares, sequences * length * length, 3)
        if self.gate_after_norm:
            scales = scales * torch.stack([torch.ones_like(gates[0]), gates[0], gates[1]]).view(3, 1)
        scales = torch.cat([scales, value.expand(1, self.num_heads)])
        terms = fused_map_attention(qkv, scales, rq, wk, rv, self.num_heads, self.qk_dim, self.head_dim, height)
        # the output norm, the sum of its two terms and (before any pooling) the ReLU in one pass (the gates after the
        # norm scale the terms)
        relu = self.output_relu and self.stride == 1
        scales_after = gates[2:] if self.gate_after_norm else None
        out = batch_norm(self.out_norm, terms, relu=relu, terms=2, term_scales=scales_after)
        return self._output(out, relu_applied=relu)

    @torch.jit.unused
    def _forward_map(self, kernel: ModuleType, x: torch.Tensor) -> torch.Tensor:
        """Float32 CPU inference through :meth:`_attend_map`, with the gates and norms placed as in :meth:`forward`."""
        rq, wk, rv = self._tables()
        gates = self.gates.to(x.dtype)
        scales = self._fold_logit_norm(x.new_empty(0), x.new_empty(0), 0, 3)
        scale, shift = norm_affine(self.out_norm)
        scale, shift = scale.view(self.out_channels, 2).t(), shift.view(self.out_channels, 2).t()  # (terms, C)
        if self.gate_after_norm:
            scales = scales * torch.stack([torch.ones_like(gates[0]), gates[0], gates[1]]).view(3, 1)
            scale, shift = scale * gates[2:].view(2, 1), shift * gates[2:].view(2, 1)
        else:
            rq, wk, rv = rq * gates[0], wk * gates[1], rv * gates[3]
            # the value gate scales the values, i.e. the value term before its norm
            scale = scale * torch.stack([gates[2], torch.ones_like(gates[2])]).view(2, 1)
        return self._attend_map(kernel, x, scales, [rq, wk, rv], scale, shift.sum(0))


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
        output_relu: follow the (pooled) output with a ReLU. Defaults to False.

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
        output_relu: bool = False,
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
            output_relu=output_relu,
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
        output_relu: follow the (pooled) output with a ReLU; in CPU training it runs in the output norm's pass where
            the stride is 1. Defaults to False.

    Examples::

        >>> attn = AxialAttentionNoPos(16, 16, axis="width")
        >>> attn(torch.rand(2, 16, 24, 40)).shape
        torch.Size([2, 16, 24, 40])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_heads: int = 8,
        axis: str = "height",
        stride: int = 1,
        output_relu: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, num_heads, axis, stride, output_relu)
        self.logit_norm = Norm[Norm.BATCH, 2](num_heads)
        self.logit_norm.bias.requires_grad_(False)  # cancels in the softmax (see AxialAttention)
        self.out_norm = Norm[Norm.BATCH, 2](out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # nested: TorchScript drops a branch only when its condition is is_scripting() alone
        if not torch.jit.is_scripting():
            kernel = self._map_kernel(x)
            if kernel is not None:
                scale, shift = norm_affine(self.out_norm)
                scales = self._fold_logit_norm(x.new_empty(0), x.new_empty(0), 0, 1)
                return self._output(self._attend_map(kernel, x, scales, [], scale.view(1, -1), shift))
            if self._train_map_kernel(x) is not None:
                return self._forward_train_map(x)
        b, _, h, w = x.shape
        q, k, v = self._project(x)
        n, length, qk_dim = q.shape
        heads = self.num_heads
        rows = n // heads
        means, squares = self._logit_moments(q, k, None, None)
        scale = self._fold_logit_norm(means, squares, rows * length * length, 1)
        q1 = (q.view(rows, heads, length, qk_dim) * scale.view(1, heads, 1, 1)).view(n, length, qk_dim)
        empty = q1.new_zeros((0, length, length))
        sv, _ = self._attend(q1, k, q1, empty, q1, empty, v, empty, False)
        # nested: TorchScript drops a branch only when its condition is is_scripting() alone
        if not torch.jit.is_scripting():  # noqa: SIM102
            if self._fuse_eval(x):
                return self._output(self._to_map_eval([sv.to(x.dtype)], b, h, w, None))
        out = self.out_norm(self._to_map([sv.to(x.dtype)], b, h, w))
        return self._output(out)

    @torch.jit.unused
    def _forward_train_map(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with the attention core on the map (:func:`fused_map_attention`)."""
        b, _, h, w = x.shape
        height = self.axis == "height"
        qkv = self._project_eager(x, output_kept=True)
        means, squares = self._map_moments(qkv, None, None)
        sequences, length = (b * w, h) if height else (b * h, w)
        scale = self._fold_logit_norm(means, squares, sequences * length * length, 1)
        terms = fused_map_attention(qkv, scale, None, None, None, self.num_heads, self.qk_dim, self.head_dim, height)
        relu = self.output_relu and self.stride == 1  # in the norm's pass where no pooling comes between
        return self._output(batch_norm(self.out_norm, terms, relu=relu), relu_applied=relu)
