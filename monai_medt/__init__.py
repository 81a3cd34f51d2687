# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""monai-medt: the Medical Transformer (MedT, MICCAI 2021) and its variants as MONAI networks."""

from __future__ import annotations

__version__ = "0.1.0"

from .networks import (
    AxialAttention,
    AxialAttentionNoPos,
    AxialUNet,
    GatedAxialAttention,
    GatedAxialUNet,
    LoGo,
    MedT,
    load_official,
)
from .transforms import (
    AdjacentSlicesToChannels,
    AdjacentSlicesToChannelsd,
    BinaryMask,
    BinaryMaskd,
    CheckImage,
    CheckImaged,
    CheckPaird,
    get_transforms,
)
