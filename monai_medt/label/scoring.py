# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""MONAI Label epistemic scoring restricted to the images a MedT bundle takes."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from monailabel.tasks.scoring.epistemic_v2 import EpistemicScoring

__all__ = ["MedTEpistemicScoring"]

logger = logging.getLogger(__name__)


class MedTEpistemicScoring(EpistemicScoring):
    """
    MONAI Label's MC-dropout ``EpistemicScoring`` over the unlabelled images of the scoring model's own kind only: a
    studies folder may hold 2D images and volumes together, and a 2D model cannot score a volume (nor a slice-wise
    volume model a PNG); those images are skipped with a log line instead of ending the whole run in an error.

    Args:
        infer_task: the MC-dropout inference task (``MCDropoutBundleInferTask``).
        extensions: file name endings of the images the task takes, e.g. ``(".nii.gz", ".nrrd")``.
        series_folders: also score folders (DICOM series), for volume models.
        kwargs: passed to ``EpistemicScoring`` (``max_samples``, ``simulation_size``).
    """

    def __init__(self, infer_task: Any, extensions: Sequence[str], series_folders: bool = False, **kwargs: Any):
        super().__init__(infer_task, **kwargs)
        self.extensions = tuple(e.lower() for e in extensions)
        self.series_folders = series_folders

    def run_scoring(self, image_id, simulation_size, model_ts, datastore):
        uri = str(datastore.get_image_uri(image_id))
        if not (uri.lower().endswith(self.extensions) or (self.series_folders and os.path.isdir(uri))):
            logger.info(f"EPISTEMIC:: {image_id} skipped: not an image of this model's kind ({self.extensions})")
            return
        super().run_scoring(image_id, simulation_size, model_ts, datastore)
