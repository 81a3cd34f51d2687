# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""
Throughput of a network with and without one of the speed changes, alternating the two in one process so that both
see the same machine state: on a shared host, runs minutes apart differ by more than these changes gain. A change
that alters what is allocated can read faster here than in a training process of its own (benchmarks/RESULTS.md,
"Tried and not kept"): ``--fresh`` times each side in processes of its own instead, alternating, one pair per round
(each the median of ``--steps`` iterations after three warm-up ones), as a training job runs one configuration.

- ``eval-fusion``: the attention layers' eval-mode output fusion (output batch norm and sum of the two terms written
  straight into the map) against the plain modules; timed on eval forwards. (Until ``conv-norm-fold`` it also
  switched the projection's folded batch norm.)
- ``logit-moments``: the logit batch-norm moments with the closed-form backward (``LogitMomentsFunction``) against
  autograd through the same float64 formula (``logit_moments_reference``); timed on train steps (forward,
  cross-entropy, backward, Adam).
- ``channels-last-stem``: the conv stems' channels-last inference forward against their layers run in the input's
  contiguous layout; timed on eval forwards.
- ``inference-kernel``: the fused CPU kernel's inference call against its training forward through the autograd
  function (row-wise until 2026-11-30; since then both run the same row blocks, the training forward also keeping
  each row's softmax statistics); timed on eval forwards.
- ``map-kernel``: eval-mode attention layers run by one kernel call from the projected map to the output map (the
  kernel gathers queries, keys and values and writes the normalised output) against the projection's layout copies,
  the kernel on sequences and the output fusion (``eval-fusion``); timed on eval forwards.
- ``channels-last-eval``: in CPU inference the stems' channels-last output kept through the blocks, attention layers
  and decoders against its copy back to the contiguous layout; timed on eval forwards.
- ``avx512-build``: on an AVX-512 CPU, the kernel built for AVX-512 (16-row blocks) against the same source built for
  AVX2 (8-row blocks; built once into a temporary folder); timed on train steps with ``--train``, else on eval
  forwards. Outputs agree bit for bit; gradients to float32 rounding (the backward sums over rows in lane groups of
  16 or 8).
- ``conv-norm-fold``: the eval-mode folding of batch norms into the convs before them (stems, blocks, attention
  projections) against the conv and batch norm run one after the other; timed on eval forwards.
- ``direct-output``: the attention outputs stacked in map order straight from their sequence layout (one copy)
  against stacking them in the sequence layout, then copying into the map (two); timed as ``direct-projection``.
- ``direct-projection``: the attention layers' projection copied once per tensor from the map into the layouts the
  kernel reads (q row-major, k and v channel-major) against one copy of the whole projection into the sequence
  layout, split, then transposed copies of k and v; timed on train steps with ``--train``, else on eval forwards.
- ``moments-kernel``: the logit moments' sums over q and k and their gradient as single passes of the CPU kernel
  against the PyTorch form (float64 copies and batched matmuls); timed on train steps.
- ``channels-last-upsample``: the decoders' CPU convolution outputs turned channels-last before the bilinear
  upsampling against upsampling in the convolution's layout; timed on train steps with ``--train`` (eval maps are
  channels-last already), else on eval forwards.
- ``map-training``: the attention layers' autograd path from the projected map (``fused_map_attention`` and
  ``map_logit_moments``: queries, keys and values read in place, the terms written as one map, the backward writing
  d(map) and the scales' gradients) against the sequence-layout path (projection copies, scaled query and key
  tensors, the kernel on sequences, the terms stacked into the map, and the reverse in the backward); timed on train
  steps.
- ``fused-batch-norm``: training-mode batch norms (with the ReLUs right after them and, in the attention layers, the
  sum of the two output terms) as one call of the CPU kernel against the modules (PyTorch's batch norm, then an
  in-place ReLU or the term sum); timed on train steps.
- ``block-fusion``: in the axial blocks, the shortcut added and the ReLU applied in the pass of the last batch norm
  (the shortcut's own norm through the kernel too), and the width attention's ReLU in its output norm's pass (stride
  1), against the conv-norm pairs with a separate addition and ReLUs; timed on train steps.
- ``norm-from-output``: the attention projections' training-mode batch norms save their output (which the attention
  saves anyway) and recover the normalised input from it in the backward, against saving their input as well; timed
  on train steps. It changes memory more than time: ``--fresh`` also prints each side's peak RSS.
- ``winograd-conv``: in CPU training, the wide 3x3 convolutions (MedT's and LoGo's local stems) as Winograd F(4x4,
  3x3) transforms and batched matrix products against oneDNN's direct convolution; timed on train steps.

