# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""Write a label volume predicted from a DICOM series as a DICOM Segmentation (SEG) of that series."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from monai.utils import optional_import

import monai_medt

if TYPE_CHECKING:
    from pydicom import Dataset

hd, has_highdicom = optional_import("highdicom")
pydicom, _ = optional_import("pydicom")
codes, _ = optional_import("pydicom.sr.codedict", name="codes")
InvalidDicomError, _ = optional_import("pydicom.errors", name="InvalidDicomError")

__all__ = ["SEG_CODING_SCHEME", "check_dicom_seg_sources", "require_highdicom", "write_dicom_seg"]

# The bundle's classes carry names, not codes of a standard terminology, so each segment's property type is a
# private code (scheme designators starting with "99" are local, DICOM PS3.3 8.1.2): value = class value, meaning = class name.
SEG_CODING_SCHEME = "99MONAIMEDT"
_SERIES_NUMBER = 1000  # fixed number of the derived SEG series
_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
_DICOMDIR = "1.2.840.10008.1.3.10"
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_TOL = 1e-2  # voxels; NIfTI stores affines in float32, so exact equality is too strict after a save/load


def write_dicom_seg(
    labels: np.ndarray,
    affine: np.ndarray,
    series_dir: str | os.PathLike,
    output_path: str | os.PathLike,
    class_names: Mapping[int | str, str],
) -> Path:
    """
    Write ``labels`` as a binary DICOM Segmentation of the DICOM series in ``series_dir``, one segment per class.

    Segment ``k`` is class value ``k`` (segment numbers are the class values, so they are the same in every file);
    a frame is written for each (segment, source slice) that holds the class. An all-background volume keeps its
    empty frames, as a SEG needs at least one. The SEG references every source instance and copies the series'
    geometry (pixel spacing, orientation, slice positions): each source slice must be a whole slice of ``labels``
    as placed by ``affine`` (any axis order or flips), e.g. a prediction on the grid MONAI's ``LoadImage`` read
    the series into. The file is written under a temporary name in the same folder, then renamed.

    Args:
        labels: class values, shape (I, J, K) or (1, I, J, K); 0 is background.
        affine: 4x4 voxel-to-world matrix of ``labels`` in RAS mm (MONAI's and NIfTI's convention).
        series_dir: folder holding one DICOM series of single-frame images.
        output_path: the SEG file to write (e.g. ``case_seg.dcm``); its folder must exist.
        class_names: segment label of each class value, e.g. ``{1: "liver", 2: "spleen"}`` or a bundle's
            ``channel_def`` (string keys; the background entry ``0`` is ignored). Values ``1..N`` must all be named
            and every value in ``labels`` must be one of them.

    Returns:
        ``output_path`` as a ``Path``.

    Raises:
        ImportError: when highdicom is not installed.
        ValueError: naming the folder or file, when the folder holds no or several series, an instance lacks a
            UID, a source slice is not a slice of ``labels``, slices are missing, or a class value has no name.
    """
    require_highdicom()
    series_dir, output_path = Path(series_dir), Path(output_path)
    names = _segment_names(class_names, series_dir)
    labels = _label_volume(labels, names, series_dir)
    sources = _read_series(series_dir)
    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    placed = sorted(((_place(ds, inv, labels.shape), ds) for ds in sources), key=lambda item: item[0][1])
    slice_axes = {axis for (axis, k, _), _ in placed}
    ks = [k for (_, k, _), _ in placed]
    if len(slice_axes) != 1 or ks != list(range(labels.shape[next(iter(slice_axes))])):
        raise ValueError(
            f"DICOM series {series_dir}: its {len(sources)} slices do not map one to one onto the label volume "
            f"{labels.shape} (slice indices {ks}); write the SEG from a prediction on the series' own grid."
        )
    frames = np.stack([labels[index] for (_, _, index), _ in placed])
    algorithm = hd.AlgorithmIdentificationSequence(
        name="MedT", version=monai_medt.__version__, family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=k,
            segment_label=name,
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=hd.sr.CodedConcept(str(k), SEG_CODING_SCHEME, name),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for k, name in names.items()
    ]
    seg = hd.seg.Segmentation(
        source_images=[ds for _, ds in placed],
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="monai-medt",
        manufacturer_model_name="MedT",
        software_versions=monai_medt.__version__,
        device_serial_number="0",  # software has no serial number; the attribute is mandatory
        content_label="MEDT",
        content_description="MedT automatic segmentation",
    )
    tmp = output_path.with_name(f".{output_path.name}.{uuid.uuid4().hex}.tmp")
    try:
        seg.save_as(tmp)
        os.replace(tmp, output_path)
    finally:
        tmp.unlink(missing_ok=True)
    return output_path


