# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""
Transforms for click-guided MedT. Training and inference cut a 2D slice (a 2D image is its own slice), scale its
intensities and resize it to the network's ``img_size`` with the same function (``prepare_slice``), so that the model
sees at inference exactly what it was trained on. Clicks become Gaussian guidance channels with MONAI's DeepGrow
transforms; training simulates clicks with MONAI's ``AddInitialSeedPointd`` / ``FindDiscrepancyRegionsd`` /
``AddRandomGuidanced`` (driven by ``monai.apps.deepgrow.interaction.Interaction``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.apps.deepgrow.transforms import (
    AddGuidanceSignald,
    AddInitialSeedPointd,
    AddRandomGuidanced,
    FindDiscrepancyRegionsd,
)
from monai.data import MetaTensor
from monai.transforms import Activationsd, Compose, EnsureTyped, MapTransform, Randomizable, ToNumpyd
from monai.utils import ensure_tuple_rep, look_up_option

from monai_medt.transforms.array import source_name

__all__ = [
    "MODALITIES",
    "ClickSliced",
    "PasteClickd",
    "RandClickSampled",
    "click_interaction_transforms",
    "click_seed_transforms",
    "prepare_slice",
]

MODALITIES = ("histology", "ct", "mr")


def prepare_slice(
    image: torch.Tensor, img_size: int | Sequence[int], modality: str, window: Sequence[float] = (-175.0, 250.0)
) -> torch.Tensor:
    """
    Scale a (C, X, Y) slice to [0, 1] and resize it to ``img_size`` (bilinear with antialiasing).

    Args:
        image: the slice, channel first.
        img_size: the network's input size.
        modality: ``"histology"`` (8-bit RGB: / 255), ``"ct"`` (HU ``window`` -> [0, 1]) or ``"mr"`` (the slice's
            0.5-99.5 percentile range -> [0, 1]).
        window: CT window in HU.
    """
    modality = look_up_option(modality, MODALITIES)
    x = torch.as_tensor(image, dtype=torch.float32)
    x = x.as_tensor() if isinstance(x, MetaTensor) else x
    if modality == "histology":
        x = x / 255.0
    elif modality == "ct":
        x = (x - window[0]) / (window[1] - window[0])
    else:
        lo, hi = torch.quantile(x.flatten()[:: max(1, x.numel() // 100000)], torch.tensor([0.005, 0.995]))
        x = (x - lo) / (hi - lo).clamp_min(1e-6)
    x = x.clamp(0.0, 1.0)
    size = ensure_tuple_rep(img_size, 2)
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def _spatial(img) -> tuple[int, ...]:
    return tuple(int(s) for s in img.shape[1:])


class RandClickSampled(Randomizable, MapTransform):
    """
    Training samples for click-guided MedT: ``num_samples`` random slices (along the last axis of a volume; a 2D
    image is its own slice) that contain a structure, each reduced to one structure (a random label value among
    ``classes`` present in the slice) as a binary mask, prepared with ``prepare_slice``.

    Args:
        keys: ``(image_key, label_key)``; image (C, X, Y[, Z]), label (1, X, Y[, Z]).
        img_size: network input size.
        modality: see ``prepare_slice``.
        window: CT window.
        classes: label values that count as structures; ``None``: every non-zero value.
        num_samples: slices per item (a list is returned; MONAI's collate flattens it).
        min_pixels: a structure must cover this many pixels of the slice to be sampled.
    """

    def __init__(
        self,
        keys: Sequence[str] = ("image", "label"),
        img_size: int | Sequence[int] = 128,
        modality: str = "histology",
        window: Sequence[float] = (-175.0, 250.0),
        classes: Sequence[int] | None = None,
        num_samples: int = 1,
        min_pixels: int = 16,
    ) -> None:
        super().__init__(keys)
        if len(self.keys) != 2:
            raise ValueError(f"keys must be (image_key, label_key), got {self.keys}.")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
        self.img_size = ensure_tuple_rep(img_size, 2)
        self.modality = look_up_option(modality, MODALITIES)
        self.window = tuple(window)
        self.classes = None if classes is None else [int(c) for c in classes]
        self.num_samples = num_samples
        self.min_pixels = min_pixels

    def _candidates(self, label: np.ndarray) -> list[tuple[int, int]]:
        """(slice index or -1, label value) pairs with at least ``min_pixels`` pixels."""
        planes = [(-1, label)] if label.ndim == 2 else [(k, label[..., k]) for k in range(label.shape[-1])]
        found = []
        for k, plane in planes:
            values, counts = np.unique(plane, return_counts=True)
            for v, n in zip(values.tolist(), counts.tolist()):
                if v != 0 and n >= self.min_pixels and (self.classes is None or int(v) in self.classes):
                    found.append((k, int(v)))
        return found

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> list[dict]:
        d = dict(data)
        image_key, label_key = self.keys
        image, label = d[image_key], d[label_key]
        if _spatial(image) != _spatial(label):
            raise ValueError(
                f"image {source_name(image)} {_spatial(image)} and label {source_name(label)} {_spatial(label)} "
                "differ in shape."
            )
        lab = np.asarray(label[0].as_tensor() if isinstance(label, MetaTensor) else label[0])
        candidates = self._candidates(lab)
        if not candidates:
            raise ValueError(
                f"label {source_name(label)} has no structure of >= {self.min_pixels} pixels"
                f"{'' if self.classes is None else f' with values {self.classes}'}."
            )
        samples = []
        for i in self.R.randint(len(candidates), size=self.num_samples):
            k, value = candidates[int(i)]
            img_slice = image if k < 0 else image[..., k]
            lab_slice = lab if k < 0 else lab[..., k]
            mask = torch.as_tensor((lab_slice == value).astype(np.float32))[None, None]
            out = {key: val for key, val in d.items() if key not in (image_key, label_key)}
            out[image_key] = prepare_slice(img_slice, self.img_size, self.modality, self.window).numpy()
            out[label_key] = F.interpolate(mask, size=self.img_size, mode="nearest-exact")[0].numpy()
            if out[label_key].sum() == 0:  # the structure vanished in the resize: keep its centre pixel
                ys, xs = np.nonzero(lab_slice == value)
                cy = int(ys.mean() * self.img_size[0] / lab_slice.shape[0])
                cx = int(xs.mean() * self.img_size[1] / lab_slice.shape[1])
                out[label_key][0, cy, cx] = 1.0
            samples.append(out)
        return samples


def click_seed_transforms(image_channels: int, sigma: float = 2.0) -> Compose:
    """First click of a training sample (MONAI's DeepGrow seed: inside each connected region, biased to the centre),
    rendered as two guidance channels after the ``image_channels`` image channels."""
    return Compose(
        [
            AddInitialSeedPointd(label="label", guidance="guidance"),
            AddGuidanceSignald(image="image", guidance="guidance", sigma=sigma, number_intensity_ch=image_channels),
            EnsureTyped(keys=("image", "label")),
        ]
    )


def click_interaction_transforms(image_channels: int, sigma: float = 2.0) -> Compose:
    """One simulated click for ``Interaction``: a click in the larger error region (missed structure -> positive,
    false positive -> negative), then the guidance channels are redrawn."""
    return Compose(
        [
            Activationsd(keys="pred", sigmoid=True),
            ToNumpyd(keys=("image", "label", "pred")),
            FindDiscrepancyRegionsd(label="label", pred="pred", discrepancy="discrepancy"),
            AddRandomGuidanced(guidance="guidance", discrepancy="discrepancy", probability="probability"),
            AddGuidanceSignald(image="image", guidance="guidance", sigma=sigma, number_intensity_ch=image_channels),
            EnsureTyped(keys=("image", "label")),
        ]
    )


class ClickSliced(MapTransform):
    """
    Inference input from user clicks: the slice the clicks are on (for a volume, the last index of the first click;
    clicks on other slices are ignored), prepared with ``prepare_slice``, plus positive and negative guidance
    channels. The full image is kept under ``f"{key}_full"`` for ``PasteClickd``.

    Args:
        keys: the image key; image (C, X, Y[, Z]) as loaded (no reorientation: clicks are in its index space).
        img_size: network input size.
        modality: see ``prepare_slice``.
        window: CT window.
        sigma: Gaussian width of the guidance, in network pixels (as in training).
        foreground: key of the positive clicks, ``[[x, y(, z)], ...]``.
        background: key of the negative clicks.
        slice_key: key where the slice index is stored (-1 for 2D images).
    """

    def __init__(
        self,
        keys: str = "image",
        img_size: int | Sequence[int] = 128,
        modality: str = "histology",
        window: Sequence[float] = (-175.0, 250.0),
        sigma: float = 2.0,
        foreground: str = "foreground",
        background: str = "background",
        slice_key: str = "click_slice",
    ) -> None:
        super().__init__(keys)
        self.img_size = ensure_tuple_rep(img_size, 2)
        self.modality = look_up_option(modality, MODALITIES)
        self.window = tuple(window)
        self.sigma = sigma
        self.foreground = foreground
        self.background = background
        self.slice_key = slice_key

    def _scale(self, points: list, plane: tuple[int, ...]) -> list[list[int]]:
        # pixel centres map as in the align_corners=False resize; the leading 0 stands for DeepGrow's unused
        # first entry (the training seed's distance); a negative entry would mark the point as padding
        size = self.img_size
        return [
            [0] + [int(np.clip(np.floor((float(c) + 0.5) * n / s), 0, n - 1)) for c, s, n in zip(p[:2], plane, size)]
            for p in points
        ]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            spatial = _spatial(image)
            fg = [list(p) for p in d.get(self.foreground) or []]
            bg = [list(p) for p in d.get(self.background) or []]
            if not fg and not bg:
                raise ValueError(
                    f"no clicks given for {source_name(image)}: send '{self.foreground}' and/or '{self.background}'."
                )
            for p in fg + bg:
                if len(p) != len(spatial) or any(not 0 <= int(c) < s for c, s in zip(p, spatial)):
                    raise ValueError(f"click {p} is outside {source_name(image)}, whose spatial shape is {spatial}.")
            k = int((fg + bg)[0][-1]) if len(spatial) == 3 else -1
            if k >= 0:
                fg = [p for p in fg if int(p[-1]) == k]
                bg = [p for p in bg if int(p[-1]) == k]
            plane = spatial[:2]
            img_slice = image if k < 0 else image[..., k]
            x = prepare_slice(img_slice, self.img_size, self.modality, self.window).numpy()

            pos, neg = self._scale(fg, plane), self._scale(bg, plane)
            n = max(len(pos), len(neg), 1)
            pad = [[-1, -1, -1]]
            guidance = [pos + pad * (n - len(pos)), neg + pad * (n - len(neg))]
            signal = AddGuidanceSignald(
                image="image", guidance="guidance", sigma=self.sigma, number_intensity_ch=x.shape[0]
            )
            d[f"{key}_full"] = image
            d[key] = torch.as_tensor(signal({"image": x, "guidance": guidance})["image"])
            d[self.slice_key] = k
        return d


class PasteClickd(MapTransform):
    """
    The network's click result back on the full image: sigmoid, resize to the slice (bilinear), threshold 0.5, put
    in an empty label of the image's spatial shape at the clicked slice. The label carries the image's affine and no
    channel axis (MONAI Label writes it with the image's geometry).

    Args:
        keys: the prediction key; (1, S, S) logits.
        ref_image: the image key used by ``ClickSliced`` (its full image is read from ``f"{ref_image}_full"``).
        slice_key: as in ``ClickSliced``.
    """

    def __init__(self, keys: str = "pred", ref_image: str = "image", slice_key: str = "click_slice") -> None:
        super().__init__(keys)
        self.ref_image = ref_image
        self.slice_key = slice_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        full = d[f"{self.ref_image}_full"]
        spatial = _spatial(full)
        k = int(d[self.slice_key])
        for key in self.key_iterator(d):
            logits = torch.as_tensor(d[key], dtype=torch.float32).reshape(1, 1, *d[key].shape[-2:])
            prob = F.interpolate(torch.sigmoid(logits), size=spatial[:2], mode="bilinear", align_corners=False)[0, 0]
            out = torch.zeros(spatial, dtype=torch.uint8)
            if k < 0:
                out[:] = (prob > 0.5).to(torch.uint8)
            else:
                out[..., k] = (prob > 0.5).to(torch.uint8)
            affine = full.affine if isinstance(full, MetaTensor) else None
            d[key] = MetaTensor(out, affine=affine) if affine is not None else out
        return d
