# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""The shared CT DICOM series made referenceable, and an independent check of a DICOM-SEG written for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from monai.utils import optional_import

from tests.conftest import require_path, shared_dir

pydicom, _ = optional_import("pydicom")  # the tests that use these helpers skip without highdicom (and pydicom)


def shared_series() -> Path:
    return require_path(shared_dir() / "data" / "totalseg_ct" / "dicom_series" / "ct_dicom")


def referenceable_copy(src: Path, dst: Path) -> Path:
    """
    Copy of the series in ``src`` with the UIDs its anonymisation emptied filled in: SOP class / instance from each
    file's meta header (Part 10 requires them equal), fixed study and series UIDs. Pixel data are copied as stored.
    """
    dst.mkdir(parents=True)
    study = pydicom.uid.generate_uid(entropy_srcs=["monai-medt test study"])
    series = pydicom.uid.generate_uid(entropy_srcs=["monai-medt test series"])
    for path in sorted(src.iterdir()):
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.save_as(dst / path.name)
    return dst


def slice_index(ds, affine: np.ndarray) -> int:
    """Index along the third axis of a MONAI-loaded (ITK) axial series volume of the instance ``ds``."""
    return round((float(ds.ImagePositionPatient[2]) - affine[2, 3]) / affine[2, 2])


def check_layout(series_dir: Path, volume: np.ndarray, affine: np.ndarray) -> None:
    """The mapping the SEG check relies on, frame = volume[:, :, k].T, holds for the stored pixel values."""
    for path in sorted(series_dir.iterdir()):
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(volume[:, :, slice_index(ds, affine)].T, hu, err_msg=str(path))


def assert_seg_matches(seg_path: Path, series_dir: Path, labels: np.ndarray, affine: np.ndarray, names: dict) -> None:
    """
    The SEG at ``seg_path`` references every instance of the series, describes one segment per class of ``names``,
    has a frame for each (class, slice) where ``labels`` (the series' MONAI/ITK layout) holds the class, each equal to
    that slice, and copies the source geometry.
    """
    seg = pydicom.dcmread(seg_path)
    sources = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in series_dir.iterdir())}
    first = next(iter(sources.values()))
    assert seg.Modality == "SEG" and seg.SOPClassUID == pydicom.uid.SegmentationStorage
    assert seg.StudyInstanceUID == first.StudyInstanceUID and seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    (ref_series,) = seg.ReferencedSeriesSequence
    assert ref_series.SeriesInstanceUID == first.SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in ref_series.ReferencedInstanceSequence} == set(sources)
    assert [(s.SegmentNumber, s.SegmentLabel) for s in seg.SegmentSequence] == list(names.items())
    assert (seg.Rows, seg.Columns) == (first.Rows, first.Columns)
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [float(v) for v in first.PixelSpacing]
    orientation = shared.PlaneOrientationSequence[0].ImageOrientationPatient
    assert [float(v) for v in orientation] == [float(v) for v in first.ImageOrientationPatient]
    masks = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    frames = set()
    for mask, group in zip(masks, seg.PerFrameFunctionalGroupsSequence):
        number = group.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        src = sources[group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        position = group.PlanePositionSequence[0].ImagePositionPatient
        assert [float(v) for v in position] == [float(v) for v in src.ImagePositionPatient]
        k = slice_index(src, affine)
        np.testing.assert_array_equal(mask, labels[:, :, k].T == number, err_msg=f"segment {number}, slice {k}")
        frames.add((number, k))
    expected = {(n, k) for n in names for k in range(labels.shape[2]) if (labels[:, :, k] == n).any()}
    if expected:  # an all-background volume keeps its empty frames
        assert frames == expected
    else:
        assert not masks.any() and len(frames) == len(names) * labels.shape[2]
