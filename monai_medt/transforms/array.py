# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""Array transforms that MONAI lacks for MedT pipelines: mask binarisation with checks, 2.5D slice stacks, input checks."""

from __future__ import annotations

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import Transform
from monai.utils import TransformBackends, convert_to_tensor, look_up_option
from monai.data.meta_obj import get_track_meta

__all__ = ["BinaryMask", "AdjacentSlicesToChannels", "CheckImage", "source_name", "BINARY_MODES"]

BINARY_MODES = ("strict", "instance", "threshold")


def source_name(img: NdarrayOrTensor) -> str:
    """The file an image came from (MetaTensor ``filename_or_obj``), or ``"<array>"``."""
    if isinstance(img, MetaTensor):
        name = img.meta.get("filename_or_obj")
        if name:
            return str(name)
    return "<array>"


class BinaryMask(Transform):
    """
    Turn a mask into {0, 1}.

    - ``"strict"``: the mask must already be binary, as {0, 1} or {0, 255} (8-bit masks like the MedT/GlaS PNGs);
      anything else raises a ``ValueError`` naming the file and the values found.
    - ``"instance"``: instance ids (0 = background), e.g. GlaS ``*_anno.bmp`` or rasterised MoNuSeg: ``id > 0``.
    - ``"threshold"``: ``value > threshold`` (the official MedT loader uses 127 on 8-bit masks).

    Args:
        mode: ``"strict"``, ``"instance"`` or ``"threshold"``. Defaults to ``"strict"``.
        threshold: used by ``"threshold"``. Defaults to 127.

    Example::

        >>> BinaryMask()(torch.tensor([[[0, 255], [255, 0]]])).tolist()
        [[[0.0, 1.0], [1.0, 0.0]]]
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, mode: str = "strict", threshold: float = 127) -> None:
        self.mode = look_up_option(mode, BINARY_MODES)
        self.threshold = threshold

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        name = source_name(img)
        t = convert_to_tensor(img, track_meta=get_track_meta())
        if self.mode == "strict":
            values = torch.unique(t.as_tensor() if isinstance(t, MetaTensor) else t)
            allowed = [int(v) if float(v).is_integer() else float(v) for v in values.tolist()]
            if not (set(allowed) <= {0, 1} or set(allowed) <= {0, 255}):
                shown = allowed[:8] + (["..."] if len(allowed) > 8 else [])
                raise ValueError(
                    f"mask {name} is not binary: values {shown}; expected {{0, 1}} or {{0, 255}} "
                    "(use mode='instance' for instance ids or mode='threshold' for soft masks)."
                )
            out = t > 0
        elif self.mode == "instance":
            out = t > 0
        else:
            out = t > self.threshold
        return out.to(torch.float32)


class AdjacentSlicesToChannels(Transform):
    """
    2.5D input: stack each slice with its ``num_adjacent`` neighbours on either side along ``slice_axis`` as channels,
    replicating the first / last slice at the ends. A (C, H, W, D) volume becomes (C * (2k + 1), H, W, D) with the
    same affine, so slices sampled later carry their context. Channel order: for each input channel, slices
    ``-k .. +k``.

    Args:
        num_adjacent: neighbours on each side (k). Defaults to 1.
        slice_axis: spatial axis of the slices (0, 1 or 2 of H, W, D). Defaults to 2.

    Example::

        >>> AdjacentSlicesToChannels(1)(torch.rand(1, 8, 8, 5)).shape
        torch.Size([3, 8, 8, 5])
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, num_adjacent: int = 1, slice_axis: int = 2) -> None:
        if num_adjacent < 0:
            raise ValueError(f"num_adjacent must be >= 0, got {num_adjacent}.")
        if slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2 (a spatial axis of (C, H, W, D)), got {slice_axis}.")
        self.num_adjacent = num_adjacent
        self.slice_axis = slice_axis

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        t = convert_to_tensor(img, track_meta=get_track_meta())
        if t.ndim != 4:
            raise ValueError(f"{source_name(img)}: expected a (C, H, W, D) volume, got shape {tuple(t.shape)}.")
        axis = self.slice_axis + 1
        depth = t.shape[axis]
        index = torch.arange(depth)
        parts = [
            torch.index_select(t, axis, (index + offset).clamp(0, depth - 1).to(t.device))
            for offset in range(-self.num_adjacent, self.num_adjacent + 1)
        ]
        # (C, 2k+1, ...) -> (C * (2k+1), ...)
        out = torch.stack(parts, dim=1).reshape(t.shape[0] * len(parts), *t.shape[1:])
        if isinstance(t, MetaTensor):
            out = MetaTensor(out.as_tensor() if isinstance(out, MetaTensor) else out, meta=t.meta, applied_operations=t.applied_operations)
        return out


class CheckImage(Transform):
    """
    Fail early, naming the file, on inputs a network cannot use: wrong channel count, wrong number of spatial dims,
    an empty image, non-finite values, or a constant image.

    Args:
        channels: required channel count (after EnsureChannelFirst), or None to accept any. Defaults to None.
        spatial_dims: required number of spatial dims (2 or 3), or None. Defaults to None.
        allow_constant: accept images whose voxels all have one value. Defaults to False.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, channels: int | None = None, spatial_dims: int | None = None, allow_constant: bool = False):
        self.channels = channels
        self.spatial_dims = spatial_dims
        self.allow_constant = allow_constant

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        name = source_name(img)
        shape = tuple(img.shape)
        if len(shape) < 2 or any(s == 0 for s in shape):
            raise ValueError(f"{name}: empty image of shape {shape}.")
        if self.spatial_dims is not None and len(shape) - 1 != self.spatial_dims:
            raise ValueError(
                f"{name}: expected {self.spatial_dims} spatial dims after the channel, got shape {shape} "
                f"(is it a {'2D image' if self.spatial_dims == 3 else 'volume'}?)."
            )
        if self.channels is not None and shape[0] != self.channels:
            raise ValueError(f"{name}: expected {self.channels} channel(s), got {shape[0]} (shape {shape}).")
        data = np.asarray(img.detach().cpu() if isinstance(img, torch.Tensor) else img)
        if not np.isfinite(data).all():
            raise ValueError(f"{name}: contains NaN or infinite values.")
        if not self.allow_constant and data.min() == data.max():
            raise ValueError(f"{name}: every voxel has the value {data.min()} (empty or corrupted image).")
        return img