``eval-fusion``, ``inference-kernel``, ``direct-projection`` and ``direct-output`` switch ``map-kernel`` off on both
sides when they time eval forwards: the map-to-map kernel replaces the paths they compare. For the same reason
``logit-moments``, ``moments-kernel``, ``direct-projection`` and ``direct-output`` switch ``map-training`` off on both
sides when they time train steps.

    python benchmarks/ab_changes.py --change eval-fusion --model MedT --threads 1 --rounds 6
    python benchmarks/ab_changes.py --change logit-moments --model MedT --threads 1 --rounds 6
    python benchmarks/ab_changes.py --change channels-last-stem --model MedT --threads 2 --rounds 6
    python benchmarks/ab_changes.py --change inference-kernel --model MedT --threads 2 --rounds 6
    python benchmarks/ab_changes.py --change conv-norm-fold --model MedT --threads 2 --rounds 6
    python benchmarks/ab_changes.py --change direct-projection --model MedT --threads 2 --rounds 6 [--train]
    python benchmarks/ab_changes.py --change direct-output --model MedT --threads 2 --rounds 6 [--train]
    python benchmarks/ab_changes.py --change map-kernel --model MedT --threads 2 --rounds 6
    python benchmarks/ab_changes.py --change channels-last-eval --model MedT --threads 2 --rounds 6
    python benchmarks/ab_changes.py --change avx512-build --model MedT --threads 2 --rounds 6 [--train]
    python benchmarks/ab_changes.py --change moments-kernel --model MedT --threads 2 --rounds 6
    python benchmarks/ab_changes.py --change channels-last-upsample --model MedT --threads 2 --rounds 6 --train
    python benchmarks/ab_changes.py --change map-training --model MedT --threads 2 --rounds 6
    python benchmarks/ab_changes.py --change fused-batch-norm --model MedT --threads 2 --rounds 6
    python benchmarks/ab_changes.py --change block-fusion --model MedT --threads 2 --rounds 6
    python benchmarks/ab_changes.py --change block-fusion --model MedT --threads 2 --rounds 6 --fresh
    python benchmarks/ab_changes.py --change norm-from-output --model MedT --threads 2 --rounds 6 --fresh
    python benchmarks/ab_changes.py --change winograd-conv --model MedT --threads 2 --rounds 6 --fresh
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from monai_medt.networks import nets
from monai_medt.networks.blocks import (
    axial_attention,
    axial_block,
    batch_norm,
    conv_norm,
    cpu_kernel,
    decoder,
    logit_moments,
    stem,
    winograd,
)


REPLACED_BY_MAP_KERNEL = ("eval-fusion", "inference-kernel", "direct-projection", "direct-output")
REPLACED_BY_MAP_TRAINING = ("logit-moments", "moments-kernel", "direct-projection", "direct-output")


