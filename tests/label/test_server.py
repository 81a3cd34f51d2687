# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""
A real ``monailabel start_server`` with label_app on 127.0.0.1, over a studies folder of real images (the sample CT
as NIfTI, GlaS PNGs), driven through its REST API as 3D Slicer / OHIF would. The server runs in the MONAI Label
environment (``.venv-label``, made by ``scripts/setup_label_env.sh``); these tests only speak HTTP to it.
Segmentation bundles get random weights at a small ``img_size`` (their training is tested in tests/bundles); the CT
bundle starts without weights, as it ships, and gets them during the tests, as /train would give them; the click-guided
models use the weights shipped in bundles/medt_interactive_segmentation.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import torch
from monai.bundle import ConfigParser
from PIL import Image
from scipy.ndimage import distance_transform_edt
from scipy.ndimage import label as ndimage_label

from monai_medt.label import stage_bundles
from tests.conftest import REPO_ROOT, require_path, shared_dir

LABEL_ENV = Path(os.environ.get("MONAI_MEDT_LABEL_ENV", REPO_ROOT / ".venv-label"))
INTERACTIVE = REPO_ROOT / "bundles" / "medt_interactive_segmentation"
START_TIMEOUT = 240
TRAIN_TIMEOUT = 600


def _require_label_env() -> None:
    if not (LABEL_ENV / "bin" / "monailabel").exists():
        reason = f"MONAI Label environment not found at {LABEL_ENV} (run scripts/setup_label_env.sh)"
        if os.environ.get("MONAI_MEDT_REQUIRE_LABEL") or os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _studies(root: Path) -> Path:
    ct = require_path(shared_dir() / "data" / "totalseg_ct")
    glas = require_path(shared_dir() / "data" / "glas")
    studies = root / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    seg = nib.load(ct / "v2_small" / "example_seg_multilabel_v2.nii.gz")
    liver = (np.asarray(seg.dataobj) == 5).astype(np.uint8)
    for name in ("ct_a", "ct_b", "ct_c"):
        shutil.copy(ct / "v2_small" / "example_ct_sm.nii.gz", studies / f"{name}.nii.gz")
    for name in ("ct_a", "ct_b"):  # ct_c stays unlabelled: the scoring method scores it
        nib.save(nib.Nifti1Image(liver, seg.affine), studies / "labels" / "final" / f"{name}.nii.gz")
    for i in (1, 2, 3):
        shutil.copy(glas / "test" / "img" / f"testA_{i}.png", studies / f"glas_{i}.png")
    for i in (1, 2):  # glas_3 stays unlabelled: a 2D image, which the CT scoring model skips
        shutil.copy(glas / "test" / "labelcol" / f"testA_{i}.png", studies / "labels" / "final" / f"glas_{i}.png")
    return studies


def _models(root: Path) -> Path:
    model_dir = root / "model"
    names = ["medt_ct_segmentation", "medt_glas_segmentation", "medt_interactive_segmentation"]
    staged = stage_bundles(names, str(REPO_ROOT / "bundles"), str(model_dir))
    torch.manual_seed(0)
    for name in names[:2]:
        path = Path(staged[name])
        for config in ("inference.json", "train.json"):
            c = json.loads((path / "configs" / config).read_text())
            c.update({"img_size": 64, "num_workers": 0})
            if "pixdim" in c:
                c["pixdim"] = [3.0, 3.0]
            (path / "configs" / config).write_text(json.dumps(c, indent=4))
        parser = ConfigParser()
        parser.read_config(str(path / "configs" / "inference.json"))
        # the CT bundle's weights wait beside the staged copy (see _ct_weights)
        weights = root / "ct_model.pt" if name == "medt_ct_segmentation" else path / "models" / "model.pt"
        torch.save(parser.get_parsed_content("network_def").state_dict(), weights)
    return model_dir


