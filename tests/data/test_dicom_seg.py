# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""DICOM-SEG writing on the shared CT series: references, frames, geometry, any axis order, clear failures."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from tests.data.dicom_series import assert_seg_matches, check_layout, referenceable_copy, shared_series

pytest.importorskip("highdicom", reason="highdicom is not installed (pip install monai-medt[dicom])")

from monai_medt.io import check_dicom_seg_sources, write_dicom_seg

NAMES = {1: "liver", 2: "spleen"}


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A referenceable copy of the series, its volume as MONAI loads it (ITK) and a two-class label volume on it."""
    from monai.transforms import LoadImage

    series_dir = referenceable_copy(shared_series(), tmp_path_factory.mktemp("dicom") / "series1")
    image = LoadImage(image_only=True)(str(series_dir))
    volume, affine = image.numpy(), image.affine.numpy()
    check_layout(series_dir, volume, affine)
    labels = np.zeros(volume.shape, np.uint8)
    labels[100:200, 150:300, 5:9] = 1  # an asymmetric box: a wrong flip or transpose would not match
    labels[300:320, 10:40, 12] = 2
    return series_dir, labels, affine


def test_seg_matches_labels_and_source(series, tmp_path):
    series_dir, labels, affine = series
    out = write_dicom_seg(labels, affine, series_dir, tmp_path / "case_seg.dcm", {"0": "background", "1": "liver",
                                                                                  "2": "spleen"})
    assert out == tmp_path / "case_seg.dcm" and [p.name for p in tmp_path.iterdir()] == ["case_seg.dcm"]
    assert_seg_matches(out, series_dir, labels, affine, NAMES)


def test_any_axis_order_and_flips(series, tmp_path):
    series_dir, labels, affine = series
    # the same voxels stored as (slice, flipped first axis, second axis), with the affine that places them
    image = nib.Nifti1Image(labels, affine).as_reoriented(np.array([[1, -1], [2, 1], [0, 1]]))
    assert image.shape == (labels.shape[2], labels.shape[0], labels.shape[1])
    out = write_dicom_seg(image.get_fdata(), image.affine, series_dir, tmp_path / "seg.dcm", NAMES)
    assert_seg_matches(out, series_dir, labels, affine, NAMES)


def test_empty_prediction_keeps_empty_frames(series, tmp_path):
    series_dir, labels, affine = series
    out = write_dicom_seg(np.zeros_like(labels)[None], affine, series_dir, tmp_path / "seg.dcm", NAMES)
    assert_seg_matches(out, series_dir, np.zeros_like(labels), affine, NAMES)


def test_failures_name_the_input_and_leave_no_file(series, tmp_path, monkeypatch):
    series_dir, labels, affine = series
    out = tmp_path / "seg.dcm"
    original = shared_series()  # anonymised: empty SOP, study and series UIDs
    with pytest.raises(ValueError, match="CT.*empty or missing SOPClassUID, SOPInstanceUID, StudyInstanceUID"):
        write_dicom_seg(labels, affine, original, out, NAMES)
    with pytest.raises(ValueError, match=rf"{series_dir}: label values \[2\] have no name"):
        write_dicom_seg(labels, affine, series_dir, out, {1: "liver"})
    with pytest.raises(ValueError, match="class values 1..N"):
        write_dicom_seg(labels, affine, series_dir, out, {1: "liver", 3: "spleen"})
    shifted = affine.copy()
    shifted[:3, 3] += 0.5 * affine[:3, 0]  # half a voxel off
    with pytest.raises(ValueError, match="CT.*not on the label volume's grid"):
        write_dicom_seg(labels, shifted, series_dir, out, NAMES)
    with pytest.raises(ValueError, match=rf"{series_dir}: its 20 slices do not map one to one"):
        write_dicom_seg(np.zeros((*labels.shape[:2], 21), np.uint8), affine, series_dir, out, NAMES)
    with pytest.raises(ValueError, match=r"CT.*outside the label volume \(512, 512, 19\)"):
        write_dicom_seg(labels[:, :, :19], affine, series_dir, out, NAMES)

    import highdicom

    def fail_midway(self, filename, **kwargs):
        with open(filename, "wb") as f:
            f.write(b"DICM partial")
        raise OSError("disk full")

    monkeypatch.setattr(highdicom.seg.Segmentation, "save_as", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        write_dicom_seg(labels, affine, series_dir, out, NAMES)
    assert list(tmp_path.iterdir()) == []  # no SEG, no temporary file


def test_sources_checked_before_inference(series, tmp_path):
    series_dir = series[0]
    nifti = tmp_path / "scan.nii.gz"  # a file input gets no SEG, so it is not read at all
    items = [{"image": str(nifti)}, {"image": str(series_dir)}]
    assert check_dicom_seg_sources(items, NAMES, num_classes=3) is None
    with pytest.raises(ValueError, match=r"class values 1..3, but class_names .* has no name for \[3\]"):
        check_dicom_seg_sources(items, NAMES, num_classes=4)
    with pytest.raises(ValueError, match="CT.*empty or missing SOPClassUID, SOPInstanceUID, StudyInstanceUID"):
        check_dicom_seg_sources([*items, {"image": str(shared_series())}], NAMES, num_classes=3)
    # no series among the inputs: the names are not needed either
    assert check_dicom_seg_sources([{"image": str(nifti)}], {}, num_classes=3) is None


def test_missing_highdicom_fails_when_the_bundle_is_parsed(monkeypatch):
    from monai_medt.io import SaveDicomSegd, dicom_seg

    monkeypatch.setattr(dicom_seg, "has_highdicom", False)
    with pytest.raises(ImportError, match=r"pip install 'monai-medt\[dicom\]'"):
        SaveDicomSegd("pred", output_dir="out", class_names=NAMES)
