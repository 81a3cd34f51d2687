# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""KeyMetricState: the best-model file written by MONAI's CheckpointSaver survives a resume."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointSaver
from torch import nn

from monai_medt.handlers import KeyMetricState


def _validate(tmp_path, scores, tag, load_path=""):
    """
    One run of a validator whose key metric takes ``scores`` epoch by epoch; before each validation the model's
    weight is set to ``tag * 10 + epoch``, so the best-model file tells which epoch of which run it holds. Returns the
    KeyMetricState (to save) and the validator's best metric / epoch.
    """
    net = nn.Linear(1, 1, bias=False)
    evaluator = SimpleNamespace(state=SimpleNamespace(best_metric=-1, best_metric_epoch=-1))  # as MONAI's Workflow
    saver = CheckpointSaver(
        str(tmp_path), {"model": net}, save_key_metric=True, key_metric_name="dice", key_metric_filename="model.pt"
    )
    state = KeyMetricState(saver, evaluator, load_path=load_path)
    engine = Engine(lambda e, b: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _score(e):
        score = scores[e.state.epoch - 1]
        e.state.metrics["dice"] = score
        with torch.no_grad():
            net.weight.fill_(tag * 10 + e.state.epoch)
        if score > evaluator.state.best_metric:
            evaluator.state.best_metric, evaluator.state.best_metric_epoch = score, e.state.epoch

    state.attach(engine)
    saver.attach(engine)
    engine.run([0], max_epochs=len(scores))
    return state, evaluator.state


def _best_weight(tmp_path) -> float:
    return torch.load(tmp_path / "model.pt", weights_only=True)["weight"].item()


def _checkpoint(tmp_path, state) -> str:
    path = tmp_path / "checkpoint.pt"
    torch.save({"key_metric": state.state_dict()}, path)
    return str(path)


def test_resume_keeps_a_better_model(tmp_path):
    state, best = _validate(tmp_path, [0.5, 0.8, 0.6], tag=1)
    assert _best_weight(tmp_path) == 12 and (best.best_metric, best.best_metric_epoch) == (0.8, 2)
    ckpt = _checkpoint(tmp_path, state)

    # resumed: a worse score keeps run 1's best model, and the validator's best is run 1's
    state, best = _validate(tmp_path, [0.7], tag=2, load_path=ckpt)
    assert _best_weight(tmp_path) == 12 and (best.best_metric, best.best_metric_epoch) == (0.8, 2)
    assert [p for p, _ in state.state_dict()["saved"]] == [0.8]

    # a better score after the resume replaces it
    state, best = _validate(tmp_path, [0.9], tag=3, load_path=_checkpoint(tmp_path, state))
    assert _best_weight(tmp_path) == 31 and best.best_metric == 0.9


def test_without_the_state_the_best_model_restarts(tmp_path):
    _validate(tmp_path, [0.8], tag=1)
    _validate(tmp_path, [0.7], tag=2)  # no load_path: MONAI's saver alone overwrites the better model
    assert _best_weight(tmp_path) == 21


def test_old_checkpoint_warns_and_starts_fresh(tmp_path, caplog):
    _validate(tmp_path, [0.8], tag=1)
    old = tmp_path / "old.pt"
    torch.save({"model": {}}, old)
    with caplog.at_level(logging.WARNING, logger="monai_medt.handlers"):
        _validate(tmp_path, [0.7], tag=2, load_path=str(old))
    assert "holds no 'key_metric' entry" in caplog.text and str(old) in caplog.text
    assert _best_weight(tmp_path) == 21


def test_missing_best_file_warns_and_starts_fresh(tmp_path, caplog):
    state, _ = _validate(tmp_path, [0.8], tag=1)
    ckpt = _checkpoint(tmp_path, state)
    (tmp_path / "model.pt").unlink()
    with caplog.at_level(logging.WARNING, logger="monai_medt.handlers"):
        _, best = _validate(tmp_path, [0.7], tag=2, load_path=ckpt)
    assert "is missing" in caplog.text and str(tmp_path / "model.pt") in caplog.text
    assert _best_weight(tmp_path) == 21 and best.best_metric == 0.7  # a file exists again


def test_errors(tmp_path):
    saver = CheckpointSaver(str(tmp_path), {"model": nn.Linear(1, 1)}, save_interval=1)
    with pytest.raises(ValueError, match="save_key_metric=True"):
        KeyMetricState(saver)
    saver = CheckpointSaver(str(tmp_path), {"model": nn.Linear(1, 1)}, save_key_metric=True, key_metric_name="dice")
    state = KeyMetricState(saver, SimpleNamespace(state=SimpleNamespace(best_metric=-1, best_metric_epoch=-1)))
    with pytest.raises(ValueError, match="no 'best_metric' entry"):
        state.load_state_dict({"saved": []})
