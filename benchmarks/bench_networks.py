# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""
Throughput and peak memory of the MedT networks (and MONAI baselines) on the CPU or a GPU.

Every (model, mode) pair runs in its own subprocess so that the peak RSS belongs to that pair alone; "above base" is
the peak minus the RSS before the first step: after importing torch and MONAI, loading the kernel and building the
model, the input and (in training) the optimizer. That base depends on the environment: ``import monai`` loads every
optional package it finds (in this project's full environment, with the bundle, tracking and DICOM extras, ~330 MiB;
with only torch, MONAI and numpy installed, ~25 MiB), and any PyTorch optimizer imports torch._dynamo (~70 MiB).
A train step is forward + cross-entropy + backward + Adam step in train mode (PyTorch's default Adam, a loop over the
parameters; ``--fused-adam``: its fused implementation, as the bundles train, for every model); eval is a no-grad
forward in eval mode.
Figures are the median over ``--repeats`` timed iterations after ``--warmup`` untimed ones. ``--cuda-graphs`` (CUDA
only) replays captured CUDA graphs instead of launching every kernel from Python: in training the network's forward
and backward (``torch.cuda.make_graphed_callables``; the loss and Adam stay eager), in eval the forward.

    python benchmarks/bench_networks.py                       # all MedT variants, 128x128, batch 4, 2 threads
    python benchmarks/bench_networks.py --models MedT UNet SwinUNETR --size 256 --batch 2
    # side by side with the official implementation, from your own checkout of jeya-maria-jose/Medical-Transformer
    python benchmarks/bench_networks.py --official /path/to/Medical-Transformer --models MedT official:MedT

The share-of-peak column divides by ``--peak-gflops``; by default that is measured here as the fp32 throughput of a
large 3x3 convolution (256 -> 256 channels at 128x128, oneDNN, same thread count), the most PyTorch reaches here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

MODELS = ("MedT", "GatedAxialUNet", "AxialUNet", "LoGo", "UNet", "SwinUNETR")
# official factories of lib/models/axialnet.py, named "official:<factory>" on the command line
OFFICIAL = ("MedT", "gated", "axialunet", "logo")


def build(name: str, size: int, in_channels: int = 3, out_channels: int = 2, official: str | None = None):
    import monai.networks.nets as mnets

    import monai_medt.networks.nets as nets

    if name.startswith("official:"):
        factory = name.split(":", 1)[1]
        if official is None or factory not in OFFICIAL:
            raise ValueError(f"{name} needs --official <checkout> and one of {', '.join(OFFICIAL)} after 'official:'.")
        sys.path.insert(0, official)
        from lib.models import axialnet  # the user's checkout; nothing of it is part of this project

        return getattr(axialnet, factory)(img_size=size, imgchan=in_channels, num_classes=out_channels)
    if name == "UNet":
        return mnets.UNet(2, in_channels, out_channels, channels=(32, 64, 128, 256, 512), strides=(2, 2, 2, 2))
    if name == "SwinUNETR":
        return mnets.SwinUNETR(in_channels=in_channels, out_channels=out_channels, spatial_dims=2, feature_size=24)
    return getattr(nets, name)(in_channels, out_channels, img_size=size)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def current_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_gflops(threads: int, channels: int = 256, size: int = 128, repeats: int = 5) -> float:
    """
    fp32 GFLOP/s of a large 3x3 convolution (oneDNN, channels-last, no grad) on ``threads`` threads: the practical
    peak of this CPU. (Not a matrix product: PyTorch's MKL takes its AVX2 path on AMD CPUs and stays well below what
    oneDNN reaches with AVX-512 there.)
    """
    import torch

    torch.set_num_threads(threads)
    x = torch.rand(1, channels, size, size).contiguous(memory_format=torch.channels_last)
    w = torch.rand(channels, channels, 3, 3).contiguous(memory_format=torch.channels_last)
    times = []
    with torch.no_grad():
        for i in range(repeats + 2):
            t0 = time.perf_counter()
            torch.nn.functional.conv2d(x, w, padding=1)
            if i >= 2:
                times.append(time.perf_counter() - t0)
    return 2 * channels * channels * 9 * size * size / statistics.median(times) / 1e9


