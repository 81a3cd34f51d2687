# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""
Optional fused CPU kernel of the relative axial attention (``csrc/relative_attention_cpu.cpp``), which also holds the
training-mode batch norm of :mod:`monai_medt.networks.blocks.batch_norm` (``csrc/batch_norm_cpu.cpp``) and the Winograd
transforms of :mod:`monai_medt.networks.blocks.winograd` (``csrc/winograd_conv_cpu.cpp``).

It computes exactly :func:`monai_medt.networks.blocks.attention_core.relative_attention` and its gradients on blocks of
query rows (float32: 8 rows, 16 on AVX-512 CPUs; float64: one row at a time), so that the (N, L, L) logit and attention
maps never leave the cache. The axial layers call its map form (:func:`fused_map_attention`, and in eval mode
``inference_map``): each sequence's queries, keys and values are read in place from the layer's projected map, and the
outputs (in training, their gradients with respect to the map) written as maps, so that the sequence layout is never
materialised. It is compiled with the system's C++ compiler by :func:`torch.utils.cpp_extension.load` the first time a
CPU attention layer runs (under a minute, then cached under ``$TORCH_EXTENSIONS_DIR/monai_medt``, by default
``~/.cache/torch_extensions/monai_medt``, one library per version of the sources, flags, vector ISA, torch and Python
version). Where no compiler is available the build fails once with a warning and the layers use the PyTorch
implementation. ``MONAI_MEDT_CPU_KERNEL=0`` skips the kernel altogether.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import warnings
from types import ModuleType

import torch

__all__ = [
    "KERNEL_ENV",
    "FusedMapAttentionFunction",
    "FusedRelativeAttentionFunction",
    "cpu_kernel",
    "fused_map_attention",
    "fused_relative_attention",
]

KERNEL_ENV = "MONAI_MEDT_CPU_KERNEL"
_CSRC = os.path.join(os.path.dirname(__file__), "csrc")
# compiled into one library (the first holds the Python bindings); the header is part of the cache key too
_SOURCES = [
    os.path.join(_CSRC, name) for name in ("relative_attention_cpu.cpp", "batch_norm_cpu.cpp", "winograd_conv_cpu.cpp")
]
_HEADERS = [os.path.join(_CSRC, name) for name in ("batch_norm_cpu.h", "winograd_conv_cpu.h")]
_state: dict[str, ModuleType | None] = {}


