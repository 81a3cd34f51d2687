# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.

from __future__ import annotations

from .datalists import (
    IMAGE_EXTENSIONS,
    decathlon_datalist,
    glas_datalist,
    medt_datalist,
    monuseg_datalist,
    rasterize_monuseg_xml,
    read_names,
    split_train_val,
    volume_datalist,
)
