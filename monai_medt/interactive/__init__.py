# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""Click-guided (DeepGrow-2D style) MedT: the image plus a positive and a negative guidance channel."""

from __future__ import annotations

from .transforms import (
    MODALITIES,
    ClickSliced,
    PasteClickd,
    RandClickSampled,
    click_interaction_transforms,
    click_seed_transforms,
    prepare_slice,
)
