# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""
``python -m monai_medt.evaluation --pred-dir P --label-dir L --output-dir O [--image-dir I]``: score predicted masks
against ground truth of the same names; write per_image.csv, summary.json and overlays/.
"""

from __future__ import annotations

import argparse
import json
import sys

from monai_medt.evaluation.evaluate import evaluate_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m monai_medt.evaluation",
        description="Score predicted masks against ground truth of the same names; write per_image.csv, summary.json "
        "and overlays/.",
    )
    parser.add_argument(
        "--pred-dir", required=True, help="predicted masks (PNG/BMP/TIF 0/255 or 0/1, or label volumes)"
    )
    parser.add_argument("--label-dir", required=True, help="ground truth with the same file names (any extension)")
    parser.add_argument("--output-dir", required=True, help="folder for per_image.csv, summary.json and overlays/")
    parser.add_argument("--image-dir", default=None, help="images of the same names, for the overlays (optional)")
    parser.add_argument("--num-classes", type=int, default=2, help="classes including background (default 2)")
    parser.add_argument("--overlays", type=int, default=5, help="number of overlay PNGs to write")
    parser.add_argument(
        "--official-tp-zero", action="store_true", help="score images with TP = 0 as 1 (the official MATLAB rule)"
    )
    args = parser.parse_args(argv)
    try:
        summary = evaluate_folder(
            args.pred_dir,
            args.label_dir,
            args.output_dir,
            image_dir=args.image_dir,
            num_classes=args.num_classes,
            num_overlays=args.overlays,
            tp_zero_score=1.0 if args.official_tp_zero else None,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = {"cases": summary["cases"], "mean": summary["mean"], "pooled_dice": summary["pooled_dice"]}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