def _ct_weights(server) -> Path:
    """Give the CT bundle its weights (once), as a /train run in its own process would."""
    model = Path(server["model_dir"]) / "medt_ct_segmentation" / "models" / "model.pt"
    if not model.exists():
        shutil.copy(Path(server["model_dir"]).parent / "ct_model.pt", model)
    return model


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _require_label_env()
    for modality in ("histology", "ct"):
        require_path(INTERACTIVE / "models" / f"model_{modality}.pt")
    root = tmp_path_factory.mktemp("label")
    studies, model_dir, port = _studies(root), _models(root), _free_port()
    env = {**os.environ, "PATH": f"{LABEL_ENV / 'bin'}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    cmd = [
        str(LABEL_ENV / "bin" / "monailabel"), "start_server", "--app", str(REPO_ROOT / "label_app"),
        "--studies", str(studies), "--host", "127.0.0.1", "--port", str(port),
        "--conf", "models", "all", "--conf", "model_dir", str(model_dir),
        "--conf", "epistemic_model", "medt_ct_segmentation", "--conf", "epistemic_simulation_size", "3",
    ]
    log_path = root / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            url = _wait_until_up(proc, port, log_path)
            yield {"url": url, "studies": studies, "model_dir": model_dir, "log": log_path}
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _wait_until_up(proc: subprocess.Popen, port: int, log_path: Path) -> str:
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"server exited ({proc.returncode}):\n{log_path.read_text()[-5000:]}")
        try:
            if requests.get(f"{url}/info/", timeout=5).ok:
                return url
        except requests.ConnectionError:
            pass
        if time.time() > deadline:
            raise AssertionError(f"server not up in {START_TIMEOUT} s:\n{log_path.read_text()[-5000:]}")
        time.sleep(2)


def _infer(server, model: str, image: str, params: dict | None = None) -> bytes:
    r = requests.post(
        f"{server['url']}/infer/{model}",
        params={"image": image, "output": "image"},
        files={"params": (None, json.dumps(params or {}))},
        timeout=300,
    )
    assert r.status_code == 200, f"/infer/{model}?image={image}: {r.status_code} {r.text[:2000]}"
    return r.content


def _nifti(content: bytes, tmp_path: Path):
    path = tmp_path / "label.nii.gz"
    path.write_bytes(content)
    return nib.load(path)


def test_info_lists_models(server):
    info = requests.get(f"{server['url']}/info/", timeout=30).json()
    models = info["models"]
    assert {"medt_glas_segmentation", "medt_click_histology", "medt_click_ct"} <= set(models)
    assert models["medt_click_ct"]["type"] == "deepgrow" and models["medt_click_ct"]["dimension"] == 3
    assert models["medt_glas_segmentation"]["dimension"] == 2
    assert {"medt_ct_segmentation", "medt_glas_segmentation", "medt_click_histology"} <= set(info["trainers"])
    assert "epistemic" in info["strategies"]


def test_trained_bundle_served_without_restart(server):
    model = Path(server["model_dir"]) / "medt_ct_segmentation" / "models" / "model.pt"
    if model.exists():
        pytest.skip("the CT bundle got its weights in an earlier test")
    # started without weights (and with it as the scoring model): trainable, not served, no scoring yet
    info = requests.get(f"{server['url']}/info/", timeout=30).json()
    assert "medt_ct_segmentation" in info["trainers"]
    assert "medt_ct_segmentation" not in info["models"] and "medt_epistemic" not in info["scoring"]
    _ct_weights(server)
    info = requests.get(f"{server['url']}/info/", timeout=30).json()
    assert info["models"]["medt_ct_segmentation"]["dimension"] == 3
    assert "medt_epistemic" in info["scoring"]


def test_ct_infer_keeps_geometry(server, tmp_path):
    _ct_weights(server)
    label = _nifti(_infer(server, "medt_ct_segmentation", "ct_a"), tmp_path)
    image = nib.load(server["studies"] / "ct_a.nii.gz")
    assert label.shape == image.shape
    np.testing.assert_allclose(label.affine, image.affine, atol=1e-4)
    assert set(np.unique(np.asarray(label.dataobj)).tolist()) <= {0, 1}


def test_glas_infer_full_resolution_png(server):
    label = np.asarray(Image.open(io.BytesIO(_infer(server, "medt_glas_segmentation", "glas_3"))))
    image = np.asarray(Image.open(server["studies"] / "glas_3.png"))
    assert label.shape == image.shape[:2]
    assert set(np.unique(label).tolist()) <= {0, 1}


def _interior_point(mask: np.ndarray) -> tuple[int, ...]:
    """Index of the pixel farthest from the mask's edge (the image border counts as edge)."""
    d = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    return tuple(int(v) for v in np.unravel_index(np.argmax(d), d.shape))


def test_click_histology_follows_clicks(server):
    gt = np.asarray(Image.open(shared_dir() / "data" / "glas" / "test" / "labelcol" / "testA_3.png")) > 127
    a = _interior_point(gt)  # (row, col); MONAI Label clicks are in the image's index order: (x = col, y = row)

    def click(foreground, background):
        params = {"foreground": [[c, r] for r, c in foreground], "background": [[c, r] for r, c in background]}
        return np.asarray(Image.open(io.BytesIO(_infer(server, "medt_click_histology", "glas_3", params))))

    first = click([a], [])
    assert first.shape == gt.shape and set(np.unique(first).tolist()) <= {0, 1}
    assert first[a] == 1, "a positive click inside a gland must mark it"
    # a negative click inside the largest false-positive region of the first answer removes that region
    regions, _ = ndimage_label((first == 1) & ~gt)
    largest = np.argmax(np.bincount(regions.ravel())[1:]) + 1
    b = _interior_point(regions == largest)
    second = click([a], [b])
    near_b = (slice(b[0] - 15, b[0] + 16), slice(b[1] - 15, b[1] + 16))
    assert second[b] == 0 and second[near_b].sum() < first[near_b].sum(), "a negative click must clear where clicked"
    assert second[a] == 1, "the positive click still holds"


