# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""Dictionary transform that writes a prediction as DICOM-SEG when its input was a DICOM series folder."""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping
from pathlib import Path

from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.utils import create_file_basename
from monai.transforms import MapTransform

from monai_medt.io.dicom_seg import require_highdicom, write_dicom_seg

__all__ = ["SaveDicomSegD", "SaveDicomSegDict", "SaveDicomSegd"]

logger = logging.getLogger(__name__)


class SaveDicomSegd(MapTransform):
    """
    Write each key's label volume as a DICOM Segmentation (:func:`monai_medt.io.write_dicom_seg`) when the image it
    was predicted from is a DICOM series folder (MetaTensor ``filename_or_obj`` is a directory); other inputs are
    skipped with a log line. The file is named like ``SaveImaged``'s output with ``separate_folder=False``:
    ``<output_dir>/<input name>_<output_postfix>.dcm``, so it lands next to the NIfTI of the same case.

    Args:
        keys: label volumes (1, I, J, K) on the source series' grid, e.g. the prediction after ``Invertd`` and
            ``AsDiscreted(argmax=True)``.
        output_dir: folder to write to (created if missing).
        class_names: segment label of each class value, see :func:`monai_medt.io.write_dicom_seg`.
        output_postfix: appended to the input name. Defaults to ``"seg"``.
        allow_missing_keys: don't raise when a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        class_names: Mapping[int | str, str],
        output_postfix: str = "seg",
        allow_missing_keys: bool = False,
    ):
        require_highdicom()  # when the bundle is parsed, not after the first case's inference
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.class_names = dict(class_names)
        self.output_postfix = output_postfix

    def __call__(self, data: Mapping[Hashable, MetaTensor]) -> dict[Hashable, MetaTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            labels = d[key]
            if not isinstance(labels, MetaTensor):
                raise TypeError(f"SaveDicomSegd: '{key}' must be a MetaTensor (its source and affine are needed).")
            source = str(labels.meta.get("filename_or_obj", ""))
            if not source or not os.path.isdir(source):
                logger.info(f"{source or key}: not a DICOM series folder, no DICOM-SEG written.")
                continue
            name = create_file_basename(self.output_postfix, source, self.output_dir, separate_folder=False)
            path = write_dicom_seg(
                labels.detach().cpu().numpy(), labels.affine.numpy(), source, f"{name}.dcm", self.class_names
            )
            logger.info(f"DICOM-SEG written: {path}")
        return d


SaveDicomSegD = SaveDicomSegDict = SaveDicomSegd
