# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""
``python -m monai_medt``: build every network, print its size, and check it against the official reference vectors.

    python -m monai_medt                                   # looks for ../shared/reference/official_medt_vectors
    python -m monai_medt --reference /path/to/official_medt_vectors
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from monai_medt import __version__
from monai_medt.networks import load_official
from monai_medt.networks.nets import AxialUNet, GatedAxialUNet, LoGo, MedT

TOLERANCE = 1e-5


def _default_reference() -> Path:
    shared = os.environ.get("MONAI_MEDT_SHARED", str(Path(__file__).resolve().parents[2] / "shared"))
    return Path(shared) / "reference" / "official_medt_vectors"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monai_medt", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--reference", type=Path, default=_default_reference(), help="folder of official vectors")
    parser.add_argument("--img-size", type=int, default=128)
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

    files = sorted(args.reference.glob("*.pt")) if args.reference.is_dir() else []
    if not files:
        print(f"\nno official reference vectors at {args.reference}: equivalence check skipped")
        return 0
    print(f"\nofficial reference vectors in {args.reference} (eval-mode logits, tolerance {TOLERANCE:g}):")
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
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