def _load_built(name: str, path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build(capability: str | None = None, root: str | None = None) -> ModuleType:
    """
    Load the kernel from the cache, or compile it into a private temporary folder and move the library into the cache
    atomically. ``torch.utils.cpp_extension.load`` alone holds a lock file in a shared build folder for every process
    that loads the module; a process killed meanwhile (a served model, a DDP rank) leaves the lock behind and every
    later process waits on it forever. Here nothing waits: concurrent first builds each compile and the last rename
    wins (same bytes). ``capability`` (the vector ISA to build for) and ``root`` (the cache) default to PyTorch's
    report for this CPU and ``$TORCH_EXTENSIONS_DIR``; tests and benchmarks pass them to build another ISA's library.
    """
    from torch.utils.cpp_extension import load

    flags = ["-O3", "-fopenmp"]
    name = "monai_medt_attention"
    # the vector ISA is part of the name: a build cache shared by different machines keeps one build per ISA
    capability = capability or torch.backends.cpu.get_cpu_capability()
    if capability in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma"]
        name += "_" + capability.lower()
    if capability == "AVX512":  # reported only where F, BW, VL and DQ are all present
        # the inference blocks then take 16 rows per register; the compiler's own loop vectorisation stays at 256 bits,
        # which ran the training kernel's rows of 8-64 positions faster than 512 bits
        flags += ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mprefer-vector-width=256"]
    key = hashlib.sha256()
    for path in _SOURCES + _HEADERS:
        with open(path, "rb") as f:
            key.update(f.read())
    key.update(" ".join([*flags, torch.__version__, sys.version, sys.platform]).encode())
    root = root or os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.expanduser("~/.cache/torch_extensions")
    cache_dir = os.path.join(root, "monai_medt")
    library = os.path.join(cache_dir, f"{name}-{key.hexdigest()[:16]}.so")
    if os.path.exists(library):
        return _load_built(name, library)
    os.makedirs(cache_dir, exist_ok=True)
    build_dir = tempfile.mkdtemp(prefix=f"{name}-build-", dir=cache_dir)
    try:
        module = load(
            name=name, sources=_SOURCES, extra_cflags=flags, extra_ldflags=["-fopenmp"], build_directory=build_dir,
            verbose=False,
        )
        os.replace(os.path.join(build_dir, f"{name}.so"), library)
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    return module


def cpu_kernel() -> ModuleType | None:
    """The compiled kernel module, built on the first call; None where it is disabled or cannot be built."""
    if os.environ.get(KERNEL_ENV, "1") == "0":  # read on every call, so that it can be switched at run time
        return None
    if "kernel" not in _state:
        kernel = None
        try:
            kernel = _build()
        except Exception as e:  # noqa: BLE001 -- no compiler, headers, ninja or write access: fall back, say so once
            warnings.warn(
                f"monai_medt: the fused CPU attention kernel could not be built ({type(e).__name__}: {e}); using "
                f"the PyTorch implementation, which is several times slower. Set {KERNEL_ENV}=0 to skip the build.",
                stacklevel=2,
            )
        _state["kernel"] = kernel
    return _state["kernel"]


def _kernel_layout(q1, k, q2, rq, k3, wk, v, rv, positional: bool) -> list[torch.Tensor]:
    """The kernel's argument order and layouts: keys and values channel-major, so that its loops over key positions
    are unit-stride; empty tensors for the position inputs of the non-positional form."""
    q1c, kt, vt = q1.contiguous(), k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
    if not positional:
        empty = q1.new_empty(0)
        return [q1c, kt, empty, empty, vt, empty, empty, empty]
    return [q1c, kt, q2.contiguous(), k3.transpose(1, 2).contiguous(), vt, rq.contiguous(), wk.contiguous(), rv.contiguous()]


class FusedRelativeAttentionFunction(torch.autograd.Function):
    """Autograd function of the fused kernel; it saves the small inputs and the max and 1 / sum of each softmax row."""

    @staticmethod
    def forward(ctx, q1, k, q2, rq, k3, wk, v, rv, positional: bool):  # type: ignore[override]
        q1c, kt, q2c, k3t, vt, rqc, wkc, rvc = _kernel_layout(q1, k, q2, rq, k3, wk, v, rv, positional)
        sv, sve, stats = cpu_kernel().forward(q1c, kt, q2c, k3t, vt, rqc, wkc, rvc, positional)
        ctx.save_for_backward(q1c, kt, q2c, k3t, vt, rqc, wkc, rvc, stats)
        ctx.positional = positional
        return sv, sve

    @staticmethod
    def backward(ctx, dsv, dsve):  # type: ignore[override]
        q1c, kt, q2c, k3t, vt, rqc, wkc, rvc, stats = ctx.saved_tensors
        positional = ctx.positional
        dsve = dsve.contiguous() if positional else dsv.new_empty(0)
        grads = cpu_kernel().backward(q1c, kt, q2c, k3t, vt, rqc, wkc, rvc, positional, stats, dsv.contiguous(), dsve)
        dq1, dkt, dvt = grads[:3]
        dk, dv = dkt.transpose(1, 2), dvt.transpose(1, 2)
        if not positional:
            return dq1, dk, None, None, None, None, dv, None, None
        dq2, dk3t, drq, dwk, drv = grads[3:]
        return dq1, dk, dq2, drq, dk3t.transpose(1, 2), dwk, dv, drv, None


def fused_relative_attention(
    q1: torch.Tensor,
    k: torch.Tensor,
    q2: torch.Tensor,
    rq: torch.Tensor,
    k3: torch.Tensor,
    wk: torch.Tensor,
    v: torch.Tensor,
    rv: torch.Tensor,
    positional: bool,
    needs_grad: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    :func:`~monai_medt.networks.blocks.attention_core.relative_attention` (same arguments, without ``rows``) on the
    fused CPU kernel, differentiable. Call :func:`cpu_kernel` first: this function assumes it returned a module.
    Float32 and float64 CPU tensors. ``needs_grad``: whether autograd must reach the inputs, for callers that have
    decided it already; ``None`` decides it here (grad mode on and an input requiring gradients).
    """
    inputs = (q1, k, q2, rq, k3, wk, v, rv)
    if needs_grad is None:
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    if needs_grad:
        sv, sve = FusedRelativeAttentionFunction.apply(*inputs, positional)
        return sv, sve
    # inference: the kernel's faster float32 forward, which keeps no softmax statistics for a backward
    sv, sve = cpu_kernel().inference(*_kernel_layout(*inputs, positional), positional)
    return sv, sve


class FusedMapAttentionFunction(torch.autograd.Function):
    """
    Autograd function of :func:`fused_map_attention`: it saves the projected map, the scales, the tables and the
    softmax statistics; its backward returns d(map) in one tensor, d(scales) and the tables' gradients.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, qkv, scales, rq, wk, rv, num_heads: int, qk_dim: int, head_dim: int, height: bool
    ):
        positional = rq is not None
        tables = [t.contiguous() for t in (rq, wk, rv)] if positional else [qkv.new_empty(0)] * 3
        scales = scales.contiguous()
        out, stats = cpu_kernel().forward_map(qkv, num_heads, qk_dim, head_dim, height, scales, *tables, positional)
        ctx.save_for_backward(qkv, scales, *tables, stats)
        ctx.layout = (num_heads, qk_dim, head_dim, height, positional)
        return out

    @staticmethod
    def backward(ctx, dout):  # type: ignore[override]
        qkv, scales, rq, wk, rv, stats = ctx.saved_tensors
        num_heads, qk_dim, head_dim, height, positional = ctx.layout
        grads = cpu_kernel().backward_map(
            qkv, num_heads, qk_dim, head_dim, height, scales, rq, wk, rv, positional, stats, dout
        )
        tables = grads[2:] if positional else [None] * 3
        return grads[0], grads[1], *tables, None, None, None, None


def fused_map_attention(
    qkv: torch.Tensor,
    scales: torch.Tensor,
    rq: torch.Tensor | None,
    wk: torch.Tensor | None,
    rv: torch.Tensor | None,
    num_heads: int,
    qk_dim: int,
    head_dim: int,
    height: bool,
) -> torch.Tensor:
    """
    The attention core of an axial layer from its projected map, differentiable, on the fused CPU kernel (call
    :func:`cpu_kernel` first: this function assumes it returned a module): each sequence's queries, keys and values are
    read from the map in place, and the terms' weighted sums written as one map, so that neither the sequence layout
    nor its gradients are materialised. Float32 CPU tensors.

    Args:
        qkv: (B, G * (2 c + e), H, W) projected map, any strides; per head ``c`` query, ``c`` key, ``e`` value channels.
        scales: (4, G) with positions: the logit-norm scales of the content, query-position and key-position terms
            (q1 = q * s[0], q2 = q * s[1], k3 = k * s[2] in :func:`relative_attention`'s terms) and the values' scale
            (v * s[3]); without positions (1, G), the content term's.
        rq, wk, rv: (c, L, L), (c, L, L), (e, L, L) position tables, or all None for the content term alone.
        num_heads, qk_dim, head_dim: G, c, e.
        height: attention along the height (sequences are columns), else along the width.

    Returns:
        (B, G * e * T, H, W) in ``qkv``'s memory format, channel ``(g * e + d) * T + t`` holding term ``t`` (T = 2:
        value content and value position; T = 1 without positions) of channel ``d`` of head ``g``.
    """
    if (rq is None) != (wk is None) or (rq is None) != (rv is None):
        raise ValueError("rq, wk and rv must be given together (position terms) or all be None (content only).")
    return FusedMapAttentionFunction.apply(qkv, scales, rq, wk, rv, num_heads, qk_dim, head_dim, height)
