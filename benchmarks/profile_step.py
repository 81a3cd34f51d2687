# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""
Where the time of one train step (forward, cross-entropy, backward, Adam) or one eval forward goes: torch.profiler's
operators, sorted by their own CPU time, over ``--steps`` steps after three warm-up steps.

    python benchmarks/profile_step.py --model MedT --mode train --threads 2
    python benchmarks/profile_step.py --model MedT --mode eval --threads 2
    python benchmarks/profile_step.py --model MedT --mode train --shapes aten::convolution_backward

``--shapes OP`` lists that operator's calls by input shapes instead (for ``aten::convolution_backward`` with the
achieved GFLOP/s).

``--count-ops`` counts the operators of one training forward + backward (``--mode eval``: one eval forward) on the
accelerator path instead (the network on the meta device, which runs the PyTorch attention and no CPU kernel): on a
GPU each operator that is not a view is about one kernel launch, and an eager step whose kernels are small is bound
by their number.

    python benchmarks/profile_step.py --model MedT --count-ops [--mode eval]
"""

from __future__ import annotations

import argparse
import platform

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from monai_medt.networks import nets
from monai_medt.networks.blocks.cpu_kernel import cpu_kernel


def backward_gflop(op: str, shapes: list) -> float | None:
    """
    FLOPs of one convolution backward (input and weight gradients: twice the forward's) from its profiled input
    shapes (grad_output, input, weight); None for other operators.
    """
    if op != "aten::convolution_backward" or len(shapes) < 3 or len(shapes[0]) != 4 or len(shapes[2]) != 4:
        return None
    (n, c_out, h, w), (_, c_in, kh, kw) = shapes[0], shapes[2]
    return 2 * 2.0 * n * h * w * c_out * c_in * kh * kw / 1e9


def print_shapes(prof, op: str, total: float, steps: int, rows: int) -> None:
    events = [e for e in prof.key_averages(group_by_input_shape=True) if e.key == op]
    if not events:
        raise ValueError(f"no operator named {op!r} in the profile.")
    print(f"{'share':>7} {'ms/step':>8} {'calls/step':>10} {'GFLOP/s':>8}  input shapes of {op}")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:rows]:
        ms = e.self_cpu_time_total / 1e3 / steps
        gflop = backward_gflop(op, e.input_shapes)
        rate = f"{gflop * e.count / steps / (ms / 1e3):8.0f}" if gflop is not None and ms > 0 else f"{'':8}"
        print(f"{100 * e.self_cpu_time_total / total:6.1f}% {ms:8.2f} {e.count / steps:10.0f} {rate}  {e.input_shapes}")


# operators that launch no kernel besides the views: allocations, views the schema does not mark as such, dtype queries
_NO_KERNEL = {"_unsafe_view", "empty", "empty_like", "empty_strided", "new_empty", "promote_types"}


class _OperatorCounter(TorchDispatchMode):
    """Counts the operators dispatched while active: views and allocations (no kernel) and the others, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.views = 0
        self.kernels: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.is_view or func.overloadpacket.__name__ in _NO_KERNEL:
            self.views += 1
        else:
            name = func.overloadpacket.__name__
            self.kernels[name] = self.kernels.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def count_ops(model: str, mode: str, size: int, batch: int, rows: int) -> None:
    """
    Print the operators of one training forward + backward (cross-entropy loss) or one eval forward (no gradients) on
    the meta device.
    """
    with torch.device("meta"):
        net = getattr(nets, model)(in_channels=3, out_channels=2, img_size=size).train(mode == "train")
        x = torch.rand(batch, 3, size, size)
        y = torch.randint(0, 2, (batch, size, size))

    def step() -> None:
        if mode == "train":
            torch.nn.functional.cross_entropy(net(x), y).backward()
            net.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                net(x)

    step()  # the first step's lazy initialisations stay out of the count
    with _OperatorCounter() as counter:
        step()
    total = sum(counter.kernels.values())
    what = "train forward + backward" if mode == "train" else "eval forward"
    print(f"# torch {torch.__version__}; {model} {what}, {batch}x3x{size}x{size}, accelerator path (meta device): "
          f"{total} operators besides {counter.views} views and allocations")
    print(f"{'calls':>7}  operator")
    for name, calls in sorted(counter.kernels.items(), key=lambda kv: -kv[1])[:rows]:
        print(f"{calls:7d}  aten::{name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="MedT", choices=["MedT", "LoGo", "GatedAxialUNet", "AxialUNet"])
    parser.add_argument("--mode", default="train", choices=["train", "eval"])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=25, help="operators to list")
    parser.add_argument("--shapes", default=None, help="list this operator's calls by input shapes")
    parser.add_argument("--count-ops", action="store_true", help="count the accelerator path's operators instead")
    args = parser.parse_args()
    if args.count_ops:
        count_ops(args.model, args.mode, args.size, args.batch, args.rows)
        return

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cpu_kernel()  # build or load the fused kernel before profiling
    train = args.mode == "train"
    net = getattr(nets, args.model)(in_channels=3, out_channels=2, img_size=args.size).train(train)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-5)
    x = torch.rand(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 2, (args.batch, args.size, args.size))

    def step() -> None:
        if not train:
            with torch.no_grad():
                net(x)
            return
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()

    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes is not None) as prof:
        for _ in range(args.steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    if args.shapes is not None:
        print_shapes(prof, args.shapes, total, args.steps, args.rows)
        return
    print(f"# {platform.processor() or platform.machine()}, vector ISA {torch.backends.cpu.get_cpu_capability()}, "
          f"torch {torch.__version__}, {args.threads} thread(s); {args.model} {args.mode}, {args.batch}x3x{args.size}"
          f"x{args.size}; {total / 1e3 / args.steps:.1f} ms of operator time per step")
    print(f"{'share':>7} {'ms/step':>8} {'calls/step':>10}  operator")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.rows]:
        print(f"{100 * e.self_cpu_time_total / total:6.1f}% {e.self_cpu_time_total / 1e3 / args.steps:8.2f}"
              f" {e.count / args.steps:10.0f}  {e.key}")


if __name__ == "__main__":
    main()
