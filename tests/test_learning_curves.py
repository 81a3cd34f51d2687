# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""scripts/plot_learning_curves.py: epochs counted from the run's own logs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "plot_learning_curves.py"


def _script():
    spec = importlib.util.spec_from_file_location("plot_learning_curves", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _log(log_dir, iterations: int, epochs: int) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(log_dir))  # as the bundles' TensorBoardStatsHandler: global steps
    for step in range(1, iterations + 1):
        writer.add_scalar("train_loss", 1.0 / step, step)
    for epoch in range(1, epochs + 1):
        writer.add_scalar("train_mean_dice", 0.1 * epoch, epoch)
        writer.add_scalar("val_mean_dice", 0.1 * epoch, epoch)
    writer.close()


def test_iterations_per_epoch_from_the_logs(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install monai-medt[bundle])")
    script = _script()
    _log(tmp_path / "a", iterations=6, epochs=3)  # e.g. 8 images at batch 4
    assert script.iterations_per_epoch(script.read_scalars(tmp_path / "a"), tmp_path / "a") == 2
    _log(tmp_path / "b", iterations=7, epochs=3)
    with pytest.raises(ValueError, match=r"7 iterations in 3 epochs .* pass --iters-per-epoch"):
        script.iterations_per_epoch(script.read_scalars(tmp_path / "b"), tmp_path / "b")
    out = tmp_path / "curves.png"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--run", f"a={tmp_path / 'a'}", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
