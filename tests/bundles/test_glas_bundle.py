# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""The GlaS bundle end to end on tiny settings: train, resume, DDP (gloo, one process), evaluate, infer, export."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from monai_medt.evaluation import paper_scores
from monai_medt.networks.nets import MedT
from tests.bundles.runner import run_bundle as _run_bundle
from tests.conftest import REPO_ROOT, require_path, shared_dir

BUNDLE = REPO_ROOT / "bundles" / "medt_glas_segmentation"
TINY = ["--img_size", "64", "--num_workers", "0"]


def run_bundle(*args: str, root, launcher=None, check=True) -> subprocess.CompletedProcess:
    return _run_bundle(BUNDLE, *args, root=root, launcher=launcher, check=check)


@pytest.fixture(scope="module")
def glas():
    return require_path(shared_dir() / "data" / "glas")


@pytest.fixture(scope="module")
def trained(glas, tmp_path_factory):
    root = tmp_path_factory.mktemp("glas_bundle")
    proc = run_bundle(
        "--config_file", "configs/train.json", "--dataset_dir", str(glas), "--max_cases", "8", "--epochs", "2",
        "--val_interval", "1", *TINY, root=root,
    )
    return root, proc


def test_train_writes_plain_state_dict(trained):
    root, proc = trained
    assert "Epoch[2] Complete" in proc.stdout + proc.stderr
    state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    net = MedT(3, 2, img_size=64, patch_grid=2)
    net.load_state_dict(state)  # strict: the saved keys are exactly the network's
    assert (root / "models" / "checkpoint_epoch=2.pt").is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in (root / "eval").iterdir())


