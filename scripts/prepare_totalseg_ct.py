# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""
Write an MSD-style ``dataset.json`` for the small TotalSegmentator CT sample (``shared/data/totalseg_ct``: two labelled
volumes of one scan), for the bundles' ``--dataset_dir <out>``. The labels are TotalSegmentator model outputs: use this
for plumbing and demos, never for accuracy claims.

Without ``--organs`` the images and labels are referenced as they are, with TotalSegmentator's own label ids (1 spleen,
2 kidney_right, 3 kidney_left, 5 liver, 6 stomach in both volumes; other ids differ between its v1 and v2 label
schemes): the interactive bundle picks organs from these with ``--classes``. With ``--organs`` the labels are rewritten
into ``<out>/labels/`` (same grid and affine) with the named organs as classes 1..K and everything else background, as
the segmentation bundle expects; the script prints the bundle command with the matching ``--out_channels``.

    python scripts/prepare_totalseg_ct.py --out /tmp/totalseg_msd                         # interactive bundle
    python scripts/prepare_totalseg_ct.py --out /tmp/totalseg_organs --organs liver spleen  # CT bundle
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
# (image, label, the label's id -> name map)
PAIRS = [
    ("v1_full/example_ct.nii.gz", "v1_full/example_seg_multilabel_v1.nii.gz", "labels_v1.json"),
    ("v2_small/example_ct_sm.nii.gz", "v2_small/example_seg_multilabel_v2.nii.gz", "labels_v2.json"),
]


def organ_labels(label: Path, id_names: Path, organs: list[str], out: Path) -> Path:
    """Rewrite ``label`` (TotalSegmentator ids, named in ``id_names``) with ``organs[k - 1]`` as class k."""
    import nibabel as nib
    import numpy as np

    ids = {name: int(i) for i, name in json.loads(id_names.read_text()).items()}
    unknown = [name for name in organs if name not in ids]
    if unknown:
        raise SystemExit(f"{id_names}: no label named {unknown}; names: {sorted(ids)}")
    source = nib.load(label)
    values = np.asarray(source.dataobj)
    classes = np.zeros(values.shape, np.uint8)
    for k, name in enumerate(organs, start=1):
        classes[values == ids[name]] = k
    out.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(classes, source.affine, source.header)
    image.set_data_dtype(np.uint8)
    nib.save(image, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Path(os.environ.get("MONAI_MEDT_SHARED", HERE.parent / "shared")) / "data" / "totalseg_ct"
    parser.add_argument("--data", type=Path, default=default, help="the totalseg_ct folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for dataset.json (and labels/ with --organs)")
    parser.add_argument("--organs", nargs="+", help="organ names (as in labels_v1.json / labels_v2.json) as classes")
    args = parser.parse_args()
    missing = [str(args.data / p) for pair in PAIRS for p in pair if not (args.data / p).is_file()]
    if missing:
        raise SystemExit(f"totalseg_ct files not found: {missing}")
    if args.organs and len(set(args.organs)) != len(args.organs):
        raise SystemExit(f"--organs names an organ twice: {args.organs}")
    args.out.mkdir(parents=True, exist_ok=True)
    entries = []
    for image, label, id_names in PAIRS:
        label_path = args.data / label
        if args.organs:
            name = Path(label).name.replace(".nii.gz", "_organs.nii.gz")
            label_path = organ_labels(label_path, args.data / id_names, args.organs, args.out / "labels" / name)
        entries.append({"image": str(args.data / image), "label": str(label_path)})
    dataset = {
        "name": "totalseg_ct_sample",
        "description": "TotalSegmentator test CT with model-output labels (v1 and v2 label ids; 1 spleen, "
        "2 kidney_right, 3 kidney_left, 5 liver, 6 stomach in both)",
        "training": entries,
    }
    if args.organs:
        dataset["description"] = "TotalSegmentator test CT with model-output labels: " + ", ".join(args.organs)
        dataset["labels"] = {"0": "background", **{str(k): name for k, name in enumerate(args.organs, start=1)}}
    (args.out / "dataset.json").write_text(json.dumps(dataset, indent=2))
    print(args.out / "dataset.json")
    if args.organs:
        # two volumes: one trains, one validates
        print(
            "bundles/medt_ct_segmentation: python -m monai.bundle run --config_file configs/train.json --meta_file "
            f"configs/metadata.json --logging_file configs/logging.conf --dataset_dir {args.out} --val_fraction 0.5 "
            f"--out_channels {len(args.organs) + 1}"
        )


if __name__ == "__main__":
    main()
