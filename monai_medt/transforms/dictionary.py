# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""Dictionary versions of the monai_medt transforms, and an image/label geometry check."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from monai_medt.transforms.array import AdjacentSlicesToChannels, BinaryMask, CheckImage, source_name

__all__ = [
    "BinaryMaskd", "BinaryMaskD", "BinaryMaskDict",
    "AdjacentSlicesToChannelsd", "AdjacentSlicesToChannelsD", "AdjacentSlicesToChannelsDict",
    "CheckImaged", "CheckImageD", "CheckImageDict",
    "CheckPaird", "CheckPairD", "CheckPairDict",
]


class BinaryMaskd(MapTransform):
    """Dictionary version of :class:`monai_medt.transforms.BinaryMask`."""

    backend = BinaryMask.backend

    def __init__(self, keys: KeysCollection, mode: str = "strict", threshold: float = 127, allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys)
        self.converter = BinaryMask(mode=mode, threshold=threshold)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


class AdjacentSlicesToChannelsd(MapTransform):
    """Dictionary version of :class:`monai_medt.transforms.AdjacentSlicesToChannels`."""

    backend = AdjacentSlicesToChannels.backend

    def __init__(self, keys: KeysCollection, num_adjacent: int = 1, slice_axis: int = 2, allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys)
        self.stacker = AdjacentSlicesToChannels(num_adjacent=num_adjacent, slice_axis=slice_axis)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.stacker(d[key])
        return d


class CheckImaged(MapTransform):
    """Dictionary version of :class:`monai_medt.transforms.CheckImage`."""

    backend = CheckImage.backend

    def __init__(
        self,
        keys: KeysCollection,
        channels: int | None = None,
        spatial_dims: int | None = None,
        allow_constant: bool = False,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.checker = CheckImage(channels=channels, spatial_dims=spatial_dims, allow_constant=allow_constant)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.checker(d[key])
        return d


class CheckPaird(Transform):
    """
    Check that an image and its label share the spatial shape and, for MetaTensors, the voxel grid in world
    coordinates (within ``atol`` mm; grids that differ only by axis flips, e.g. LPS vs LAS storage, are the same);
    raise a ``ValueError`` naming both files otherwise. Place it right after loading (before any resampling).

    Args:
        image_key: key of the image. Defaults to ``"image"``.
        label_key: key of the label. Defaults to ``"label"``.
        atol: tolerance on affine entries (mm). Defaults to 1e-3.
    """

    def __init__(self, image_key: str = "image", label_key: str = "label", atol: float = 1e-3) -> None:
        self.image_key = image_key
        self.label_key = label_key
        self.atol = atol

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Mapping[Hashable, torch.Tensor]:
        image, label = data[self.image_key], data[self.label_key]
        names = f"image {source_name(image)} and label {source_name(label)}"
        if tuple(image.shape[1:]) != tuple(label.shape[1:]):
            raise ValueError(
                f"{names} differ in size: {tuple(image.shape[1:])} vs {tuple(label.shape[1:])} (spatial shapes)."
            )
        if isinstance(image, MetaTensor) and isinstance(label, MetaTensor):
            a, b = np.asarray(image.affine, dtype=float), np.asarray(label.affine, dtype=float)
            if a.shape != b.shape or not np.allclose(_corners(a, image.shape[1:]), _corners(b, label.shape[1:]), atol=self.atol):
                raise ValueError(f"{names} differ in geometry (affine):\n{a}\nvs\n{b}")
        return data


def _corners(affine: np.ndarray, shape) -> np.ndarray:
    """World coordinates of the grid's corner voxels, sorted: equal for grids that differ only by axis flips."""
    dims = min(len(shape), affine.shape[0] - 1)
    grid = np.array(np.meshgrid(*[[0, s - 1] for s in shape[:dims]], indexing="ij")).reshape(dims, -1)
    world = affine[:dims, :dims] @ grid + affine[:dims, -1:]
    return np.array(sorted(map(tuple, np.round(world.T, 3))))


BinaryMaskD = BinaryMaskDict = BinaryMaskd
AdjacentSlicesToChannelsD = AdjacentSlicesToChannelsDict = AdjacentSlicesToChannelsd
CheckImageD = CheckImageDict = CheckImaged
CheckPairD = CheckPairDict = CheckPaird