def test_click_ct_segments_clicked_slice(server, tmp_path):
    seg = nib.load(shared_dir() / "data" / "totalseg_ct" / "v2_small" / "example_seg_multilabel_v2.nii.gz")
    liver = np.asarray(seg.dataobj) == 5
    k = int(np.argmax(liver.sum(axis=(0, 1))))
    x, y = _interior_point(liver[..., k])
    label = _nifti(_infer(server, "medt_click_ct", "ct_a", {"foreground": [[x, y, k]], "background": []}), tmp_path)
    image = nib.load(server["studies"] / "ct_a.nii.gz")
    data = np.asarray(label.dataobj)
    assert label.shape == image.shape
    np.testing.assert_allclose(label.affine, image.affine, atol=1e-4)
    assert data[x, y, k] == 1
    assert data[..., k].sum() > 0 and data.sum() == data[..., k].sum(), "only the clicked slice is labelled"
    overlap = (data[..., k] > 0) & liver[..., k]
    assert overlap.sum() > 0.5 * (data[..., k] > 0).sum(), "the clicked organ, not its surroundings"


def _wait(server, path: str, timeout: float) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = requests.get(f"{server['url']}/{path}/", params={"check_if_running": "false"}, timeout=30).json()
        if status.get("status") not in ("SUBMITTED", "RUNNING"):
            return status
        time.sleep(3)
    raise AssertionError(f"/{path} still running after {timeout} s")


def test_train_one_epoch(server):
    model = _ct_weights(server)
    before = model.stat().st_mtime_ns
    r = requests.post(
        f"{server['url']}/train/medt_ct_segmentation", json={"max_epochs": 1, "val_split": 0.5}, timeout=60
    )
    assert r.status_code == 200, r.text
    status = _wait(server, "train", TRAIN_TIMEOUT)
    details = "\n".join(status.get("details", []))
    assert status["status"] == "DONE", details[-3000:]
    assert "Epoch[1] Complete" in details and "Training Finished" in details, details[-3000:]
    assert model.stat().st_mtime_ns > before, "training must save models/model.pt"
    state = torch.load(model, map_location="cpu", weights_only=True)
    assert any(k.endswith("fusion_conv.weight") or "conv" in k for k in state)


def test_concurrent_infer(server):
    names = [f"glas_{i % 3 + 1}" for i in range(20)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda n: (n, _infer(server, "medt_glas_segmentation", n)), names))
    shapes = {n: np.asarray(Image.open(server["studies"] / f"{n}.png")).shape[:2] for n in set(names)}
    assert len(results) == 20
    for name, content in results:
        assert np.asarray(Image.open(io.BytesIO(content))).shape == shapes[name]


def test_epistemic_scoring_and_strategy(server):
    _ct_weights(server)
    requests.get(f"{server['url']}/info/", timeout=30)  # the server takes up the scoring model
    # MONAI Label also starts scoring by itself (e.g. after training): let that run end, then ask for ours
    deadline = time.time() + TRAIN_TIMEOUT
    while True:
        _wait(server, "scoring", TRAIN_TIMEOUT)
        r = requests.post(f"{server['url']}/scoring/medt_epistemic", timeout=60)
        if "Already Running" not in r.text or time.time() > deadline:
            break
        time.sleep(2)
    assert r.status_code == 200, r.text
    status = _wait(server, "scoring", TRAIN_TIMEOUT)
    assert status["status"] == "DONE", "\n".join(status.get("details", []))[-3000:]
    store = requests.get(f"{server['url']}/datastore/", params={"output": "all"}, timeout=30).json()
    info = store["objects"]["ct_c"]["image"]["info"]
    assert np.isfinite(info["epistemic_entropy"]) and info["epistemic_entropy"] > 0
    # the unlabelled PNG is not a volume: skipped, not an error that ends the run
    assert "epistemic_entropy" not in store["objects"]["glas_3"]["image"]["info"]
    # the strategy serves the unlabelled image with the highest score
    r = requests.post(f"{server['url']}/activelearning/epistemic", timeout=60)
    assert r.status_code == 200 and r.json()["id"] == "ct_c", r.text
