# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.

from __future__ import annotations

from .array import AdjacentSlicesToChannels, BinaryMask, CheckImage
from .dictionary import (
    AdjacentSlicesToChannelsd,
    AdjacentSlicesToChannelsD,
    AdjacentSlicesToChannelsDict,
    BinaryMaskd,
    BinaryMaskD,
    BinaryMaskDict,
    CheckImaged,
    CheckImageD,
    CheckImageDict,
    CheckPaird,
    CheckPairD,
    CheckPairDict,
)
from .presets import get_transforms
