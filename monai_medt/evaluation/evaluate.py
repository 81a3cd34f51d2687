# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""Evaluate a folder of predicted masks against ground truth: per-image CSV, summary JSON and overlay PNGs."""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from monai_medt.data.datalists import IMAGE_EXTENSIONS, _extension, _natural_key
from monai_medt.evaluation.metrics import monai_scores, object_scores, paper_scores

__all__ = ["evaluate_folder", "load_mask", "save_overlay", "write_overlays", "require_file", "raise_no_images"]

_VOLUME_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def _stem(name: str) -> str:
    ext = _extension(name)
    return name[: -len(ext)] if ext else name


def load_mask(path: str | os.PathLike, binary: bool) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """
    Read a mask (2D image file or volume) as an integer array, with the voxel spacing for volumes. With ``binary``,
    {0, 255} or {0, 1} masks become {0, 1}; other values raise a ``ValueError`` naming the file.
    """
    path = Path(path)
    ext = _extension(path.name)
    if ext not in IMAGE_EXTENSIONS:
        raise ValueError(f"{path}: unsupported extension {ext!r} (supported: {', '.join(IMAGE_EXTENSIONS)}).")
    spacing = None
    try:
        if ext in _VOLUME_EXTENSIONS:
            from monai.transforms import LoadImage

            img = LoadImage(image_only=True)(str(path))
            arr = np.asarray(img)
            spacing = tuple(float(s) for s in img.pixdim[: arr.ndim])
        else:
            from PIL import Image

            with Image.open(path) as im:
                arr = np.array(im)
    except Exception as e:  # unreadable or truncated files
        raise ValueError(f"cannot read {path}: {e}") from e
    if arr.ndim == 3 and ext not in _VOLUME_EXTENSIONS:
        arr = arr[..., 0]  # an RGB-saved mask: channels are identical
    if binary:
        values = set(np.unique(arr).tolist())
        if not (values <= {0, 1} or values <= {0, 255}):
            raise ValueError(f"{path}: mask is not binary (values {sorted(values)[:8]}); expected {{0,1}} or {{0,255}}.")
        arr = (arr > 0).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError(f"{path}: label volume holds non-integer values.")
    return arr.astype(np.int64), spacing


def save_overlay(path: str | os.PathLike, image: np.ndarray | None, gt: np.ndarray, pred: np.ndarray) -> None:
    """Write image | ground truth | prediction side by side as one PNG (masks drawn in colour over the image)."""
    from PIL import Image

    h, w = gt.shape
    if image is None:
        base = np.zeros((h, w, 3), dtype=np.uint8)
    else:
        base = np.asarray(image)
        if base.ndim == 2:
            base = np.repeat(base[..., None], 3, axis=-1)
        base = base[..., :3]
        if base.dtype != np.uint8:
            lo, hi = float(base.min()), float(base.max())
            base = ((base - lo) / (hi - lo + 1e-8) * 255).astype(np.uint8)
    palette = np.array(
        [[0, 0, 0], [0, 255, 0], [255, 0, 0], [0, 128, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255]], np.uint8
    )

    def tint(mask: np.ndarray) -> np.ndarray:
        colour = palette[np.asarray(mask) % len(palette)]
        out = base.astype(np.float32)
        fg = np.asarray(mask) > 0
        out[fg] = 0.5 * out[fg] + 0.5 * colour[fg]
        return out.astype(np.uint8)

    gap = np.full((h, 4, 3), 255, np.uint8)
    panel = np.concatenate([base, gap, tint(gt), gap, tint(pred)], axis=1)
    _atomic_save(lambda p: Image.fromarray(panel).save(p, format="PNG"), Path(path))


