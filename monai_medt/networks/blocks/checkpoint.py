# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""Activation checkpointing of a module that keeps its batch norms' running statistics as without checkpointing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

__all__ = ["checkpoint_module"]


@contextmanager
def _running_stats_kept(module: nn.Module) -> Iterator[None]:
    """Within the block, training-mode batch norms of ``module`` normalise as usual but leave their running statistics
    and batch counts unchanged (momentum 0 keeps the old values exactly)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(norms, saved):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


def checkpoint_module(function: Callable[[torch.Tensor], torch.Tensor], module: nn.Module, x: torch.Tensor):
    """
    ``function(x)`` (the forward of ``module``) with activation checkpointing: its activations are recomputed in the
    backward pass instead of stored. The recomputation normalises with the same batch statistics, but leaves the
    running statistics of ``module``'s batch norms alone, so that they are updated once per step, as without
    checkpointing.

    Args:
        function: the computation to checkpoint.
        module: the module whose batch norms ``function`` runs.
        x: the input.

    Examples::

        >>> block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        >>> checkpoint_module(block.forward, block, torch.rand(2, 3, 8, 8, requires_grad=True)).shape
        torch.Size([2, 4, 8, 8])
    """
    calls: list[int] = []

    def run(inp: torch.Tensor) -> torch.Tensor:
        if calls:  # the recomputation in the backward pass: the forward has updated the statistics already
            with _running_stats_kept(module):
                return function(inp)
        calls.append(1)
        return function(inp)

    return checkpoint(run, x, use_reentrant=False)
