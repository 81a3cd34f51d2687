# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""Ignite handlers for training MedT with MONAI engines."""

from __future__ import annotations

import logging

import torch.nn as nn

from monai_medt.networks.utils import gate_values, set_gates_trainable

__all__ = ["GateWarmupHandler"]


class GateWarmupHandler:
    """
    The official gate schedule: gates stay frozen for the first ``warmup_epochs`` epochs and are trained from then on
    (the official train.py switches ``requires_grad`` on after epoch index 10). Logs the gate values at each switch.
    Put the gates in the optimizer from the start (``network.parameters()`` does); frozen parameters get no gradient
    and Adam skips them.

    Args:
        network: the network (MedT, GatedAxialUNet, ...).
        warmup_epochs: epochs with frozen gates; 0 trains them from the first step. Defaults to 10.
    """

    def __init__(self, network: nn.Module, warmup_epochs: int = 10) -> None:
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}.")
        self.network = network
        self.warmup_epochs = warmup_epochs
        self.logger = logging.getLogger(__name__)

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine) -> None:
        trainable = engine.state.epoch > self.warmup_epochs
        net = self.network.module if hasattr(self.network, "module") else self.network
        changed = sum(
            1 for m in net.modules() if getattr(m, "gated", False) and m.gates.requires_grad != trainable
        )
        if changed:
            set_gates_trainable(net, trainable)
            self.logger.info(
                "epoch %d: gates %s; values %s", engine.state.epoch, "trainable" if trainable else "frozen",
                gate_values(net),
            )
