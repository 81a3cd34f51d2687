# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.

from __future__ import annotations

from .blocks import (
    AdditiveSkipDecoder,
    AxialAttention,
    AxialAttentionNoPos,
    AxialBlock,
    ConvStem,
    GatedAxialAttention,
    make_axial_stage,
)
from .nets import AxialUNet, GatedAxialUNet, LoGo, MedT
from .official import OFFICIAL_FACTORIES, convert_official_state_dict, load_official
from .utils import gate_values, set_gates_trainable
