# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.

from __future__ import annotations

from .evaluate import evaluate_folder, load_mask, raise_no_images, require_file, save_overlay, write_overlays
from .metrics import monai_scores, object_scores, official_binarize, paper_scores
