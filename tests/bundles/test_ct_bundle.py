# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""The CT/MR bundle end to end on the sample volumes: slice training, evaluation, SliceInferer output geometry."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.bundles.runner import run_bundle as _run_bundle
from tests.conftest import REPO_ROOT, require_path, shared_dir
from tests.data.dicom_series import assert_seg_matches, check_layout, referenceable_copy, shared_series

BUNDLE = REPO_ROOT / "bundles" / "medt_ct_segmentation"
TINY = ["--img_size", "64", "--pixdim", "[3.0, 3.0]", "--out_channels", "3", "--num_workers", "0",
        "--validate#inferer#sw_batch_size", "32"]


def run_bundle(*args: str, root, launcher=None, check=True) -> subprocess.CompletedProcess:
    return _run_bundle(BUNDLE, *args, root=root, launcher=launcher, check=check)


@pytest.fixture(scope="module")
def ct_dataset(tmp_path_factory):
    ct = require_path(shared_dir() / "data" / "totalseg_ct")
    root = tmp_path_factory.mktemp("msd_ct")
    seg = nib.load(ct / "v2_small" / "example_seg_multilabel_v2.nii.gz")
    ids = np.asarray(seg.dataobj)
    # three classes: background, liver (TotalSegmentator v2 id 5), spleen (id 1)
    labels = np.where(ids == 5, 1, np.where(ids == 1, 2, 0)).astype(np.uint8)
    nib.save(nib.Nifti1Image(labels, seg.affine), root / "organs.nii.gz")
    image = str(ct / "v2_small" / "example_ct_sm.nii.gz")
    entries = [{"image": image, "label": str(root / "organs.nii.gz")} for _ in range(3)]
    (root / "dataset.json").write_text(json.dumps({"training": entries}))
    return root, ct


@pytest.fixture(scope="module")
def trained(ct_dataset, tmp_path_factory):
    data, _ = ct_dataset
    root = tmp_path_factory.mktemp("ct_bundle")
    proc = run_bundle(
        "--config_file", "configs/train.json", "--dataset_dir", str(data), "--val_fraction", "0.34", "--epochs", "2",
        "--val_interval", "2", "--num_samples", "2", "--batch_size", "1", *TINY, root=root,
    )
    return root, proc


def test_slice_training(trained):
    root, proc = trained
    log = proc.stdout + proc.stderr
    assert "Epoch[2] Complete" in log and "val_mean_dice" in log
    state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    from monai_medt.networks.nets import MedT

    MedT(1, 3, img_size=64).load_state_dict(state)


def test_ddp_one_process_gloo(ct_dataset, tmp_path):
    data, _ = ct_dataset
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=1", "-m"]
    proc = run_bundle(
        "--config_file", "['configs/train.json','configs/multi_gpu_train.json']", "--dataset_dir", str(data),
        "--val_fraction", "0.34", "--epochs", "1", "--val_interval", "1", "--num_samples", "2", "--batch_size", "1",
        *TINY, root=tmp_path, launcher=launcher,
    )
    log = proc.stdout + proc.stderr
    # two training volumes x two slices each, batch 1: the DistributedSampler of one rank sees every volume once
    assert "Epoch: 1/1, Iter: 2/2" in log and "Epoch[1] Complete" in log and "val_mean_dice" in log
    from monai_medt.networks.nets import MedT

    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # saved unwrapped from DistributedDataParallel
    MedT(1, 3, img_size=64).load_state_dict(state)
    resume = torch.load(tmp_path / "models" / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)
    assert resume["trainer"]["iteration"] == 2 and resume["trainer"]["max_epochs"] == 1
    assert not any(k.startswith("module.") for k in resume["model"])
    # the best score, kept for a resume, is the one that wrote model.pt
    assert resume["key_metric"]["best_metric_epoch"] == 1
    assert resume["key_metric"]["saved"][0][0] == pytest.approx(resume["key_metric"]["best_metric"])


