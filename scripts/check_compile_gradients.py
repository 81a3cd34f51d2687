# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""
Compare one training step's parameter gradients of a ``torch.compile``d network with the eager network's (same
weights, same batch, train mode) and print how far apart they are. Run it before training with ``compile=True``
on a new torch version or device. On torch 2.13 (CPU, inductor) MedT and LoGo came back with all-zero gradients for
every parameter but the last layers, while the loss matched: inductor miscompiled the backward of the decoders'
bilinear upsampling, which the decoders now replace under compilation (``monai_medt.networks.blocks.decoder``).

    python scripts/check_compile_gradients.py --model MedT                        # inductor on the CPU, ~3 min
    python scripts/check_compile_gradients.py --model MedT --device cuda --backend inductor
    # a small MedT, each child module compiled on its own
    python scripts/check_compile_gradients.py --small --compile children

The default is float64, where a right compilation differs from eager by rounding alone (MedT: 5e-11 relative, global
norm). In float32 the gradients of an untrained MedT are ill-conditioned: eager float32 gradients differ from float64
ones by 1e-2 to 4e-1 (relative, global norm; 128x128, batch 4, four seeds, fused kernel and PyTorch path alike;
the official implementation's by 1.7e-1 in one seed), so a float32 comparison cannot tell a right compilation from a
wrong one, except for all-zero gradients.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from monai_medt.networks import nets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="MedT", choices=["MedT", "LoGo", "GatedAxialUNet", "AxialUNet"])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (inductor, aot_eager, eager)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--small", action="store_true", help="MedT/LoGo with depths (1, 1, 1, 1) and one global stage")
    parser.add_argument(
        "--compile", default="whole", choices=["whole", "children"],
        help="compile the network as one graph, or each child module (and each stage of a module list) on its own",
    )
    args = parser.parse_args()
    if args.small and args.model not in ("MedT", "LoGo"):
        parser.error("--small applies to MedT and LoGo")
    dtype = getattr(torch, args.dtype)
    kwargs = {"depths": (1, 1, 1, 1), "global_stages": 1} if args.small else {}

    torch.manual_seed(0)
    device = torch.device(args.device)
    x = torch.rand(args.batch, 3, args.size, args.size, device=device, dtype=dtype)
    y = torch.randint(0, 2, (args.batch, args.size, args.size), device=device)
    state = getattr(nets, args.model)(in_channels=3, out_channels=2, img_size=args.size, **kwargs).state_dict()

    def step(compiled: bool) -> tuple[float, dict[str, torch.Tensor]]:
        net = getattr(nets, args.model)(in_channels=3, out_channels=2, img_size=args.size, **kwargs)
        net.load_state_dict(state)
        net.to(device=device, dtype=dtype).train()
        run = net
        if compiled and args.compile == "whole":
            run = torch.compile(net, backend=args.backend)
        elif compiled:
            for name, child in list(net.named_children()):
                if isinstance(child, nn.ModuleList):
                    for i, stage in enumerate(child):
                        child[i] = torch.compile(stage, backend=args.backend)
                elif any(True for _ in child.parameters()):
                    setattr(net, name, torch.compile(child, backend=args.backend))
        loss = F.cross_entropy(run(x), y)
        loss.backward()
        # a compiled child registers its parameters under "_orig_mod"
        return loss.item(), {
            n.replace("._orig_mod", ""): p.grad.detach().clone() for n, p in net.named_parameters() if p.grad is not None
        }

    eager_loss, eager = step(False)
    compiled_loss, compiled = step(True)
    total = torch.sqrt(sum((g.double() ** 2).sum() for g in eager.values()))
    diff = torch.sqrt(sum(((compiled[n] - g).double() ** 2).sum() for n, g in eager.items()))
    zero = [n for n, g in compiled.items() if not g.any() and eager[n].any()]
    print(
        f"torch {torch.__version__}, {args.model}{' (small)' if args.small else ''} {args.size}x{args.size}, "
        f"batch {args.batch}, {device}, {args.dtype}, {args.backend}, compiled: {args.compile}"
    )
    print(f"loss eager {eager_loss:.10f} compiled {compiled_loss:.10f}")
    print(f"gradients: relative difference (global norm) {(diff / total).item():.2e}; "
          f"{len(zero)} of {len(eager)} parameters all-zero when compiled (non-zero in eager)")


if __name__ == "__main__":
    main()
