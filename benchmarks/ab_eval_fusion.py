# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""
Eval throughput of a network with and without the attention layers' eval-mode folding (batch norms folded into the
projection and the output map), alternating the two in one process so that both see the same machine state: on a
shared host, runs minutes apart differ by more than the folding gains.

    python benchmarks/ab_eval_fusion.py --model MedT --threads 1 --rounds 6
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from monai_medt.networks import nets
from monai_medt.networks.blocks import axial_attention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="MedT", choices=["MedT", "LoGo", "GatedAxialUNet", "AxialUNet"])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=6, help="alternations; each times the best of 3 forwards")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = getattr(nets, args.model)(in_channels=3, out_channels=2, img_size=args.size).eval()
    x = torch.rand(args.batch, 3, args.size, args.size)
    base = axial_attention._AxialAttentionBase
    folded = base._fuse_eval

    def use(fold: bool) -> None:
        base._fuse_eval = folded if fold else (lambda self: False)

    def best_of_three() -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            with torch.no_grad():
                net(x)
            times.append(time.perf_counter() - start)
        return min(times)

    with torch.no_grad():
        use(False)
        plain_out = net(x)
        use(True)
        diff = (net(x) - plain_out).abs().max().item()
    seconds: dict[str, list[float]] = {"plain": [], "folded": []}
    for _ in range(args.rounds):
        for name in seconds:
            use(name == "folded")
            seconds[name].append(best_of_three())
    use(True)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
          f"{args.model} {args.size}x{args.size}, batch {args.batch}; max |folded - plain| {diff:.1e}")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name:7s} eval {args.batch / median:6.2f} img/s (median of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
