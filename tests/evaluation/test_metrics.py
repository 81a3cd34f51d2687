# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""Metrics against hand-computed values, and the folder evaluator on real GlaS and CT files."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from monai_medt.evaluation import evaluate_folder, monai_scores, object_scores, official_binarize, paper_scores
from monai_medt.evaluation.__main__ import main as eval_cli
from tests.conftest import require_path, shared_dir

P = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]])
G = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
# TP = 3 ((0,0), (0,1), (1,0)), FP = 2 ((1,1), (3,3)), FN = 1 ((0,2))


def test_paper_scores_hand_computed():
    f1, iou = paper_scores(P, G)
    assert f1 == pytest.approx(6 / 9) and iou == pytest.approx(3 / 6)


@pytest.mark.parametrize(
    "pred, gt, rule, expected",
    [
        (np.zeros((3, 3)), np.zeros((3, 3)), None, (1.0, 1.0)),  # both empty
        (np.ones((3, 3)), np.zeros((3, 3)), None, (0.0, 0.0)),  # empty ground truth
        (np.zeros((3, 3)), np.ones((3, 3)), None, (0.0, 0.0)),  # empty prediction
        (np.zeros((3, 3)), np.ones((3, 3)), 1.0, (1.0, 1.0)),  # official MATLAB rule: TP = 0 scores 1
        (np.eye(3), 1 - np.eye(3), 1.0, (1.0, 1.0)),
    ],
)
def test_paper_scores_empty_cases(pred, gt, rule, expected):
    assert paper_scores(pred, gt, tp_zero_score=rule) == expected


def test_official_binarize_uses_logit_threshold():
    logits = torch.tensor([[[[0.9, 0.1]], [[0.5, 0.49]]]])  # class-1 logits 0.5 and 0.49
    assert official_binarize(logits).tolist() == [[[1, 0]]]  # 0.5 >= 0.5 although argmax says class 0


def test_monai_scores_hand_computed_and_empty():
    s = monai_scores(P, G, num_classes=2)
    assert s["dice"][0] == pytest.approx(6 / 9) and s["iou"][0] == pytest.approx(3 / 6)
    # HD95 in pixels: the stray predicted pixel (3,3) is far from G
    assert s["hd95"][0] > 2
    multi = monai_scores(np.array([[0, 2], [2, 2]]), np.array([[0, 2], [1, 2]]), num_classes=3)
    assert multi["dice"][0] == 0.0 and multi["dice"][1] == pytest.approx(4 / 5)
    empty = monai_scores(np.zeros((4, 4)), np.zeros((4, 4)), num_classes=2)
    assert math.isnan(empty["dice"][0])  # ignore_empty: an absent class is not scored
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        monai_scores(np.full((2, 2), 3), np.zeros((2, 2)), num_classes=2)


def test_monai_scores_hides_monai_internal_deprecation(recwarn):
    # MONAI's HD95 passes its own deprecated argument (Project-MONAI/MONAI#9059); users of monai_scores cannot act on it
    monai_scores(P, G, num_classes=2)
    assert not [w for w in recwarn if "always_return_as_numpy" in str(w.message)]


def test_object_scores_hand_computed():
    gt = np.zeros((10, 10), int)
    gt[0:4, 0:4] = 1  # object A, 16 px
    gt[6:10, 6:10] = 1  # object B, 16 px
    pred = np.zeros((10, 10), int)
    pred[0:4, 0:3] = 1  # covers 12/16 of A (> 50 %): TP
    pred[6:8, 6:8] = 1  # covers 4/16 of B: FP; B is FN
    f1, dice = object_scores(pred, gt)
    assert f1 == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    dice_a, dice_b = 2 * 12 / (16 + 12), 2 * 4 / (16 + 4)
    expected = 0.5 * ((0.5 * dice_a + 0.5 * dice_b) + (12 / 16 * dice_a + 4 / 16 * dice_b))
    assert dice == pytest.approx(expected)
    assert object_scores(np.zeros((3, 3)), np.zeros((3, 3))) == (1.0, 1.0)
    assert object_scores(np.zeros((3, 3)), np.ones((3, 3))) == (0.0, 0.0)


