# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""Random inputs of the relative attention core and the gradients of a weighted sum of its outputs (test helpers)."""

from __future__ import annotations

import torch


def attention_inputs(
    n: int, length: int, qk_dim: int, head_dim: int, dtype: torch.dtype, scale: float = 1.0
) -> list[torch.Tensor]:
    """q1, k, q2, rq, k3, wk, v, rv for ``n`` sequences of ``length`` positions, all requiring gradients."""

    def make(*shape):
        return (torch.randn(*shape, dtype=dtype) * scale).requires_grad_(True)

    # the key-position table arrives as a transposed view in the layers; the kernel must accept any strides
    wk = (torch.randn(qk_dim, length, length, dtype=dtype) * scale).transpose(1, 2).detach().requires_grad_(True)
    return [
        make(n, length, qk_dim),  # q1
        make(n, length, qk_dim),  # k
        make(n, length, qk_dim),  # q2
        make(qk_dim, length, length),  # rq
        make(n, length, qk_dim),  # k3
        wk,
        make(n, length, head_dim),  # v
        make(head_dim, length, length),  # rv
    ]


def outputs_and_gradients(outputs, inputs, weights) -> list[torch.Tensor | None]:
    """The outputs, then the gradients of sum(outputs * weights) for every input (None where unused)."""
    loss = sum((t * w.to(t.dtype)).sum() for t, w in zip(outputs, weights))
    return list(outputs) + list(torch.autograd.grad(loss, inputs, allow_unused=True))
