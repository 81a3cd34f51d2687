# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""The PyTorch attention core (GPUs, TorchScript, CPUs without the kernel): its two forms and its written backward."""

from __future__ import annotations

import pytest
import torch

from monai_medt.networks.blocks import attention_core
from monai_medt.networks.blocks.attention_core import RelativeAttentionFunction, relative_attention
from tests.networks.attention_inputs import attention_inputs, outputs_and_gradients

# (sequences, length, qk channels, value channels): one query channel, and several with more value channels
SHAPES = [(7, 11, 1, 2), (5, 9, 4, 8), (3, 6, 8, 16)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("positional", [True, False])
@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("rows", [2, 64])
def test_function_matches_autograd_of_the_per_channel_form(shape, positional, batched, rows, monkeypatch):
    """
    The autograd function, in chunks of 2 sequences or in one chunk, with the per-channel (CPU) or the batched
    (accelerator) form of the logits and of the value-embedding gradient, against autograd through the per-channel
    forward: the same outputs and gradients of all eight inputs (None for the position inputs without positions).
    """
    inputs = attention_inputs(*shape, torch.float64)
    expected = relative_attention(*inputs, positional, shape[0])
    weights = [torch.randn_like(t) for t in expected]
    expected = outputs_and_gradients(expected, inputs, weights)

    monkeypatch.setattr(attention_core, "_batched", lambda x: batched)
    result = outputs_and_gradients(RelativeAttentionFunction.apply(*inputs, positional, rows), inputs, weights)
    names = ["sv", "sve", "q1", "k", "q2", "rq", "k3", "wk", "v", "rv"]
    for name, got, want in zip(names, result, expected):
        if want is None:
            assert got is None, name
            continue
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("positional", [True, False])
def test_batched_forward_equals_per_channel_forward(positional, monkeypatch):
    """The batched logits (accelerators) give the per-channel form's outputs without autograd (inference)."""
    inputs = [t.detach() for t in attention_inputs(6, 10, 4, 8, torch.float64)]
    expected = relative_attention(*inputs, positional, 6)
    monkeypatch.setattr(attention_core, "_batched", lambda x: True)
    for got, want in zip(relative_attention(*inputs, positional, 6), expected):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)