def check_dicom_seg_sources(
    items: Sequence[Mapping[str, str]], class_names: Mapping[int | str, str], num_classes: int, image_key: str = "image"
) -> None:
    """
    Check before any inference what :func:`write_dicom_seg` will need, so that a run that writes DICOM-SEGs stops
    before its first output rather than part way through a folder: ``class_names`` names every class value
    ``1..num_classes - 1``, and each item whose ``image_key`` is a folder holds one readable DICOM series of
    single-frame images whose instances all carry their UIDs. Items that are files (NIfTI, NRRD, ...) get no SEG and
    are not checked.

    Args:
        items: datalist entries, e.g. ``[{"image": "scans/ct1"}, {"image": "scans/mr2.nii.gz"}]``.
        class_names: segment label of each class value, as for :func:`write_dicom_seg`.
        num_classes: the network's output channels, background included.
        image_key: the key of the input path in each item. Defaults to ``"image"``.

    Raises:
        ImportError: when highdicom is not installed.
        ValueError: naming the file or folder, as :func:`write_dicom_seg` would for that input, or naming the classes
            without a name.
    """
    require_highdicom()
    series_dirs = [Path(item[image_key]) for item in items if os.path.isdir(item[image_key])]
    if not series_dirs:
        return
    names = _segment_names(class_names, series_dirs[0])
    unnamed = [k for k in range(1, num_classes) if k not in names]
    if unnamed:
        raise ValueError(
            f"DICOM-SEG: the network predicts class values 1..{num_classes - 1}, but class_names ({dict(class_names)}) "
            f"has no name for {unnamed}; set class_names (the bundle's --class_names) for every class."
        )
    for series_dir in series_dirs:
        _read_series(series_dir)


def require_highdicom() -> None:
    """Raise an ``ImportError`` that says how to install highdicom when it is missing."""
    if not has_highdicom:
        raise ImportError("DICOM-SEG output needs highdicom: pip install 'monai-medt[dicom]'.")


def _segment_names(class_names: Mapping[int | str, str], series_dir: Path) -> dict[int, str]:
    try:
        names = dict(sorted((int(k), str(v)) for k, v in class_names.items() if int(k) != 0))
    except ValueError:
        names = {}
    if not names or sorted(names) != list(range(1, len(names) + 1)):
        raise ValueError(
            f"DICOM-SEG for {series_dir}: class_names must map the class values 1..N (no gaps) to names, got "
            f"{dict(class_names)}."
        )
    return names


def _label_volume(labels: np.ndarray, names: dict[int, str], series_dir: Path) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 4 and labels.shape[0] == 1:
        labels = labels[0]
    if labels.ndim != 3:
        raise ValueError(f"DICOM-SEG for {series_dir}: expected a (I, J, K) label volume, got shape {labels.shape}.")
    values = np.unique(labels)
    unnamed = [v.item() for v in values if v != 0 and v not in names]
    if unnamed:
        raise ValueError(
            f"DICOM-SEG for {series_dir}: label values {unnamed} have no name in class_names "
            f"({names}); set class_names (the bundle's --class_names) for every class."
        )
    return labels.astype(np.uint8 if len(names) < 256 else np.uint16)


def _read_series(series_dir: Path) -> list[Dataset]:
    """The headers of the one DICOM series in ``series_dir``; files that are not DICOM and DICOMDIRs are skipped."""
    if not series_dir.is_dir():
        raise ValueError(f"DICOM series folder not found: {series_dir}.")
    datasets = []
    for path in sorted(p for p in series_dir.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)  # highdicom needs only the headers
        except InvalidDicomError:
            continue
        if ds.file_meta.get("MediaStorageSOPClassUID") == _DICOMDIR:
            continue
        missing = [uid for uid in _UIDS if not ds.get(uid)]
        if missing:
            raise ValueError(f"{path}: empty or missing {', '.join(missing)}; a DICOM SEG references its sources by UID.")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise ValueError(f"{path}: multi-frame images are not supported (one single-frame image per slice).")
        datasets.append(ds)
    series = {ds.SeriesInstanceUID for ds in datasets}
    if len(series) != 1:
        raise ValueError(f"{series_dir}: expected one DICOM series, found {len(series)}.")
    return datasets


def _place(ds: Dataset, inv: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, tuple]:
    """(slice axis, slice index, index into the label volume giving the (Rows, Columns) frame) of one instance."""
    row_dir = np.asarray(ds.ImageOrientationPatient[:3], dtype=np.float64)  # along a row: increasing column
    col_dir = np.asarray(ds.ImageOrientationPatient[3:], dtype=np.float64)
    d_row, d_col = (float(s) for s in ds.PixelSpacing)  # between rows, between columns
    to_voxel = inv[:3, :3] @ _LPS_TO_RAS
    origin = to_voxel @ np.asarray(ds.ImagePositionPatient, dtype=np.float64) + inv[:3, 3]
    steps = (to_voxel @ (col_dir * d_row), to_voxel @ (row_dir * d_col))  # voxel step per row, per column
    snapped = [np.round(s) for s in steps]
    axes = [int(np.argmax(np.abs(s))) for s in snapped]
    on_grid = all(np.allclose(s, r, atol=_TOL) and np.abs(r).sum() == 1 for s, r in zip(steps, snapped))
    start = np.round(origin)
    if not on_grid or axes[0] == axes[1] or not np.allclose(origin, start, atol=_TOL):
        raise ValueError(
            f"{ds.filename}: the slice is not on the label volume's grid (voxel origin {origin.round(3)}, "
            f"row/column steps {steps[0].round(3)} / {steps[1].round(3)})."
        )
    slice_axis = 3 - axes[0] - axes[1]
    index: list = [None, None, None]
    for axis, step, n, shape_slot in zip(axes, snapped, (ds.Rows, ds.Columns), (np.s_[:, None], np.s_[None, :])):
        index[axis] = (int(start[axis]) + int(step[axis]) * np.arange(n))[shape_slot]
    index[slice_axis] = int(start[slice_axis])
    if any(np.min(i) < 0 or np.max(i) >= s for i, s in zip(index, shape)):
        raise ValueError(f"{ds.filename}: the slice lies (partly) outside the label volume {tuple(shape)}.")
    return slice_axis, index[slice_axis], tuple(index)
