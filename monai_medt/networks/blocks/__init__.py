# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.

from __future__ import annotations

from .axial_attention import AxialAttention, AxialAttentionNoPos, GatedAxialAttention
from .axial_block import AxialBlock, make_axial_stage
from .decoder import AdditiveSkipDecoder
from .stem import ConvStem
