# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""MONAI Label inference tasks over the MedT bundles' ``inference.json``."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from monai.bundle import ConfigParser
from monai.transforms import AsDiscreted, Invertd, SaveImaged, SqueezeDimd
from monailabel.tasks.infer.bundle import BundleInferTask
from torch import nn

__all__ = ["MCDropoutBundleInferTask", "MedTBundleInferTask"]


class MedTBundleInferTask(BundleInferTask):
    """
    Serves a MedT bundle's ``inference.json`` (its preprocessing, inferer and postprocessing, and ``models/model.pt``)
    through MONAI Label. The bundle's ``SaveImaged`` is dropped because MONAI Label writes the label itself, with the
    image's affine. For 2D images (GlaS PNGs) the label loses its channel axis so that it is written as a 2D image.

    Args:
        path: the bundle folder.
        conf: the app's ``--conf`` settings.
        dimension: spatial dimensions of the images this model takes (3 for volumes segmented slice by slice, 2 for
            2D images); MONAI Label clients use it to decide how to display the model.
        kwargs: passed to ``BundleInferTask``.
    """

    def __init__(self, path: str, conf: dict[str, str], dimension: int, **kwargs: Any) -> None:
        kwargs.setdefault("post_filter", [SaveImaged])
        super().__init__(path, conf, **kwargs)
        self.dimension = dimension

    def _load_bundle_config(self, path: str, config: str) -> ConfigParser:
        # as `monai.bundle run` does: configs may refer to the metadata (e.g. class names) through `_meta_`
        parser = super()._load_bundle_config(path, config)
        parser.read_meta(os.path.join(path, "configs", "metadata.json"))
        return parser

    def run_pre_transforms(self, data: dict[str, Any], transforms: Sequence[Callable]) -> dict[str, Any]:
        # MONAI's Spacingd updates every "image_*" entry as a meta dict, and MONAI Label's "image_path" is a string
        path = data.pop("image_path", None)
        data = super().run_pre_transforms(data, transforms)
        if path is not None:
            data["image_path"] = path
        return data

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[Any, Any]:
        # class indices: 8-bit, which PNG (2D images) requires and NIfTI readers take
        return super().writer(data, extension=extension, dtype=dtype or np.uint8)

    def post_transforms(self, data: Any = None) -> Sequence[Callable]:
        post = list(super().post_transforms(data))
        if self.dimension == 2 and self.add_post_restore:
            post.append(SqueezeDimd(keys=self.key_pred, dim=0))
        return post


class MCDropoutBundleInferTask(MedTBundleInferTask):
    """
    The bundle's network with dropout before its head, run with only the dropout layers in training mode (batch
    norms stay in eval mode, unlike MONAI Label's ``train_mode``, which would normalise each slice with its own
    statistics) and returning class probabilities on the image grid, for MONAI Label's epistemic scoring.

    Args:
        path: the bundle folder.
        conf: the app's ``--conf`` settings.
        dimension: spatial dimensions of the images (see ``MedTBundleInferTask``).
        dropout: dropout probability inserted before the head (the network's ``dropout`` argument).
    """

    def __init__(self, path: str, conf: dict[str, str], dimension: int, dropout: float = 0.2) -> None:
        if not 0.0 < dropout < 1.0:
            raise ValueError(f"dropout must be in (0, 1) for MC-dropout scoring, got {dropout}.")
        super().__init__(
            path, conf, dimension, dropout=dropout, skip_writer=True, post_filter=[SaveImaged, Invertd, AsDiscreted]
        )

    def post_transforms(self, data: Any = None) -> Sequence[Callable]:
        # probabilities keep their class channel
        return BundleInferTask.post_transforms(self, data)

    def _get_network(self, device, data):
        network = super()._get_network(device, data)
        network.eval()
        for module in network.modules():
            if isinstance(module, nn.modules.dropout._DropoutNd):
                module.train()
        return network
