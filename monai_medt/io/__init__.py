# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.

from __future__ import annotations

from .dicom_seg import SEG_CODING_SCHEME, check_dicom_seg_sources, require_highdicom, write_dicom_seg
from .dictionary import SaveDicomSegD, SaveDicomSegd, SaveDicomSegDict
