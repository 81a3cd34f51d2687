# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.

from __future__ import annotations

from .axial_unet import AxialUNet, GatedAxialUNet
from .medt import LoGo, MedT

Medt = MedT
AxialUnet = AxialUNet
GatedAxialUnet = GatedAxialUNet