def test_resume_continues_from_checkpoint(trained, glas, tmp_path):
    root, _ = trained
    shutil.copytree(root / "models", tmp_path / "models")
    proc = run_bundle(
        "--config_file", "configs/train.json", "--dataset_dir", str(glas), "--max_cases", "8", "--epochs", "3",
        "--val_interval", "1", "--resume_ckpt", str(tmp_path / "models" / "checkpoint_epoch=2.pt"), *TINY,
        root=tmp_path,
    )
    log = proc.stdout + proc.stderr
    assert "Epoch: 3/3" in log and "Epoch: 1/3" not in log and "Epoch: 2/3" not in log
    # the best-model file and the validator's best score carry over the resume (KeyMetricState)
    before = torch.load(tmp_path / "models" / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    after = torch.load(tmp_path / "models" / "checkpoint_epoch=3.pt", map_location="cpu", weights_only=True)
    assert before["key_metric"]["saved"][0][0] == pytest.approx(before["key_metric"]["best_metric"])
    assert after["key_metric"]["best_metric"] >= before["key_metric"]["best_metric"]
    best_model = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    old_best = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    kept = all(torch.equal(best_model[k], old_best[k]) for k in old_best)
    assert kept == (after["key_metric"]["best_metric_epoch"] != 3)


def test_ddp_one_process_gloo(glas, tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=1", "-m"]
    proc = run_bundle(
        "--config_file", "['configs/train.json','configs/multi_gpu_train.json']", "--dataset_dir", str(glas),
        "--max_cases", "8", "--epochs", "1", "--val_interval", "1", *TINY, root=tmp_path, launcher=launcher,
    )
    assert "Epoch[1] Complete" in proc.stdout + proc.stderr
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
    MedT(3, 2, img_size=64, patch_grid=2).load_state_dict(state)


def test_evaluate_writes_both_protocols(trained, glas):
    root, _ = trained
    run_bundle(
        "--config_file", "['configs/train.json','configs/evaluate.json']", "--dataset_dir", str(glas),
        "--max_cases", "3", "--num_overlays", "2", *TINY, root=root,
    )
    out = root / "eval"
    with open(out / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["testA_1", "testA_2", "testA_3"]
    for row in rows:
        pred = np.array(Image.open(out / "pred" / f"{row['name']}.png"))
        gt = np.array(Image.open(glas / "test" / "labelcol" / f"{row['name']}.png"))
        assert pred.shape == gt.shape and set(np.unique(pred)) <= {0, 255}  # full resolution, binary
        f1, iou = paper_scores(pred, gt)
        assert float(row["paper_f1"]) == pytest.approx(f1) and float(row["paper_iou"]) == pytest.approx(iou)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == 3 and summary["mean"]["paper_f1"] == pytest.approx(np.mean([float(r["paper_f1"]) for r in rows]))
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["testA_1.png", "testA_2.png"]
    assert (out / "val_mean_dice_raw.csv").is_file()


def test_evaluate_on_validation_split_with_tta(trained, glas):
    root, _ = trained
    out = root / "eval_val"
    run_bundle(
        "--config_file", "['configs/train.json','configs/evaluate.json']", "--dataset_dir", str(glas),
        "--max_cases", "8", "--eval_split", "val", "--tta", "true", "--output_dir", str(out), *TINY, root=root,
    )
    with open(out / "per_image.csv") as f:
        names = [r["name"] for r in csv.DictReader(f)]
    val_names = (glas / "repo_val_split.txt").read_text().split()
    assert len(names) == 2 and all(n in val_names or f"{n}.png" in val_names for n in names)
    for name in names:
        pred = np.array(Image.open(out / "pred" / f"{name}.png"))
        assert pred.shape == np.array(Image.open(glas / "train" / "labelcol" / f"{name}.png")).shape


def test_inference_full_resolution(trained, glas, tmp_path):
    root, _ = trained
    images = glas / "test" / "img"
    run_bundle(
        "--config_file", "configs/inference.json", "--dataset_dir", str(images), "--max_cases", "2",
        "--ckpt_path", str(root / "models" / "model.pt"), "--output_dir", str(tmp_path), "--tta", "true", *TINY,
        root=root,
    )
    names = sorted(p.name for p in images.iterdir())[:2]
    for name in names:
        pred = Image.open(tmp_path / "pred" / name)
        assert pred.size == Image.open(images / name).size
        assert set(np.unique(np.array(pred))) <= {0, 255}
        assert (tmp_path / "overlays" / name).is_file()


def test_inference_without_weights_or_images_fails_clearly(glas, tmp_path):
    proc = run_bundle("--config_file", "configs/inference.json", *TINY, root=tmp_path, check=False)
    assert proc.returncode != 0 and "trained weights (train the bundle or pass --ckpt_path) not found" in proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "models").mkdir()
    torch.save(MedT(3, 2, img_size=64, patch_grid=2).state_dict(), tmp_path / "models" / "model.pt")
    proc = run_bundle("--config_file", "configs/inference.json", "--dataset_dir", str(empty), *TINY, root=tmp_path, check=False)
    assert proc.returncode != 0 and f"no images (.png, .bmp, .tif, .jpg) in {empty}" in proc.stderr


def test_bad_dataset_dir_fails_before_training(tmp_path):
    proc = run_bundle("--config_file", "configs/train.json", "--dataset_dir", str(tmp_path / "nowhere"), *TINY,
                      root=tmp_path, check=False)
    assert proc.returncode != 0 and f"image folder not found: {tmp_path / 'nowhere' / 'train' / 'img'}" in proc.stderr
    # grayscale images where the network expects RGB: named before any iteration runs
    data = tmp_path / "gray"
    for split in ("train",):
        for i in range(4):
            for sub, arr in (("img", np.random.default_rng(i).integers(0, 255, (40, 40), dtype=np.uint8)),
                             ("labelcol", (np.arange(1600).reshape(40, 40) % 2 * 255).astype(np.uint8))):
                (data / split / sub).mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(data / split / sub / f"case_{i}.png")
    proc = run_bundle("--config_file", "configs/train.json", "--dataset_dir", str(data), "--val_fraction", "0.25",
                      *TINY, root=tmp_path, check=False)
    assert proc.returncode != 0 and "case_" in proc.stderr and "expected 3 channel(s), got 1" in proc.stderr
    assert "Epoch: 1/" not in proc.stdout


def test_verify_net_in_out_and_export(trained, tmp_path):
    root, _ = trained
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    verify = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def", "--meta_file",
         "configs/metadata.json", "--config_file", "configs/inference.json"],
        cwd=BUNDLE, capture_output=True, text=True, env=env, timeout=600,
    )
    assert verify.returncode == 0, verify.stderr[-3000:]
    ts = tmp_path / "model.ts"
    export = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file",
         str(root / "models" / "model.pt"), "--meta_file", "configs/metadata.json", "--config_file",
         "configs/inference.json", "--img_size", "64"],
        cwd=BUNDLE, capture_output=True, text=True, env=env, timeout=600,
    )
    assert export.returncode == 0, export.stderr[-3000:]
    scripted = torch.jit.load(str(ts))
    net = MedT(3, 2, img_size=64, patch_grid=2)
    net.load_state_dict(torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted.eval()(x), net.eval()(x))


