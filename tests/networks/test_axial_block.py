# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""The axial block's fused paths (norms with their ReLUs, the shortcut added in the last norm's pass) against its
modules applied one after another."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from monai_medt.networks.blocks import AxialBlock


def _module_forward(block: AxialBlock, x: torch.Tensor) -> torch.Tensor:
    """The block as its modules compute it, one at a time (the attention's output ReLU written out)."""
    out = F.relu(block.norm_in(block.conv_in(x)))
    attn_w = copy.copy(block.attn_w)
    attn_w.output_relu = False
    out = F.relu(attn_w(block.attn_h(out)))
    return F.relu(block.norm_out(block.conv_out(out)) + block.shortcut(x))


@pytest.mark.parametrize("attention", ["gated", "nopos"])
@pytest.mark.parametrize("stride, in_channels", [(1, 16), (2, 8)])
def test_block_matches_its_modules(attention, stride, in_channels, attention_backend):
    """A training step (outputs, input and parameter gradients, running statistics), then eval, equal the modules'."""
    torch.manual_seed(5)
    block = AxialBlock(in_channels, 16, width=8, spatial_size=(12, 12), num_heads=2, stride=stride, attention=attention)
    assert isinstance(block.shortcut, torch.nn.Identity) == (stride == 1)
    reference = copy.deepcopy(block)
    x = torch.randn(3, in_channels, 12, 12) + 0.5
    weights = torch.linspace(-1.0, 2.0, 3 * 16 * (12 // stride) ** 2).view(3, 16, 12 // stride, 12 // stride)
    grads = []
    for net, forward in ((block, block), (reference, lambda t: _module_forward(reference, t))):
        xi = x.clone().requires_grad_(True)
        out = forward(xi)
        (out * weights).pow(2).sum().backward()
        grads.append([out, xi.grad, *[p.grad for p in net.parameters() if p.grad is not None]])
    assert len(grads[0]) == len(grads[1]) and (grads[0][0] == 0).any()
    # float32 in other summation orders; the floor covers gradients that are zero up to rounding (the shift of a norm
    # followed by another norm), beside gradients of ~100
    floor = 1e-6 * max(float(g.detach().abs().max()) for g in grads[1])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, atol=max(1e-5 * float(want.detach().abs().max()), floor), rtol=1e-4)
    for got, want in zip(block.buffers(), reference.buffers()):
        torch.testing.assert_close(got.float(), want.float(), atol=1e-5, rtol=1e-5)
    block.eval(), reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(block(x), _module_forward(reference, x), atol=1e-5, rtol=1e-4)