def switch(change: str) -> Callable[[bool], None]:
    """A function that turns ``change`` on (True) or off (False) for every attention layer."""
    if change == "eval-fusion":
        base = axial_attention._AxialAttentionBase
        folded = base._fuse_eval

        def use(on: bool) -> None:
            base._fuse_eval = folded if on else (lambda self: False)

    elif change == "channels-last-stem":
        inference = stem.ConvStem.forward

        def use(on: bool) -> None:
            stem.ConvStem.forward = inference if on else stem.ConvStem.layers

    elif change == "conv-norm-fold":

        def unfolded(conv, norm, x):
            return norm(conv(x))

        def use(on: bool) -> None:
            fold = conv_norm.conv_norm if on else unfolded
            stem.conv_norm = axial_block.conv_norm = axial_attention.conv_norm = fold

    elif change == "direct-projection":
        direct = axial_attention._AxialAttentionBase._project

        def sequence_first(self, x):  # the earlier projection: the whole map into the sequence layout, then split
            b, _, h, w = x.shape
            qkv = self._project_eager(x).view(b, self.num_heads, 2 * self.head_dim, h, w)
            if self.axis == "height":
                qkv, length = qkv.permute(0, 4, 1, 3, 2), h
            else:
                qkv, length = qkv.permute(0, 3, 1, 4, 2), w
            qkv = qkv.reshape(-1, length, 2 * self.head_dim)
            return torch.split(qkv, [self.qk_dim, self.qk_dim, self.head_dim], dim=-1)

        def use(on: bool) -> None:
            axial_attention._AxialAttentionBase._project = direct if on else sequence_first

    elif change == "direct-output":
        direct = axial_attention._AxialAttentionBase._to_map

        def sequence_stacked(self, terms, b, h, w):  # the earlier output: stacked in the sequence layout, then copied
            stacked = torch.stack(terms, dim=-1)
            return self._map_view(stacked, b, h, w, len(terms)).reshape(b, self.out_channels * len(terms), h, w)

        def use(on: bool) -> None:
            axial_attention._AxialAttentionBase._to_map = direct if on else sequence_stacked

    elif change == "inference-kernel":
        inference = axial_attention.fused_relative_attention

        def training_forward(*args, needs_grad=None):  # also keeps the softmax statistics for a backward
            return cpu_kernel.FusedRelativeAttentionFunction.apply(*args)

        def use(on: bool) -> None:
            axial_attention.fused_relative_attention = inference if on else training_forward

    elif change == "fused-batch-norm":
        fused = batch_norm._fused

        def use(on: bool) -> None:
            batch_norm._fused = fused if on else (lambda norm, x, residual: False)

    elif change == "block-fusion":
        fused_block = axial_block.AxialBlock._folded_forward

        def separate(self, x):  # the earlier block: the width attention's ReLU and the residual addition on their own
            out = conv_norm.conv_norm(self.conv_in, self.norm_in, x, relu=True)
            self.attn_w.output_relu = False
            out = F.relu(self.attn_w(self.attn_h(out)), inplace=True)
            self.attn_w.output_relu = True
            out = conv_norm.conv_norm(self.conv_out, self.norm_out, out)
            return F.relu(out + self.shortcut(x), inplace=True)

        def use(on: bool) -> None:
            axial_block.AxialBlock._folded_forward = fused_block if on else separate

    elif change == "norm-from-output":
        invertible = batch_norm._invertible

        def use(on: bool) -> None:
            batch_norm._invertible = invertible if on else (lambda weight, bias: False)

    elif change == "winograd-conv":
        applies = winograd.winograd_applies

        def use(on: bool) -> None:
            winograd.winograd_applies = applies if on else (lambda conv, x: False)

    elif change == "map-training":
        train_map_kernel = axial_attention._AxialAttentionBase._train_map_kernel

        def use(on: bool) -> None:
            axial_attention._AxialAttentionBase._train_map_kernel = train_map_kernel if on else (lambda self, x: None)

    elif change == "map-kernel":
        map_kernel = axial_attention._AxialAttentionBase._map_kernel

        def use(on: bool) -> None:
            axial_attention._AxialAttentionBase._map_kernel = map_kernel if on else (lambda self, x: None)

    elif change == "channels-last-eval":
        kept = stem.ConvStem.forward

        def copied_back(self, x):  # the earlier stem: channels-last convs, output copied back to the contiguous layout
            return kept(self, x).contiguous()

        def use(on: bool) -> None:
            stem.ConvStem.forward = kept if on else copied_back

    elif change == "avx512-build":
        if torch.backends.cpu.get_cpu_capability() != "AVX512":
            raise ValueError("--change avx512-build needs a CPU for which PyTorch reports AVX512.")
        native = cpu_kernel.cpu_kernel()
        with tempfile.TemporaryDirectory() as folder:  # the loaded library stays valid after its file is removed
            avx2 = cpu_kernel._build("AVX2", folder)

        def use(on: bool) -> None:
            cpu_kernel._state["kernel"] = native if on else avx2

    elif change == "moments-kernel":
        kernel_for = logit_moments._kernel_for

        def use(on: bool) -> None:
            logit_moments._kernel_for = kernel_for if on else (lambda x: None)

    elif change == "channels-last-upsample":
        channels_last = decoder.AdditiveSkipDecoder.forward

        def in_conv_layout(self, x, skips):  # the earlier decoder: upsampling in the convolution's output layout
            for i, conv in enumerate(self.convs):
                x = F.relu(F.interpolate(conv(x), scale_factor=2.0, mode="bilinear", align_corners=False), inplace=True)
                if i < len(skips):
                    x = x + skips[i]
            return x

        def use(on: bool) -> None:
            decoder.AdditiveSkipDecoder.forward = channels_last if on else in_conv_layout

    else:

        def use(on: bool) -> None:
            axial_attention.logit_moments = (
                logit_moments.logit_moments if on else logit_moments.logit_moments_reference
            )

    return use


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    changes = [
        "eval-fusion", "logit-moments", "channels-last-stem", "inference-kernel", "conv-norm-fold", "direct-projection",
        "direct-output", "map-kernel", "channels-last-eval", "avx512-build", "moments-kernel", "channels-last-upsample",
        "map-training", "fused-batch-norm", "block-fusion", "norm-from-output", "winograd-conv",
    ]
    parser.add_argument("--change", default="eval-fusion", choices=changes)
    parser.add_argument("--model", default="MedT", choices=["MedT", "LoGo", "GatedAxialUNet", "AxialUNet"])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--rounds", type=int, default=6, help="alternations, each the best of 3 iterations (--fresh: process pairs)"
    )
    parser.add_argument("--train", action="store_true", help="time train steps (some changes always do)")
    parser.add_argument("--fresh", action="store_true", help="time each side in processes of its own (see above)")
    parser.add_argument("--steps", type=int, default=25, help="timed iterations per process with --fresh")
    parser.add_argument("--side", choices=["with", "without"], help=argparse.SUPPRESS)  # a --fresh child process
    args = parser.parse_args()
    if args.fresh:
        fresh_rounds(args)
        return

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train_changes = (
        "logit-moments", "moments-kernel", "map-training", "fused-batch-norm", "block-fusion", "norm-from-output",
        "winograd-conv",
    )
    train = args.change in train_changes or args.train
    net = getattr(nets, args.model)(in_channels=3, out_channels=2, img_size=args.size).train(train)
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    x = torch.rand(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 2, (args.batch, args.size, args.size))
    if args.change in REPLACED_BY_MAP_KERNEL:
        # these time the paths that the map-to-map kernel replaces in float32 CPU inference (still taken with
        # gradients, under autocast or without the kernel): the map kernel is off on both sides
        axial_attention._AxialAttentionBase._map_kernel = lambda self, x: None
    if train and args.change in REPLACED_BY_MAP_TRAINING:
        # likewise the autograd path from the projected map replaces these in float32 CPU training
        axial_attention._AxialAttentionBase._train_map_kernel = lambda self, x: None
    use = switch(args.change)
    if args.side is not None:
        use(args.side == "with")

    def outputs() -> list[torch.Tensor]:
        """Eval logits, or the parameter gradients of one train step (compared before timing)."""
        if not train:
            with torch.no_grad():
                return [net(x)]
        net.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        return [p.grad.clone() for p in net.parameters() if p.grad is not None]

    def iteration() -> None:
        if not train:
            with torch.no_grad():
                net(x)
            return
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()

    def timed(count: int) -> list[float]:
        """Seconds of each of ``count`` iterations."""
        times = []
        for _ in range(count):
            start = time.perf_counter()
            iteration()
            times.append(time.perf_counter() - start)
        return times

    if args.side is not None:  # a --fresh child: warm up, then the median of --steps iterations
        timed(3)
        print(f"img_per_s {args.batch / statistics.median(timed(args.steps))}")
        print(f"peak_rss_mib {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}")
        return

    def best_of_three() -> float:
        return min(timed(3))

    use(False)
    before = outputs()
    use(True)
    diff = max((a - b).abs().max().item() for a, b in zip(outputs(), before))
    seconds: dict[str, list[float]] = {"without": [], "with": []}
    for _ in range(args.rounds):
        for name, values in seconds.items():
            use(name == "with")
            values.append(best_of_three())
    use(True)
    compared = "gradients" if train else "eval logits"
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
          f"{args.model} {args.size}x{args.size}, batch {args.batch}, {args.change}; max |with - without| over "
          f"{compared} {diff:.1e}")
    for name, values in seconds.items():
        median = statistics.median(values)
        mode = "train" if train else "eval"
        print(f"{name:7s} {mode} {args.batch / median:6.2f} img/s (median of {args.rounds} rounds)")


