# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""monai_medt transforms and presets on the real files in shared/data: values, geometry, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImaged, EnsureChannelFirstd
from PIL import Image

from monai_medt.transforms import (
    AdjacentSlicesToChannels,
    AdjacentSlicesToChannelsd,
    BinaryMask,
    BinaryMaskd,
    CheckImage,
    CheckPaird,
    get_transforms,
)
from tests.conftest import require_path, shared_dir


def _raises(match, fn, *args):
    """Call fn and check that it, or an exception it was raised from (Compose wraps them), matches ``match``."""
    import re

    with pytest.raises(Exception) as info:
        fn(*args)
    err, messages = info.value, []
    while err is not None:
        messages.append(str(err))
        err = err.__cause__
    assert any(re.search(match, m) for m in messages), messages


def _data(*parts):
    return require_path(shared_dir().joinpath("data", *parts))


def test_binary_mask_modes():
    t = torch.tensor([[[0, 255], [255, 0]]])
    assert BinaryMask()(t).tolist() == [[[0.0, 1.0], [1.0, 0.0]]]
    assert BinaryMask("instance")(torch.tensor([[[0, 3, 7]]])).tolist() == [[[0.0, 1.0, 1.0]]]
    assert BinaryMask("threshold", 127)(torch.tensor([[[0, 127, 128]]])).tolist() == [[[0.0, 0.0, 1.0]]]
    bad = MetaTensor(torch.tensor([[[0, 1, 2]]]), meta={"filename_or_obj": "/data/case7_mask.png"})
    with pytest.raises(ValueError, match=r"mask /data/case7_mask.png is not binary: values \[0, 1, 2\]"):
        BinaryMask()(bad)


def test_binary_mask_keeps_geometry():
    affine = torch.diag(torch.tensor([0.5, 0.7, 1.0, 1.0])).double()
    m = MetaTensor(torch.tensor([[[0.0, 255.0]]]), affine=affine)
    out = BinaryMaskd("label")({"label": m})["label"]
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, affine)


def test_adjacent_slices():
    vol = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 2, 3, 5).clone()
    affine = torch.eye(4, dtype=torch.float64) * 2
    out = AdjacentSlicesToChannels(1)(MetaTensor(vol, affine=affine))
    assert out.shape == (3, 2, 3, 5) and torch.equal(out.affine, affine)
    # channel 0 = previous slice (replicated at the start), 1 = itself, 2 = next (replicated at the end)
    assert out[:, 0, 0].tolist() == [[0, 0, 1, 2, 3], [0, 1, 2, 3, 4], [1, 2, 3, 4, 4]]
    assert AdjacentSlicesToChannelsd("image", 2)({"image": vol})["image"].shape == (5, 2, 3, 5)
    with pytest.raises(ValueError, match="num_adjacent"):
        AdjacentSlicesToChannels(-1)


def test_check_image_errors():
    with pytest.raises(ValueError, match=r"x.nii.gz: expected 1 channel\(s\), got 3"):
        CheckImage(channels=1)(MetaTensor(torch.rand(3, 4, 4), meta={"filename_or_obj": "x.nii.gz"}))
    with pytest.raises(ValueError, match="expected 3 spatial dims"):
        CheckImage(spatial_dims=3)(torch.rand(1, 4, 4))
    with pytest.raises(ValueError, match="every voxel has the value 0"):
        CheckImage()(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="NaN"):
        CheckImage()(torch.tensor([[[0.0, float("nan")]]]))


def test_histology_preset_on_glas():
    root = _data("glas", "train")
    item = {"image": str(root / "img" / "train_1.png"), "label": str(root / "labelcol" / "train_1.png")}
    raw = np.array(Image.open(item["label"])) > 0
    val = get_transforms("histology", "val", img_size=128, in_channels=3)(item)
    assert val["image"].shape == (3, 128, 128) and val["label"].shape == (1, 128, 128)
    assert 0.0 <= float(val["image"].min()) and float(val["image"].max()) <= 1.0
    assert set(torch.unique(val["label"]).tolist()) == {0.0, 1.0}
    assert abs(float(val["label"].mean()) - raw.mean()) < 0.02  # resizing keeps the foreground fraction
    infer = get_transforms("histology", "infer")({"image": item["image"]})
    assert infer["image"].shape == (3, 128, 128)  # the paper's scale by default
    native = get_transforms("histology", "infer", resize=False)({"image": item["image"]})
    assert native["image"].shape == (3, 775, 522)  # MONAI's (C, W, H) for 2D files, full resolution
    _raises(r"train_1.png: expected 1 channel\(s\), got 3", get_transforms("histology", "val", in_channels=1), item)


def test_histology_pair_mismatch_named(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 6), np.uint8)).save(tmp_path / "a_mask.png")
    item = {"image": str(tmp_path / "a.png"), "label": str(tmp_path / "a_mask.png")}
    _raises(r"image .*a.png and label .*a_mask.png differ in size", get_transforms("histology", "val"), item)
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(tmp_path / "a_mask.png")
    _raises(r"mask .*a_mask.png is not binary: values \[7\]", get_transforms("histology", "val"), item)


