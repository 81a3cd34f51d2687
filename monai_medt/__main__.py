# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""
``python -m monai_medt``: build every network, print its size, check it against the official reference vectors, and
segment a few GlaS test images with the GlaS bundle's shipped weights (its ``inference.json``), scored against their
ground truth.

    python -m monai_medt                                   # looks for ../shared/reference/official_medt_vectors
    python -m monai_medt --reference /path/to/official_medt_vectors --glas /path/to/glas --cases 4
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import torch

from monai_medt import __version__
from monai_medt.networks import load_official
from monai_medt.networks.nets import AxialUNet, GatedAxialUNet, LoGo, MedT

TOLERANCE = 1e-5


def _shared() -> Path:
    return Path(os.environ.get("MONAI_MEDT_SHARED", str(Path(__file__).resolve().parents[2] / "shared")))


def segment_glas(glas: Path, cases: int, output_dir: Path) -> dict | None:
    """Run bundles/medt_glas_segmentation/configs/inference.json on the first ``cases`` GlaS test images and score
    the masks; None when the bundle, its weights or the data are not there."""
    bundle = Path(__file__).resolve().parents[1] / "bundles" / "medt_glas_segmentation"
    weights = bundle / "models" / "model.pt"
    images, labels = glas / "test" / "img", glas / "test" / "labelcol"
    for path, what in ((weights, "shipped GlaS weights"), (images, "GlaS test images"), (labels, "GlaS test masks")):
        if not path.exists():
            print(f"\n{what} not found at {path}: GlaS segmentation skipped")
            return None
    from monai.bundle import run

    from monai_medt.evaluation import evaluate_folder

    print(f"\nsegmenting {cases} GlaS test images with {weights.relative_to(bundle.parents[1])} -> {output_dir}")
    run(
        config_file=str(bundle / "configs" / "inference.json"),
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        bundle_root=str(bundle),
        dataset_dir=str(images),
        output_dir=str(output_dir),
        max_cases=cases,
        num_workers=0,
        tta=True,  # the shipped weights were trained with flips and turns, and validated with this averaging
    )
    names = sorted(p.stem for p in (output_dir / "pred").glob("*.png"))
    summary = evaluate_folder(output_dir / "pred", labels, output_dir / "scores", image_dir=images, names=names)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monai_medt", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--reference", type=Path, default=_shared() / "reference" / "official_medt_vectors", help="folder of official vectors")
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--glas", type=Path, default=_shared() / "data" / "glas", help="GlaS in the MedT layout")
    parser.add_argument("--cases", type=int, default=4, help="GlaS test images to segment (0: none)")
    parser.add_argument("--output-dir", type=Path, default=Path("medt_demo"), help="masks, overlays and scores")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(4, os.cpu_count() or 1))

    print(f"monai-medt {__version__} | torch {torch.__version__}")
    print(f"\n{'network':<16}{'params':>11}{'eval ms/img':>13}  output")
    x = torch.rand(1, 3, args.img_size, args.img_size)
    for cls in (MedT, LoGo, GatedAxialUNet, AxialUNet):
        net = cls(in_channels=3, out_channels=2, img_size=args.img_size).eval()
        with torch.no_grad():
            t0 = time.perf_counter()
            out = net(x)
            ms = (time.perf_counter() - t0) * 1000
        params = sum(p.numel() for p in net.parameters())
        print(f"{cls.__name__:<16}{params:>11,}{ms:>13.0f}  {tuple(out.shape)}")

    failures = check_official(args.reference)
    if args.cases > 0:
        summary = segment_glas(args.glas, args.cases, args.output_dir)
        if summary is not None:
            if args.cases <= 10:
                with open(args.output_dir / "scores" / "per_image.csv", newline="") as f:
                    for row in csv.DictReader(f):
                        print(f"  {row['name']:<12} F1 {float(row['paper_f1']):.3f}  IoU {float(row['paper_iou']):.3f}")
            scores = ", ".join(f"{k} {v:.3f}" for k, v in summary["mean"].items() if k != "hd95_1")
            print(f"mean over {summary['cases']} images: {scores}")
            if args.cases < 80:
                print("(single images vary widely; --cases 80 scores the whole GlaS test set: README, GlaS results)")
            print(f"masks: {args.output_dir / 'pred'} | overlays: {args.output_dir / 'overlays'}")
    return 1 if failures else 0


def check_official(reference: Path) -> int:
    """Compare every network with the official eval-mode logits in ``reference``; returns the number of mismatches."""
    files = sorted(reference.glob("*.pt")) if reference.is_dir() else []
    if not files:
        print(f"\nno official reference vectors at {reference}: equivalence check skipped")
        return 0
    print(f"\nofficial reference vectors in {reference} (eval-mode logits, tolerance {TOLERANCE:g}):")
    failures = 0
    for path in files:
        ref = torch.load(path, map_location="cpu", weights_only=False)
        kw = ref["kwargs"]
        net = load_official(
            ref["official_factory"],
            ref["state_dict"],
            img_size=kw["img_size"],
            in_channels=kw["imgchan"],
            out_channels=kw["num_classes"],
        ).eval()
        with torch.no_grad():
            diff = (net(ref["input"]) - ref["output"]).abs().max().item()
        ok = diff <= TOLERANCE
        failures += not ok
        print(f"  {path.name:<18} {type(net).__name__:<15} max |diff| = {diff:.2e}  {'OK' if ok else 'MISMATCH'}")
    return failures


if __name__ == "__main__":
    sys.exit(main())