def test_evaluate_folder_on_glas(tmp_path):
    root = require_path(shared_dir() / "data" / "glas" / "test")
    names = ["testA_1", "testA_2", "testB_1"]
    pred_dir, label_dir = tmp_path / "pred", tmp_path / "label"
    pred_dir.mkdir(), label_dir.mkdir()
    expected = {}
    for i, name in enumerate(names):
        gt = np.array(Image.open(root / "labelcol" / f"{name}.png"))
        shutil.copy(root / "labelcol" / f"{name}.png", label_dir / f"{name}.png")
        pred = gt.copy()
        if i == 1:
            pred = np.roll(gt, 15, axis=1)  # a shifted prediction
        if i == 2:
            pred[:] = 0  # an empty prediction
        Image.fromarray(pred).save(pred_dir / f"{name}.png")
        expected[name] = paper_scores(pred, gt)
    summary = evaluate_folder(pred_dir, label_dir, tmp_path / "out", image_dir=root / "img", num_overlays=2)
    with open(tmp_path / "out" / "per_image.csv") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert list(rows) == names
    assert float(rows["testA_1"]["paper_f1"]) == 1.0 and float(rows["testA_1"]["object_f1"]) == 1.0
    for name in names:
        assert float(rows[name]["paper_f1"]) == pytest.approx(expected[name][0])
        assert float(rows[name]["paper_iou"]) == pytest.approx(expected[name][1])
    assert float(rows["testB_1"]["paper_f1"]) == 0.0 and float(rows["testB_1"]["dice_1"]) == 0.0
    stored = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert stored == summary and stored["cases"] == 3
    assert stored["mean"]["paper_f1"] == pytest.approx(np.mean([expected[n][0] for n in names]))
    overlays = sorted(p.name for p in (tmp_path / "out" / "overlays").iterdir())
    assert overlays == ["testA_1.png", "testA_2.png"]
    w = Image.open(root / "img" / "testA_1.png").size[0]
    assert Image.open(tmp_path / "out" / "overlays" / "testA_1.png").size[0] == 3 * w + 8
    # the official TP = 0 rule turns the empty prediction into a perfect score
    official = evaluate_folder(pred_dir, label_dir, tmp_path / "out2", num_overlays=0, tp_zero_score=1.0)
    assert official["mean"]["paper_f1"] > summary["mean"]["paper_f1"]


def test_evaluate_folder_volume_multiclass(tmp_path):
    seg = require_path(shared_dir() / "data" / "totalseg_ct" / "v2_small" / "example_seg_multilabel_v2.nii.gz")
    import nibabel as nib

    img = nib.load(seg)
    data = np.asarray(img.dataobj).astype(np.int16)
    labels = np.where(np.isin(data, [1, 5]), np.where(data == 1, 1, 2), 0)  # spleen -> 1, liver -> 2
    (tmp_path / "gt").mkdir(), (tmp_path / "pred").mkdir()
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), img.affine), tmp_path / "gt" / "case.nii.gz")
    pred = labels.copy()
    pred[pred == 1] = 0  # spleen missed
    nib.save(nib.Nifti1Image(pred.astype(np.uint8), img.affine), tmp_path / "pred" / "case.nii.gz")
    summary = evaluate_folder(tmp_path / "pred", tmp_path / "gt", tmp_path / "out", num_classes=3)
    assert summary["mean"]["dice_1"] == 0.0 and summary["mean"]["dice_2"] == pytest.approx(1.0)
    assert summary["pooled_dice"] == {"1": 0.0, "2": 1.0}
    assert "paper_f1" not in summary["mean"] and (tmp_path / "out" / "overlays" / "case.png").is_file()


def test_evaluate_errors_name_files(tmp_path, capsys):
    (tmp_path / "pred").mkdir(), (tmp_path / "gt").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "pred" / "a.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "pred" / "b.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "gt" / "a.png")
    with pytest.raises(ValueError, match=r"no ground truth.*\['b'\]"):
        evaluate_folder(tmp_path / "pred", tmp_path / "gt", tmp_path / "out")
    (tmp_path / "pred" / "b.png").unlink()
    Image.fromarray(np.full((4, 4), 3, np.uint8)).save(tmp_path / "gt" / "a.png")
    with pytest.raises(ValueError, match=r"gt/a.png: mask is not binary"):
        evaluate_folder(tmp_path / "pred", tmp_path / "gt", tmp_path / "out")
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(tmp_path / "gt" / "a.png")
    assert eval_cli(["--pred-dir", str(tmp_path / "pred"), "--label-dir", str(tmp_path / "gt"),
                     "--output-dir", str(tmp_path / "out")]) == 2
    assert "prediction a.png has shape (4, 4), ground truth (4, 5)" in capsys.readouterr().err
    assert not (tmp_path / "out" / "summary.json").exists()  # nothing half-written