def test_histology_strong_augmentation_keeps_pairs_aligned(tmp_path):
    # an asymmetric binary pattern whose label is the image itself: every spatial draw must move both the same way
    mask = np.zeros((64, 48), np.uint8)
    mask[5:30, 8:20] = 255
    mask[40:60, 25:45] = 255
    Image.fromarray(np.repeat(mask[..., None], 3, axis=2)).save(tmp_path / "a.png")
    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    item = {"image": str(tmp_path / "a.png"), "label": str(tmp_path / "a_mask.png")}
    plain = get_transforms("histology", "val", img_size=32)(item)["label"][0]
    tf = get_transforms("histology", "train", img_size=32, strong=True)
    tf.set_random_state(0)
    moved = 0
    for _ in range(12):
        out = tf(item)
        image, label = out["image"], out["label"][0]
        assert image.shape == (3, 32, 32) and set(torch.unique(label).tolist()) <= {0.0, 1.0}
        # colour jitter keeps foreground and background apart; bilinear edges are the only disagreement
        assert float(((image[0] > 0.5).float() == label).float().mean()) > 0.93
        # neither the plain mask nor its horizontal flip (the paper's only augmentation): a new geometry
        moved += not (torch.equal(label, plain) or torch.equal(label, plain.flip(0)))
    assert moved >= 6
    with pytest.raises(ValueError, match="histology preset only"):
        get_transforms("ct", "train", strong=True)


@pytest.mark.parametrize(
    "image, label",
    [
        (("totalseg_ct", "v1_full", "example_ct.nii.gz"), ("totalseg_ct", "v1_full", "spleen.nii.gz")),
        (("pyradiomics_mr", "brain1_image.nrrd"), ("pyradiomics_mr", "brain1_label.nrrd")),
    ],
)
def test_volume_readers_keep_pair_geometry(image, label):
    item = {"image": str(_data(*image)), "label": str(_data(*label))}
    loaded = EnsureChannelFirstd(["image", "label"])(LoadImaged(["image", "label"])(item))
    CheckPaird()(loaded)  # same grid and affine on disk
    assert loaded["image"].shape == loaded["label"].shape
    preset = "ct" if "ct" in image[0] else "mr"
    out = get_transforms(preset, "val", img_size=64, pixdim=None)(item)
    assert torch.allclose(out["image"].affine, out["label"].affine)
    assert out["image"].shape[1:] == loaded["image"].shape[1:]  # orientation only permutes/flips axes here


def test_dicom_series_and_its_nifti_label_share_the_grid():
    series = _data("totalseg_ct", "dicom_series", "ct_dicom")
    seg = _data("totalseg_ct", "dicom_series", "example_seg_dicom_multilabel_v2.nii.gz")
    item = {"image": str(series), "label": str(seg)}
    loaded = EnsureChannelFirstd(["image", "label"])(LoadImaged(["image", "label"])(item))
    assert loaded["image"].shape == (1, 512, 512, 20) == loaded["label"].shape
    np.testing.assert_allclose(loaded["image"].pixdim[:2], [0.9766, 0.9766], atol=1e-3)
    assert float(loaded["image"].min()) < -500 and float(loaded["image"].max()) > 500  # HU after rescale
    # stored with opposite row order (LPS series vs LAS NIfTI) but the same voxel grid in world space
    assert not torch.allclose(loaded["image"].affine, loaded["label"].affine)
    CheckPaird()(loaded)
    out = get_transforms("ct", "val", pixdim=None)(item)
    torch.testing.assert_close(out["image"].affine, out["label"].affine)
    shifted = dict(loaded)
    shifted["label"] = MetaTensor(loaded["label"].as_tensor(), affine=loaded["label"].affine.clone())
    shifted["label"].affine[0, 3] += 5.0
    with pytest.raises(ValueError, match="differ in geometry"):
        CheckPaird()(shifted)


def test_ct_train_preset_samples_slices():
    item = {
        "image": str(_data("totalseg_ct", "v1_full", "example_ct.nii.gz")),
        "label": str(_data("totalseg_ct", "v1_full", "spleen.nii.gz")),
    }
    tf = get_transforms("ct", "train", img_size=64, num_samples=6)
    tf.set_random_state(0)
    samples = tf(item)
    assert len(samples) == 6
    assert all(s["image"].shape == (1, 64, 64) and s["label"].shape == (1, 64, 64) for s in samples)
    assert any(float(s["label"].sum()) > 0 for s in samples)  # pos=1: crops centred on the spleen occur
    assert all(0.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0 for s in samples)


def test_corrupted_volume_named(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00 not really a nifti")
    _raises("broken.nii.gz", get_transforms("ct", "infer"), {"image": str(bad)})