def _graphed_step(net, x, y, opt, amp: bool, dtype):
    """
    A train step (``opt`` given) or eval forward of ``net`` on the static ``x`` that replays CUDA graphs: the network's
    forward and backward captured by ``torch.cuda.make_graphed_callables`` (the loss and the optimizer step stay
    eager), or the whole no-grad forward captured once. Autocast runs without its cast cache, as capture requires.
    """
    import torch

    def autocast():
        return torch.autocast("cuda", dtype=dtype, enabled=amp, cache_enabled=False)

    if opt is not None:
        with autocast():
            graphed = torch.cuda.make_graphed_callables(net, (x,))

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with autocast():
                loss = torch.nn.functional.cross_entropy(graphed(x).float(), y)
            loss.backward()
            opt.step()

        return step
    # warm-up on a side stream (allocator and cuDNN/cuBLAS choices settle before capture), then capture
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad(), autocast():
        for _ in range(3):
            net(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), autocast(), torch.cuda.graph(graph):
        net(x)
    return graph.replay


def run_one(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    net = build(args.models[0], args.size, official=args.official).to(device)
    if args.checkpoint:
        from monai_medt.networks.blocks.axial_block import set_checkpointing

        if set_checkpointing(net, True) == 0:
            raise ValueError(f"--checkpoint: {args.models[0]} has no axial blocks or conv stems of this project.")
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    model = torch.compile(net) if args.compile else net
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (args.batch, args.size, args.size), device=device)
    from monai_medt.networks.blocks.cpu_kernel import KERNEL_ENV, cpu_kernel

    if device.type == "cpu":
        cpu_kernel()  # build or load the fused attention kernel now, so that neither the timing nor "above base" sees it
    amp = args.amp != "none"
    dtype = torch.bfloat16 if args.amp == "bf16" else torch.float16
    if args.mode == "train":
        net.train()
        fused = True if args.fused_adam else None  # None: PyTorch's default (the per-parameter loop on the CPU)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-5, fused=fused)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype, enabled=amp):
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            loss.backward()
            opt.step()

    else:
        net.eval()

        def step() -> None:
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=amp):
                model(x)

    if args.cuda_graphs:
        step = _graphed_step(net, x, y, opt if args.mode == "train" else None, amp, dtype)

    # after importing torch/MONAI, loading the kernel, building the model, the input and the optimizer (whose first
    # parameter group imports torch._dynamo, ~70 MiB, in any PyTorch training)
    base_rss = current_rss_mib()
    # the FLOP count's forward also leaves glibc's malloc with raised mmap/trim thresholds, as every earlier table had
    # it before the timing: without it the timed steps meet more page faults (MedT eval read ~15 % slower, for the
    # code of that commit and the one before alike)
    from torch.utils.flop_counter import FlopCounterMode

    # count on the PyTorch attention path: the fused kernel does the same arithmetic but is invisible to the counter
    kernel_setting = os.environ.get(KERNEL_ENV)
    os.environ[KERNEL_ENV] = "0"
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net.eval()(x[:1])
    net.train(args.mode == "train")
    if kernel_setting is None:
        del os.environ[KERNEL_ENV]
    else:
        os.environ[KERNEL_ENV] = kernel_setting
    fwd_gflop = counter.get_total_flops() / 1e9  # matmuls and convolutions of one forward, per image

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    result = {
        "model": args.models[0],
        "mode": args.mode,
        "size": args.size,
        "batch": args.batch,
        "img_per_s": args.batch / med,
        "median_s": med,
        "times_s": times,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "base_rss_mib": base_rss,
        "params": sum(p.numel() for p in net.parameters()),
        "fwd_gflop_per_img": fwd_gflop,
        # a training step costs about three forwards (forward, input gradients, weight gradients)
        "gflop_per_s": fwd_gflop * (3 if args.mode == "train" else 1) * args.batch / med,
    }
    if device.type == "cuda":
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["MedT", "GatedAxialUNet", "AxialUNet", "LoGo"])
    parser.add_argument("--modes", nargs="+", default=["train", "eval"], choices=["train", "eval"])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    parser.add_argument(
        "--peak-gflops", type=float, default=None,
        help="fp32 peak for the share column (default: measured, a large 3x3 convolution on --threads threads)",
    )
    parser.add_argument(
        "--official", default=None,
        help="a checkout of the official implementation (jeya-maria-jose/Medical-Transformer), for official:<factory>",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    parser.add_argument(
        "--checkpoint", action="store_true", help="activation checkpointing of the axial blocks and conv stems"
    )
    parser.add_argument(
        "--fused-adam", action="store_true", help="train with Adam's fused implementation (the bundles' optimizer)"
    )
    parser.add_argument(
        "--cuda-graphs", action="store_true",
        help="replay CUDA graphs of the network's forward and backward (train) or forward (eval); CUDA only",
    )
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--mode", default=None, help=argparse.SUPPRESS)  # set for the per-pair subprocess
    args = parser.parse_args()

    if args.cuda_graphs and (not args.device.startswith("cuda") or args.compile or args.checkpoint):
        parser.error("--cuda-graphs needs --device cuda and neither --compile nor --checkpoint.")
    if args.mode is not None:
        print(json.dumps(run_one(args)))
        return

    import torch

    print(f"# torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}")
    print(f"# cpu: {cpu_name()}, {os.cpu_count()} logical cores, threads used: {args.threads}, "
          f"vector ISA: {torch.backends.cpu.get_cpu_capability()}")
    if args.peak_gflops is None:
        if args.device != "cpu":
            raise ValueError("--peak-gflops is measured on the CPU only; give the accelerator's fp32 peak.")
        args.peak_gflops = peak_gflops(args.threads)
        print(f"# share of peak against {args.peak_gflops:.0f} GFLOP/s (fp32 3x3 conv 256->256, 128x128, measured)")
    else:
        print(f"# share of peak against {args.peak_gflops:.0f} GFLOP/s (--peak-gflops)")
    if args.device == "cpu":
        from monai_medt.networks.blocks.cpu_kernel import KERNEL_ENV, cpu_kernel

        kernel = "fused C++ kernel" if cpu_kernel() is not None else f"PyTorch ({KERNEL_ENV}=0 or no compiler)"
        print(f"# attention on the CPU: {kernel}")
    if args.device.startswith("cuda") and torch.cuda.is_available():
        print(f"# gpu: {torch.cuda.get_device_name(0)}, amp: {args.amp}")
    print(f"# input {args.batch}x3x{args.size}x{args.size}, median of {args.repeats} after {args.warmup} warm-up"
          f"{', torch.compile' if args.compile else ''}{', channels_last' if args.channels_last else ''}"
          f"{', activation checkpointing' if args.checkpoint else ''}"
          f"{', fused Adam' if args.fused_adam else ''}{', CUDA graphs' if args.cuda_graphs else ''}")
    print(
        f"{'model':<20}{'mode':<7}{'img/s':>9}{'s/iter':>9}{'peak RSS MiB':>14}{'above base':>12}{'params':>11}"
        f"{'GFLOP/img':>11}{'GFLOP/s':>9}{'% peak':>8}"
    )
    results = []
    for model in args.models:
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--mode", mode, "--models", model]
            for key in ("size", "batch", "threads", "warmup", "repeats", "device", "amp", "peak_gflops", "official"):
                if getattr(args, key) is not None:
                    cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
            cmd += ["--compile"] * args.compile + ["--channels-last"] * args.channels_last
            cmd += ["--checkpoint"] * args.checkpoint + ["--fused-adam"] * args.fused_adam
            cmd += ["--cuda-graphs"] * args.cuda_graphs
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{model:<20}{mode:<7} FAILED: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(r)
            extra = f"  cuda peak {r['peak_cuda_mib']:.0f} MiB" if "peak_cuda_mib" in r else ""
            print(
                f"{model:<20}{mode:<7}{r['img_per_s']:>9.2f}{r['median_s']:>9.3f}"
                f"{r['peak_rss_mib']:>14.0f}{r['peak_rss_mib'] - r['base_rss_mib']:>12.0f}{r['params']:>11,}"
                f"{r['fwd_gflop_per_img']:>11.2f}{r['gflop_per_s']:>9.1f}{100 * r['gflop_per_s'] / args.peak_gflops:>8.1f}"
                f"{extra}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
