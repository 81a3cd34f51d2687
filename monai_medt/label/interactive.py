# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""MONAI Label task for click-guided MedT (bundles/medt_interactive_segmentation)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from monai.bundle import ConfigParser
from monai.inferers import Inferer, SimpleInferer
from monai.transforms import EnsureChannelFirstd, LoadImaged
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from monai_medt.interactive import ClickSliced, PasteClickd

__all__ = ["MedTClickInferTask"]


class MedTClickInferTask(BasicInferTask):
    """
    Click-guided MedT for one modality: each request carries ``foreground`` / ``background`` clicks in the image's
    voxel (or pixel) indices; the result is a binary label of the image's shape and geometry, filled on the clicked
    slice only (DeepGrow-2D behaviour: a user clicks slice by slice).

    Args:
        path: the interactive bundle folder; weights are read from ``models/model_<modality>.pt``.
        modality: ``"histology"``, ``"ct"`` or ``"mr"`` (sets the bundle's ``modality``, hence channels and scaling).
        kwargs: passed to ``BasicInferTask`` (e.g. ``preload``).
    """

    def __init__(self, path: str, modality: str, **kwargs: Any) -> None:
        parser = ConfigParser()
        parser.read_config(os.path.join(path, "configs", "inference.json"))
        parser["bundle_root"] = path
        parser["modality"] = modality
        self.parser = parser
        self.modality = modality
        super().__init__(
            path=os.path.join(path, "models", f"model_{modality}.pt"),
            network=parser.get_parsed_content("network_def"),
            type=InferType.DEEPGROW,
            labels={"structure": 1},
            dimension=2 if modality == "histology" else 3,
            description=f"Click-guided MedT ({modality}): positive/negative clicks on one slice segment a structure",
            **kwargs,
        )

    def pre_transforms(self, data: Any = None) -> Sequence[Callable]:
        p = self.parser
        return [
            LoadImaged(keys="image", image_only=True),
            EnsureChannelFirstd(keys="image"),
            ClickSliced(
                keys="image",
                img_size=p["img_size"],
                modality=self.modality,
                window=p["window"],
                sigma=p["sigma"],
            ),
        ]

    def inferer(self, data: Any = None) -> Inferer:
        return SimpleInferer()

    def inverse_transforms(self, data: Any = None) -> None:
        return None

    def post_transforms(self, data: Any = None) -> Sequence[Callable]:
        return [PasteClickd(keys="pred", ref_image="image")]