def _atomic_save(write, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _middle_slice(gt: np.ndarray) -> int:
    per_slice = (gt > 0).reshape(-1, gt.shape[-1]).sum(0)
    return int(per_slice.argmax()) if per_slice.max() > 0 else gt.shape[-1] // 2


def evaluate_folder(
    pred_dir: str | os.PathLike,
    label_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    image_dir: str | os.PathLike | None = None,
    num_classes: int = 2,
    num_overlays: int = 5,
    tp_zero_score: float | None = None,
    names: Sequence[str] | None = None,
) -> dict:
    """
    Score every prediction in ``pred_dir`` against the file of the same name (any supported extension) in
    ``label_dir`` and write ``per_image.csv``, ``summary.json`` and ``overlays/<name>.png`` (the first
    ``num_overlays`` cases; 3D cases show the axial slice with the most ground truth).

    Metrics per image: the paper's F1 / IoU of the foreground (binary tasks: ``num_classes == 2``), MONAI Dice, IoU and
    HD95 per foreground class, and for binary 2D masks GlaS object F1 / object Dice. The summary holds image means
    (NaN-aware) and dataset-level (pooled) Dice per class.

    Args:
        pred_dir: predicted masks (PNG/BMP/TIF 0/255 or 0/1 for binary, or label volumes).
        label_dir: ground truth with the same file names (extensions may differ).
        output_dir: where to write the results (created).
        image_dir: images for the overlays (same names), optional.
        num_classes: number of classes including background. Defaults to 2.
        num_overlays: overlays to write. Defaults to 5.
        tp_zero_score: paper protocol's TP = 0 rule; None (default) or 1.0 for the official MATLAB rule.
        names: restrict to these case names (stems).

    Returns:
        the summary dict (also in ``summary.json``).

    Raises:
        FileNotFoundError: a folder is missing. ValueError: a prediction without ground truth (named), unreadable
        files, non-binary masks in a binary task, or shape mismatches (named).
    """
    pred_dir, label_dir, output_dir = Path(pred_dir), Path(label_dir), Path(output_dir)
    for folder, what in ((pred_dir, "prediction"), (label_dir, "label")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{what} folder not found: {folder}")
    binary = num_classes == 2
    preds = {_stem(p.name): p for p in pred_dir.iterdir() if p.is_file() and not p.name.startswith(".")}
    labels = {_stem(p.name): p for p in label_dir.iterdir() if p.is_file() and not p.name.startswith(".")}
    images = {}
    if image_dir is not None:
        images = {_stem(p.name): p for p in Path(image_dir).iterdir() if p.is_file()}
    selected = sorted(preds if names is None else names, key=_natural_key)
    missing = [n for n in selected if n not in labels or n not in preds]
    if missing:
        raise ValueError(f"no ground truth (or no prediction) for: {missing[:10]} (in {label_dir} / {pred_dir}).")
    if not selected:
        raise ValueError(f"no predictions found in {pred_dir}.")

    rows, pooled = [], np.zeros((num_classes, 3), dtype=np.int64)  # tp, fp, fn per class
    for index, name in enumerate(selected):
        pred, _ = load_mask(preds[name], binary)
        gt, spacing = load_mask(labels[name], binary)
        if pred.shape != gt.shape:
            raise ValueError(f"{name}: prediction {preds[name].name} has shape {pred.shape}, ground truth {gt.shape}.")
        row: dict[str, float | str] = {"name": name}
        if binary:
            row["paper_f1"], row["paper_iou"] = paper_scores(pred, gt, tp_zero_score)
        scores = monai_scores(pred, gt, num_classes, spacing=spacing)
        for key, values in scores.items():
            for c, value in enumerate(values, start=1):
                row[f"{key}_{c}"] = float(value)
        if binary and gt.ndim == 2:
            row["object_f1"], row["object_dice"] = object_scores(pred, gt)
        for c in range(1, num_classes):
            p, g = pred == c, gt == c
            pooled[c] += [np.count_nonzero(p & g), np.count_nonzero(p & ~g), np.count_nonzero(~p & g)]
        rows.append(row)
        if index < num_overlays:
            image = None
            if name in images:
                from PIL import Image

                if gt.ndim == 2:
                    with Image.open(images[name]) as im:
                        image = np.array(im)
            if gt.ndim == 3:
                z = _middle_slice(gt)
                save_overlay(output_dir / "overlays" / f"{name}.png", None, gt[..., z].T, pred[..., z].T)
            else:
                save_overlay(output_dir / "overlays" / f"{name}.png", image, gt, pred)

    columns = list(rows[0].keys())
    for row in rows[1:]:
        columns += [c for c in row if c not in columns]

    def _write_csv(path: str) -> None:
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    _atomic_save(_write_csv, output_dir / "per_image.csv")
    means = {}
    for c in columns[1:]:
        values = np.array([float(r.get(c, math.nan)) for r in rows], dtype=float)
        finite = values[np.isfinite(values)]
        means[c] = float(finite.mean()) if finite.size else None
    summary = {
        "cases": len(rows),
        "num_classes": num_classes,
        "mean": means,
        "pooled_dice": {
            str(c): float(2 * tp / (2 * tp + fp + fn)) if (2 * tp + fp + fn) else None
            for c, (tp, fp, fn) in enumerate(pooled.tolist())
            if c > 0
        },
        "protocol": {
            "paper": "per-image F1 = 2TP/(2TP+FP+FN) and IoU = TP/(TP+FP+FN) of the foreground, averaged over images",
            "tp_zero_score": tp_zero_score,
            "monai": "DiceMetric, MeanIoU, HausdorffDistanceMetric(percentile=95) per class, ignore_empty",
        },
    }

    def _write_json(path: str) -> None:
        with open(path, "w") as f:
            json.dump(summary, f, indent=2)

    _atomic_save(_write_json, output_dir / "summary.json")
    return summary


def write_overlays(image_paths: Sequence[str], pred_dir: str | os.PathLike, output_dir: str | os.PathLike) -> int:
    """
    Write ``image | prediction`` overlays for 2D images whose predicted mask (same stem, any extension) is in
    ``pred_dir``; returns the number written. Images without a prediction are skipped.
    """
    from PIL import Image

    preds = {_stem(p.name): p for p in Path(pred_dir).iterdir() if p.is_file()}
    written = 0
    for path in image_paths:
        name = _stem(Path(path).name)
        if name not in preds:
            continue
        pred, _ = load_mask(preds[name], binary=False)
        with Image.open(path) as im:
            image = np.array(im)
        save_overlay(Path(output_dir) / f"{name}.png", image, pred, pred)
        written += 1
    return written


def require_file(path: str | os.PathLike, what: str) -> None:
    """Raise ``FileNotFoundError`` naming ``what`` unless ``path`` is a file (checked before a workflow starts)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} not found: {path}")


def raise_no_images(folder: str | os.PathLike) -> list:
    """Raise a ``FileNotFoundError`` / ``ValueError`` for an input folder without images."""
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"input folder not found: {folder}")
    raise ValueError(f"no images (.png, .bmp, .tif, .jpg) in {folder}")
