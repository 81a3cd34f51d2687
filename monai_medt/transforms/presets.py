# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""
Preset MONAI ``Compose`` pipelines for MedT on histology images and clinical CT / MR volumes (used by the bundles).

- ``"histology"`` (2D RGB, e.g. GlaS / MoNuSeg): intensities 0..255 -> 0..1 with no mean/std normalisation and binary
  masks, as the official code; resize to ``img_size`` (the paper resizes offline); training adds a horizontal flip
  (and, with ``strong=True``, vertical flips, 90-degree turns, a random affine and colour jitter).
- ``"ct"`` (3D): RAS orientation, in-plane spacing ``pixdim``, HU window ``window`` -> 0..1; training samples
  foreground-biased 2D slices of ``img_size`` (RandCropByPosNegLabeld with a [H, W, 1] size, then SqueezeDimd);
  validation / inference keep whole volumes for SliceInferer.
- ``"mr"`` (3D): as ``"ct"`` but z-score normalisation over non-zero voxels instead of a window.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    RandAdjustContrastd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Resized,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
    SqueezeDimd,
)
from monai.utils import ensure_tuple_rep, look_up_option

from monai_medt.transforms.dictionary import BinaryMaskd, CheckImaged, CheckPaird

__all__ = ["PRESETS", "MODES", "get_transforms", "FileErrorCompose"]

PRESETS = ("histology", "ct", "mr")
MODES = ("train", "val", "infer")


class FileErrorCompose(Compose):
    """
    ``Compose`` whose failures name the input files: any exception raised while transforming a dict of file paths is
    re-raised as ``ValueError("<files>: <root cause>")`` (the original chained), so a corrupted or mismatched file is
    identified without reading a traceback.
    """

    def __call__(self, input_, *args, **kwargs):
        try:
            return super().__call__(input_, *args, **kwargs)
        except Exception as e:
            files = [str(v) for v in input_.values() if isinstance(v, (str, os.PathLike))] if isinstance(input_, dict) else []
            if not files:
                raise
            root = e
            while root.__cause__ is not None:
                root = root.__cause__
            raise ValueError(f"{', '.join(files)}: {type(root).__name__}: {root}") from e


