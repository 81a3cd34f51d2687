# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""Datalists on the real GlaS files and on small synthetic layouts (official GlaS, MoNuSeg, decathlon JSON)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from monai_medt.data import (
    decathlon_datalist,
    glas_datalist,
    medt_datalist,
    monuseg_datalist,
    rasterize_monuseg_xml,
    split_train_val,
)
from tests.conftest import require_path, shared_dir


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def test_medt_layout_on_glas():
    root = require_path(shared_dir() / "data" / "glas")
    train = medt_datalist(root / "train")
    test = medt_datalist(root / "test")
    assert len(train) == 85 and len(test) == 80
    assert [d["name"] for d in train[:3]] == ["train_1", "train_2", "train_3"]  # natural order
    assert all(d["image"].endswith(d["name"] + ".png") and "/labelcol/" in d["label"] for d in train)
    val_names = [n.replace(".png", "") for n in (root / "repo_val_split.txt").read_text().split()]
    tr, va = split_train_val(train, val_names=val_names)
    assert len(tr) == 75 and sorted(d["name"] for d in va) == sorted(val_names)


def test_medt_layout_reports_unpaired_and_bad_files(tmp_path):
    _png(tmp_path / "img" / "a.png", np.zeros((4, 4)))
    _png(tmp_path / "img" / "b.png", np.zeros((4, 4)))
    _png(tmp_path / "labelcol" / "a.png", np.zeros((4, 4)))
    _png(tmp_path / "labelcol" / "c.png", np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"without a mask.*'b.png'.*without an image.*'c.png'"):
        medt_datalist(tmp_path)
    (tmp_path / "img" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"unsupported file extension.*notes.txt"):
        medt_datalist(tmp_path)
    (tmp_path / "img" / "notes.txt").unlink()
    with pytest.raises(FileNotFoundError, match="label folder not found"):
        medt_datalist(tmp_path, label_dir="masks")


def test_split_is_deterministic_and_order_independent():
    items = [{"image": f"{i}.png", "name": f"case_{i}"} for i in range(20)]
    a_train, a_val = split_train_val(items, 0.25, seed=7)
    b_train, b_val = split_train_val(list(reversed(items)), 0.25, seed=7)
    _, c_val = split_train_val(items, 0.25, seed=8)
    assert [d["name"] for d in a_val] == [d["name"] for d in b_val] and len(a_val) == 5
    assert {d["name"] for d in a_val} != {d["name"] for d in c_val}
    assert not {d["name"] for d in a_train} & {d["name"] for d in a_val}
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_val(items, 1.5)
    with pytest.raises(ValueError, match="not in the datalist"):
        split_train_val(items, val_names=["case_99"])


def test_glas_official_layout(tmp_path):
    mask = np.zeros((6, 8), np.uint8)
    mask[1:3, 1:3], mask[4:6, 5:8] = 1, 2  # two glands (instance ids)
    for name in ("train_1", "train_2", "testA_1", "testB_1"):
        Image.fromarray(np.full((6, 8, 3), 100, np.uint8)).save(tmp_path / f"{name}.bmp")
        Image.fromarray(mask).save(tmp_path / f"{name}_anno.bmp")
    (tmp_path / "Grade.csv").write_text("name, Patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)\n"
                                       "train_1,1, benign,adenomatous\ntestA_1,2, malignant,moderately differentiated\n")
    train = glas_datalist(tmp_path, "train")
    assert [d["name"] for d in train] == ["train_1", "train_2"] and train[0]["label"].endswith("train_1_anno.bmp")
    assert train[0]["grade"] == "benign" and "grade" not in train[1]
    assert [d["name"] for d in glas_datalist(tmp_path, "test")] == ["testA_1", "testB_1"]
    (tmp_path / "train_2_anno.bmp").unlink()
    with pytest.raises(ValueError, match="train_2_anno.bmp"):
        glas_datalist(tmp_path, "train")
    with pytest.raises(ValueError, match="subset"):
        glas_datalist(tmp_path, "valid")


MONUSEG_XML = """<?xml version="1.0"?><Annotations><Annotation><Regions>
<Region Id="1"><Vertices><Vertex X="1" Y="1"/><Vertex X="4" Y="1"/><Vertex X="4" Y="3"/><Vertex X="1" Y="3"/></Vertices></Region>
<Region Id="2"><Vertices><Vertex X="6" Y="5"/><Vertex X="9" Y="5"/><Vertex X="9" Y="8"/><Vertex X="6" Y="8"/></Vertices></Region>
</Regions></Annotation></Annotations>"""


def test_monuseg_xml_rasterised_once(tmp_path):
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "TCGA-1.tif")
    (tmp_path / "TCGA-1.xml").write_text(MONUSEG_XML)
    mask = rasterize_monuseg_xml(tmp_path / "TCGA-1.xml", 10, 12)
    assert mask.shape == (10, 12) and set(np.unique(mask)) == {0, 1, 2}
    assert mask[2, 2] == 1 and mask[6, 7] == 2 and mask[0, 0] == 0
    assert np.count_nonzero(mask == 1) == 4 * 3  # polygon (1,1)-(4,3) filled with its outline
    items = monuseg_datalist(tmp_path)
    saved = np.array(Image.open(items[0]["label"]))
    np.testing.assert_array_equal(saved, mask)
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "TCGA-2.tif")
    with pytest.raises(ValueError, match="TCGA-2.xml"):
        monuseg_datalist(tmp_path)
    (tmp_path / "TCGA-2.xml").write_text("<Annotations><broken")
    with pytest.raises(ValueError, match="cannot read MoNuSeg annotation .*TCGA-2.xml"):
        monuseg_datalist(tmp_path)


def test_decathlon_datalist_checks_files(tmp_path):
    _png(tmp_path / "imagesTr" / "a.png", np.zeros((4, 4)))
    _png(tmp_path / "labelsTr" / "a.png", np.zeros((4, 4)))
    spec = {"training": [{"image": "imagesTr/a.png", "label": "labelsTr/a.png"}]}
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    items = decathlon_datalist(tmp_path / "dataset.json")
    assert items[0]["image"] == str(tmp_path / "imagesTr" / "a.png")
    spec["training"].append({"image": "imagesTr/b.png", "label": "labelsTr/b.png"})
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    with pytest.raises(FileNotFoundError, match=r"image=.*imagesTr/b.png"):
        decathlon_datalist(tmp_path / "dataset.json")