def fresh_rounds(args: argparse.Namespace) -> None:
    """``--fresh``: each round runs one process per side (without, then with) and collects its img/s and peak RSS."""
    child = [sys.executable, __file__, "--change", args.change, "--model", args.model, "--size", str(args.size)]
    child += ["--batch", str(args.batch), "--threads", str(args.threads), "--steps", str(args.steps)]
    child += ["--train"] if args.train else []
    rates: dict[str, list[float]] = {"without": [], "with": []}
    peaks: dict[str, list[float]] = {"without": [], "with": []}
    for _ in range(args.rounds):
        for side, values in rates.items():
            result = subprocess.run(child + ["--side", side], capture_output=True, text=True)
            found = dict(line.split()[:2] for line in result.stdout.splitlines() if line.startswith(("img_", "peak_")))
            if result.returncode != 0 or len(found) != 2:
                raise RuntimeError(f"the {side!r} process failed ({result.returncode}): {result.stderr[-2000:]}")
            values.append(float(found["img_per_s"]))
            peaks[side].append(float(found["peak_rss_mib"]))
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
          f"{args.model} {args.size}x{args.size}, batch {args.batch}, {args.change}; one process per side and round")
    for side, values in rates.items():
        print(f"{side:7s} {statistics.median(values):6.2f} img/s (median over {args.rounds} processes of the medians "
              f"of {args.steps} iterations; {min(values):.2f}-{max(values):.2f}), peak RSS "
              f"{statistics.median(peaks[side]):.0f} MiB ({min(peaks[side]):.0f}-{max(peaks[side]):.0f})")


if __name__ == "__main__":
    main()
