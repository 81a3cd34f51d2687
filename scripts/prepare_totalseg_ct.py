# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""
Write an MSD-style ``dataset.json`` for the small TotalSegmentator CT sample (``shared/data/totalseg_ct``), so that the
CT and interactive bundles can train on it with ``--dataset_dir <out>``. The images are referenced, not copied.
The labels are TotalSegmentator model outputs: use this for plumbing and demos, never for accuracy claims.

    python scripts/prepare_totalseg_ct.py --out /tmp/totalseg_msd
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Path(os.environ.get("MONAI_MEDT_SHARED", HERE.parent / "shared")) / "data" / "totalseg_ct"
    parser.add_argument("--data", type=Path, default=default, help="the totalseg_ct folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for dataset.json")
    args = parser.parse_args()
    pairs = [
        ("v1_full/example_ct.nii.gz", "v1_full/example_seg_multilabel_v1.nii.gz"),
        ("v2_small/example_ct_sm.nii.gz", "v2_small/example_seg_multilabel_v2.nii.gz"),
    ]
    missing = [str(args.data / p) for pair in pairs for p in pair if not (args.data / p).is_file()]
    if missing:
        raise SystemExit(f"totalseg_ct files not found: {missing}")
    entries = [{"image": str(args.data / i), "label": str(args.data / lab)} for i, lab in pairs]
    args.out.mkdir(parents=True, exist_ok=True)
    dataset = {
        "name": "totalseg_ct_sample",
        "description": "TotalSegmentator test CT with model-output labels (v1 and v2 label ids; 1 spleen, "
        "2 kidney_right, 3 kidney_left, 5 liver, 6 stomach in both)",
        "training": entries,
    }
    (args.out / "dataset.json").write_text(json.dumps(dataset, indent=2))
    print(args.out / "dataset.json")


if __name__ == "__main__":
    main()