def test_metadata_has_required_keys():
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    required = ["version", "monai_version", "pytorch_version", "numpy_version", "required_packages_version", "task",
                "description", "authors", "copyright", "network_data_format"]
    assert all(k in meta for k in required)
    assert meta["version"] in meta["changelog"]
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["num_channels"] == 3 and fmt["outputs"]["pred"]["num_channels"] == 2
    assert "monai-medt" in meta["required_packages_version"]
    for name in ("LICENSE", "docs/README.md", "docs/data_license.txt", "configs/logging.conf"):
        assert (BUNDLE / name).is_file(), name


def test_bundle_properties(glas, tmp_path):
    from monai.bundle import ConfigWorkflow

    for config in ("configs/train.json", "configs/inference.json"):
        workflow = ConfigWorkflow(
            config_file=str(BUNDLE / config), meta_file=str(BUNDLE / "configs" / "metadata.json"),
            logging_file=str(BUNDLE / "configs" / "logging.conf"),
            workflow_type="train" if "train" in config else "infer",
            init_id="skip_initialize",  # parse only: no weights needed
            bundle_root=str(BUNDLE),
            dataset_dir=str(glas if "train" in config else glas / "test" / "img"),
            max_cases=2,
            num_workers=0,
            output_dir=str(tmp_path / "eval"),  # the trainer's handlers open their log folders here
            ckpt_dir=str(tmp_path / "models"),
        )
        workflow.initialize()
        assert workflow.check_properties() in (None, []), config


def test_mlflow_tracking_local_store(glas, tmp_path):
    pytest.importorskip("mlflow", reason="mlflow is not installed (pip install monai-medt[tracking])")
    import mlflow

    run_bundle(
        "--config_file", "configs/train.json", "--dataset_dir", str(glas), "--max_cases", "8", "--epochs", "1",
        "--val_interval", "1", "--tracking", "mlflow", *TINY, root=tmp_path,
    )
    store = tmp_path / "eval" / "mlruns.db"  # MONAI's default: a local SQLite store under output_dir
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert {"train_loss", "val_mean_dice", "val_mean_iou"} <= set(runs[0].data.metrics)


def test_train_from_cached_preprocessing(glas, tmp_path):
    """scripts/glas_cache.py: the bundle's deterministic preprocessing cached once, then its train workflow from the
    cache alone (the images' folder is not read: dataset_dir points nowhere)."""
    script = str(REPO_ROOT / "scripts" / "glas_cache.py")
    cache = tmp_path / "cache" / "glas64.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, script, "export", "--dataset_dir", str(glas), "--out", str(cache), "--img_size", "64",
         "--max_cases", "8"], check=True, env=env, capture_output=True, text=True,
    )
    items = torch.load(cache, weights_only=False)
    assert items["img_size"] == 64 and len(items["train"]) == 8 and len(items["val"]) == 2
    assert tuple(items["train"][0]["image"].shape) == (3, 64, 64)
    assert 0.0 <= float(items["train"][0]["image"].min()) and float(items["train"][0]["image"].max()) <= 1.0
    proc = subprocess.run(
        [sys.executable, script, "train", "--cache", str(cache), "--ckpt_dir", str(tmp_path / "models"),
         "--output_dir", str(tmp_path / "eval"), "--set", "epochs=2", "--set", "val_interval=1",
         "--set", f"dataset_dir={tmp_path / 'missing'}"], env=env, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Epoch[2] Complete" in proc.stdout + proc.stderr
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    MedT(3, 2, img_size=64, patch_grid=2).load_state_dict(state)
    assert (tmp_path / "models" / "checkpoint_epoch=2.pt").is_file()
    wrong = subprocess.run(
        [sys.executable, script, "train", "--cache", str(cache), "--ckpt_dir", str(tmp_path / "m2"), "--output_dir",
         str(tmp_path / "e2"), "--set", "img_size=128"], env=env, capture_output=True, text=True,
    )
    assert wrong.returncode != 0 and "the cache holds img_size 64, not 128" in wrong.stderr
