# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""Writes the tutorial notebooks (outputs stripped) from the cell sources below: `python notebooks/make_notebooks.py`."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = '''import os, sys, json
from pathlib import Path
REPO = Path.cwd().resolve().parent if Path.cwd().name == "notebooks" else Path.cwd().resolve()
SHARED = Path(os.environ.get("MONAI_MEDT_SHARED", REPO.parent / "shared"))
sys.path.insert(0, str(REPO))
import torch
torch.set_num_threads(2)
print("torch", torch.__version__, "| shared data:", SHARED, SHARED.exists())'''

NB1 = [
    new_markdown_cell(
        "# 1. The MedT network API\n\n"
        "Builds each network (MedT, LoGo, gated axial U-Net, axial U-Net), prints shapes and parameter counts, loads "
        "the official reference weights and compares logits, exports to TorchScript, and shows the CPU speed table "
        "from `benchmarks/`. Runs in under a minute on 2 CPU cores (the first run also compiles the CPU kernel, about a "
        "minute more). To open the notebooks: `.venv/bin/pip install -e \".[notebooks]\"`, then `.venv/bin/jupyter lab "
        "notebooks/`. The data "
        "are read from `../shared` beside the repository or from `$MONAI_MEDT_SHARED`."
    ),
    new_code_cell(SETUP),
    new_code_cell(
        "from monai_medt.networks.nets import MedT, LoGo, GatedAxialUNet, AxialUNet\n"
        "x = torch.rand(2, 3, 128, 128)\n"
        "print(f\"{'network':<16}{'params':>11}  output\")\n"
        "for cls in (MedT, LoGo, GatedAxialUNet, AxialUNet):\n"
        "    net = cls(in_channels=3, out_channels=2, img_size=128).eval()\n"
        "    with torch.no_grad():\n"
        "        out = net(x)\n"
        "    print(f\"{cls.__name__:<16}{sum(p.numel() for p in net.parameters()):>11,}  {tuple(out.shape)}\")"
    ),
    new_markdown_cell(
        "Other sizes and channel counts: the attention tables are sized from `img_size`, and MedT's local branch cuts "
        "the image into a `patch_grid` of tiles whose side must be a multiple of 32 (by default the largest grid up "
        "to the paper's 4x4 that fits)."
    ),
    new_code_cell(
        "net = MedT(in_channels=1, out_channels=4, img_size=(64, 96)).eval()\n"
        "print('grid', net.grid, 'output', tuple(net(torch.rand(1, 1, 64, 96)).shape))\n"
        "try:\n"
        "    MedT(3, 2, img_size=64, patch_grid=4)  # 4x4 tiles of 16 px are too small\n"
        "except ValueError as e:\n"
        "    print('ValueError:', e)"
    ),
    new_markdown_cell("## Official weights\n\n`load_official` converts a state dict of the official code (here the reference vectors in `shared/`)."),
    new_code_cell(
        "from monai_medt.networks import load_official\n"
        "ref_dir = SHARED / 'reference' / 'official_medt_vectors'\n"
        "for path in sorted(ref_dir.glob('*.pt')):\n"
        "    ref = torch.load(path, map_location='cpu', weights_only=False)\n"
        "    kw = ref['kwargs']\n"
        "    net = load_official(ref['official_factory'], ref['state_dict'], img_size=kw['img_size'], in_channels=kw['imgchan'], out_channels=kw['num_classes']).eval()\n"
        "    with torch.no_grad():\n"
        "        diff = (net(ref['input']) - ref['output']).abs().max().item()\n"
        "    print(f'{path.name:<18} max |diff| = {diff:.1e}')\n"
        "    assert diff <= 1e-5"
    ),
    new_markdown_cell("## TorchScript"),
    new_code_cell(
        "net = MedT(3, 2, img_size=64).eval()\n"
        "scripted = torch.jit.script(net)\n"
        "x = torch.rand(1, 3, 64, 64)\n"
        "with torch.no_grad():\n"
        "    print('max |scripted - eager| =', (scripted(x) - net(x)).abs().max().item())"
    ),
    new_markdown_cell(
        "## Speed\n\nFigures written by `python benchmarks/bench_networks.py --json benchmarks/results_cpu_128.json` "
        "(CPU, 2 threads, 128x128, batch 4; one run on 2026-11-30 at 15:46 UTC, a 2-core AMD EPYC Zen 5 with the fused "
        "kernel). The README's table comes from later runs of the same commands beside the official implementation; "
        "figures move between runs with the shared host's load (the gated U-Net trained at 23.6 img/s in this run, "
        "28.6-29.7 in the README's)."
    ),
    new_code_cell(
        "rows = json.loads((REPO / 'benchmarks' / 'results_cpu_128.json').read_text())\n"
        "print(f\"{'model':<16}{'mode':<7}{'img/s':>8}{'peak RSS MiB':>14}\")\n"
        "for r in rows:\n"
        "    print(f\"{r['model']:<16}{r['mode']:<7}{r['img_per_s']:>8.2f}{r['peak_rss_mib']:>14.0f}\")\n"
        "print('NOTEBOOK-OK')"
    ),
]

NB2 = [
    new_markdown_cell(
        "# 2. Training and evaluating MedT on a GlaS subset\n\n"
        "Runs the `medt_glas_segmentation` bundle in this process: training (the paper's optimiser, loss and batch "
        "size, but at 64 px on 8 images for 3 epochs, so that it finishes in under a minute on a CPU; the gates stay "
        "frozen, as in the recipe's first 10 epochs), then the evaluation workflow with both metric protocols; plots "
        "the learning curve and overlays. `MEDT_NB_EPOCHS`, `MEDT_NB_CASES` and "
        "`MEDT_NB_IMG_SIZE` set the scale. The numbers of the long runs (the checkpoints shipped with the bundle) are in "
        "the README's \"GlaS results\" table and in `bundles/medt_glas_segmentation/docs/README.md`."
    ),
    new_code_cell(SETUP),
    new_code_cell(
        "import tempfile\n"
        "EPOCHS = int(os.environ.get('MEDT_NB_EPOCHS', 3))\n"
        "CASES = int(os.environ.get('MEDT_NB_CASES', 8))\n"
        "IMG = int(os.environ.get('MEDT_NB_IMG_SIZE', 64))\n"
        "BUNDLE = REPO / 'bundles' / 'medt_glas_segmentation'\n"
        "WORK = Path(tempfile.mkdtemp(prefix='medt_glas_'))\n"
        "common = dict(bundle_root=str(WORK), dataset_dir=str(SHARED / 'data' / 'glas'), max_cases=CASES, img_size=IMG, num_workers=0)\n"
        "print(WORK)"
    ),
    new_code_cell(
        "from monai.bundle import ConfigWorkflow\n"
        "def workflow(configs, **override):\n"
        "    return ConfigWorkflow(config_file=[str(BUNDLE / 'configs' / c) for c in configs],\n"
        "                          meta_file=str(BUNDLE / 'configs' / 'metadata.json'),\n"
        "                          logging_file=str(BUNDLE / 'configs' / 'logging.conf'), workflow_type='train', **override)\n"
        "train = workflow(['train.json'], epochs=EPOCHS, val_interval=1, **common)\n"
        "train.initialize(); train.run(); train.finalize()\n"
        "print(sorted(p.name for p in (WORK / 'models').iterdir()))"
    ),
    new_markdown_cell("## Learning curve (from the TensorBoard logs)"),
    new_code_cell(
        "import matplotlib.pyplot as plt\n"
        "from tensorboard.backend.event_processing.event_accumulator import EventAccumulator\n"
        "curves = {}\n"
        "for event in (WORK / 'eval').glob('events.out.tfevents*'):\n"
        "    acc = EventAccumulator(str(event)); acc.Reload()\n"
        "    for tag in acc.Tags()['scalars']:\n"
        "        curves.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))\n"
        "fig, ax = plt.subplots(1, 2, figsize=(10, 3))\n"
        "for tag, values in curves.items():\n"
        "    steps, vals = zip(*sorted(values))\n"
        "    ax[0 if 'loss' in tag else 1].plot(steps, vals, marker='o', label=tag)\n"
        "ax[0].set_xlabel('iteration'); ax[1].set_xlabel('epoch'); ax[0].legend(); ax[1].legend()\n"
        "plt.show()\n"
        "print(sorted(curves))"
    ),
    new_markdown_cell("## Evaluation on test images: paper protocol and MONAI metrics"),
    new_code_cell(
        "ev = workflow(['train.json', 'evaluate.json'], num_overlays=2, **common)\n"
        "ev.initialize(); ev.run(); ev.finalize()\n"
        "summary = json.loads((WORK / 'eval' / 'summary.json').read_text())\n"
        "print('| metric | mean over images |'); print('|---|---|')\n"
        "for k, v in summary['mean'].items():\n"
        "    print(f'| {k} | {v:.4f} |')\n"
        "print('pooled Dice:', summary['pooled_dice'])"
    ),
    new_code_cell(
        "fig, axes = plt.subplots(2, 1, figsize=(12, 6))\n"
        "for ax, path in zip(axes, sorted((WORK / 'eval' / 'overlays').glob('*.png'))):\n"
        "    ax.imshow(plt.imread(path)); ax.set_title(f'{path.stem}: image | ground truth | prediction'); ax.axis('off')\n"
        "plt.show()\n"
        "print('NOTEBOOK-OK')"
    ),
]

NB3 = [
    new_markdown_cell(
        "# 3. Clinical volumes: slice-wise MedT on CT\n\n"
        "Loads two sample abdominal CTs from `shared/data/totalseg_ct` (a NIfTI volume and a DICOM series), trains the "
        "`medt_ct_segmentation` bundle for a moment (no weights are shipped yet, and the sample labels are "
        "TotalSegmentator outputs: this shows the plumbing, not accuracy), runs `SliceInferer` inference on both "
        "inputs, shows axial and coronal overlays and checks that the saved NIfTI has the input's geometry. "
        "Under a minute on 2 CPU cores."
    ),
    new_code_cell(SETUP),
    new_code_cell(
        "import tempfile\n"
        "import nibabel as nib, numpy as np\n"
        "from monai.transforms import LoadImage\n"
        "CT = SHARED / 'data' / 'totalseg_ct'\n"
        "nifti = LoadImage(image_only=True)(str(CT / 'v2_small' / 'example_ct_sm.nii.gz'))\n"
        "dicom = LoadImage(image_only=True)(str(CT / 'dicom_series' / 'ct_dicom'))\n"
        "for name, img in (('NIfTI', nifti), ('DICOM series', dicom)):\n"
        "    print(f'{name:<13} shape {tuple(img.shape)} spacing {np.round(img.pixdim.numpy(), 3)} HU {float(img.min()):.0f}..{float(img.max()):.0f}')"
    ),
    new_code_cell(
        "EPOCHS = int(os.environ.get('MEDT_NB_EPOCHS', 2))\n"
        "IMG = int(os.environ.get('MEDT_NB_IMG_SIZE', 64))\n"
        "BUNDLE = REPO / 'bundles' / 'medt_ct_segmentation'\n"
        "WORK = Path(tempfile.mkdtemp(prefix='medt_ct_'))\n"
        "seg = nib.load(CT / 'v2_small' / 'example_seg_multilabel_v2.nii.gz')\n"
        "nib.save(nib.Nifti1Image((np.asarray(seg.dataobj) == 5).astype(np.uint8), seg.affine), WORK / 'liver.nii.gz')\n"
        "entry = {'image': str(CT / 'v2_small' / 'example_ct_sm.nii.gz'), 'label': str(WORK / 'liver.nii.gz')}\n"
        "(WORK / 'dataset.json').write_text(json.dumps({'training': [entry] * 3}))\n"
        "from monai.bundle import ConfigWorkflow\n"
        "def workflow(configs, kind, **override):\n"
        "    return ConfigWorkflow(config_file=[str(BUNDLE / 'configs' / c) for c in configs], meta_file=str(BUNDLE / 'configs' / 'metadata.json'),\n"
        "                          logging_file=str(BUNDLE / 'configs' / 'logging.conf'), workflow_type=kind, **override)\n"
        "small = dict(bundle_root=str(WORK), img_size=IMG, pixdim=[3.0, 3.0], num_workers=0)\n"
        "train = workflow(['train.json'], 'train', dataset_dir=str(WORK), val_fraction=0.34, epochs=EPOCHS, val_interval=EPOCHS,\n"
        "                 num_samples=2, batch_size=1, **small)\n"
        "train.initialize(); train.run(); train.finalize()\n"
        "print(sorted(p.name for p in (WORK / 'models').iterdir()))"
    ),
    new_markdown_cell("## Inference on the NIfTI volume and the DICOM series"),
    new_code_cell(
        "inputs = WORK / 'inputs'; inputs.mkdir(exist_ok=True)\n"
        "for src, dst in ((CT / 'v2_small' / 'example_ct_sm.nii.gz', 'small_ct.nii.gz'), (CT / 'dicom_series' / 'ct_dicom', 'series1')):\n"
        "    if not (inputs / dst).exists(): os.symlink(src, inputs / dst)\n"
        "infer = workflow(['inference.json'], 'infer', dataset_dir=str(inputs), output_dir=str(WORK / 'pred'), **small)\n"
        "infer.initialize(); infer.run(); infer.finalize()\n"
        "pred = nib.load(WORK / 'pred' / 'small_ct_seg.nii.gz')\n"
        "src = nib.load(CT / 'v2_small' / 'example_ct_sm.nii.gz')\n"
        "print('same shape:', pred.shape == src.shape, '| same affine:', np.allclose(pred.affine, src.affine, atol=1e-4))\n"
        "assert pred.shape == src.shape and np.allclose(pred.affine, src.affine, atol=1e-4)\n"
        "print(sorted(p.name for p in (WORK / 'pred').iterdir()))"
    ),
    new_code_cell(
        "import matplotlib.pyplot as plt\n"
        "image, mask = np.asarray(src.dataobj).astype(float), np.asarray(pred.dataobj)\n"
        "z, y = image.shape[2] // 2, image.shape[1] // 2\n"
        "fig, ax = plt.subplots(1, 2, figsize=(10, 4))\n"
        "for a, (img, m, title) in zip(ax, ((image[:, :, z].T, mask[:, :, z].T, 'axial'), (image[:, y, :].T, mask[:, y, :].T, 'coronal'))):\n"
        "    a.imshow(np.clip(img, -175, 250), cmap='gray', origin='lower'); a.imshow(np.ma.masked_equal(m, 0), alpha=0.5, cmap='autumn', origin='lower')\n"
        "    a.set_title(title); a.axis('off')\n"
        "plt.show()"
    ),
    new_markdown_cell(
        "## MONAI Label\n\n"
        "`label_app/` serves this bundle (and the GlaS and click-guided bundles) to 3D Slicer or OHIF. MONAI Label has "
        "its own environment (`.venv-label`: torch 2.14.1 + torchvision 0.29.1, monailabel 0.8.5). From the "
        "repository root:\n\n"
        "```bash\n"
        "bash scripts/setup_label_env.sh\n"
        "source .venv-label/bin/activate\n"
        "monailabel start_server --app label_app --studies /path/to/ct_studies \\\n"
        "    --conf models medt_ct_segmentation,medt_interactive_segmentation\n"
        "```\n\n"
        "Then, in 3D Slicer's MONAI Label module, connect to `http://127.0.0.1:8000`: `medt_click_ct` labels the "
        "structure under your clicks on the current slice; `medt_ct_segmentation` labels the whole volume once it has "
        "weights (none are shipped: train it from Slicer or with `POST /train/medt_ct_segmentation`; the server serves "
        "it as soon as the run has saved `label_app/model/medt_ct_segmentation/models/model.pt`). The same REST calls "
        "from Python are below; they run when `MONAI_LABEL_URL` points at a running server."
    ),
    new_code_cell(
        "import requests\n"
        "url = os.environ.get('MONAI_LABEL_URL')\n"
        "if url:\n"
        "    info = requests.get(f'{url}/info/', timeout=30).json()\n"
        "    print('models:', list(info['models']))\n"
        "    image = next(iter(requests.get(f'{url}/datastore/', params={'output': 'all'}, timeout=30).json()['objects']))\n"
        "    # click-guided label on one slice of that study: clicks are voxel indices (x, y, slice) inside the volume\n"
        "    r = requests.post(f'{url}/infer/medt_click_ct', params={'image': image, 'output': 'image'},\n"
        "                      files={'params': (None, json.dumps({'foreground': [[60, 50, 15]], 'background': []}))})\n"
        "    print(r.status_code, len(r.content), 'bytes of NIfTI label')\n"
        "else:\n"
        "    print('MONAI_LABEL_URL not set: start a server as above to run these calls')"
    ),
    new_code_cell("print('NOTEBOOK-OK')"),
]


def main() -> None:
    for name, cells in (("01_network_api", NB1), ("02_train_evaluate_glas", NB2), ("03_ct_slicewise_inference", NB3)):
        for i, cell in enumerate(cells):  # stable ids: regenerating does not churn unchanged notebooks
            cell["id"] = f"{name[:2]}-{i:02d}"
        nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
        nbformat.write(nb, HERE / f"{name}.ipynb")


if __name__ == "__main__":
    main()