def test_inference_keeps_input_geometry(trained, ct_dataset, tmp_path):
    root, _ = trained
    _, ct = ct_dataset
    inputs = tmp_path / "in"
    inputs.mkdir()
    os.symlink(ct / "v2_small" / "example_ct_sm.nii.gz", inputs / "small_ct.nii.gz")
    os.symlink(ct / "dicom_series" / "ct_dicom", inputs / "series1")
    out = tmp_path / "out"
    run_bundle(
        "--config_file", "configs/inference.json", "--dataset_dir", str(inputs), "--ckpt_path",
        str(root / "models" / "model.pt"), "--output_dir", str(out), "--inferer#sw_batch_size", "32", *TINY[:-2],
        root=root,
    )
    src = nib.load(ct / "v2_small" / "example_ct_sm.nii.gz")
    pred = nib.load(out / "small_ct_seg.nii.gz")
    assert pred.shape == src.shape
    np.testing.assert_allclose(pred.affine, src.affine, atol=1e-4)
    assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1, 2}
    from monai.transforms import LoadImage

    series = LoadImage(image_only=True)(str(ct / "dicom_series" / "ct_dicom"))
    pred = nib.load(out / "series1_seg.nii.gz")
    assert pred.shape == tuple(series.shape)
    np.testing.assert_allclose(pred.affine, np.asarray(series.affine), atol=1e-3)


def save_varied_random_medt(series, path, pixdim) -> None:
    """
    A random MedT (1 -> 3, 64) whose argmax varies within the slices of ``series``: batch-norm statistics taken from
    the series' slices as the bundle preprocesses them, no head bias. The two-epoch model of ``trained`` predicts only
    background here and a plain random MedT one class everywhere; either would let a transposed or flipped SEG frame
    pass unnoticed.
    """
    from monai.transforms import SpatialPad

    from monai_medt.networks.nets import MedT
    from monai_medt.transforms import get_transforms

    image = get_transforms("ct", "infer", 64, in_channels=1, pixdim=pixdim)({"image": str(series)})["image"]
    assert max(image.shape[1:3]) <= 64, "one window per slice expected"
    slices = SpatialPad([64, 64, -1])(image).as_tensor().permute(3, 0, 1, 2)  # (slices, 1, 64, 64)
    net = MedT(1, 3, img_size=64)
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the one calibration batch
    with torch.no_grad():
        net.train()(slices)
        net.head.bias.zero_()
    torch.save(net.state_dict(), path)


def test_inference_writes_dicom_seg(ct_dataset, tmp_path):
    pytest.importorskip("highdicom", reason="highdicom is not installed (pip install monai-medt[dicom])")
    _, ct = ct_dataset
    inputs = tmp_path / "in"
    series = referenceable_copy(shared_series(), inputs / "series1")
    os.symlink(ct / "v2_small" / "example_ct_sm.nii.gz", inputs / "small_ct.nii.gz")
    # 8 mm pixels: one 64 x 64 window per slice keeps this CPU run short
    save_varied_random_medt(series, tmp_path / "random.pt", pixdim=(8.0, 8.0))
    out = tmp_path / "out"
    proc = run_bundle(
        "--config_file", "configs/inference.json", "--dataset_dir", str(inputs), "--ckpt_path",
        str(tmp_path / "random.pt"), "--output_dir", str(out), "--img_size", "64", "--pixdim", "[8.0, 8.0]",
        "--out_channels", "3", "--num_workers", "0", "--dicom_seg", "true", "--class_names",
        "{1: 'liver', 2: 'spleen'}", root=tmp_path,
    )
    # a SEG only for the DICOM series, next to its NIfTI; the NIfTI input is skipped with a log line
    assert sorted(p.name for p in out.iterdir()) == ["series1_seg.dcm", "series1_seg.nii.gz", "small_ct_seg.nii.gz"]
    assert "small_ct.nii.gz: not a DICOM series folder" in proc.stdout + proc.stderr
    from monai.transforms import LoadImage

    image = LoadImage(image_only=True)(str(series))
    affine = image.affine.numpy()
    check_layout(series, image.numpy(), affine)  # the SEG check's slice mapping holds for the stored pixels
    pred = nib.load(out / "series1_seg.nii.gz")
    np.testing.assert_allclose(pred.affine, affine, atol=1e-3)
    labels = np.asarray(pred.dataobj)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert_seg_matches(out / "series1_seg.dcm", series, labels, affine, {1: "liver", 2: "spleen"})


