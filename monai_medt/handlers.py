# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""Ignite handlers for training MedT with MONAI engines."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from monai_medt.networks.utils import gate_values, set_gates_trainable

__all__ = ["GateWarmupHandler", "KeyMetricState"]


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


class KeyMetricState:
    """
    Carries the validator's best key metric over a resume, so that the best-model file written by MONAI's
    ``CheckpointSaver(save_key_metric=True)`` is only replaced by a better model after ``--resume_ckpt``, as in an
    uninterrupted run. The saver keeps its best score in memory only (its ``key_metric_save_state`` would store it
    inside the best-model file, which then is no longer a plain state dict).

    Put this object into the training checkpoint's ``save_dict`` (under ``key``) and attach it to the trainer: at the
    start of a run it reads that entry back from ``load_path``. A checkpoint without the entry (written before this
    handler existed), or a best-model file that is no longer in the saver's folder, leaves the saver fresh, with a
    warning. The validator's ``best_metric`` and ``best_metric_epoch`` (its log lines) are restored too.

    Args:
        saver: the validator's CheckpointSaver with ``save_key_metric=True``.
        evaluator: the validator (a MONAI ``Workflow``), whose best metric and epoch are restored; None for none.
        load_path: the checkpoint to resume from; empty for a fresh run.
        key: the entry's name in the checkpoint. Defaults to ``"key_metric"``.

    Examples::

        state = KeyMetricState(best_saver, evaluator, load_path=resume_ckpt)
        CheckpointSaver(save_dir, {"model": net, "optimizer": opt, "trainer": trainer, "key_metric": state},
                        save_interval=1).attach(trainer)
        state.attach(trainer)
    """

    def __init__(self, saver: Any, evaluator: Any = None, load_path: str = "", key: str = "key_metric") -> None:
        checkpoint = getattr(saver, "_key_metric_checkpoint", None)  # MONAI keeps the key-metric Checkpoint private
        if checkpoint is None:
            raise ValueError("KeyMetricState needs a CheckpointSaver built with save_key_metric=True.")
        self.saver = saver
        self.checkpoint = checkpoint
        self.evaluator = evaluator
        self.load_path = str(load_path) if load_path else ""
        self.key = key
        self.logger = logging.getLogger(__name__)

    def state_dict(self) -> dict:
        state: dict = {"saved": [[float(p), str(f)] for p, f in self.checkpoint.state_dict()["_saved"]]}
        if self.evaluator is not None:
            state["best_metric"] = float(self.evaluator.state.best_metric)
            state["best_metric_epoch"] = int(self.evaluator.state.best_metric_epoch)
        return state

    def load_state_dict(self, state: Mapping) -> None:
        for name in ("saved",) + (("best_metric", "best_metric_epoch") if self.evaluator is not None else ()):
            if name not in state:
                raise ValueError(f"KeyMetricState: the saved state has no '{name}' entry (keys: {sorted(state)}).")
        self.checkpoint.load_state_dict({"_saved": [(p, f) for p, f in state["saved"]]})
        if self.evaluator is not None:
            self.evaluator.state.best_metric = state["best_metric"]
            self.evaluator.state.best_metric_epoch = state["best_metric_epoch"]

    def _best_file(self, filename: str) -> str:
        # MONAI's saver writes the key-metric model under a fixed name where key_metric_filename is given
        fixed = getattr(self.checkpoint.save_handler, "filename", None)
        return os.path.join(self.saver.save_dir, fixed or filename)

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine) -> None:
        if not self.load_path:
            return
        # mapped, not read: the resume loader reads the model and optimizer; only this small entry is needed here
        saved = torch.load(self.load_path, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(saved, Mapping) or self.key not in saved:
            self.logger.warning(
                "%s holds no '%s' entry (written before KeyMetricState was used): the best-model file restarts with "
                "this run; keep a copy of it if it should survive.", self.load_path, self.key,
            )
            return
        best_files = [self._best_file(f) for _, f in saved[self.key]["saved"]]
        missing = [f for f in best_files if not os.path.isfile(f)]
        if missing:
            self.logger.warning(
                "the best model recorded in %s is missing (%s): the best-model file restarts with this run.",
                self.load_path, ", ".join(missing),
            )
            return
        self.load_state_dict(saved[self.key])
        self.logger.info(
            "resumed the best key metric from %s: %s", self.load_path,
            ", ".join(f"{f} ({p:.4f})" for (p, _), f in zip(saved[self.key]["saved"], best_files)) or "none yet",
        )
