# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""
Segmentation metrics: the MedT paper's per-image protocol, GlaS object-level scores, and MONAI's per-class metrics.

Paper protocol (MATLAB scripts of the official repo): per image, with binary prediction P and ground truth G,
``F1 = 2TP / (2TP + FP + FN)`` (Dice) and ``IoU = TP / (TP + FP + FN)`` of the foreground, averaged over images.
The official scripts score an image with ``TP = 0`` as 1 whatever FP and FN are (``tp_zero_score=1.0``); that rule
is available but not the default, which scores 1 only when both masks are empty and 0 otherwise.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

__all__ = [
    "paper_scores",
    "official_binarize",
    "object_scores",
    "monai_scores",
]


def official_binarize(logits: torch.Tensor) -> torch.Tensor:
    """The official prediction rule: class-1 **logit** >= 0.5 (not argmax, not a probability). (B, C, ...) -> (B, ...)."""
    if logits.shape[1] < 2:
        raise ValueError(f"official_binarize needs at least 2 channels of logits, got shape {tuple(logits.shape)}.")
    return (logits[:, 1] >= 0.5).to(torch.uint8)


def paper_scores(pred: np.ndarray, gt: np.ndarray, tp_zero_score: float | None = None) -> tuple[float, float]:
    """
    Per-image F1 (Dice) and foreground IoU of two binary masks.

    Args:
        pred: predicted mask (non-zero = foreground).
        gt: ground-truth mask (non-zero = foreground).
        tp_zero_score: score given when TP = 0. None (default): 1.0 if both masks are empty, else 0.0 (the usual
            convention); 1.0 reproduces the official MATLAB rule, which scores every TP = 0 image as perfect.

    Returns:
        (f1, iou).
    """
    p, g = np.asarray(pred) > 0, np.asarray(gt) > 0
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground truth shape {g.shape}.")
    tp = int(np.count_nonzero(p & g))
    fp = int(np.count_nonzero(p & ~g))
    fn = int(np.count_nonzero(~p & g))
    if tp == 0:
        if tp_zero_score is not None:
            return float(tp_zero_score), float(tp_zero_score)
        empty = fp == 0 and fn == 0
        return (1.0, 1.0) if empty else (0.0, 0.0)
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    from scipy import ndimage

    labels, count = ndimage.label(np.asarray(mask) > 0)
    return labels, int(count)


def object_scores(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """
    GlaS object-level F1 and object Dice, with objects taken as the connected components (4-connectivity) of binary
    masks; with official instance masks, pass them binarised (touching glands then merge into one object).

    - object F1: a predicted object is a true positive if it covers more than 50 % of some ground-truth object;
      unmatched predicted objects are false positives and unmatched ground-truth objects false negatives.
    - object Dice: ``0.5 * (sum_i w_i Dice(G_i, S*(G_i)) + sum_j v_j Dice(G*(S_j), S_j))``, with ``S*(G_i)`` the
      predicted object overlapping ``G_i`` most, weights proportional to object areas (Sirinukunwattana et al. 2017).

    Empty masks: both empty gives (1, 1); one empty gives (0, 0).
    """
    g_lab, n_g = _components(gt)
    s_lab, n_s = _components(pred)
    if n_g == 0 and n_s == 0:
        return 1.0, 1.0
    if n_g == 0 or n_s == 0:
        return 0.0, 0.0
    # overlap[i, j] = |G_i & S_j| for ids 1..n
    pairs = g_lab.astype(np.int64) * (n_s + 1) + s_lab
    overlap = np.bincount(pairs.ravel(), minlength=(n_g + 1) * (n_s + 1)).reshape(n_g + 1, n_s + 1)[1:, 1:]
    g_area = np.bincount(g_lab.ravel(), minlength=n_g + 1)[1:]
    s_area = np.bincount(s_lab.ravel(), minlength=n_s + 1)[1:]

    matched_s = (overlap > 0.5 * g_area[:, None]).any(axis=0)
    tp = int(np.count_nonzero(matched_s))
    fp = n_s - tp
    matched_g = (overlap > 0.5 * g_area[:, None]).any(axis=1)
    fn = n_g - int(np.count_nonzero(matched_g))
    f1 = 2 * tp / (2 * tp + fp + fn)

    def _dice(inter: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return 2 * inter / (a + b)

    best_s = overlap.argmax(axis=1)  # for each G_i
    dice_g = np.where(overlap.max(axis=1) > 0, _dice(overlap[np.arange(n_g), best_s], g_area, s_area[best_s]), 0.0)
    best_g = overlap.argmax(axis=0)  # for each S_j
    dice_s = np.where(overlap.max(axis=0) > 0, _dice(overlap[best_g, np.arange(n_s)], g_area[best_g], s_area), 0.0)
    obj_dice = 0.5 * (float((g_area / g_area.sum() * dice_g).sum()) + float((s_area / s_area.sum() * dice_s).sum()))
    return float(f1), obj_dice


def monai_scores(pred: np.ndarray, gt: np.ndarray, num_classes: int, spacing=None) -> dict[str, list[float]]:
    """
    MONAI DiceMetric, MeanIoU and HausdorffDistanceMetric (95th percentile) per foreground class for one image or
    volume of integer labels. A class absent from both masks gives NaN (MONAI's convention); HD95 is in pixels, or
    in mm when ``spacing`` is given.
    """
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU
    from monai.networks.utils import one_hot

    p = torch.as_tensor(np.asarray(pred)).long()[None, None]
    g = torch.as_tensor(np.asarray(gt)).long()[None, None]
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {tuple(p.shape[2:])} differs from ground truth {tuple(g.shape[2:])}.")
    if int(p.max()) >= num_classes or int(g.max()) >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}), got max pred {int(p.max())}, gt {int(g.max())}.")
    p1, g1 = one_hot(p, num_classes), one_hot(g, num_classes)
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)(p1, g1)[0]
    iou = MeanIoU(include_background=False, reduction="none", ignore_empty=True)(p1, g1)[0]
    with warnings.catch_warnings():
        # MONAI 1.5-1.6 passes its own deprecated `always_return_as_numpy` inside this metric
        # (Project-MONAI/MONAI#9059): a FutureWarning that the caller can neither act on nor avoid.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
        hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(p1, g1, spacing=spacing)
    hd = hd[0]
    return {"dice": dice.tolist(), "iou": iou.tolist(), "hd95": hd.tolist()}