def test_dicom_seg_inputs_checked_before_any_output(ct_dataset, tmp_path):
    pytest.importorskip("highdicom", reason="highdicom is not installed (pip install monai-medt[dicom])")
    _, ct = ct_dataset
    inputs = tmp_path / "in"
    inputs.mkdir()
    # sorted first, so that it would be segmented and written before the series that cannot be referenced
    os.symlink(ct / "v2_small" / "example_ct_sm.nii.gz", inputs / "a_ct.nii.gz")
    os.symlink(shared_series(), inputs / "series1")  # anonymised: its instances have empty UIDs
    from monai_medt.networks.nets import MedT

    torch.save(MedT(1, 3, img_size=64).state_dict(), tmp_path / "random.pt")
    out = tmp_path / "out"
    proc = run_bundle(
        "--config_file", "configs/inference.json", "--dataset_dir", str(inputs), "--ckpt_path",
        str(tmp_path / "random.pt"), "--output_dir", str(out), "--img_size", "64", "--pixdim", "[8.0, 8.0]",
        "--out_channels", "3", "--num_workers", "0", "--dicom_seg", "true", "--class_names",
        "{1: 'liver', 2: 'spleen'}", root=tmp_path, check=False,
    )
    assert proc.returncode != 0 and "empty or missing SOPClassUID" in proc.stderr and "CT.1.3" in proc.stderr
    assert not out.exists() or list(out.iterdir()) == []


def test_evaluate(trained, ct_dataset):
    root, _ = trained
    data, _ = ct_dataset
    run_bundle(
        "--config_file", "['configs/train.json','configs/evaluate.json']", "--dataset_dir", str(data),
        "--val_fraction", "0.34", *TINY, root=root,
    )
    raw = (root / "eval" / "val_mean_dice_raw.csv").read_text().splitlines()
    assert len(raw) == 2 and "example_ct_sm" in raw[1]
    pred = nib.load(next((root / "eval" / "pred").glob("*_seg.nii.gz")))
    assert pred.shape == (122, 101, 30)


def test_totalseg_sample_prepared_for_training(tmp_path):
    ct = require_path(shared_dir() / "data" / "totalseg_ct")
    out = tmp_path / "organs"
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "prepare_totalseg_ct.py"), "--data", str(ct), "--out", str(out),
         "--organs", "liver", "spleen"], capture_output=True, text=True, timeout=300, check=True,
    )
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["labels"] == {"0": "background", "1": "liver", "2": "spleen"}
    # liver and spleen are ids 5 and 1 in both TotalSegmentator label schemes
    for entry, source in zip(dataset["training"], ("v1_full/example_seg_multilabel_v1.nii.gz",
                                                    "v2_small/example_seg_multilabel_v2.nii.gz")):
        ids, organs = nib.load(ct / source), nib.load(entry["label"])
        np.testing.assert_array_equal(organs.affine, ids.affine)
        expected = np.select([np.asarray(ids.dataobj) == 5, np.asarray(ids.dataobj) == 1], [1, 2], 0)
        np.testing.assert_array_equal(np.asarray(organs.dataobj), expected)
        assert expected.max() == 2 and organs.get_data_dtype() == np.uint8
    command = proc.stdout.strip().splitlines()[-1]
    assert command.endswith(f"--dataset_dir {out} --val_fraction 0.5 --out_channels 3")
    # the printed settings train (one volume trains, the other validates)
    run = run_bundle(
        "--config_file", "configs/train.json", "--dataset_dir", str(out), "--val_fraction", "0.5", "--epochs", "1",
        "--val_interval", "1", "--num_samples", "2", "--batch_size", "1", *TINY, root=tmp_path,
    )
    assert "Epoch[1] Complete" in run.stdout + run.stderr