def get_transforms(
    preset: str,
    mode: str,
    img_size: Sequence[int] | int = 128,
    image_key: str = "image",
    label_key: str = "label",
    in_channels: int | None = None,
    mask_mode: str = "strict",
    window: tuple[float, float] = (-175.0, 250.0),
    pixdim: tuple[float, float] | None = (1.5, 1.5),
    num_samples: int = 4,
    flip: bool = True,
    resize: bool = True,
    strong: bool = False,
) -> Compose:
    """
    Build a preset pipeline.

    Args:
        preset: ``"histology"``, ``"ct"`` or ``"mr"``.
        mode: ``"train"``, ``"val"`` (image + label) or ``"infer"`` (image only).
        img_size: network input size (H, W); histology images are resized to it, volumes sampled in slices of it.
        image_key: key of the image. Defaults to ``"image"``.
        label_key: key of the label. Defaults to ``"label"``.
        in_channels: if given, the loaded image must have this many channels (checked with the file name).
        mask_mode: histology masks: ``"strict"`` ({0,1}/{0,255}), ``"instance"`` (ids > 0) or ``"threshold"``.
        window: CT intensity window in HU mapped to 0..1 (clipped). Defaults to (-175, 250), abdominal soft tissue.
        pixdim: in-plane spacing (mm) for volumes, or None to keep the native grid. Through-plane spacing is kept.
        num_samples: slices per volume per training iteration (volumes). Defaults to 4.
        flip: random horizontal flip (p = 0.5) in training, as the official code since 2021-07. Defaults to True.
        resize: histology: resize images to ``img_size`` (the paper's scale; invert it with ``Invertd`` to get
            full-resolution masks). False keeps the native scale for a sliding-window inferer. Defaults to True.
        strong: histology training only: add the augmentations that the paper's recipe lacks (an option beyond the
            paper): vertical flip, random 90-degree turns, a random affine (any rotation, scale +-10 %, reflected
            borders, nearest-neighbour masks) and colour jitter (contrast gamma 0.7-1.5, per-channel scale +-10 % and
            shift +-0.05). GlaS glands have no canonical orientation, and staining varies between slides.
            Defaults to False.

    Example::

        >>> train_tf = get_transforms("histology", "train", img_size=128)
        >>> infer_tf = get_transforms("ct", "infer", img_size=(160, 160))
    """
    preset = look_up_option(preset, PRESETS)
    mode = look_up_option(mode, MODES)
    if strong and preset != "histology":
        raise ValueError(f"strong augmentation is defined for the histology preset only, got preset {preset!r}.")
    size = ensure_tuple_rep(img_size, 2)
    keys = [image_key] if mode == "infer" else [image_key, label_key]
    xforms: list = [LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys)]
    if preset == "histology":
        xforms.append(CheckImaged(image_key, channels=in_channels, spatial_dims=2))
        if mode != "infer":
            xforms += [CheckPaird(image_key, label_key), BinaryMaskd(label_key, mode=mask_mode)]
        xforms.append(ScaleIntensityRanged(image_key, a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True))
        if resize:
            xforms.append(
                Resized(keys, spatial_size=size, mode=["bilinear", "nearest"][: len(keys)], anti_aliasing=False)
            )
        if mode == "train" and flip:
            # MONAI loads 2D images as (C, W, H): spatial axis 0 is the image's horizontal axis
            xforms.append(RandFlipd(keys, prob=0.5, spatial_axis=0))
        if mode == "train" and strong:
            xforms += [
                RandFlipd(keys, prob=0.5, spatial_axis=1),
                RandRotate90d(keys, prob=0.5, max_k=3),
                RandAffined(
                    keys,
                    prob=0.5,
                    rotate_range=np.pi,
                    scale_range=(0.1, 0.1),
                    mode=["bilinear", "nearest"],
                    padding_mode="reflection",
                ),
                RandAdjustContrastd(image_key, prob=0.3, gamma=(0.7, 1.5)),
                RandScaleIntensityd(image_key, factors=0.1, prob=0.5, channel_wise=True),
                RandShiftIntensityd(image_key, offsets=0.05, prob=0.5, channel_wise=True),
            ]
    else:
        xforms.append(CheckImaged(image_key, channels=in_channels, spatial_dims=3))
        if mode != "infer":
            xforms.append(CheckPaird(image_key, label_key))
        xforms.append(Orientationd(keys, axcodes="RAS", labels=None))
        if pixdim is not None:
            xforms.append(
                Spacingd(
                    keys,
                    pixdim=(float(pixdim[0]), float(pixdim[1]), -1.0),
                    mode=["bilinear", "nearest"][: len(keys)],
                )
            )
        if preset == "ct":
            xforms.append(
                ScaleIntensityRanged(image_key, a_min=window[0], a_max=window[1], b_min=0.0, b_max=1.0, clip=True)
            )
        else:
            xforms.append(NormalizeIntensityd(image_key, nonzero=True, channel_wise=True))
        if mode == "train":
            xforms += [
                SpatialPadd(keys, spatial_size=(size[0], size[1], -1)),
                RandCropByPosNegLabeld(
                    keys,
                    label_key=label_key,
                    spatial_size=(size[0], size[1], 1),
                    pos=1,
                    neg=1,
                    num_samples=num_samples,
                ),
                SqueezeDimd(keys, dim=-1),
            ]
            if flip:
                xforms.append(RandFlipd(keys, prob=0.5, spatial_axis=0))
    xforms.append(EnsureTyped(keys, dtype=None, track_meta=mode != "train"))
    return FileErrorCompose(xforms)
