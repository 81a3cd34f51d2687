# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""The README's main job, ``python -m monai_medt``: official checks and a GlaS segmentation with the shipped weights."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from monai_medt.__main__ import main
from tests.conftest import REPO_ROOT, require_path, shared_dir


def test_main_job_segments_glas_with_shipped_weights(tmp_path, capsys):
    require_path(REPO_ROOT / "bundles" / "medt_glas_segmentation" / "models" / "model.pt")
    glas = require_path(shared_dir() / "data" / "glas")
    out = tmp_path / "demo"
    assert main(["--cases", "2", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "MISMATCH" not in printed and "mean over 2 images" in printed
    images = sorted((glas / "test" / "img").glob("*.png"))[:2]
    assert all(f"  {image.stem} " in printed for image in images)  # each image's score
    for image in images:
        mask = np.asarray(Image.open(out / "pred" / image.name))
        assert mask.shape == np.asarray(Image.open(image)).shape[:2]
        assert set(np.unique(mask).tolist()) <= {0, 255}
        assert (out / "overlays" / image.name).exists()
    summary = json.loads((out / "scores" / "summary.json").read_text())
    assert summary["cases"] == 2
    # a trained model, not noise: GlaS glands cover about half of each image
    assert summary["mean"]["paper_f1"] > 0.5