def test_mr_preset_trains(tmp_path):
    mr = require_path(shared_dir() / "data" / "pyradiomics_mr")
    entries = [{"image": str(mr / f"brain{i}_image.nrrd"), "label": str(mr / f"brain{i}_label.nrrd")} for i in (1, 2)]
    (tmp_path / "dataset.json").write_text(json.dumps({"training": entries}))
    proc = run_bundle(
        "--config_file", "configs/train.json", "--dataset_dir", str(tmp_path), "--modality", "mr", "--val_fraction",
        "0.5", "--epochs", "1", "--val_interval", "1", "--num_samples", "2", "--batch_size", "1", *TINY,
        "--out_channels", "2", root=tmp_path,
    )
    assert "Epoch[1] Complete" in proc.stdout + proc.stderr


def test_bad_inputs_fail_before_training(tmp_path):
    proc = run_bundle("--config_file", "configs/train.json", "--dataset_dir", str(tmp_path / "none"), *TINY,
                      root=tmp_path, check=False)
    assert proc.returncode != 0 and f"datalist not found: {tmp_path / 'none' / 'dataset.json'}" in proc.stderr
    glas = require_path(shared_dir() / "data" / "glas" / "train")
    entries = [{"image": str(glas / "img" / f"train_{i}.png"), "label": str(glas / "labelcol" / f"train_{i}.png")}
               for i in (1, 2, 3)]
    (tmp_path / "dataset.json").write_text(json.dumps({"training": entries}))
    proc = run_bundle("--config_file", "configs/train.json", "--dataset_dir", str(tmp_path), "--val_fraction", "0.34",
                      *TINY, root=tmp_path, check=False)
    assert proc.returncode != 0 and "train_" in proc.stderr and "expected 3 spatial dims" in proc.stderr
    assert "Epoch: 1/" not in proc.stdout


def test_verify_export_and_properties(trained, ct_dataset, tmp_path):
    root, _ = trained
    data, _ = ct_dataset
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    common = ["--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json"]
    verify = subprocess.run([sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def", *common],
                            cwd=BUNDLE, capture_output=True, text=True, env=env, timeout=600)
    assert verify.returncode == 0, verify.stderr[-3000:]
    ts = tmp_path / "model.ts"
    export = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file",
         str(root / "models" / "model.pt"), *common, "--img_size", "64", "--out_channels", "3"],
        cwd=BUNDLE, capture_output=True, text=True, env=env, timeout=600,
    )
    assert export.returncode == 0, export.stderr[-3000:]
    assert torch.jit.load(str(ts))(torch.rand(1, 1, 64, 64)).shape == (1, 3, 64, 64)
    from monai.bundle import ConfigWorkflow

    for config, kind, dataset_dir in (("train.json", "train", data), ("inference.json", "infer", data)):
        workflow = ConfigWorkflow(
            config_file=str(BUNDLE / "configs" / config), meta_file=str(BUNDLE / "configs" / "metadata.json"),
            logging_file=str(BUNDLE / "configs" / "logging.conf"), workflow_type=kind, init_id="skip_initialize",
            bundle_root=str(BUNDLE), dataset_dir=str(dataset_dir), val_fraction=0.34, num_workers=0,
            output_dir=str(tmp_path / "eval"), ckpt_dir=str(tmp_path / "models"),  # not the repository's bundle
        )
        workflow.initialize()
        assert workflow.check_properties() in (None, []), config
