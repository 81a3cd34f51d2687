# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""
Compare one training step's parameter gradients of a ``torch.compile``d network with the eager network's (same
weights, same batch, train mode) and print how far apart they are. Run it before training with ``compile=True``
on a new torch version or device: on torch 2.13 (CPU, inductor) MedT and LoGo come back with all-zero gradients for
every parameter but the last layers, while the loss matches.

    python scripts/check_compile_gradients.py --model MedT --size 32              # inductor on the CPU, ~4 min
    python scripts/check_compile_gradients.py --model MedT --device cuda --backend inductor

The noise floor is the same comparison between the eager fused CPU kernel and the eager PyTorch path (both
float32): with batch norm in train mode on tiny batches, gradients of the whole network differ there by ~5e-3
(relative, global norm). A compiled run far above that, or with all-zero gradients, is not the same training.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from monai_medt.networks import nets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="MedT", choices=["MedT", "LoGo", "GatedAxialUNet", "AxialUNet"])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (inductor, aot_eager, eager)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, 2, (args.batch, args.size, args.size), device=device)
    state = getattr(nets, args.model)(in_channels=3, out_channels=2, img_size=args.size).state_dict()

    def step(compiled: bool) -> tuple[float, dict[str, torch.Tensor]]:
        net = getattr(nets, args.model)(in_channels=3, out_channels=2, img_size=args.size)
        net.load_state_dict(state)
        net.to(device).train()
        run = torch.compile(net, backend=args.backend) if compiled else net
        loss = F.cross_entropy(run(x), y)
        loss.backward()
        return loss.item(), {n: p.grad.detach().clone() for n, p in net.named_parameters() if p.grad is not None}

    eager_loss, eager = step(False)
    compiled_loss, compiled = step(True)
    total = torch.sqrt(sum((g.double() ** 2).sum() for g in eager.values()))
    diff = torch.sqrt(sum(((compiled[n] - g).double() ** 2).sum() for n, g in eager.items()))
    zero = [n for n, g in compiled.items() if not g.any() and eager[n].any()]
    print(f"torch {torch.__version__}, {args.model} {args.size}x{args.size}, batch {args.batch}, {device}, {args.backend}")
    print(f"loss eager {eager_loss:.6f} compiled {compiled_loss:.6f}")
    print(f"gradients: relative difference (global norm) {(diff / total).item():.2e}; "
          f"{len(zero)} of {len(eager)} parameters all-zero when compiled (non-zero in eager)")


if __name__ == "__main__":
    main()
